"""Checks of assignment 'flash-attention' (chapter 6): the NumPy flash-attention forward (tiles
and the online softmax) against torch's attention and torch.logsumexp in float64."""

from __future__ import annotations

import math

import numpy as np

from minilm.classroom.checks import check, close, rng


def _ref(q, k, v, is_causal=False, scale=None):
    """(out, lse) in float64 with torch: plain attention, natural-log logsumexp of the scores."""
    import torch

    qt, kt, vt = (torch.tensor(np.asarray(x, dtype=np.float64)) for x in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = qt @ kt.transpose(-1, -2) * scale
    if is_causal:
        L, S = q.shape[-2], k.shape[-2]
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), -math.inf)
    lse = torch.logsumexp(s, -1)
    return (torch.softmax(s, -1) @ vt).numpy(), lse.numpy()


def _call(s, q, k, v, **kw):
    res = s.flash_attention.flash_attention(q, k, v, **kw)
    if not (isinstance(res, (tuple, list)) and len(res) == 2):
        raise AssertionError(f"flash_attention must return (out, lse), got {type(res).__name__}")
    return res


def _qkv(seed, lead=(2, 3), L=10, S=10, D=4, Dv=None, scale=1.0):
    r = rng(seed)
    Dv = D if Dv is None else Dv
    return (r.standard_normal(lead + (L, D)) * scale, r.standard_normal(lead + (S, D)) * scale,
            r.standard_normal(lead + (S, Dv)))


def forward(s):
    q, k, v = _qkv(0, L=12, S=20)
    out, lse = _call(s, q, k, v, block_q=4, block_k=8)
    ro, rl = _ref(q, k, v)
    return close(out, ro, "out (L=12, S=20, blocks 4 x 8)") + "; " + close(lse, rl, "lse")


def forward_lse(s):
    q, k, v = _qkv(1, L=7, S=9, D=5)
    out, lse = _call(s, q, k, v, block_q=3, block_k=4, scale=0.4)
    ro, rl = _ref(q, k, v, scale=0.4)
    close(out, ro, "out (scale=0.4)")
    return close(lse, rl, "lse = m_i + log(l_i), the natural-log logsumexp of the scaled scores")


def causal(s):
    q, k, v = _qkv(2, L=16, S=16)
    out, lse = _call(s, q, k, v, is_causal=True, block_q=4, block_k=4)
    ro, rl = _ref(q, k, v, is_causal=True)
    return close(out, ro, "causal out (L=S=16, blocks 4 x 4)") + "; " + close(lse, rl, "causal lse")


def causal_rectangular(s):
    q, k, v = _qkv(3, L=6, S=11)
    out, lse = _call(s, q, k, v, is_causal=True, block_q=4, block_k=3)
    ro, rl = _ref(q, k, v, is_causal=True)
    close(out, ro, "causal out with L=6 < S=11 (blocks 4 x 3)")
    return close(lse, rl, "causal lse with L=6 < S=11")


def odd_shapes(s):
    q, k, v = _qkv(4, lead=(1,), L=13, S=7, D=3, Dv=5)
    for bq, bk in ((1, 1), (5, 3), (64, 64)):
        out, lse = _call(s, q, k, v, block_q=bq, block_k=bk)
        ro, rl = _ref(q, k, v)
        close(out, ro, f"out (L=13, S=7, Dv=5, blocks {bq} x {bk})")
        close(lse, rl, f"lse (blocks {bq} x {bk})")
    q1, k1, v1 = _qkv(5, lead=(2, 1), L=1, S=1, D=2)
    out, lse = _call(s, q1, k1, v1, is_causal=True)
    return close(out, _ref(q1, k1, v1, is_causal=True)[0], "L=S=1 causal")


def stability(s):
    q, k, v = _qkv(6, L=9, S=14, D=8, scale=25.0)
    with np.errstate(all="ignore"):
        out, lse = _call(s, q, k, v, block_q=4, block_k=4)
    check(np.isfinite(np.asarray(out, dtype=np.float64)).all(), "out must be finite for scores of size ~1e3 (subtract the running max)")
    ro, rl = _ref(q, k, v)
    return close(out, ro, "out with scores of size ~1e3") + "; " + close(lse, rl, "lse with scores of size ~1e3")
