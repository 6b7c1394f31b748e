"""Scaled dot-product attention in PyTorch: the twin of ``minilm.numpy.attention``.

For queries q (..., L, D), keys k (..., S, D) and values v (..., S, Dv):

    s   = scale * q k^T + bias          (..., L, S)   scores; scale = 1/sqrt(D) by default
    p   = softmax(s) along S            (..., L, S)   attention weights, each row sums to 1
    out = p v                           (..., L, Dv)

``bias`` is 0 where query i may attend to key j and -inf where it may not, plus the values of
an additive float mask. Masks (as ``torch.nn.functional.scaled_dot_product_attention``):

- ``attn_mask`` bool: True = may attend; float: added to the scores (use -inf to forbid);
  either broadcastable to (..., L, S).
- ``is_causal``: query i sees keys j <= i (top-left aligned, also when L != S). Combined with
  ``attn_mask`` a key must be allowed by both (torch's own function refuses the combination).
- A query row that may attend to nothing (every score -inf) returns zeros, never NaN, and
  gets zero gradient. The softmax subtracts the row max m (the max trick); in such a row m is
  -inf, so we use m = 0 there (exp(-inf - 0) = 0 instead of exp(-inf + inf) = nan) and divide
  by 1 instead of the zero row sum.

The backward pass is autograd's. It stays NaN-free on fully masked rows because every step
is: m is detached (softmax does not depend on it), d exp(s)/ds = exp(-inf) = 0 at forbidden
keys, and the row sum is replaced by 1 with ``torch.where`` (whose backward masks, never
multiplies by inf).

Leading (batch, head) dims broadcast between q, k and v as in ``torch.matmul``. Everything runs
in the inputs' float dtype.

Deliberately left out: dropout on the attention weights, grouped-query attention (repeat the
key/value heads first, or let a size-1 head dim broadcast), and the O(L + S) memory tiling of
flash attention (see ``minilm.torch.flash_attention``).
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["scaled_dot_product_attention", "split_heads", "merge_heads"]


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    scale: float | None,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, float, tuple[int, ...]]:
    """Validate the arguments; return q, k, v, the bool and float parts of the mask, the
    scale and the broadcast leading shape (...)."""
    q, k, v = torch.as_tensor(q), torch.as_tensor(k), torch.as_tensor(v)
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"{name}: q, k, v need at least 2 dims (..., L, D), (..., S, D), (..., S, Dv); "
                         f"got {shapes}")
    for x, xn in ((q, "q"), (k, "k"), (v, "v")):
        if not x.is_floating_point():
            raise ValueError(f"{name}: {xn} must be a float tensor, got dtype {x.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"{name}: q, k, v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{name}: q and k must have the same head dim D, got {shapes}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{name}: k and v must have the same length S, got {shapes}")
    if q.shape[-1] == 0 or k.shape[-2] == 0:
        raise ValueError(f"{name}: need a head dim D >= 1 and at least one key S >= 1, got {shapes}")
    try:
        batch = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    except RuntimeError:
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
        attn_mask = torch.as_tensor(attn_mask, device=q.device)
        full = batch + (L, S)
        try:
            ok = tuple(torch.broadcast_shapes(attn_mask.shape, full)) == full
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{name}: attn_mask shape {tuple(attn_mask.shape)} does not broadcast to "
                             f"(..., L, S) = {full} ({shapes})")
        if attn_mask.dtype == torch.bool:
            bool_mask = attn_mask
        elif attn_mask.is_floating_point():
            float_mask = attn_mask.to(q.dtype)
        else:
            raise ValueError(f"{name}: attn_mask must be bool (True = may attend) or float (additive), "
                             f"got dtype {attn_mask.dtype}")
    return q, k, v, bool_mask, float_mask, scale, batch


def _bias(L: int, S: int, bool_mask: torch.Tensor | None, float_mask: torch.Tensor | None,
          is_causal: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """The additive bias (broadcastable to (..., L, S)): float mask, -inf where not allowed."""
    allowed = None
    if is_causal:
        # top-left aligned: query i sees keys j <= i
        allowed = torch.ones((L, S), dtype=torch.bool, device=device).tril()  # (L, S)
    if bool_mask is not None:
        allowed = bool_mask if allowed is None else allowed & bool_mask  # (..., L, S)
    if allowed is None:
        return float_mask
    base = torch.zeros((), dtype=dtype, device=device) if float_mask is None else float_mask
    # -inf where query i may not attend to key j: exp(-inf) = 0 weight
    neg_inf = torch.tensor(-math.inf, dtype=dtype, device=device)
    return torch.where(allowed, base, neg_inf)  # (..., L, S)


def _attention_weights(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None,
                       scale: float) -> torch.Tensor:
    """p = softmax(scale * q k^T + bias) along S: (..., L, S), zero rows where nothing is allowed."""
    # s = scale * q k^T + bias
    s = q @ k.transpose(-1, -2)  # (..., L, D) @ (..., D, S) -> (..., L, S)
    s = s * scale
    if bias is not None:
        s = s + bias
    # max trick: softmax(s) = softmax(s - m), m the row max; a fully masked row has m = -inf,
    # use m = 0 there so that exp(-inf - 0) = 0 rather than exp(-inf + inf) = nan
    m = s.detach().amax(dim=-1, keepdim=True)  # (..., L, 1)
    m = torch.where(m == -math.inf, 0.0, m)
    s = s - m
    s = torch.exp(s)  # (..., L, S), unnormalised weights
    # l = sum_j exp(s_j - m); a fully masked row has l = 0: divide by 1 so p = 0, out = 0
    l = s.sum(dim=-1, keepdim=True)  # (..., L, 1)
    l = torch.where(l == 0, 1.0, l)
    s = s / l
    return s


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
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
    bias = _bias(L, S, bool_mask, float_mask, is_causal, q.dtype, q.device)
    p = _attention_weights(q, k, bias, scale)  # (..., L, S)
    # out = p v
    return p @ v  # (..., L, S) @ (..., S, Dv) -> (..., L, Dv)


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, C) -> (B, H, T, D) with H = n_head and D = C / H (a view, no copy).

    Channel c = h * D + d goes to head h, position d: head h owns channels h*D .. h*D + D - 1.
    """
    x = torch.as_tensor(x)
    if x.ndim < 2:
        raise ValueError(f"split_heads: x must be (B, T, C), got shape {tuple(x.shape)}")
    if not (isinstance(n_head, numbers.Integral) and n_head >= 1 and x.shape[-1] % n_head == 0):
        raise ValueError(f"split_heads: n_head={n_head!r} must be a positive int dividing C={x.shape[-1]} "
                         f"(x shape {tuple(x.shape)})")
    *lead, T, C = x.shape
    x = x.reshape(*lead, T, n_head, C // n_head)  # (B, T, H, D)
    return x.transpose(-2, -3)  # (B, H, T, D)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H * D), the inverse of ``split_heads``."""
    x = torch.as_tensor(x)
    if x.ndim < 3:
        raise ValueError(f"merge_heads: x must be (B, H, T, D), got shape {tuple(x.shape)}")
    *lead, H, T, D = x.shape
    x = x.transpose(-2, -3)  # (B, T, H, D)
    return x.reshape(*lead, T, H * D)  # (B, T, C)
