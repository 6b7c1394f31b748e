"""Data-parallel training: two CPU processes (gloo) train exactly like one on the whole batch.

Each rank draws the same global batch and keeps half its rows; DistributedDataParallel
averages the two halves' gradients, which is the gradient of the whole batch's mean loss.
So in float64 the two-process losses (all-reduced means) and final weights (rank 0's
checkpoint) must match a one-process run with the same ``batch_size`` to float64 rounding.
The LSTM case also checks that the carried state of both ranks' streams is gathered into the
checkpoint in stream order.
"""

from __future__ import annotations

import faulthandler
import json
import os
import time
import socket
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out: str, overrides: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    # gloo finds its peers through the host name, which in containers may not resolve to an
    # address the other rank can reach: keep both on the loopback interface
    if os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    # a hang (say, a rank that never reaches a collective) becomes a failure with its stack
    faulthandler.dump_traceback_later(150, exit=True)
    from minilm.presets import get_preset
    from minilm.torch.train import train

    args = get_preset(**overrides)
    res = train(args, out, progress=False, print_fn=lambda s: None)
    Path(out, f"losses_rank{rank}.json").write_text(json.dumps(res.losses))


def _run_two_ranks(out: Path, overrides: dict) -> None:
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_worker, args=(2, _free_port(), str(out), overrides), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=2):  # True once all have exited cleanly; raises if one failed
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the two ranks did not finish within 180 s")


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("preset", ["tiny", "tiny-lstm"])
def test_two_gloo_ranks_train_like_one_process(tmp_path, preset):
    from minilm.checkpoint import load_checkpoint
    from minilm.presets import get_preset
    from minilm.torch.train import train

    overrides = dict(name=preset, impl="torch", dtype="float64", steps=6, eval_interval=6,
                     eval_iters=1, sample_tokens=0, batch_size=8)
    one = train(get_preset(**overrides), tmp_path / "one", progress=False, print_fn=lambda s: None)
    _run_two_ranks(tmp_path / "two", overrides)
    two = [json.loads((tmp_path / "two" / f"losses_rank{r}.json").read_text()) for r in range(2)]
    assert two[0] == two[1]  # every rank reports the all-reduced loss
    np.testing.assert_allclose(two[0], one.losses, rtol=1e-11, atol=1e-12)
    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert b.step == 6
    for k, v in a.weights.items():
        np.testing.assert_allclose(b.weights[k], v, rtol=1e-10, atol=1e-12, err_msg=k)
    if preset == "tiny-lstm":
        for s1, s2 in zip(a.state["lstm_state"], b.state["lstm_state"]):
            assert s2.shape == s1.shape  # (n_layer, B, d_hidden): both ranks' streams
            np.testing.assert_allclose(s2, s1, rtol=1e-10, atol=1e-12)
    # only rank 0 wrote the run folder
    assert {p.name for p in (tmp_path / "two").iterdir()} >= {"checkpoint", "log.jsonl"}
