"""The whole training stack is one piece: NumPy and PyTorch train identically.

For each model kind, the NumPy model with ``minilm.numpy.optim`` (AdamW with nanoGPT's
decay / no-decay groups, ``clip_grad_norm``, ``cosine_schedule``) and its PyTorch twin with
``torch.optim.AdamW`` + ``torch.nn.utils.clip_grad_norm_`` + the same schedule start from the
same weights, see the same batches (the LSTM carries its state across windows: truncated
BPTT) and, in float64, give the same loss at every one of 20 steps and the same final weights.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from minilm.config import LSTMConfig, TransformerConfig
from minilm.numpy.optim import AdamW, clip_grad_norm, cosine_schedule
from minilm.testing import assert_close



@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors: one intra-op thread avoids thread-pool stalls on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


STEPS, WARMUP = 20, 4
MAX_LR = {"transformer": 3e-2, "lstm": 1e-1}  # the cosine goes to a tenth of it
BETAS, WEIGHT_DECAY = (0.9, 0.95), 0.1
CLIP = {"transformer": 1.3, "lstm": 0.2}  # between the smallest and largest norm of the run


def _models(kind: str):
    if kind == "transformer":
        from minilm.numpy.transformer import TransformerLM
        from minilm.torch.transformer import TransformerLM as TorchTransformerLM

        cfg = TransformerConfig(vocab_size=11, context_length=8, d_model=16, n_layer=2, n_head=4,
                                n_kv_head=2, tie_weights=True)
        m = TransformerLM(cfg, seed=0, dtype=np.float64)
        t = TorchTransformerLM(cfg, seed=0, attention="naive").double()
    else:
        from minilm.numpy.lstm import LSTMLM
        from minilm.torch.lstm import LSTMLM as TorchLSTMLM

        cfg = LSTMConfig(vocab_size=11, d_embed=12, d_hidden=12, n_layer=2, tie_weights=True)
        m = LSTMLM(cfg, seed=0, dtype=np.float64)
        t = TorchLSTMLM(cfg, seed=0).double()
    t.load_state_dict(m.state_dict())  # float64 weights on both sides, bit for bit
    return m, t


def _batches(rng: np.random.Generator, kind: str, B: int = 4, T: int = 8):
    """20 (x, y) batches: random windows (Transformer) or consecutive ones (LSTM, state carried)."""
    # mostly "count up by one mod 11", with a random jump 20% of the time: learnable quickly
    steps = np.where(rng.random(2000) < 0.8, 1, rng.integers(0, 11, size=2000))
    text = np.cumsum(steps) % 11
    if kind == "transformer":
        for _ in range(STEPS):
            starts = rng.integers(0, len(text) - T - 1, size=B)
            x = np.stack([text[s : s + T] for s in starts])  # (B, T)
            y = np.stack([text[s + 1 : s + T + 1] for s in starts])  # (B, T)
            yield x, y
    else:
        stream = len(text) // B
        for step in range(STEPS):
            offsets = np.arange(B) * stream + step * T
            yield np.stack([text[o : o + T] for o in offsets]), np.stack([text[o + 1 : o + T + 1] for o in offsets])


@pytest.mark.parametrize("kind", [pytest.param("transformer", marks=pytest.mark.slow), "lstm"])
def test_numpy_and_torch_train_the_same(kind):
    m, t = _models(kind)
    # weight decay on matrices only (>= 2-D), as nanoGPT
    decay = {k: v for k, v in m.params.items() if v.ndim >= 2}
    no_decay = {k: v for k, v in m.params.items() if v.ndim < 2}
    assert decay and no_decay
    opt = AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
                lr=MAX_LR[kind], betas=BETAS, eps=1e-8)
    tp = dict(t.named_parameters())
    t_opt = torch.optim.AdamW([{"params": [tp[k] for k in decay], "weight_decay": WEIGHT_DECAY},
                               {"params": [tp[k] for k in no_decay], "weight_decay": 0.0}],
                              lr=MAX_LR[kind], betas=BETAS, eps=1e-8)
    np_losses, t_losses, np_norms, t_norms = [], [], [], []
    state = t_state = None
    for step, (x, y) in enumerate(_batches(np.random.default_rng(0), kind)):
        lr = cosine_schedule(step, MAX_LR[kind], MAX_LR[kind] / 10, WARMUP, STEPS)
        # --- NumPy ---
        opt.lr = lr
        if kind == "lstm":
            loss, grads, state = m.loss_and_grads(x, y, state, return_state=True)
        else:
            loss, grads = m.loss_and_grads(x, y)
        np_norms.append(clip_grad_norm(grads, CLIP[kind]))
        opt.step(grads)
        np_losses.append(loss)
        # --- PyTorch ---
        for group in t_opt.param_groups:
            group["lr"] = lr
        if kind == "lstm":
            logits, t_state = t(torch.from_numpy(x), t_state)
            t_state = tuple(s.detach() for s in t_state)  # truncated BPTT
        else:
            logits = t(torch.from_numpy(x))
        t_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), torch.from_numpy(y).reshape(-1))
        t_opt.zero_grad(set_to_none=True)
        t_loss.backward()
        t_norms.append(float(torch.nn.utils.clip_grad_norm_(t.parameters(), CLIP[kind])))
        t_opt.step()
        t_losses.append(t_loss.item())

    assert_close(np.array(np_losses), np.array(t_losses), atol=1e-10, rtol=1e-9, name="loss curve")
    assert_close(np.array(np_norms), np.array(t_norms), atol=1e-10, rtol=1e-8, name="grad norms")
    for k, p in tp.items():
        assert_close(m.params[k], p, atol=1e-10, rtol=1e-8, name=f"final {k}")
    # the run exercised what it claims: clipping happened, and training reduced the loss
    assert min(np_norms) < CLIP[kind] < max(np_norms)  # some steps clipped, some not
    assert np.mean(np_losses[-5:]) < np.mean(np_losses[:5])
    # and the weights really moved (a no-op optimiser on both sides would also "agree")
    _, fresh = _models(kind)
    moved = max(float((p.detach() - fresh.state_dict()[k]).abs().max()) for k, p in tp.items())
    assert moved > 1e-2


def test_train_step_benchmark_checks_and_runs(capsys):
    """The benchmark script's own twin check passes and it reports a ratio (tiny run)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train_step.py"
    spec = importlib.util.spec_from_file_location("bench_train_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = ["--repeats", "1", "--warmup", "0", "--batch", "2", "--window", "8"]
    # targets no step can miss: PASS for both models (and the twin vs the plain-PyTorch
    # peer GPT), and --strict is content
    bench.TARGET_RATIO = bench.TARGET_PEER_RATIO = float("inf")
    assert bench.main(tiny + ["--strict"]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok") == 5 and "MISMATCH" not in out  # sdpa, naive, peer; loop, fused
    assert out.count("numpy/torch =") == 5
    final = out.strip().splitlines()[-3:]  # the verdict lines, last in the output
    assert [line.split()[0] for line in final] == ["transformer", "transformer", "lstm"], final
    assert re.search(r"numpy/torch\[sdpa\] = +\d+\.\d\dx +PASS$", final[0]), final
    assert re.search(r"torch\[sdpa\]/torch\[peer\] = +\d+\.\d\dx +PASS ", final[1]), final
    assert re.search(r"numpy/torch\[loop\] = +\d+\.\d\dx +PASS$", final[2]), final
    # a target every step misses: MISS for both; only --strict turns that into exit status 1
    bench.TARGET_RATIO = 0.0
    assert bench.main(tiny + ["--models", "lstm"]) == 0
    assert capsys.readouterr().out.strip().endswith("MISS")
    assert bench.main(tiny + ["--models", "lstm", "--strict"]) == 1
    assert capsys.readouterr().out.strip().endswith("MISS")
    with pytest.raises(SystemExit):
        bench.main(["--models", "rnn"])
