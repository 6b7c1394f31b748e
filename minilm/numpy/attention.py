"""Scaled dot-product attention in NumPy: forward, hand-written backward, head split/merge.

For queries q (..., L, D), keys k (..., S, D) and values v (..., S, Dv):

    s   = scale * q k^T + bias          (..., L, S)   scores; scale = 1/sqrt(D) by default
    p   = softmax(s) along S            (..., L, S)   attention weights, each row sums to 1
    out = p v                           (..., L, Dv)

``bias`` is 0 where query i may attend to key j and -inf where it may not, plus the values of
an additive float mask. Masks (as ``torch.nn.functional.scaled_dot_product_attention``):

- ``attn_mask`` bool: True = may attend; float: added to the scores (use -inf to forbid);
  either broadcastable to (..., L, S).
- ``is_causal``: query i sees keys j <= i (top-left aligned, also when L != S). Combined with
  ``attn_mask`` a key must be allowed by both.
- A query row that may attend to nothing (every score -inf) returns zeros, never NaN, and
  gets zero gradient. The softmax subtracts the row max m (the max trick); in such a row m is
  -inf, so we use m = 0 there (exp(-inf - 0) = 0 instead of exp(-inf + inf) = nan) and divide
  by 1 instead of the zero row sum.

Backward (dout = dLoss/dout, same shape as out):

    dv = p^T dout                       (..., S, Dv)
    dp = dout v^T                       (..., L, S)
    ds = p * (dp - rowsum(dp * p))      (..., L, S)   softmax backward, row by row
    dq = scale * ds k                   (..., L, D)
    dk = scale * ds^T q                 (..., S, D)

The backward recomputes p from q and k (nothing is cached between the two calls), so it takes
the same arguments as the forward plus dout.

Leading (batch, head) dims broadcast between q, k and v as in ``numpy.matmul``; the gradients
are summed back to each input's own shape. Everything runs in the inputs' float dtype
(float32 or float64), vectorised over all leading dims with ``@``.

Deliberately left out: dropout on the attention weights, grouped-query attention (repeat the
key/value heads first, or let a size-1 head dim broadcast), and the O(L + S) memory tiling of
flash attention (see ``minilm.numpy.flash_attention``): this reference materialises the full
(..., L, S) matrix.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "scaled_dot_product_attention",
    "scaled_dot_product_attention_backward",
    "split_heads",
    "merge_heads",
]


def _check_inputs(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    attn_mask: np.ndarray | None,
    scale: float | None,
    name: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, float, tuple[int, ...]]:
    """Validate the arguments; return q, k, v, the bool and float parts of the mask, the
    scale and the broadcast leading shape (...)."""
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    shapes = f"q {q.shape}, k {k.shape}, v {v.shape}"
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"{name}: q, k, v need at least 2 dims (..., L, D), (..., S, D), (..., S, Dv); "
                         f"got {shapes}")
    for x, xn in ((q, "q"), (k, "k"), (v, "v")):
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{name}: {xn} must be a float array, got dtype {x.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"{name}: q, k, v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{name}: q and k must have the same head dim D, got {shapes}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{name}: k and v must have the same length S, got {shapes}")
    if q.shape[-1] == 0 or k.shape[-2] == 0:
        raise ValueError(f"{name}: need a head dim D >= 1 and at least one key S >= 1, got {shapes}")
    try:
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(f"{name}: the leading dims of q, k, v do not broadcast: {shapes}") from None
    L, S = q.shape[-2], k.shape[-2]
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scale = float(scale)
    # any finite scale, zero and negative included, as torch's scaled_dot_product_attention
    if not math.isfinite(scale):
        raise ValueError(f"{name}: scale must be a finite number, got {scale}")
    bool_mask = float_mask = None
    if attn_mask is not None:
        attn_mask = np.asarray(attn_mask)
        full = batch + (L, S)
        try:
            ok = np.broadcast_shapes(attn_mask.shape, full) == full
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{name}: attn_mask shape {attn_mask.shape} does not broadcast to "
                             f"(..., L, S) = {full} ({shapes})")
        if attn_mask.dtype == np.bool_:
            bool_mask = attn_mask
        elif np.issubdtype(attn_mask.dtype, np.floating):
            float_mask = attn_mask.astype(q.dtype, copy=False)
        else:
            raise ValueError(f"{name}: attn_mask must be bool (True = may attend) or float (additive), "
                             f"got dtype {attn_mask.dtype}")
    return q, k, v, bool_mask, float_mask, scale, batch


def _bias(L: int, S: int, bool_mask: np.ndarray | None, float_mask: np.ndarray | None,
          is_causal: bool, dtype: np.dtype) -> np.ndarray | None:
    """The additive bias (broadcastable to (..., L, S)): float mask, -inf where not allowed."""
    allowed = None
    if is_causal:
        # top-left aligned: query i sees keys j <= i
        allowed = np.tril(np.ones((L, S), dtype=bool))  # (L, S)
    if bool_mask is not None:
        allowed = bool_mask if allowed is None else allowed & bool_mask  # (..., L, S)
    if allowed is None:
        return float_mask
    base = np.zeros((), dtype) if float_mask is None else float_mask
    # -inf where query i may not attend to key j: exp(-inf) = 0 weight
    return np.where(allowed, base, dtype.type(-np.inf))  # (..., L, S)


def _attention_weights(q: np.ndarray, k: np.ndarray, bias: np.ndarray | None,
                       scale: float) -> np.ndarray:
    """p = softmax(scale * q k^T + bias) along S: (..., L, S), zero rows where nothing is allowed."""
    # s = scale * q k^T + bias
    s = q @ k.swapaxes(-1, -2)  # (..., L, D) @ (..., D, S) -> (..., L, S)
    s *= scale
    if bias is not None:
        s += bias
    # max trick: softmax(s) = softmax(s - m), m the row max; a fully masked row has m = -inf,
    # use m = 0 there so that exp(-inf - 0) = 0 rather than exp(-inf + inf) = nan
    m = s.max(axis=-1, keepdims=True)  # (..., L, 1)
    m[m == -np.inf] = 0
    s -= m
    np.exp(s, out=s)  # (..., L, S), unnormalised weights
    # l = sum_j exp(s_j - m); a fully masked row has l = 0: divide by 1 so p = 0, out = 0
    l = s.sum(axis=-1, keepdims=True)  # (..., L, 1)
    l[l == 0] = 1
    s /= l
    return s


def scaled_dot_product_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    attn_mask: np.ndarray | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> np.ndarray:
    """out = softmax(scale * q k^T + mask) v.

    q: (..., L, D), k: (..., S, D), v: (..., S, Dv); attn_mask: bool or float broadcastable to
    (..., L, S); returns out: (..., L, Dv) in the inputs' dtype. Typically q is (B, H, T, D).
    ``scale`` multiplies q k^T: 1/sqrt(D) by default, else any finite number (zero and negative
    included, as torch).

    Worked example: with a single key (S = 1) every query's weight on it is 1, so out equals v
    repeated over L, whatever q and k are.
    """
    q, k, v, bool_mask, float_mask, scale, batch = _check_inputs(
        q, k, v, attn_mask, scale, "scaled_dot_product_attention")
    L, S = q.shape[-2], k.shape[-2]
    bias = _bias(L, S, bool_mask, float_mask, is_causal, q.dtype)
    p = _attention_weights(q, k, bias, scale)  # (..., L, S)
    # out = p v
    return p @ v  # (..., L, S) @ (..., S, Dv) -> (..., L, Dv)


def _sum_to(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum a gradient over the dims that were broadcast, back to the input's ``shape``."""
    if x.shape == shape:
        return x
    lead = x.ndim - len(shape)
    x = x.sum(axis=tuple(range(lead)))  # drop the dims the input did not have
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


def scaled_dot_product_attention_backward(
    dout: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    attn_mask: np.ndarray | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of ``scaled_dot_product_attention`` w.r.t. q, k and v.

    dout: (..., L, Dv) the gradient of the loss w.r.t. out; the other arguments exactly as in
    the forward. Returns (dq, dk, dv) with the shapes of q (..., L, D), k (..., S, D) and
    v (..., S, Dv). The mask gets no gradient. Rows that may attend to nothing get dq = 0.
    """
    q, k, v, bool_mask, float_mask, scale, batch = _check_inputs(
        q, k, v, attn_mask, scale, "scaled_dot_product_attention_backward")
    L, S = q.shape[-2], k.shape[-2]
    dout = np.asarray(dout)
    if dout.shape != batch + (L, v.shape[-1]):
        raise ValueError(f"scaled_dot_product_attention_backward: dout shape {dout.shape} must be the output "
                         f"shape {batch + (L, v.shape[-1])} (q {q.shape}, k {k.shape}, v {v.shape})")
    dout = dout.astype(q.dtype, copy=False)
    bias = _bias(L, S, bool_mask, float_mask, is_causal, q.dtype)
    p = _attention_weights(q, k, bias, scale)  # (..., L, S), recomputed
    # dv = p^T dout
    dv = p.swapaxes(-1, -2) @ dout  # (..., S, L) @ (..., L, Dv) -> (..., S, Dv)
    # dp = dout v^T
    dp = dout @ v.swapaxes(-1, -2)  # (..., L, Dv) @ (..., Dv, S) -> (..., L, S)
    # ds = p * (dp - rowsum(dp * p)), then the scale of s = scale * q k^T folded in
    delta = np.sum(dp * p, axis=-1, keepdims=True)  # (..., L, 1)
    ds = dp
    ds -= delta
    ds *= p
    ds *= scale  # (..., L, S); zero wherever p = 0, so masked keys and empty rows get nothing
    # dq = ds k
    dq = ds @ k  # (..., L, S) @ (..., S, D) -> (..., L, D)
    # dk = ds^T q
    dk = ds.swapaxes(-1, -2) @ q  # (..., S, L) @ (..., L, D) -> (..., S, D)
    return _sum_to(dq, q.shape), _sum_to(dk, k.shape), _sum_to(dv, v.shape)


def split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """(B, T, C) -> (B, H, T, D) with H = n_head and D = C / H (a view, no copy).

    Channel c = h * D + d goes to head h, position d: head h owns channels h*D .. h*D + D - 1.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"split_heads: x must be (B, T, C), got shape {x.shape}")
    if not (isinstance(n_head, numbers.Integral) and n_head >= 1 and x.shape[-1] % n_head == 0):
        raise ValueError(f"split_heads: n_head={n_head!r} must be a positive int dividing C={x.shape[-1]} "
                         f"(x shape {x.shape})")
    *lead, T, C = x.shape
    x = x.reshape(*lead, T, n_head, C // n_head)  # (B, T, H, D)
    return x.swapaxes(-2, -3)  # (B, H, T, D)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(B, H, T, D) -> (B, T, H * D), the inverse of ``split_heads``."""
    x = np.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"merge_heads: x must be (B, H, T, D), got shape {x.shape}")
    *lead, H, T, D = x.shape
    x = x.swapaxes(-2, -3)  # (B, T, H, D)
    return x.reshape(*lead, T, H * D)  # (B, T, C)
