"""Flash attention in PyTorch: the twin of ``minilm.numpy.flash_attention``, line by line.

The same tiled online-softmax loop (``m_i`` running max, ``l_i`` running sum, ``acc``
accumulator, one query tile at a time streaming over key tiles) written in torch ops, so
that ``diff minilm/numpy/flash_attention.py minilm/torch/flash_attention.py`` reads as a
translation. See the NumPy module's docstring for the algorithm and its derivation.

The backward is written out, as in the Triton kernel: ``flash_attention`` runs through
``FlashAttentionFunction`` (a ``torch.autograd.Function``) whose forward is the loop below,
saving only ``q, k, v, out, lse``, and whose backward is ``flash_attention_backward``, the
FlashAttention-2 recomputation ``P = exp(S - lse)`` tile by tile with the NumPy twin's maths
and names (``delta``, pass 1 for dK and dV with key tiles outside, pass 2 for dQ). Nothing of
size ``(L, S)`` is kept between forward and backward. The gradient of ``lse`` (when the
caller uses it) enters as in the NumPy twin: ``dS = P * (dP - (delta - dlse))``.

Differences from the NumPy twin, all deliberate:
- The backward is single-use (``once_differentiable``): no double backward.
- q, k and v must share one floating dtype and one device, as in
  ``torch.nn.functional.scaled_dot_product_attention``; the loop runs in that dtype.

Conventions as in the NumPy twin: q ``(..., L, D)``, k ``(..., S, D)``, v ``(..., S, Dv)``
with broadcasting batch dims, ``Dv != D`` allowed, causal top-left aligned (also for
``L != S``), a row that attends to nothing (``S == 0``) gives ``out = 0`` and ``lse = -inf``.

Legend: L query length, S key length, D head dim, Dv value head dim, BM / BN the number of
rows of the current query / key tile.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch

__all__ = ["flash_attention", "flash_attention_backward", "FlashAttentionFunction"]


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None,
    block_q: int,
    block_k: int,
) -> tuple[tuple[int, ...], float, int, int]:
    """Validate the arguments; return (batch shape, scale, block_q, block_k)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(
                f"{name} must have at least 2 dims (..., length, head_dim), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share the head dim D: q {tuple(q.shape)} has D={q.shape[-1]}, "
            f"k {tuple(k.shape)} has D={k.shape[-1]}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same length S: k {tuple(k.shape)} has S={k.shape[-2]}, "
            f"v {tuple(v.shape)} has S={v.shape[-2]}"
        )
    try:
        batch = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    except RuntimeError:
        raise ValueError(
            f"the batch dims of q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} "
            "do not broadcast"
        ) from None
    blocks = []
    for name, b in (("block_q", block_q), ("block_k", block_k)):
        try:
            if isinstance(b, bool):
                raise TypeError
            b = operator.index(b)
        except TypeError:
            raise ValueError(f"{name} must be an int >= 1, got {b!r}") from None
        if b < 1:
            raise ValueError(f"{name} must be an int >= 1, got {b}")
        blocks.append(b)
    if scale is None:
        if q.shape[-1] < 1:
            raise ValueError(f"the default scale 1/sqrt(D) needs D >= 1, got q {tuple(q.shape)}")
        scale = 1.0 / math.sqrt(q.shape[-1])
    else:
        scale = float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale}")
    return batch, scale, blocks[0], blocks[1]


def _causal_mask(start_m: int, end_m: int, start_n: int, end_n: int, device: torch.device) -> torch.Tensor:
    """True where query i (rows start_m..end_m-1) may see key j (start_n..end_n-1): j <= i."""
    offs_m = torch.arange(start_m, end_m, device=device)  # (BM,)
    offs_n = torch.arange(start_n, end_n, device=device)  # (BN,)
    return offs_m[:, None] >= offs_n[None, :]  # (BM, BN)


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
    trace: list[dict[str, Any]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention by tiles with an online softmax; returns ``(out, lse)``, both differentiable.

    q: (..., L, D), k: (..., S, D), v: (..., S, Dv) -> out: (..., L, Dv), lse: (..., L).
    Same semantics, arguments and ``trace`` records (detached clones) as
    ``minilm.numpy.flash_attention``. Gradients come from ``flash_attention_backward``
    (through ``FlashAttentionFunction``), not from autograd through the loop.

    >>> g = torch.Generator().manual_seed(0)
    >>> q, k, v = (torch.randn(2, 100, 8, generator=g) for _ in range(3))
    >>> out, lse = flash_attention(q, k, v, is_causal=True, block_q=16, block_k=32)
    >>> tuple(out.shape), tuple(lse.shape)
    ((2, 100, 8), (2, 100))
    """
    _, scale, block_q, block_k = _check_inputs(q, k, v, scale, block_q, block_k)
    return FlashAttentionFunction.apply(q, k, v, bool(is_causal), scale, block_q, block_k, trace)


def flash_attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
    *,
    dlse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of flash attention by tiles (FlashAttention-2); returns ``(dq, dk, dv)``.

    The twin of ``minilm.numpy.flash_attention_backward``, same arguments and maths: dout
    (..., L, Dv), ``out`` and ``lse`` as returned by :func:`flash_attention` with the same
    ``is_causal`` and ``scale``; optional ``dlse`` (..., L). With ``delta = rowsum(dO * O)``
    (minus ``dlse``) and ``P = exp(S - lse)`` recomputed per tile::

        dV += P^T dO        dP = dO V^T        dS = P * (dP - delta)
        dQ += dS K * scale  dK += dS^T Q * scale

    Gradients of broadcast batch dims are summed back to each input's shape.
    """
    batch, scale, block_q, block_k = _check_inputs(q, k, v, scale, block_q, block_k)
    L, S, D, Dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    for name, x, want in (("dout", dout, batch + (L, Dv)), ("out", out, batch + (L, Dv)),
                          ("lse", lse, batch + (L,))):
        if tuple(x.shape) != want:
            raise ValueError(f"{name} must have shape {want} for q {tuple(q.shape)}, k {tuple(k.shape)}, "
                             f"v {tuple(v.shape)}, got {tuple(x.shape)}")
    if dlse is not None and tuple(dlse.shape) != batch + (L,):
        raise ValueError(f"dlse must have the shape of lse {batch + (L,)}, got {tuple(dlse.shape)}")
    dtype, device = q.dtype, q.device
    dout, out, lse = (x.to(dtype) for x in (dout, out, lse))

    # delta_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij, the softmax-backward correction
    delta = (dout * out).sum(dim=-1)  # (..., L)
    if dlse is not None:
        # dS = P * (dP - delta + dlse): lse's gradient folds into delta
        delta = delta - dlse.to(dtype)
    # a row that attended to nothing has lse = -inf and all its scores -inf: use lse = 0
    # there so that P = exp(-inf - 0) = 0 instead of exp(-inf + inf) = NaN
    lse = torch.where(lse == -math.inf, 0.0, lse)  # (..., L)

    dq = torch.zeros(batch + (L, D), dtype=dtype, device=device)  # (..., L, D)
    dk = torch.zeros(batch + (S, D), dtype=dtype, device=device)  # (..., S, D)
    dv = torch.zeros(batch + (S, Dv), dtype=dtype, device=device)  # (..., S, Dv)

    # Pass 1, dK and dV: one key tile at a time owns its rows of dK and dV
    for start_n in range(0, S, block_k):
        end_n = min(start_n + block_k, S)
        k_tile = k[..., start_n:end_n, :]  # (..., BN, D)
        v_tile = v[..., start_n:end_n, :]  # (..., BN, Dv)
        dk_acc = torch.zeros(batch + (end_n - start_n, D), dtype=dtype, device=device)  # (..., BN, D)
        dv_acc = torch.zeros(batch + (end_n - start_n, Dv), dtype=dtype, device=device)  # (..., BN, Dv)
        # causal: a query i < start_n sees none of these keys, so start at its query tile
        lo = (start_n // block_q) * block_q if is_causal else 0
        for start_m in range(lo, L, block_q):
            end_m = min(start_m + block_q, L)
            q_tile = q[..., start_m:end_m, :]  # (..., BM, D)
            do_tile = dout[..., start_m:end_m, :]  # (..., BM, Dv)
            lse_tile = lse[..., start_m:end_m]  # (..., BM)
            delta_tile = delta[..., start_m:end_m]  # (..., BM)
            # s = Q_tile K_tile^T * scale
            s = (q_tile @ k_tile.transpose(-1, -2)) * scale  # (..., BM, BN)
            if is_causal and end_n - 1 > start_m:
                s = torch.where(_causal_mask(start_m, end_m, start_n, end_n, device), s, -math.inf)
            # P = exp(S - lse): the softmax probabilities, recomputed from the saved lse
            p = torch.exp(s - lse_tile[..., None])  # (..., BM, BN)
            # dV += P^T dO
            dv_acc += p.transpose(-1, -2) @ do_tile  # (..., BN, Dv)
            # dP = dO V^T
            dp = do_tile @ v_tile.transpose(-1, -2)  # (..., BM, BN)
            # dS = P * (dP - delta)
            ds = p * (dp - delta_tile[..., None])  # (..., BM, BN)
            # dK += dS^T Q * scale
            dk_acc += (ds.transpose(-1, -2) @ q_tile) * scale  # (..., BN, D)
        dk[..., start_n:end_n, :] = dk_acc
        dv[..., start_n:end_n, :] = dv_acc

    # Pass 2, dQ: one query tile at a time owns its rows of dQ (recomputes S, P, dP, dS)
    for start_m in range(0, L, block_q):
        end_m = min(start_m + block_q, L)
        q_tile = q[..., start_m:end_m, :]  # (..., BM, D)
        do_tile = dout[..., start_m:end_m, :]  # (..., BM, Dv)
        lse_tile = lse[..., start_m:end_m]  # (..., BM)
        delta_tile = delta[..., start_m:end_m]  # (..., BM)
        dq_acc = torch.zeros(batch + (end_m - start_m, D), dtype=dtype, device=device)  # (..., BM, D)
        # causal: no query in this tile sees a key >= end_m
        hi = min(S, end_m) if is_causal else S
        for start_n in range(0, hi, block_k):
            end_n = min(start_n + block_k, hi)
            k_tile = k[..., start_n:end_n, :]  # (..., BN, D)
            v_tile = v[..., start_n:end_n, :]  # (..., BN, Dv)
            # s = Q_tile K_tile^T * scale
            s = (q_tile @ k_tile.transpose(-1, -2)) * scale  # (..., BM, BN)
            if is_causal and end_n - 1 > start_m:
                s = torch.where(_causal_mask(start_m, end_m, start_n, end_n, device), s, -math.inf)
            # P = exp(S - lse)
            p = torch.exp(s - lse_tile[..., None])  # (..., BM, BN)
            # dP = dO V^T
            dp = do_tile @ v_tile.transpose(-1, -2)  # (..., BM, BN)
            # dS = P * (dP - delta)
            ds = p * (dp - delta_tile[..., None])  # (..., BM, BN)
            # dQ += dS K * scale
            dq_acc += (ds @ k_tile) * scale  # (..., BM, D)
        dq[..., start_m:end_m, :] = dq_acc

    return _sum_to_shape(dq, q.shape), _sum_to_shape(dk, k.shape), _sum_to_shape(dv, v.shape)


class FlashAttentionFunction(torch.autograd.Function):
    """``flash_attention`` as an autograd node: forward the tiled loop, saving only
    ``q, k, v, out, lse``; backward ``flash_attention_backward`` (FlashAttention-2).

    ``FlashAttentionFunction.apply(q, k, v, is_causal, scale, block_q, block_k, trace)``
    with ``scale`` a float (not None) -> ``(out, lse)``.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale, block_q, block_k, trace):
        out, lse = _flash_attention_forward(q, k, v, is_causal, scale, block_q, block_k, trace)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (is_causal, scale, block_q, block_k)
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        is_causal, scale, block_q, block_k = ctx.args
        if dout is None:  # only lse was used
            dout = torch.zeros_like(out)
        dq, dk, dv = flash_attention_backward(dout, q, k, v, out, lse, is_causal, scale,
                                              block_q, block_k, dlse=dlse)
        return dq, dk, dv, None, None, None, None, None


def _sum_to_shape(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a gradient over the batch dims that were broadcast, back to the input's ``shape``."""
    if tuple(x.shape) == tuple(shape):
        return x
    lead = x.dim() - len(shape)
    x = x.sum(dim=tuple(range(lead))) if lead else x  # drop the dims the input did not have
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    return x.sum(dim=dims, keepdim=True) if dims else x


def _flash_attention_forward(q, k, v, is_causal, scale, block_q, block_k, trace):
    """The forward loop of :func:`flash_attention` (arguments already checked)."""
    batch, scale, block_q, block_k = _check_inputs(q, k, v, scale, block_q, block_k)
    L, S, Dv = q.shape[-2], k.shape[-2], v.shape[-1]
    dtype, device = q.dtype, q.device

    out = torch.zeros(batch + (L, Dv), dtype=dtype, device=device)  # (..., L, Dv)
    lse = torch.zeros(batch + (L,), dtype=dtype, device=device)  # (..., L)
    for start_m in range(0, L, block_q):
        end_m = min(start_m + block_q, L)
        q_tile = q[..., start_m:end_m, :]  # (..., BM, D)
        m_i = torch.full(batch + (end_m - start_m,), -math.inf, dtype=dtype, device=device)  # (..., BM)
        l_i = torch.zeros(batch + (end_m - start_m,), dtype=dtype, device=device)  # (..., BM)
        acc = torch.zeros(batch + (end_m - start_m, Dv), dtype=dtype, device=device)  # (..., BM, Dv)
        # causal: no query in this tile (all < end_m) sees a key >= end_m, so stop there
        hi = min(S, end_m) if is_causal else S
        for start_n in range(0, hi, block_k):
            end_n = min(start_n + block_k, hi)
            k_tile = k[..., start_n:end_n, :]  # (..., BN, D)
            v_tile = v[..., start_n:end_n, :]  # (..., BN, Dv)
            # s = Q_tile K_tile^T * scale
            s = (q_tile @ k_tile.transpose(-1, -2)) * scale  # (..., BM, BN)
            if is_causal and end_n - 1 > start_m:
                # only a tile that crosses the diagonal has keys j > some query i: s_ij = -inf
                s = torch.where(_causal_mask(start_m, end_m, start_n, end_n, device), s, -math.inf)
            # m_new = max(m_i, rowmax(s))
            m_new = torch.maximum(m_i, s.amax(dim=-1))  # (..., BM)
            # a row that has seen only -inf keeps m_new = -inf, and exp(-inf - (-inf)) is NaN:
            # subtract 0 there instead, which makes that row's p and alpha exactly 0
            m_safe = torch.where(m_new == -math.inf, 0.0, m_new)  # (..., BM)
            # p = exp(s - m_new)   (the running max is subtracted before exp: no overflow)
            p = torch.exp(s - m_safe[..., None])  # (..., BM, BN)
            # alpha = exp(m_i - m_new)   (rescales what was summed relative to the old max)
            alpha = torch.exp(m_i - m_safe)  # (..., BM)
            # l_i = alpha * l_i + rowsum(p)
            l_i = alpha * l_i + p.sum(dim=-1)  # (..., BM)
            # acc = alpha * acc + p V_tile
            acc = alpha[..., None] * acc + p @ v_tile  # (..., BM, Dv)
            # m_i = m_new
            m_i = m_new
            if trace is not None:
                trace.append({
                    "query_tile": start_m // block_q, "key_tile": start_n // block_k,
                    "start_m": start_m, "end_m": end_m, "start_n": start_n, "end_n": end_n,
                    "m_i": m_i.detach().clone(), "l_i": l_i.detach().clone(),
                    "acc": acc.detach().clone(), "alpha": alpha.detach().clone(),
                    "p": p.detach().clone(),
                })
        # a row with l_i == 0 attended to nothing: out = 0 and lse = -inf, not 0/0
        seen = l_i > 0  # (..., BM)
        l_safe = torch.where(seen, l_i, 1.0)  # (..., BM)
        # out = acc / l_i
        out[..., start_m:end_m, :] = acc / l_safe[..., None]  # (..., BM, Dv)
        # lse = m_i + log(l_i)
        lse[..., start_m:end_m] = torch.where(seen, m_i + torch.log(l_safe), -math.inf)  # (..., BM)
    return out, lse
