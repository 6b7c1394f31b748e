"""Checks of assignment 'adamw' (chapter 11): AdamW step for step against torch.optim.AdamW in
float64, and the warm-up + cosine learning-rate schedule against nanoGPT's get_lr written out
here in plain Python."""

from __future__ import annotations

import math

import numpy as np

from minilm.classroom.checks import check, close, rng


def _run(s, steps=5, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, wd=0.01, groups=None, dtype=np.float64, seed=0):
    """Run the student's AdamW and torch's on the same params and gradients; return both."""
    import torch

    r = rng(seed)
    shapes = {"w": (3, 4), "b": (4,), "e": (2, 2, 3)}
    init = {k: r.standard_normal(v) for k, v in shapes.items()}
    grads = [{k: r.standard_normal(v) * (1 + 10 * t) for k, v in shapes.items()} for t in range(steps)]
    params = {k: v.astype(dtype).copy() for k, v in init.items()}
    tparams = {k: torch.tensor(v.astype(dtype), requires_grad=True) for k, v in init.items()}
    if groups is None:
        opt = s.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
        topt = torch.optim.AdamW(list(tparams.values()), lr=lr, betas=betas, eps=eps, weight_decay=wd)
    else:
        opt = s.optim.AdamW([{"params": {k: params[k] for k in names}, **kw} for names, kw in groups],
                            lr=lr, betas=betas, eps=eps, weight_decay=wd)
        topt = torch.optim.AdamW([{"params": [tparams[k] for k in names], **kw} for names, kw in groups],
                                 lr=lr, betas=betas, eps=eps, weight_decay=wd)
    ids = {k: id(v) for k, v in params.items()}
    for g in grads:
        opt.step({k: v.astype(dtype) for k, v in g.items()})
        for k, t in tparams.items():
            t.grad = torch.tensor(g[k].astype(dtype))
        topt.step()
    for k, v in params.items():
        check(id(v) == ids[k], f"AdamW must update the parameter arrays in place ({k!r} was replaced)")
    return params, {k: t.detach().numpy() for k, t in tparams.items()}


def adamw_steps(s):
    got, ref = _run(s)
    return "; ".join(close(got[k], ref[k], f"{k} after 5 steps vs torch.optim.AdamW", 1e-12, 1e-9) for k in got)


def adamw_first_step(s):
    got, ref = _run(s, steps=1, lr=0.1, wd=0.0, seed=1)
    return "; ".join(close(got[k], ref[k], f"{k} after the first step (bias corrections: a step of ~lr)", 1e-12, 1e-9) for k in got)


def adamw_weight_decay(s):
    got, ref = _run(s, steps=4, lr=0.05, wd=0.5, seed=2)
    for k in got:
        close(got[k], ref[k], f"{k} with weight_decay=0.5 (decoupled: p *= 1 - lr * wd)", 1e-12, 1e-9)
    got, ref = _run(s, steps=3, lr=0.05, wd=0.0, betas=(0.5, 0.9), eps=1e-3, seed=3)
    return "; ".join(close(got[k], ref[k], f"{k} with betas (0.5, 0.9), eps 1e-3, no decay", 1e-12, 1e-9) for k in got)


def adamw_groups(s):
    got, ref = _run(s, steps=3, groups=[(["w"], {"lr": 0.2}), (["b", "e"], {"weight_decay": 0.0})], seed=4)
    return "; ".join(close(got[k], ref[k], f"{k} in param groups with their own lr / weight_decay", 1e-12, 1e-9) for k in got)


def adamw_float32(s):
    got, ref = _run(s, steps=3, dtype=np.float32, seed=5)
    for k, v in got.items():
        check(v.dtype == np.float32, f"a float32 parameter must stay float32, {k!r} became {v.dtype}")
    return "; ".join(close(got[k], ref[k], f"{k} in float32", 1e-6, 1e-5) for k in got)


def get_lr(step, max_lr, min_lr, warmup, total):
    """nanoGPT's schedule, written independently: linear warm-up, cosine decay, floor."""
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    if step > total or total <= warmup:
        return min_lr
    r = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * r)) * (max_lr - min_lr)


def _schedule(s, steps, max_lr, min_lr, warmup, total, what):
    for t in steps:
        got = s.optim.cosine_schedule(t, max_lr, min_lr, warmup, total)
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise AssertionError(f"cosine_schedule must return a float, got {type(got).__name__}") from None
        want = get_lr(t, max_lr, min_lr, warmup, total)
        check(math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-15),
              f"cosine_schedule({t}, max_lr={max_lr}, min_lr={min_lr}, warmup_steps={warmup}, total_steps={total}) "
              f"= {got!r}, expected {want!r} ({what})")


def schedule_warmup(s):
    _schedule(s, range(0, 11), 1e-3, 1e-4, 10, 100, "linear warm-up: max_lr * (step + 1) / (warmup_steps + 1)")


def schedule_decay(s):
    _schedule(s, range(10, 101, 3), 1e-3, 1e-4, 10, 100, "cosine decay from max_lr to min_lr")
    _schedule(s, [100], 1.0, 0.1, 4, 100, "min_lr at total_steps")


def schedule_edges(s):
    _schedule(s, [101, 150, 10_000], 1.0, 0.1, 4, 100, "after total_steps: min_lr")
    _schedule(s, range(0, 12), 1.0, 0.0, 6, 6, "total_steps <= warmup_steps: no decay phase")
    _schedule(s, range(0, 12), 2.0, 2.0, 0, 10, "no warm-up, min_lr == max_lr")
