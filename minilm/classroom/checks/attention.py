"""Checks of assignments 'attention' (chapter 4, forward with masks) and 'attention-backward'
(chapter 5), against torch.nn.functional.scaled_dot_product_attention and torch autograd in
float64 (and finite differences for the backward)."""

from __future__ import annotations

import math

import numpy as np

from minilm.classroom.checks import check, close, grads_of, rng, torch64
from minilm.testing import numerical_grad


def _qkv(seed, B=2, H=3, L=5, S=5, D=4, Dv=None, scale=1.0):
    r = rng(seed)
    Dv = D if Dv is None else Dv
    return (r.standard_normal((B, H, L, D)) * scale, r.standard_normal((B, H, S, D)) * scale,
            r.standard_normal((B, H, S, Dv)))


def _sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None, grad=False):
    """torch's attention in float64; with a bool mask, torch NaNs fully masked rows: zero them."""
    import torch
    import torch.nn.functional as F

    qt, kt, vt = torch64(q, k, v, grad=grad)
    mask = None
    if attn_mask is not None:
        mask = torch.tensor(attn_mask) if attn_mask.dtype == np.bool_ else torch64(attn_mask)
    if is_causal:
        L, S = q.shape[-2], k.shape[-2]
        causal = torch.ones(L, S, dtype=torch.bool).tril()
        mask = causal if mask is None else (mask & causal if mask.dtype == torch.bool else
                                            mask.masked_fill(~causal, -math.inf))
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
    out = torch.nan_to_num(out, nan=0.0)
    return out, (qt, kt, vt)


def _fwd(s):
    return s.attention.scaled_dot_product_attention


# ---- forward ---------------------------------------------------------------------------------

def forward_plain(s):
    q, k, v = _qkv(0, L=6, S=7)
    ref, _ = _sdpa(q, k, v)
    return close(_fwd(s)(q, k, v), ref, "attention (B=2, H=3, L=6, S=7, D=4), scale 1/sqrt(D)")


def forward_scale(s):
    q, k, v = _qkv(1, L=4, S=4, D=9)
    close(_fwd(s)(q, k, v), _sdpa(q, k, v)[0], "attention with D=9: the default scale is 1/sqrt(9) = 1/3")
    return close(_fwd(s)(q, k, v, scale=0.7), _sdpa(q, k, v, scale=0.7)[0], "attention with scale=0.7")


def forward_stability(s):
    q, k, v = _qkv(2, L=5, S=6, D=8, scale=30.0)
    with np.errstate(all="ignore"):
        out = _fwd(s)(q, k, v, is_causal=True)
    return close(out, _sdpa(q, k, v, is_causal=True)[0], "attention with scores of size ~1e3 (use the max trick)")


def forward_odd_shapes(s):
    r = rng(3)
    q, k, v = r.standard_normal((1, 1, 1, 3)), r.standard_normal((1, 1, 13, 3)), r.standard_normal((1, 1, 13, 2))
    close(_fwd(s)(q, k, v), _sdpa(q, k, v)[0], "attention with L=1, S=13, Dv=2")
    q = r.standard_normal((2, 4, 5, 6)).astype(np.float32)
    k = r.standard_normal((2, 1, 7, 6)).astype(np.float32)
    v = r.standard_normal((2, 1, 7, 6)).astype(np.float32)
    out = _fwd(s)(q, k, v)
    check(getattr(out, "dtype", None) == np.float32, f"float32 inputs must give a float32 output, got {getattr(out, 'dtype', type(out))}")
    return close(out, _sdpa(q, np.broadcast_to(k, (2, 4, 7, 6)), np.broadcast_to(v, (2, 4, 7, 6)))[0],
                 "attention with k, v broadcast over heads (float32)", 1e-5, 1e-4)


def masks_causal(s):
    q, k, v = _qkv(4, L=6, S=6)
    return close(_fwd(s)(q, k, v, is_causal=True), _sdpa(q, k, v, is_causal=True)[0], "causal attention (L=S=6)")


def masks_causal_rectangular(s):
    q, k, v = _qkv(5, L=3, S=7)
    close(_fwd(s)(q, k, v, is_causal=True), _sdpa(q, k, v, is_causal=True)[0],
          "causal attention with L=3 < S=7 (top-left aligned: query i sees keys j <= i)")
    q, k, v = _qkv(6, L=7, S=3)
    return close(_fwd(s)(q, k, v, is_causal=True), _sdpa(q, k, v, is_causal=True)[0], "causal attention with L=7 > S=3")


def masks_bool(s):
    q, k, v = _qkv(7, L=4, S=6)
    m = rng(8).random((2, 1, 4, 6)) < 0.6
    m[..., 0] = True
    return close(_fwd(s)(q, k, v, attn_mask=m), _sdpa(q, k, v, attn_mask=m)[0], "attention with a bool mask (True = may attend)")


def masks_float(s):
    q, k, v = _qkv(9, L=4, S=5)
    m = rng(10).standard_normal((4, 5))
    m[1, 2] = -np.inf
    close(_fwd(s)(q, k, v, attn_mask=m), _sdpa(q, k, v, attn_mask=m)[0], "attention with an additive float mask")
    b = rng(11).random((4, 5)) < 0.7
    b[:, 0] = True
    return close(_fwd(s)(q, k, v, attn_mask=b, is_causal=True), _sdpa(q, k, v, attn_mask=b, is_causal=True)[0],
                 "attention with a bool mask AND is_causal (a key must pass both)")


def masks_fully_masked_row(s):
    q, k, v = _qkv(12, L=3, S=4)
    m = np.ones((3, 4), dtype=bool)
    m[1] = False
    with np.errstate(all="ignore"):
        out = _fwd(s)(q, k, v, attn_mask=m)
    check(not np.isnan(np.asarray(out, dtype=np.float64)).any(), "a query row that may attend to nothing must give zeros, not NaN")
    return close(out, _sdpa(q, k, v, attn_mask=m)[0], "attention with a fully masked row (zeros there)")


# ---- backward --------------------------------------------------------------------------------

def _bwd_check(s, q, k, v, what, **kw):
    out, (qt, kt, vt) = _sdpa(q, k, v, grad=True, **kw)
    dout = rng(99).standard_normal(out.shape)
    import torch

    ref = grads_of((out * torch.tensor(dout)).sum(), qt, kt, vt)
    res = s.attention.scaled_dot_product_attention_backward(dout, q, k, v, **kw)
    if not (isinstance(res, (tuple, list)) and len(res) == 3):
        raise AssertionError(f"scaled_dot_product_attention_backward must return (dq, dk, dv), got {type(res).__name__}"
                             + (f" of length {len(res)}" if isinstance(res, (tuple, list)) else ""))
    notes = [close(g, r, f"{n} ({what})") for g, r, n in zip(res, ref, ("dq", "dk", "dv"))]
    return "; ".join(notes)


def backward_plain(s):
    q, k, v = _qkv(20, L=4, S=6, D=5, Dv=3)
    return _bwd_check(s, q, k, v, "L=4, S=6, D=5, Dv=3, no mask")


def backward_causal(s):
    q, k, v = _qkv(21, L=5, S=5)
    return _bwd_check(s, q, k, v, "causal", is_causal=True)


def backward_masks(s):
    q, k, v = _qkv(22, L=4, S=5)
    m = rng(23).random((4, 5)) < 0.6
    m[2] = False  # a row that may attend to nothing: zero gradient
    m[0, 0] = True
    with np.errstate(all="ignore"):
        note = _bwd_check(s, q, k, v, "bool mask with a fully masked row", attn_mask=m)
    f = rng(24).standard_normal((4, 5))
    _bwd_check(s, q, k, v, "additive float mask", attn_mask=f)
    return note


def backward_scale(s):
    q, k, v = _qkv(25, L=3, S=4, D=6)
    return _bwd_check(s, q, k, v, "scale=0.3", scale=0.3)


def backward_odd_shapes(s):
    r = rng(26)
    q = r.standard_normal((2, 3, 1, 4))
    k, v = r.standard_normal((2, 1, 7, 4)), r.standard_normal((2, 1, 7, 4))
    out, (qt, kt, vt) = _sdpa(q, np.broadcast_to(k, (2, 3, 7, 4)).copy(), np.broadcast_to(v, (2, 3, 7, 4)).copy(), grad=True)
    import torch

    dout = r.standard_normal(out.shape)
    dq, dk, dv = grads_of((out * torch.tensor(dout)).sum(), qt, kt, vt)
    res = s.attention.scaled_dot_product_attention_backward(dout, q, k, v)
    check(isinstance(res, (tuple, list)) and len(res) == 3, "must return (dq, dk, dv)")
    close(res[0], dq, "dq (L=1, k and v broadcast over 3 heads)")
    close(res[1], dk.sum(1, keepdims=True), "dk of a k broadcast over heads: summed back to (2, 1, 7, 4)")
    return close(res[2], dv.sum(1, keepdims=True), "dv of a v broadcast over heads: summed back to (2, 1, 7, 4)")


def backward_finite_differences(s):
    q, k, v = _qkv(27, B=1, H=1, L=3, S=4, D=2)
    dout = rng(28).standard_normal((1, 1, 3, 2))
    fwd = lambda q_, k_, v_: float((_sdpa(q_, k_, v_, is_causal=True)[0].numpy() * dout).sum())  # noqa: E731
    res = s.attention.scaled_dot_product_attention_backward(dout, q, k, v, is_causal=True)
    check(isinstance(res, (tuple, list)) and len(res) == 3, "must return (dq, dk, dv)")
    close(res[0], numerical_grad(lambda x: fwd(x, k, v), q.copy()), "dq vs finite differences", 1e-7, 1e-5)
    close(res[1], numerical_grad(lambda x: fwd(q, x, v), k.copy()), "dk vs finite differences", 1e-7, 1e-5)
    return close(res[2], numerical_grad(lambda x: fwd(q, k, x), v.copy()), "dv vs finite differences", 1e-7, 1e-5)
