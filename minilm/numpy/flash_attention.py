"""Flash attention in NumPy: the tiled online-softmax algorithm, forward and backward.

Plain attention, ``out = softmax(Q K^T * scale) V``, builds the whole ``(L, S)`` score
matrix. FlashAttention (Dao et al. 2022; FlashAttention-2, Dao 2023) never does: queries are
cut into tiles of ``block_q`` rows, keys and values into tiles of ``block_k`` rows, and each
query tile streams once over the key tiles keeping three running quantities per query row:

    m_i   the largest score seen so far                       (BM,)
    l_i   sum over the keys seen so far of exp(s - m_i)        (BM,)
    acc   sum over the keys seen so far of exp(s - m_i) v      (BM, Dv)

When a new key tile raises the running max from ``m_i`` to ``m_new``, what was summed so far
is relative to the old max, so it is multiplied by ``alpha = exp(m_i - m_new)`` (<= 1)
before the new tile is added. After the last tile ``acc / l_i`` is exactly the softmax-
weighted sum of values, and ``m_i + log(l_i)`` is the log-sum-exp of the row's scores.

Forward, in the loop structure and the names of the Triton kernel (``minilm.kernels``; one
Triton program per query tile):

    for start_m in range(0, L, block_q):                      # one query tile
        m_i = -inf;  l_i = 0;  acc = 0
        for start_n in range(0, S, block_k):                  # causal: stop at the diagonal
            s = q_tile @ k_tile^T * scale                     # (BM, BN), one tile at a time
            s = where(key j may be seen by query i, s, -inf)  # causal mask
            m_new = max(m_i, rowmax(s))
            p = exp(s - m_new)
            alpha = exp(m_i - m_new)
            l_i = alpha * l_i + rowsum(p)
            acc = alpha * acc + p @ v_tile
            m_i = m_new
        out_tile = acc / l_i;  lse_tile = m_i + log(l_i)

Memory grows like ``L * D`` plus one ``(BM, BN)`` tile per batch element, never ``L * S``.

Causal: a key tile entirely at or below the diagonal needs no mask, only tiles crossing it
do, and tiles wholly above it are skipped. The Triton kernel writes this as two loops (the
unmasked tiles, then the diagonal ones); here one ``if`` per tile does the same. The kernel
also computes in base 2 (``exp2``, ``m_i`` scaled by ``log2(e)``); this reference uses ``exp``.

Backward (FlashAttention-2): nothing of size ``(L, S)`` was saved, so each tile of the
probabilities is recomputed from the saved log-sum-exp, ``P = exp(S - lse)``. With
``delta_i = rowsum(dO_i * O_i)``:

    dV += P^T dO        dP = dO V^T        dS = P * (dP - delta)
    dQ += dS K * scale  dK += dS^T Q * scale

``dK`` and ``dV`` are accumulated with the key tile in the OUTER loop (one Triton program per
key tile owns its rows of dK and dV), and ``dQ`` in a second pass with the query tile in the
outer loop, so that no two programs ever add into the same rows: no atomics, at the price of
computing ``S``, ``P`` and ``dP`` twice. (FlashAttention-2's CUDA code instead adds into dQ
with atomics from the key-tile loop; the Triton tutorial kernel does the two passes, as here.)

Conventions (as ``minilm.numpy.attention.scaled_dot_product_attention``):
- q ``(..., L, D)``, k ``(..., S, D)``, v ``(..., S, Dv)``; the leading batch dims (e.g.
  ``(B, H)``) broadcast against each other as in ``numpy.matmul``; everything is vectorised
  over them and the Python loops run over tiles only.
- ``Dv != D`` is allowed: nothing in the algorithm ties the value width to the key width
  (the Triton kernel requires ``Dv == D``).
- ``is_causal``: query i sees keys j <= i, top-left aligned like
  ``torch.nn.functional.scaled_dot_product_attention``, also when ``L != S`` (the Triton
  kernel rejects causal with ``L != S``; this reference supports it).
- A query row that may attend to nothing (only when ``S == 0``) gets ``out = 0``,
  ``lse = -inf`` and zero gradient, never NaN.
- Computation is in the input float dtype (the result type of q, k, v), so float64 inputs
  give a float64 reference; the Triton kernel accumulates in float32 whatever its inputs.

Left out on purpose: arbitrary attention masks, dropout and sliding windows (see
``minilm.numpy.attention`` for masks); grouped-query heads are expressed by broadcasting
k and v over a head dim of size 1.

Legend: L query length, S key length, D head dim, Dv value head dim, BM / BN the number of
rows of the current query / key tile (``block_q`` / ``block_k``, fewer in the last tile).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

__all__ = ["flash_attention", "flash_attention_backward"]


def _check_inputs(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float | None,
    block_q: int,
    block_k: int,
) -> tuple[tuple[int, ...], np.dtype, float, int, int]:
    """Validate the common arguments; return (batch shape, dtype, scale, block_q, block_k)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim < 2:
            raise ValueError(
                f"{name} must have at least 2 dims (..., length, head_dim), got shape {x.shape}"
            )
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share the head dim D: q {q.shape} has D={q.shape[-1]}, "
            f"k {k.shape} has D={k.shape[-1]}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same length S: k {k.shape} has S={k.shape[-2]}, "
            f"v {v.shape} has S={v.shape[-2]}"
        )
    try:
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(
            f"the batch dims of q {q.shape}, k {k.shape} and v {v.shape} do not broadcast"
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
            raise ValueError(f"the default scale 1/sqrt(D) needs D >= 1, got q {q.shape}")
        scale = 1.0 / math.sqrt(q.shape[-1])
    else:
        scale = float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale}")
    dtype = np.result_type(q, k, v)
    return batch, dtype, scale, blocks[0], blocks[1]


def _causal_mask(start_m: int, end_m: int, start_n: int, end_n: int) -> np.ndarray:
    """True where query i (rows start_m..end_m-1) may see key j (start_n..end_n-1): j <= i."""
    offs_m = np.arange(start_m, end_m)  # (BM,)
    offs_n = np.arange(start_n, end_n)  # (BN,)
    return offs_m[:, None] >= offs_n[None, :]  # (BM, BN)


def _sum_to_shape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Undo batch broadcasting: sum ``x`` over the dims that were added or stretched from 1."""
    while x.ndim > len(shape):
        x = x.sum(axis=0)
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


def flash_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    is_causal: bool = False,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
    trace: list[dict[str, Any]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Attention by tiles with an online softmax; returns ``(out, lse)``.

    q: (..., L, D), k: (..., S, D), v: (..., S, Dv) -> out: (..., L, Dv), lse: (..., L).
    ``out`` equals ``softmax(q k^T * scale) v`` (with the causal mask when ``is_causal``) and
    ``lse`` is the natural-log log-sum-exp of each row of scaled (masked) scores, the one
    number per row the backward pass needs. ``scale`` defaults to ``1/sqrt(D)``. Lengths
    need not be multiples of the block sizes.

    ``trace``: if a list, one dict is appended per (query tile, key tile) step, after that
    step's update, with the tile numbers ``query_tile``/``key_tile``, the row ranges
    ``start_m, end_m, start_n, end_n``, and copies of ``m_i`` (..., BM), ``l_i`` (..., BM),
    ``acc`` (..., BM, Dv), ``alpha`` (..., BM) and the tile's ``p`` (..., BM, BN).

    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((2, 100, 8)) for _ in range(3))
    >>> out, lse = flash_attention(q, k, v, is_causal=True, block_q=16, block_k=32)
    >>> out.shape, lse.shape
    ((2, 100, 8), (2, 100))
    """
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    batch, dtype, scale, block_q, block_k = _check_inputs(q, k, v, scale, block_q, block_k)
    q, k, v = q.astype(dtype, copy=False), k.astype(dtype, copy=False), v.astype(dtype, copy=False)
    L, S, Dv = q.shape[-2], k.shape[-2], v.shape[-1]

    out = np.zeros(batch + (L, Dv), dtype=dtype)  # (..., L, Dv)
    lse = np.zeros(batch + (L,), dtype=dtype)  # (..., L)
    for start_m in range(0, L, block_q):
        end_m = min(start_m + block_q, L)
        q_tile = q[..., start_m:end_m, :]  # (..., BM, D)
        m_i = np.full(batch + (end_m - start_m,), -np.inf, dtype=dtype)  # (..., BM)
        l_i = np.zeros(batch + (end_m - start_m,), dtype=dtype)  # (..., BM)
        acc = np.zeros(batch + (end_m - start_m, Dv), dtype=dtype)  # (..., BM, Dv)
        # causal: no query in this tile (all < end_m) sees a key >= end_m, so stop there
        hi = min(S, end_m) if is_causal else S
        for start_n in range(0, hi, block_k):
            end_n = min(start_n + block_k, hi)
            k_tile = k[..., start_n:end_n, :]  # (..., BN, D)
            v_tile = v[..., start_n:end_n, :]  # (..., BN, Dv)
            # s = Q_tile K_tile^T * scale   (in place: one (BM, BN) buffer per step, not three)
            s = q_tile @ k_tile.swapaxes(-1, -2)  # (..., BM, BN)
            s *= scale
            if is_causal and end_n - 1 > start_m:
                # only a tile that crosses the diagonal has keys j > some query i: s_ij = -inf
                s = np.where(_causal_mask(start_m, end_m, start_n, end_n), s, -np.inf)
            # m_new = max(m_i, rowmax(s))
            m_new = np.maximum(m_i, s.max(axis=-1))  # (..., BM)
            # a row that has seen only -inf keeps m_new = -inf, and exp(-inf - (-inf)) is NaN:
            # subtract 0 there instead, which makes that row's p and alpha exactly 0
            m_safe = np.where(m_new == -np.inf, 0.0, m_new)  # (..., BM)
            # p = exp(s - m_new)   (the running max is subtracted before exp: no overflow)
            s -= m_safe[..., None]
            p = np.exp(s, out=s)  # (..., BM, BN), in s's buffer
            # alpha = exp(m_i - m_new)   (rescales what was summed relative to the old max)
            alpha = np.exp(m_i - m_safe)  # (..., BM)
            # l_i = alpha * l_i + rowsum(p)
            l_i = alpha * l_i + p.sum(axis=-1)  # (..., BM)
            # acc = alpha * acc + p V_tile
            acc *= alpha[..., None]
            acc += p @ v_tile  # (..., BM, Dv)
            # m_i = m_new
            m_i = m_new
            if trace is not None:
                trace.append({
                    "query_tile": start_m // block_q, "key_tile": start_n // block_k,
                    "start_m": start_m, "end_m": end_m, "start_n": start_n, "end_n": end_n,
                    "m_i": m_i.copy(), "l_i": l_i.copy(), "acc": acc.copy(),
                    "alpha": alpha.copy(), "p": p.copy(),
                })
        # a row with l_i == 0 attended to nothing: out = 0 and lse = -inf, not 0/0
        seen = l_i > 0  # (..., BM)
        l_safe = np.where(seen, l_i, 1.0)  # (..., BM)
        # out = acc / l_i
        out[..., start_m:end_m, :] = acc / l_safe[..., None]  # (..., BM, Dv)
        # lse = m_i + log(l_i)
        lse[..., start_m:end_m] = np.where(seen, m_i + np.log(l_safe), -np.inf)  # (..., BM)
    return out, lse


def flash_attention_backward(
    dout: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    out: np.ndarray,
    lse: np.ndarray,
    is_causal: bool = False,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
    *,
    dlse: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of flash attention by tiles (FlashAttention-2); returns ``(dq, dk, dv)``.

    dout: (..., L, Dv) the gradient of the loss with respect to ``out``; q, k, v, and
    ``out``: (..., L, Dv), ``lse``: (..., L) as returned by :func:`flash_attention` with the
    same ``is_causal`` and ``scale``. Returns dq: q's shape, dk: k's shape, dv: v's shape
    (gradients of broadcast batch dims are summed back). The block sizes need not match the
    forward's; they only change the order of the sums.

    ``dlse`` (keyword only, optional, (..., L)): gradient with respect to ``lse`` too. Since
    d lse_i / d s_ij = P_ij, it enters as ``dS = P * (dP - (delta - dlse))``.

    Probabilities are recomputed tile by tile as ``P = exp(S - lse)``; nothing of size
    ``(L, S)`` is ever formed. dK, dV: key tiles in the outer loop; dQ: a second pass with
    query tiles in the outer loop (no atomics; see the module docstring).
    """
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    batch, dtype, scale, block_q, block_k = _check_inputs(q, k, v, scale, block_q, block_k)
    L, S, D, Dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    dout, out, lse = np.asarray(dout), np.asarray(out), np.asarray(lse)
    for name, x, want in (("dout", dout, batch + (L, Dv)), ("out", out, batch + (L, Dv)),
                          ("lse", lse, batch + (L,))):
        if x.shape != want:
            raise ValueError(
                f"{name} must have shape {want} for q {q.shape}, k {k.shape}, v {v.shape}, "
                f"got {x.shape}"
            )
    if dlse is not None:
        dlse = np.asarray(dlse)
        if dlse.shape != batch + (L,):
            raise ValueError(f"dlse must have the shape of lse {batch + (L,)}, got {dlse.shape}")
    dtype = np.result_type(dtype, dout, out, lse)
    q, k, v, dout, out, lse = (x.astype(dtype, copy=False) for x in (q, k, v, dout, out, lse))

    # delta_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij, the softmax-backward correction
    delta = (dout * out).sum(axis=-1)  # (..., L)
    if dlse is not None:
        # dS = P * (dP - delta + dlse): lse's gradient folds into delta
        delta = delta - dlse.astype(dtype, copy=False)
    # a row that attended to nothing has lse = -inf and all its scores -inf: use lse = 0
    # there so that P = exp(-inf - 0) = 0 instead of exp(-inf + inf) = NaN
    lse = np.where(lse == -np.inf, 0.0, lse)  # (..., L)

    dq = np.zeros(batch + (L, D), dtype=dtype)  # (..., L, D)
    dk = np.zeros(batch + (S, D), dtype=dtype)  # (..., S, D)
    dv = np.zeros(batch + (S, Dv), dtype=dtype)  # (..., S, Dv)

    # Pass 1, dK and dV: one key tile at a time owns its rows of dK and dV
    for start_n in range(0, S, block_k):
        end_n = min(start_n + block_k, S)
        k_tile = k[..., start_n:end_n, :]  # (..., BN, D)
        v_tile = v[..., start_n:end_n, :]  # (..., BN, Dv)
        dk_acc = np.zeros(batch + (end_n - start_n, D), dtype=dtype)  # (..., BN, D)
        dv_acc = np.zeros(batch + (end_n - start_n, Dv), dtype=dtype)  # (..., BN, Dv)
        # causal: a query i < start_n sees none of these keys, so start at its query tile
        lo = (start_n // block_q) * block_q if is_causal else 0
        for start_m in range(lo, L, block_q):
            end_m = min(start_m + block_q, L)
            q_tile = q[..., start_m:end_m, :]  # (..., BM, D)
            do_tile = dout[..., start_m:end_m, :]  # (..., BM, Dv)
            lse_tile = lse[..., start_m:end_m]  # (..., BM)
            delta_tile = delta[..., start_m:end_m]  # (..., BM)
            # s = Q_tile K_tile^T * scale
            s = (q_tile @ k_tile.swapaxes(-1, -2)) * scale  # (..., BM, BN)
            if is_causal and end_n - 1 > start_m:
                s = np.where(_causal_mask(start_m, end_m, start_n, end_n), s, -np.inf)
            # P = exp(S - lse): the softmax probabilities, recomputed from the saved lse
            p = np.exp(s - lse_tile[..., None])  # (..., BM, BN)
            # dV += P^T dO
            dv_acc += p.swapaxes(-1, -2) @ do_tile  # (..., BN, Dv)
            # dP = dO V^T
            dp = do_tile @ v_tile.swapaxes(-1, -2)  # (..., BM, BN)
            # dS = P * (dP - delta)
            ds = p * (dp - delta_tile[..., None])  # (..., BM, BN)
            # dK += dS^T Q * scale
            dk_acc += (ds.swapaxes(-1, -2) @ q_tile) * scale  # (..., BN, D)
        dk[..., start_n:end_n, :] = dk_acc
        dv[..., start_n:end_n, :] = dv_acc

    # Pass 2, dQ: one query tile at a time owns its rows of dQ (recomputes S, P, dP, dS)
    for start_m in range(0, L, block_q):
        end_m = min(start_m + block_q, L)
        q_tile = q[..., start_m:end_m, :]  # (..., BM, D)
        do_tile = dout[..., start_m:end_m, :]  # (..., BM, Dv)
        lse_tile = lse[..., start_m:end_m]  # (..., BM)
        delta_tile = delta[..., start_m:end_m]  # (..., BM)
        dq_acc = np.zeros(batch + (end_m - start_m, D), dtype=dtype)  # (..., BM, D)
        # causal: no query in this tile sees a key >= end_m
        hi = min(S, end_m) if is_causal else S
        for start_n in range(0, hi, block_k):
            end_n = min(start_n + block_k, hi)
            k_tile = k[..., start_n:end_n, :]  # (..., BN, D)
            v_tile = v[..., start_n:end_n, :]  # (..., BN, Dv)
            # s = Q_tile K_tile^T * scale
            s = (q_tile @ k_tile.swapaxes(-1, -2)) * scale  # (..., BM, BN)
            if is_causal and end_n - 1 > start_m:
                s = np.where(_causal_mask(start_m, end_m, start_n, end_n), s, -np.inf)
            # P = exp(S - lse)
            p = np.exp(s - lse_tile[..., None])  # (..., BM, BN)
            # dP = dO V^T
            dp = do_tile @ v_tile.swapaxes(-1, -2)  # (..., BM, BN)
            # dS = P * (dP - delta)
            ds = p * (dp - delta_tile[..., None])  # (..., BM, BN)
            # dQ += dS K * scale
            dq_acc += (ds @ k_tile) * scale  # (..., BM, D)
        dq[..., start_m:end_m, :] = dq_acc

    return _sum_to_shape(dq, q.shape), _sum_to_shape(dk, k.shape), _sum_to_shape(dv, v.shape)
