"""Checks of assignments 'layernorm-mlp' (chapter 8) and 'transformer-block' (chapter 9): the
hand-written backward passes of minilm.numpy.layers against torch autograd in float64 (the
block rebuilt from the same weights with torch.nn.functional) and finite differences."""

from __future__ import annotations

import math

import numpy as np

from minilm.classroom.checks import check, close, grads_of, rng, torch64
from minilm.testing import numerical_grad


def _pair(res, n, name):
    if not (isinstance(res, (tuple, list)) and len(res) == n):
        raise AssertionError(f"{name} must return a tuple of {n}, got {type(res).__name__}"
                             + (f" of length {len(res)}" if isinstance(res, (tuple, list)) else ""))
    return res


# ---- LayerNorm ---------------------------------------------------------------------------------

def _ln_case(seed, shape=(2, 3, 6)):
    r = rng(seed)
    C = shape[-1]
    return r.standard_normal(shape) * 2 + 1, 1 + 0.3 * r.standard_normal(C), 0.3 * r.standard_normal(C), r.standard_normal(shape)


def _ln_ref(x, w, b, dy):
    import torch
    import torch.nn.functional as F

    xt, wt, bt = torch64(x, w, b, grad=True)
    y = F.layer_norm(xt, (x.shape[-1],), wt, bt, eps=1e-5)
    return grads_of((y * torch.tensor(dy)).sum(), xt, wt, bt)


def _ln_student(s, x, w, b, dy):
    y, cache = _pair(s.layers.layer_norm_forward(x, w, b), 2, "layer_norm_forward")
    return _pair(s.layers.layer_norm_backward(dy, cache), 3, "layer_norm_backward")


def layer_norm_dx(s):
    x, w, b, dy = _ln_case(0)
    dx, _, _ = _ln_student(s, x, w, b, dy)
    return close(dx, _ln_ref(x, w, b, dy)[0], "LayerNorm dx vs torch autograd")


def layer_norm_dw_db(s):
    x, w, b, dy = _ln_case(1)
    _, dw, db = _ln_student(s, x, w, b, dy)
    ref = _ln_ref(x, w, b, dy)
    return close(dw, ref[1], "LayerNorm dw (summed over every position)") + "; " + close(db, ref[2], "LayerNorm db")


def layer_norm_odd_shapes(s):
    for shape in ((5, 1), (1, 7), (3,), (2, 1, 1, 9)):
        x, w, b, dy = _ln_case(2, shape)
        got = _ln_student(s, x, w, b, dy)
        for g, r, n in zip(got, _ln_ref(x, w, b, dy), ("dx", "dw", "db")):
            close(g, r, f"LayerNorm {n} for x of shape {shape}")


def layer_norm_finite_differences(s):
    x, w, b, dy = _ln_case(3, (2, 5))
    dx, dw, _ = _ln_student(s, x, w, b, dy)
    f = lambda x_, w_: float((s.layers.layer_norm_forward(x_, w_, b)[0] * dy).sum())  # noqa: E731
    close(dx, numerical_grad(lambda z: f(z, w), x.copy()), "LayerNorm dx vs finite differences", 1e-7, 1e-5)
    return close(dw, numerical_grad(lambda z: f(x, z), w.copy()), "LayerNorm dw vs finite differences", 1e-7, 1e-5)


# ---- Linear, GELU, MLP -----------------------------------------------------------------------

def linear_backward(s):
    import torch

    r = rng(4)
    x, W, b = r.standard_normal((2, 3, 5)), r.standard_normal((4, 5)), r.standard_normal(4)
    y, cache = _pair(s.layers.linear_forward(x, W, b), 2, "linear_forward")
    dy = r.standard_normal(np.shape(y))
    xt, Wt, bt = torch64(x, W, b, grad=True)
    ref = grads_of(((xt @ Wt.T + bt) * torch.tensor(dy)).sum(), xt, Wt, bt)
    got = _pair(s.layers.linear_backward(dy, cache), 3, "linear_backward")
    return "; ".join(close(g, rr, f"linear {n}") for g, rr, n in zip(got, ref, ("dx", "dW (out, in)", "db")))


def linear_no_bias(s):
    import torch

    r = rng(5)
    x, W = r.standard_normal((7, 3)), r.standard_normal((1, 3))
    y, cache = s.layers.linear_forward(x, W, None)
    dy = r.standard_normal((7, 1))
    xt, Wt = torch64(x, W, grad=True)
    ref = grads_of(((xt @ Wt.T) * torch.tensor(dy)).sum(), xt, Wt)
    got = _pair(s.layers.linear_backward(dy, cache), 3, "linear_backward")
    check(got[2] is None, f"linear_backward without a bias must return db = None, got {type(got[2]).__name__}")
    return close(got[0], ref[0], "linear dx (2-D x, no bias)") + "; " + close(got[1], ref[1], "linear dW (no bias)")


def _gelu_ref(x, dy):
    import torch
    import torch.nn.functional as F

    xt = torch64(x, grad=True)
    return grads_of((F.gelu(xt, approximate="tanh") * torch.tensor(dy)).sum(), xt)[0]


def gelu_backward(s):
    r = rng(6)
    x, dy = r.standard_normal((3, 8)) * 2, r.standard_normal((3, 8))
    _, cache = _pair(s.layers.gelu_forward(x.copy()), 2, "gelu_forward")
    return close(s.layers.gelu_backward(dy, cache), _gelu_ref(x, dy), "GELU (tanh) backward vs torch autograd")


def gelu_stability(s):
    x = np.array([-1e4, -50.0, -8.0, 0.0, 8.0, 50.0, 1e4])
    dy = np.ones_like(x)
    with np.errstate(all="ignore"):
        _, cache = s.layers.gelu_forward(x.copy())
        dx = s.layers.gelu_backward(dy, cache)
    return close(dx, _gelu_ref(x, dy), "GELU backward at |x| up to 1e4 (finite: 0 or 1)")


def _mlp_params(seed, C=4, F=6):
    r = rng(seed)
    return {"fc.weight": r.standard_normal((F, C)) * 0.5, "fc.bias": r.standard_normal(F) * 0.1,
            "proj.weight": r.standard_normal((C, F)) * 0.5, "proj.bias": r.standard_normal(C) * 0.1}


def _mlp_ref(x, p, dy):
    import torch
    import torch.nn.functional as F

    names = list(p)
    xt = torch64(x, grad=True)
    pt = {k: torch64(v, grad=True) for k, v in p.items()}
    h = F.gelu(xt @ pt["fc.weight"].T + pt["fc.bias"], approximate="tanh")
    y = h @ pt["proj.weight"].T + pt["proj.bias"]
    gs = grads_of((y * torch.tensor(dy)).sum(), xt, *[pt[k] for k in names])
    return gs[0], dict(zip(names, gs[1:]))


def _mlp_student(s, x, p, dy):
    y, cache = _pair(s.layers.mlp_forward(x, p), 2, "mlp_forward")
    dx, g = _pair(s.layers.mlp_backward(dy, cache), 2, "mlp_backward")
    check(isinstance(g, dict), f"mlp_backward must return (dx, grads dict), got grads of type {type(g).__name__}")
    return dx, g


def mlp_backward(s):
    p = _mlp_params(7)
    r = rng(8)
    x, dy = r.standard_normal((2, 3, 4)), r.standard_normal((2, 3, 4))
    dx, g = _mlp_student(s, x, p, dy)
    rdx, rg = _mlp_ref(x, p, dy)
    notes = [close(dx, rdx, "MLP dx")]
    for k in p:
        check(k in g, f"mlp_backward's grads have no {k!r} (keys: {sorted(g)})")
        notes.append(close(g[k], rg[k], f"MLP grad {k}"))
    return "; ".join(notes[:2])


def mlp_finite_differences(s):
    p = _mlp_params(9, C=3, F=5)
    r = rng(10)
    x, dy = r.standard_normal((1, 2, 3)), r.standard_normal((1, 2, 3))
    dx, g = _mlp_student(s, x, p, dy)
    f = lambda x_: float((s.layers.mlp_forward(x_, p)[0] * dy).sum())  # noqa: E731
    return close(dx, numerical_grad(f, x.copy()), "MLP dx vs finite differences", 1e-7, 1e-5)


# ---- attention and the block -------------------------------------------------------------------

def _block_params(seed, C=8, H=2, Hkv=2, F=12):
    r = rng(seed)
    D = C // H
    p = {"ln1.weight": 1 + 0.1 * r.standard_normal(C), "ln1.bias": 0.1 * r.standard_normal(C),
         "ln2.weight": 1 + 0.1 * r.standard_normal(C), "ln2.bias": 0.1 * r.standard_normal(C)}
    for name, (o, i) in {"q_proj": (C, C), "k_proj": (Hkv * D, C), "v_proj": (Hkv * D, C), "o_proj": (C, C)}.items():
        p[f"attn.{name}.weight"] = r.standard_normal((o, i)) / math.sqrt(i)
        p[f"attn.{name}.bias"] = 0.1 * r.standard_normal(o)
    p.update({"mlp." + k: v for k, v in _mlp_params(seed + 1, C, F).items()})
    return p


def _attn_torch(x, p, H, Hkv, pre):
    import torch.nn.functional as F

    B, T, C = x.shape
    D = C // H

    def lin(z, n):
        return z @ p[f"{pre}{n}.weight"].T + p[f"{pre}{n}.bias"]

    q = lin(x, "q_proj").reshape(B, T, H, D).transpose(1, 2)
    k = lin(x, "k_proj").reshape(B, T, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, 1)
    v = lin(x, "v_proj").reshape(B, T, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, 1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
    return lin(o, "o_proj")


def _block_torch(x, p, H, Hkv):
    import torch.nn.functional as F

    C = x.shape[-1]
    h = F.layer_norm(x, (C,), p["ln1.weight"], p["ln1.bias"], eps=1e-5)
    x = x + _attn_torch(h, p, H, Hkv, "attn.")
    h = F.layer_norm(x, (C,), p["ln2.weight"], p["ln2.bias"], eps=1e-5)
    m = F.gelu(h @ p["mlp.fc.weight"].T + p["mlp.fc.bias"], approximate="tanh")
    return x + m @ p["mlp.proj.weight"].T + p["mlp.proj.bias"]


def _ref_grads(fn, x, p, dy):
    import torch

    names = list(p)
    xt = torch64(x, grad=True)
    pt = {k: torch64(v, grad=True) for k, v in p.items()}
    y = fn(xt, pt)
    gs = grads_of((y * torch.tensor(dy)).sum(), xt, *[pt[k] for k in names])
    return gs[0], dict(zip(names, gs[1:]))


def _compare(dx, g, rdx, rg, what, keys=None):
    check(isinstance(g, dict), f"{what}: the grads must be a dict keyed like the params, got {type(g).__name__}")
    notes = [close(dx, rdx, f"{what} dx")]
    for k in keys or rg:
        check(k in g, f"{what}: no gradient for {k!r} (keys: {sorted(g)})")
        notes.append(close(g[k], rg[k], f"{what} grad {k}"))
    return notes[0]


def _attn_case(s, seed, B=2, T=5, C=8, H=2, Hkv=2):
    p = {k[5:]: v for k, v in _block_params(seed, C, H, Hkv).items() if k.startswith("attn.")}
    r = rng(seed + 50)
    x, dy = r.standard_normal((B, T, C)), r.standard_normal((B, T, C))
    y, cache = _pair(s.layers.attention_forward(x, p, H, Hkv), 2, "attention_forward")
    dx, g = _pair(s.layers.attention_backward(dy, cache), 2, "attention_backward")
    rdx, rg = _ref_grads(lambda xt, pt: _attn_torch(xt, pt, H, Hkv, ""), x, p, dy)
    return _compare(dx, g, rdx, rg, f"attention (H={H}, Hkv={Hkv}, T={T})")


def attention_backward(s):
    return _attn_case(s, 11)


def attention_backward_gqa(s):
    return _attn_case(s, 12, C=12, H=4, Hkv=2) + "; " + _attn_case(s, 13, C=8, H=4, Hkv=1)


def _block_case(s, seed, B=2, T=5, C=8, H=2, Hkv=2, params=False):
    p = _block_params(seed, C, H, Hkv)
    r = rng(seed + 70)
    x, dy = r.standard_normal((B, T, C)), r.standard_normal((B, T, C))
    y, cache = _pair(s.layers.block_forward(x, p, H, Hkv), 2, "block_forward")
    dx, g = _pair(s.layers.block_backward(dy, cache), 2, "block_backward")
    rdx, rg = _ref_grads(lambda xt, pt: _block_torch(xt, pt, H, Hkv), x, p, dy)
    if not params:
        return close(dx, rdx, f"block dx (H={H}, Hkv={Hkv}, T={T})")
    return _compare(dx, g, rdx, rg, f"block (H={H}, Hkv={Hkv}, T={T})")


def block_dx(s):
    return _block_case(s, 20)


def block_param_grads(s):
    return _block_case(s, 21, params=True)


def block_gqa(s):
    return _block_case(s, 22, C=12, H=4, Hkv=2, params=True)


def block_odd_shapes(s):
    _block_case(s, 23, B=1, T=1, params=True)
    return _block_case(s, 24, B=3, T=7, C=6, H=3, Hkv=1, params=True)


def block_finite_differences(s):
    p = _block_params(25, C=4, H=2, Hkv=1, F=4)
    r = rng(26)
    x, dy = r.standard_normal((1, 3, 4)), r.standard_normal((1, 3, 4))
    _, cache = s.layers.block_forward(x, p, 2, 1)
    dx, _ = _pair(s.layers.block_backward(dy, cache), 2, "block_backward")
    f = lambda x_: float((s.layers.block_forward(x_, p, 2, 1)[0] * dy).sum())  # noqa: E731
    return close(dx, numerical_grad(f, x.copy()), "block dx vs finite differences", 1e-7, 1e-5)
