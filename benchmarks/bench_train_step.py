"""One training step of each NumPy model against its PyTorch twin, on the CPU.

A step is what the training loops do: forward, loss, backward, gradient clipping, AdamW::

    NumPy:   loss, g = model.loss_and_grads(x, y); clip_grad_norm(g, 1.0); opt.step(g)
    PyTorch: loss = CE(model(x), y); loss.backward(); clip_grad_norm_(...); opt.step()

Presets (float32, vocabulary 65 = tinyshakespeare's characters, batch 12, window 64):

| model | shape | parameters |
| --- | --- | --- |
| transformer | 4 layers, 4 heads, C = 128, context 64, tied head | ~0.80 M |
| lstm | 2 layers, d_embed = 128, H = 256, untied head with bias | ~0.94 M |

The LSTM preset was picked to have about the Transformer's parameter count; it reads the
window from a zero state (carrying the state, as truncated BPTT does, costs the same).

The PyTorch side is timed in each of its variants: the Transformer with ``attention="sdpa"``
(its default) and ``"naive"`` (the translation of the NumPy code), and, as the peer the twin
must keep up with, ``peer``: the same GPT written the way a PyTorch user would, from
``torch.nn`` pieces (``nn.Embedding``, ``nn.LayerNorm``, one fused ``nn.Linear(C, 3C)`` for
q, k and v, ``F.scaled_dot_product_attention``, tied head), loaded with the twin's weights
(q, k, v concatenated). Second target: the twin's step (``torch[sdpa]``) no slower than the
peer's, both timed in the same interleaved run. The LSTM with its explicit
time loop (the twin, default) and ``fused=True`` (``torch.nn.LSTM``'s own kernels). The target
-- the NumPy step at most 3x the time of the PyTorch twin's default variant -- is checked
against the first one.

Before timing anything it checks, for every variant, that the two frameworks compute the same
loss and the same gradient norm from the same weights on the same batch. Each case gets
``--warmup`` untimed steps, then ``--repeats`` timed ones, the cases of a model taking turns
step by step (so a machine whose load drifts treats them alike); the median is reported, with
throughput in tokens per second (B * T tokens per step).

It ends with one line per model: the NumPy/PyTorch ratio against the default variant and
PASS or MISS against the target (or FAIL when the twins disagree, which is never timed). The
exit status is 1 when the twins disagree, and, with ``--strict``, also when a target is
missed; 0 otherwise.

Threads: ``--threads`` (default 1) is applied to both sides, torch through
``torch.set_num_threads`` and NumPy's OpenBLAS through its ``set_num_threads`` entry point
(found with ctypes; if it cannot be found, the script says so and NumPy keeps OpenBLAS's own
choice -- then set ``OPENBLAS_NUM_THREADS`` before starting).

Clock: ``--clock wall`` (default) times steps with ``time.perf_counter``; on a machine shared
with other jobs ``--clock cpu`` (``time.thread_time``, this thread's CPU time; with
``--threads 1``) leaves out the time the process spent waiting for a core.

Run from the repository root::

    python benchmarks/bench_train_step.py
    python benchmarks/bench_train_step.py --models lstm --repeats 20 --threads 2
    python benchmarks/bench_train_step.py --strict     # exit 1 if a model misses a target
    python benchmarks/bench_train_step.py --models transformer --clock cpu --repeats 60
    minilm bench train-step -- --help
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import statistics
import time
from typing import Callable

import numpy as np

TARGET_RATIO = 3.0  # NumPy step time / PyTorch twin step time must be at most this
TARGET_PEER_RATIO = 1.0  # twin step time / plain-PyTorch peer step time must be at most this
VOCAB, BATCH, WINDOW = 65, 12, 64
GRAD_CLIP, LR = 1.0, 1e-3


def _parse(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog,  # minilm bench NAME passes its own name
        description="Time one training step (forward, backward, clip, AdamW) of each NumPy "
                    "model against its PyTorch twin on the CPU.")
    p.add_argument("--models", default="transformer,lstm", help="comma list of transformer, lstm")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per case (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for torch and for NumPy's BLAS (default 1)")
    p.add_argument("--batch", type=int, default=BATCH, help=f"batch B (default {BATCH})")
    p.add_argument("--window", type=int, default=WINDOW, help=f"tokens per row T (default {WINDOW})")
    p.add_argument("--seed", type=int, default=0, help="weights and batch seed")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: time.perf_counter; cpu: this thread's CPU time (time.thread_time), "
                        "robust on a machine shared with other jobs; use with --threads 1 (default wall)")
    p.add_argument("--strict", action="store_true",
                   help=f"exit 1 if a model's NumPy step takes more than {TARGET_RATIO:g}x its "
                        "PyTorch twin's (default: report only)")
    ns = p.parse_args(argv)
    models = [m.strip() for m in ns.models.split(",") if m.strip()]
    bad = sorted(set(models) - {"transformer", "lstm"})
    if bad or not models:
        p.error(f"--models must list transformer and/or lstm, got {ns.models!r}")
    ns.models = models
    for name in ("repeats", "threads", "batch", "window"):
        if getattr(ns, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(ns, name)}")
    if ns.warmup < 0:
        p.error(f"--warmup must be >= 0, got {ns.warmup}")
    return ns


def set_blas_threads(n: int) -> bool:
    """Set OpenBLAS's thread count in this process (NumPy's BLAS); False if not found."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)  # already loaded by NumPy: dlopen returns the same library
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                return True
    return False


def _configs(kind: str, window: int):
    from minilm.config import LSTMConfig, TransformerConfig

    if kind == "transformer":
        return TransformerConfig(vocab_size=VOCAB, context_length=window, d_model=128, n_layer=4,
                                 n_head=4)
    return LSTMConfig(vocab_size=VOCAB, d_embed=128, d_hidden=256, n_layer=2)


def _decay_groups(params: dict) -> tuple[list[str], list[str]]:
    """nanoGPT's split: weight decay on matrices (>= 2-D), none on vectors."""
    decay = [k for k, v in params.items() if v.ndim >= 2]
    return decay, [k for k in params if k not in decay]


def numpy_step(kind: str, cfg, seed: int) -> tuple[Callable, Callable, object]:
    """(step(x, y) -> loss, loss_and_norm(x, y) without updating, model)."""
    from minilm.numpy.optim import AdamW, clip_grad_norm

    if kind == "transformer":
        from minilm.numpy.transformer import TransformerLM as Model
    else:
        from minilm.numpy.lstm import LSTMLM as Model
    model = Model(cfg, seed=seed, dtype=np.float32)
    decay, no_decay = _decay_groups(model.params)
    opt = AdamW([{"params": {k: model.params[k] for k in decay}, "weight_decay": 0.1},
                 {"params": {k: model.params[k] for k in no_decay}, "weight_decay": 0.0}], lr=LR)

    def loss_and_grads(x, y):
        out = model.loss_and_grads(x, y)
        return out[0], out[1]

    def step(x, y):
        loss, grads = loss_and_grads(x, y)
        # g <- g * min(1, clip / ||g||)
        clip_grad_norm(grads, GRAD_CLIP)
        opt.step(grads)
        return loss

    def loss_and_norm(x, y):
        loss, grads = loss_and_grads(x, y)
        return loss, float(np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values())))

    return step, loss_and_norm, model


def peer_gpt(cfg, state_dict):
    """The plain-PyTorch GPT of the twin's shape from torch.nn pieces, with the twin's weights."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    C, H = cfg.d_model, cfg.n_head

    class PeerBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv = nn.Linear(C, 3 * C)  # fused q, k, v projection
            self.proj = nn.Linear(C, C)
            self.fc, self.fc_out = nn.Linear(C, cfg.d_ff), nn.Linear(cfg.d_ff, C)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=-1)  # (B, T, C) each
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.fc_out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class PeerGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(cfg.vocab_size, C)
            self.pos = nn.Embedding(cfg.context_length, C)
            self.blocks = nn.ModuleList(PeerBlock() for _ in range(cfg.n_layer))
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx):
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))  # (B, T, C)
            for block in self.blocks:
                x = block(x)
            return F.linear(self.ln_f(x), self.tok.weight)  # tied head: (B, T, V)

    model = PeerGPT()
    sd = {k: torch.as_tensor(v) for k, v in state_dict.items()}
    with torch.no_grad():
        model.tok.weight.copy_(sd["tok_emb.weight"])
        model.pos.weight.copy_(sd["pos_emb.weight"])
        model.ln_f.weight.copy_(sd["ln_f.weight"])
        model.ln_f.bias.copy_(sd["ln_f.bias"])
        for i, b in enumerate(model.blocks):
            pre = f"blocks.{i}."
            for name, mod in (("ln1", b.ln1), ("ln2", b.ln2), ("attn.o_proj", b.proj),
                              ("mlp.fc", b.fc), ("mlp.proj", b.fc_out)):
                mod.weight.copy_(sd[pre + name + ".weight"])
                mod.bias.copy_(sd[pre + name + ".bias"])
            for part in ("weight", "bias"):
                getattr(b.qkv, part).copy_(torch.cat([sd[f"{pre}attn.{n}_proj.{part}"] for n in "qkv"]))
    return model


def torch_step(kind: str, cfg, seed: int, variant: str) -> tuple[Callable, Callable, object]:
    import torch
    import torch.nn.functional as F

    if kind == "transformer" and variant == "peer":
        from minilm.torch.transformer import TransformerLM

        if not cfg.tie_weights or cfg.n_kv_head != cfg.n_head:
            raise ValueError("the peer GPT is built for tied weights and n_kv_head == n_head")
        model = peer_gpt(cfg, TransformerLM(cfg, seed=seed).state_dict())
        forward = model
    elif kind == "transformer":
        from minilm.torch.transformer import TransformerLM

        model = TransformerLM(cfg, seed=seed, attention=variant)
        forward = model
    else:
        from minilm.torch.lstm import LSTMLM

        model = LSTMLM(cfg, seed=seed, fused=(variant == "fused"))

        def forward(x):
            return model(x)[0]
    params = dict(model.named_parameters())
    decay, no_decay = _decay_groups(params)
    opt = torch.optim.AdamW([{"params": [params[k] for k in decay], "weight_decay": 0.1},
                             {"params": [params[k] for k in no_decay], "weight_decay": 0.0}], lr=LR)

    def loss_of(x, y):
        logits = forward(x)  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def step(x, y):
        loss = loss_of(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        return loss.item()

    def loss_and_norm(x, y):
        model.zero_grad(set_to_none=True)
        loss = loss_of(x, y)
        loss.backward()
        norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())))
        model.zero_grad(set_to_none=True)
        return loss.item(), norm

    return step, loss_and_norm, model


def _time_interleaved(steps: dict[str, tuple[Callable, list]], warmup: int, repeats: int,
                      clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Per-step times of every case, the cases taking turns step by step.

    Interleaving makes the ratios robust to a machine whose load drifts during the run (the
    cases see the same conditions); each case keeps its own model and optimiser state.
    """
    for i in range(warmup):
        for step, batches in steps.values():
            step(*batches[i % len(batches)])
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(repeats):
        for name, (step, batches) in steps.items():
            x, y = batches[i % len(batches)]
            t0 = clock()
            step(x, y)
            times[name].append(clock() - t0)
    return times


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ns = _parse(argv, prog)
    import torch

    torch.set_num_threads(ns.threads)
    blas = set_blas_threads(ns.threads)
    print(f"threads: torch {torch.get_num_threads()}, NumPy OpenBLAS "
          f"{ns.threads if blas else 'unchanged (set OPENBLAS_NUM_THREADS)'}; float32, CPU; "
          f"B={ns.batch}, T={ns.window}, V={VOCAB}; median of {ns.repeats} after {ns.warmup} warm-up; "
          f"{ns.clock} clock")
    rng = np.random.default_rng(ns.seed)
    n_batches = 4
    tokens = rng.integers(0, VOCAB, size=(n_batches, ns.batch, ns.window + 1))
    np_batches = [(t[:, :-1], t[:, 1:]) for t in tokens]  # (B, T) each
    t_batches = [(torch.from_numpy(x.copy()), torch.from_numpy(y.copy())) for x, y in np_batches]
    mismatch = False
    verdicts = []  # the final line of each model
    for kind in ns.models:
        cfg = _configs(kind, ns.window)
        variants = ["sdpa", "naive", "peer"] if kind == "transformer" else ["loop", "fused"]
        np_step, np_check, np_model = numpy_step(kind, cfg, ns.seed)
        n_params = np_model.num_params()
        print(f"\n{kind}: {cfg}\n  {n_params / 1e6:.2f} M parameters")
        # --- the two frameworks agree before anything is timed ---
        x, y = np_batches[0]
        ref_loss, ref_norm = np_check(x, y)
        torch_steps = {}
        agree = True
        for variant in variants:
            t_step, t_check, _ = torch_step(kind, cfg, ns.seed, variant)
            loss, norm = t_check(*t_batches[0])
            ok = abs(loss - ref_loss) <= 1e-4 * abs(ref_loss) and abs(norm - ref_norm) <= 1e-3 * ref_norm
            print(f"  check torch[{variant}] vs numpy: loss {loss:.6f} vs {ref_loss:.6f}, "
                  f"grad norm {norm:.6f} vs {ref_norm:.6f}: {'ok' if ok else 'MISMATCH'}")
            agree = agree and ok
            torch_steps[variant] = t_step
        if not agree:
            print("  the twins disagree: not timing")
            mismatch = True
            verdicts.append(f"{kind:<12} FAIL: the NumPy and PyTorch twins disagree (not timed)")
            continue
        # --- timing ---
        tok = ns.batch * ns.window
        cases = {"numpy": (np_step, np_batches)}
        cases.update({f"torch[{v}]": (st, t_batches) for v, st in torch_steps.items()})
        if ns.clock == "cpu" and ns.threads != 1:
            print("  note: --clock cpu counts this thread only: with --threads > 1 it misses the work "
                  "of the other threads")
        raw = _time_interleaved(cases, ns.warmup, ns.repeats,
                                time.thread_time if ns.clock == "cpu" else time.perf_counter)
        times = {name: statistics.median(ts) for name, ts in raw.items()}
        t_np = times.pop("numpy")
        print(f"  numpy          {t_np * 1e3:8.2f} ms/step  {tok / t_np:9.0f} tokens/s")
        for name, t_t in times.items():
            print(f"  {name:<13}  {t_t * 1e3:8.2f} ms/step  {tok / t_t:9.0f} tokens/s   "
                  f"numpy/torch = {t_np / t_t:5.2f}x")
        # the target is against the default variant, the first one
        default = f"torch[{variants[0]}]"
        ratio = t_np / times[default]
        verdicts.append(f"{kind:<12} numpy/{default} = {ratio:5.2f}x  "
                        f"{'PASS' if ratio <= TARGET_RATIO else 'MISS'}")
        if "torch[peer]" in times:
            spread = {name: (min(ts), max(ts)) for name, ts in raw.items()}
            peer = times[default] / times["torch[peer]"]
            print(f"  spread (min..max ms): " + ", ".join(
                f"{name} {lo * 1e3:.2f}..{hi * 1e3:.2f}" for name, (lo, hi) in spread.items()))
            verdicts.append(f"{kind:<12} {default}/torch[peer] = {peer:5.2f}x  "
                            f"{'PASS' if peer <= TARGET_PEER_RATIO else 'MISS'} "
                            f"(target: the twin no slower than a plain-PyTorch GPT)")
    print(f"\nresult (targets: the NumPy step at most {TARGET_RATIO:g}x the PyTorch twin's; the twin's "
          f"at most {TARGET_PEER_RATIO:g}x a plain-PyTorch GPT's):")
    for line in verdicts:
        print(f"  {line}")
    missed = any(" MISS" in line for line in verdicts)
    return 1 if mismatch or (ns.strict and missed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
