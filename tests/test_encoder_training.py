"""Encoder pre-training and fine-tuning (minilm.encoder_training, `minilm pretrain` /
`minilm finetune` / `minilm eval` on encoder runs): the loops' twins, resume, the commands.

NumPy's BLAS is limited to one thread here (threadpoolctl, a scikit-learn dependency of the dev
extra, or the environment of the subprocesses): on a small shared machine its default thread
pool makes these small matrix products ten times slower.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minilm.checkpoint import load_checkpoint
from minilm.encoder_training import EncoderArgs, finetune, pretrain

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = dict(context_length=24, d_model=16, n_layer=1, n_head=2, batch_size=8, eval_iters=1)
QUIET = dict(progress=False, print_fn=lambda s: None)


@pytest.fixture(autouse=True)
def one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        ctx = contextlib.nullcontext()
    else:
        ctx = threadpool_limits(1)
    with ctx:
        yield


def minilm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **ONE_THREAD}
    return subprocess.run([sys.executable, "-m", "minilm", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mlm", "mlm+nsp", "causal"])
def test_loop_twins_see_the_same_batches_and_weights(objective):
    """From one seed the NumPy and PyTorch loops start from the same weights and draw the same
    batches, so their first losses agree to float32 rounding (and differ from another seed's)."""
    pytest.importorskip("torch")
    a = pretrain(EncoderArgs(objective=objective, impl="numpy", steps=3, eval_interval=3, **TINY), None, **QUIET)
    b = pretrain(EncoderArgs(objective=objective, impl="torch", steps=3, eval_interval=3, **TINY), None, **QUIET)
    c = pretrain(EncoderArgs(objective=objective, impl="numpy", steps=1, eval_interval=1, seed=1, **TINY), None, **QUIET)
    assert np.allclose(a.losses, b.losses, rtol=1e-4), (a.losses, b.losses)
    assert abs(a.losses[0] - c.losses[0]) > 1e-4
    key = "val_next_token_accuracy" if objective == "causal" else "val_mlm_accuracy"
    assert 0.0 <= a.evals[-1][key] <= 1.0
    assert ("val_nsp_accuracy" in a.evals[-1]) == (objective == "mlm+nsp")


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_resume_continues_exactly(tmp_path, impl):
    if impl == "torch":
        pytest.importorskip("torch")
    args = EncoderArgs(impl=impl, steps=4, eval_interval=2, **TINY)
    straight = pretrain(args, tmp_path / "a", **QUIET)
    half = EncoderArgs(impl=impl, steps=2, eval_interval=2, **TINY)
    pretrain(half, tmp_path / "b", **QUIET)
    resumed = pretrain(args, tmp_path / "b", resume=True, **QUIET)
    assert resumed.first_step == 2 and resumed.step == 4
    assert np.allclose(resumed.losses, straight.losses[2:], rtol=1e-6, atol=1e-7)
    wa, wb = load_checkpoint(tmp_path / "a").weights, load_checkpoint(tmp_path / "b").weights
    for k in wa:
        assert np.allclose(wa[k], wb[k], rtol=1e-6, atol=1e-7), k
    with pytest.raises(ValueError, match="cannot resume with different settings"):
        pretrain(EncoderArgs(impl=impl, steps=6, eval_interval=2, **{**TINY, "d_model": 8}), tmp_path / "b",
                 resume=True, **QUIET)


def test_finetune_loads_the_pretrained_body_and_uses_the_same_labelled_subset(tmp_path):
    pre = tmp_path / "pre"
    pretrain(EncoderArgs(steps=2, eval_interval=2, **TINY), pre, **QUIET)
    body = load_checkpoint(pre).weights
    common = dict(checkpoint=str(pre), steps=1, eval_interval=1, labelled=16, batch_size=8, lr=0.0, min_lr=0.0)
    ft = finetune(EncoderArgs(**common), tmp_path / "ft", **QUIET)
    sc = finetune(EncoderArgs(**common, from_scratch=True), tmp_path / "sc", **QUIET)
    w_ft, w_sc = load_checkpoint(tmp_path / "ft").weights, load_checkpoint(tmp_path / "sc").weights
    # lr 0: the weights stay where they started: the pre-trained body, or the random init
    assert np.array_equal(w_ft["blocks.0.mlp.fc.weight"], body["blocks.0.mlp.fc.weight"])
    assert not np.array_equal(w_sc["blocks.0.mlp.fc.weight"], body["blocks.0.mlp.fc.weight"])
    assert w_ft["cls.weight"].shape == (5, TINY["d_model"])
    meta = load_checkpoint(tmp_path / "ft").meta
    assert meta["model"] == "encoder-classifier" and len(meta["classes"]) == 5
    for r in (ft, sc):
        assert r.test["n"] >= 80 and len(r.test["confusion"]) == 5
        assert sum(map(sum, r.test["confusion"])) == r.test["n"]
    assert json.loads((tmp_path / "ft" / "test_metrics.json").read_text())["n"] == ft.test["n"]


@pytest.mark.slow
def test_commands_pretrain_finetune_eval_and_their_errors(tmp_path):
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    size = ["--context-length", "24", "--d-model", "16", "--n-layer", "1", "--n-head", "2", "--batch-size", "8",
            "--eval-iters", "1"]
    p = minilm("pretrain", "--steps", "2", "--eval-interval", "2", "--out", str(pre), "--quiet", "--tensorboard", *size)
    assert p.returncode == 0, p.stderr
    assert "val mlm accuracy" in p.stdout and (pre / "log.jsonl").is_file()
    assert any((pre / "tensorboard").iterdir()), "--tensorboard wrote event files"
    p = minilm("finetune", "--checkpoint", str(pre), "--steps", "2", "--eval-interval", "2", "--labelled", "8",
               "--batch-size", "8", "--out", str(ft), "--quiet")
    assert p.returncode == 0, p.stderr
    assert "test accuracy" in p.stdout and (ft / "confusion_test.png").is_file()
    p = minilm("eval", "--checkpoint", str(ft), "--impl", "torch")
    assert p.returncode == 0, p.stderr
    assert "test accuracy:" in p.stdout and "macro f1" in p.stdout and "confusion matrix" in p.stdout
    p = minilm("eval", "--checkpoint", str(pre))
    assert p.returncode == 0 and "val mlm accuracy" in p.stdout, p.stderr
    # errors: one line, no traceback
    p = minilm("finetune", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "x"))
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = minilm("pretrain", "--device", "cpu", "--out", str(tmp_path / "y"))
    assert p.returncode == 2 and "--impl torch only" in p.stderr
    p = minilm("pretrain", "--steps", "2", "--out", str(pre), *size)
    assert p.returncode == 1 and "--resume" in p.stderr


def clear_margin(n: int, n_classes: int, z: float = 5.0) -> float:
    """The accuracy a classifier must beat on a balanced test set of n examples to show it
    learned something.

    A classifier that ignores its input predicts class c with some probability q_c whatever
    the example; on a balanced test set (n / K examples per class) its number of hits is a sum
    of n independent Bernoulli(q_{c(i)} ...) draws with mean n / K and variance at most
    n (1/K)(1 - 1/K) (the Bernoulli variance p (1 - p) summed, p = 1/K on average, maximised
    when every p equals 1/K). So its accuracy exceeds 1/K + z sqrt((1/K)(1 - 1/K) / n) with
    probability below the normal tail erfc(z / sqrt 2) / 2 ~ 3e-7 for z = 5.
    For n = 200, K = 3: 1/3 + 5 * 0.0333 = 0.500.
    """
    p = 1.0 / n_classes
    return p + z * math.sqrt(p * (1 - p) / n)


@pytest.mark.slow
def test_tiny_pretrain_then_finetune_beats_chance_by_a_clear_margin(tmp_path):
    """The whole pipeline through the commands, < 60 s on a busy 2-core machine: masked-LM
    pre-training on the Markov sources' text, then fine-tuning on which of 3 sources wrote a
    string (minilm.data.markov_task; the speaker task needs far more compute, see
    benchmarks/bench_finetune.py)."""
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    p = minilm("pretrain", "--corpus", "markov", "--steps", "60", "--eval-interval", "60", "--eval-iters", "2",
               "--context-length", "48", "--d-model", "32", "--n-layer", "1", "--n-head", "2",
               "--batch-size", "16", "--out", str(pre), "--quiet")
    assert p.returncode == 0, p.stderr
    p = minilm("finetune", "--task", "markov", "--n-classes", "3", "--checkpoint", str(pre), "--steps", "120",
               "--eval-interval", "120", "--batch-size", "16", "--lr", "2e-3", "--out", str(ft), "--quiet")
    assert p.returncode == 0, p.stderr
    m = json.loads((ft / "test_metrics.json").read_text())
    counts = [sum(row) for row in m["confusion"]]  # test examples per true class
    assert max(counts) - min(counts) <= 1, "the test split is balanced"
    bar = clear_margin(m["n"], 3)
    assert 0.45 < bar < 0.55
    assert m["accuracy"] > bar, (m["accuracy"], bar, m["confusion"])


def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes(tmp_path):
    """A real SIGINT in the middle of pre-training: the loop stops after the step, saves the
    checkpoint, restores the handler; --resume then finishes the run."""
    import signal

    def ctrl_c_at_step_3(step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    args = EncoderArgs(steps=6, eval_interval=5, **TINY)
    res = pretrain(args, tmp_path / "run", callback=ctrl_c_at_step_3, **QUIET)
    assert res.interrupted and res.step == 3 and load_checkpoint(tmp_path / "run").step == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    done = pretrain(args, tmp_path / "run", resume=True, **QUIET)
    assert not done.interrupted and done.first_step == 3 and done.step == 6
