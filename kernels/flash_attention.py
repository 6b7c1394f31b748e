"""Flash attention in Triton: forward and backward, causal or not, grouped-query heads.

What it computes (the same thing as ``minilm.numpy.flash_attention``, tile for tile):

    out = softmax(scale * q @ k^T + causal_mask) @ v          (B, H, L, D)
    lse = logsumexp(scale * q @ k^T + causal_mask, axis=-1)   (B, H, L), natural log, float32

without ever storing the (L, S) score matrix. Shapes (legend B, H, Hkv, L, S, D):

    q (B, H, L, D)    k, v (B, Hkv, S, D)    H divisible by Hkv: query head h reads
    key/value head h // (H // Hkv) (grouped-query attention; Hkv == 1 is multi-query).

Forward, one program per (query tile, head, batch), the online softmax (FlashAttention-2):

    q_tile = q[rows]                                  # (BLOCK_M, D)
    m_i = -inf; l_i = 0; acc = 0                      # (BLOCK_M,), (BLOCK_M,), (BLOCK_M, D)
    for each key tile cols:                           # causal: only tiles with cols <= rows
        s = scale * q_tile @ k[cols]^T                # (BLOCK_M, BLOCK_N), masked with -inf
        m_new = max(m_i, rowmax(s))
        p = exp(s - m_new)                            # subtract the running max before exp
        alpha = exp(m_i - m_new)                      # rescales what was summed so far
        l_i = alpha * l_i + rowsum(p)
        acc = alpha * acc + p @ v[cols]
        m_i = m_new
    out[rows] = acc / l_i;  lse[rows] = m_i + log(l_i)

Backward (FlashAttention-2), recomputing p = exp(s - lse) tile by tile from the saved lse:

    delta = rowsum(dout * out)                                 # _attn_bwd_preprocess
    for each key tile (and every query head of its kv group):  # _attn_bwd_dkdv
        for each query tile:  p = exp(s - lse);  dv += p^T @ dout
                              dp = dout @ v^T;   ds = p * (dp - delta);  dk += scale * ds^T @ q
    for each query tile:                                       # _attn_bwd_dq
        for each key tile:    dq += scale * ds @ k

Every output element is written by exactly one program and nothing is accumulated with
atomics, so the same inputs give bit-identical gradients; the sum of dk, dv over the query
heads of a group happens in registers inside one program.

Implementation notes, named where they happen below:
- exp2 instead of exp: s is computed in base 2 (``qk_scale = scale * log2(e)``), so ``m_i`` is
  the running max of ``s * log2(e)``; the NumPy version's ``m_i`` equals ``m_i * ln(2)`` here.
- Tails: rows past L and columns past S are loaded as zeros and never stored. Zeros are not
  enough for keys: a zero key scores s = 0, not -inf, so every kernel masks the scores of
  keys past S to -inf (p = 0) in its key-tail tile; rows past L get lse = +inf in the
  backward, so their p is 0 without a mask. Head dims that are not a power of two are
  padded to ``BLOCK_D`` (a power of two >= 16) and masked. The head dim is a constexpr
  (``HEAD_DIM``), so masked loads stay vectorised (one compiled kernel per D).
- Each loop over tiles runs in two phases (the ``MASK`` constexpr of the ``*_inner``
  helpers): tiles every query of the program sees in full skip the masking; only the causal
  diagonal and the key tail pay for ``tl.where``.
- The dk/dv kernel works on transposed tiles (``s_t = k_tile @ q_tile^T``, (BLOCK_N, BLOCK_M)),
  so p^T and ds^T come out of one dot already in place for the next.
- On a GPU p and ds are rounded to the input dtype before their tensor-core dots, as in
  FlashAttention-2; everything accumulates in float32.
- lse is differentiable: its gradient enters as ``delta - dlse`` (d lse_i / d s_ij = p_ij).
- Under the Triton interpreter (``TRITON_INTERPRET=1``, the CPU path) tiles are upcast to
  float32 before ``tl.dot`` (``UPCAST``), because the interpreter multiplies 16-bit floats on
  their raw bits; on a GPU 16-bit operands go to the tensor cores as they are.
- float32 inputs use ``input_precision="ieee"`` dots (true float32, no TF32 rounding).
- The interpreter rounds float32 -> bfloat16 by truncation, not to nearest as a GPU does, so
  under it the kernels write float32 results that the wrapper then rounds with torch.

Deliberately left out: dropout, arbitrary attention masks, bottom-right causal alignment
(``is_causal`` needs L == S), value head dim different from the query head dim, fp8.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

__all__ = ["flash_attention", "MIN_HEAD_DIM", "MAX_HEAD_DIM", "SUPPORTED_DTYPES"]

MIN_HEAD_DIM = 8
MAX_HEAD_DIM = 128
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e))


# ---------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i,  # running state: (BLOCK_M, BLOCK_D) f32, (BLOCK_M,) f32, (BLOCK_M,) f32
    q_tile,  # (BLOCK_M, BLOCK_D) this program's queries
    k_base,  # pointer to k[b, h // GROUP, 0, 0]
    v_base,  # pointer to v[b, h // GROUP, 0, 0]
    stride_ks, stride_kd,  # strides of k along S and D
    stride_vs, stride_vd,  # strides of v along S and D
    offs_m,  # (BLOCK_M,) query indices of this tile
    offs_d,  # (BLOCK_D,) head-dim indices
    S,  # key length
    qk_scale,  # scale * log2(e)
    lo, hi,  # key range [lo, hi) this call covers, lo a multiple of BLOCK_N
    MASK: tl.constexpr,  # apply the key-tail and causal masks to the scores
    HEAD_DIM: tl.constexpr,  # D, the head dim
    IS_CAUSAL: tl.constexpr,  # query i sees keys j <= i
    BLOCK_N: tl.constexpr,  # keys per tile
    UPCAST: tl.constexpr,  # upcast tiles to float32 before tl.dot (interpreter)
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs, "tf32" otherwise (ignored for 16-bit)
):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        kv_mask = (offs_n[:, None] < S) & (offs_d[None, :] < HEAD_DIM)  # (BLOCK_N, BLOCK_D)
        k_tile = tl.load(k_base + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v_tile = tl.load(v_base + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        if UPCAST:
            k_tile = k_tile.to(tl.float32)
            v_tile = v_tile.to(tl.float32)
        # s = scale * q k^T, in base 2: s2 = s * log2(e)
        s = tl.dot(q_tile, tl.trans(k_tile), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASK:
            # keys past S and (causal) keys after the query get -inf, so p = 0 there
            valid = offs_n[None, :] < S  # (1, BLOCK_N)
            if IS_CAUSAL:
                valid = valid & (offs_m[:, None] >= offs_n[None, :])  # (BLOCK_M, BLOCK_N)
            s = tl.where(valid, s, float("-inf"))
        # m_new = max(m_i, rowmax(s)): finite, since every tile's first call starts at key 0
        m_new = tl.maximum(m_i, tl.max(s, 1))  # (BLOCK_M,)
        # p = exp(s - m_new): subtract the running max before exp
        p = tl.math.exp2(s - m_new[:, None])  # (BLOCK_M, BLOCK_N)
        # alpha = exp(m_i - m_new) rescales the old sums to the new max
        alpha = tl.math.exp2(m_i - m_new)  # (BLOCK_M,)
        # l_i = alpha * l_i + rowsum(p)
        l_i = l_i * alpha + tl.sum(p, 1)
        # acc = alpha * acc + p @ v_tile
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v_tile.dtype), v_tile, acc, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_D)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(
    Q,  # (B, H, L, D) queries
    K,  # (B, Hkv, S, D) keys
    V,  # (B, Hkv, S, D) values
    O,  # (B, H, L, D) output, dtype of q
    LSE,  # (B, H, L) float32 logsumexp, contiguous
    stride_qb, stride_qh, stride_ql, stride_qd,  # strides of q
    stride_kb, stride_kh, stride_ks, stride_kd,  # strides of k
    stride_vb, stride_vh, stride_vs, stride_vd,  # strides of v
    stride_ob, stride_oh, stride_ol, stride_od,  # strides of out
    H,  # query heads
    GROUP,  # H // Hkv: query heads sharing one key/value head
    L,  # query length
    S,  # key length
    l_bucket, s_bucket,  # next_power_of_2(L), next_power_of_2(S): autotune key only, unused
    qk_scale,  # scale * log2(e)
    IS_CAUSAL: tl.constexpr,  # query i sees keys j <= i (needs L == S)
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per inner-loop step
    HEAD_DIM: tl.constexpr,  # D, the head dim (a constexpr: masks on it keep loads vectorised)
    BLOCK_D: tl.constexpr,  # D padded to a power of two >= 16
    UPCAST: tl.constexpr,  # upcast tiles to float32 before tl.dot (interpreter)
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs, "tf32" otherwise
):
    start_m = tl.program_id(0)  # query tile
    h = tl.program_id(1)  # query head
    b = tl.program_id(2).to(tl.int64)  # batch (int64: b * stride may pass 2**31)
    h_kv = (h // GROUP).to(tl.int64)  # key/value head of this query head's group
    h = h.to(tl.int64)

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    q_mask = (offs_m[:, None] < L) & (offs_d[None, :] < HEAD_DIM)  # (BLOCK_M, BLOCK_D)
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd
    q_tile = tl.load(q_ptrs, mask=q_mask, other=0.0)  # (BLOCK_M, BLOCK_D)
    if UPCAST:
        q_tile = q_tile.to(tl.float32)
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running row max (base 2)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running row sum of p
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # running p @ v

    # Key tiles split in two phases so that only the tiles that need it pay for masking:
    # [0, n_full) every query of the tile sees every key; [n_full, n_end) masked tiles
    # (the diagonal when causal, the tail past S).
    if IS_CAUSAL:
        n_end = tl.minimum((start_m + 1) * BLOCK_M, S)
        n_full = ((start_m * BLOCK_M) // BLOCK_N) * BLOCK_N
    else:
        n_end = S
        n_full = (S // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q_tile, k_base, v_base, stride_ks, stride_kd, stride_vs, stride_vd,
        offs_m, offs_d, S, qk_scale, 0, n_full,
        MASK=False, HEAD_DIM=HEAD_DIM, IS_CAUSAL=IS_CAUSAL, BLOCK_N=BLOCK_N, UPCAST=UPCAST, DOT_PRECISION=DOT_PRECISION,
    )
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q_tile, k_base, v_base, stride_ks, stride_kd, stride_vs, stride_vd,
        offs_m, offs_d, S, qk_scale, n_full, n_end,
        MASK=True, HEAD_DIM=HEAD_DIM, IS_CAUSAL=IS_CAUSAL, BLOCK_N=BLOCK_N, UPCAST=UPCAST, DOT_PRECISION=DOT_PRECISION,
    )

    # out = acc / l_i
    out_tile = acc / l_i[:, None]  # (BLOCK_M, BLOCK_D)
    # lse = m + log(l) in natural log: (m_i + log2(l_i)) * ln(2)
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # (BLOCK_M,)
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out_tile.to(O.dtype.element_ty), mask=q_mask)
    tl.store(LSE + (b * H + h) * L + offs_m, lse, mask=offs_m < L)


# ---------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------


@triton.jit
def _attn_bwd_preprocess(
    O,  # (B, H, L, D) forward output
    DO,  # (B, H, L, D) gradient of the output
    DELTA,  # (B, H, L) float32 out: delta = rowsum(dout * out), contiguous
    stride_ob, stride_oh, stride_ol, stride_od,  # strides of out
    stride_dob, stride_doh, stride_dol, stride_dod,  # strides of dout
    H,  # query heads
    L,  # query length
    BLOCK_M: tl.constexpr,  # rows per program
    HEAD_DIM: tl.constexpr,  # D, the head dim (a constexpr: masks on it keep loads vectorised)
    BLOCK_D: tl.constexpr,  # D padded to a power of two >= 16
):
    start_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    mask = (offs_m[:, None] < L) & (offs_d[None, :] < HEAD_DIM)  # (BLOCK_M, BLOCK_D)
    o_tile = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :] * stride_od,
                     mask=mask, other=0.0).to(tl.float32)
    do_tile = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dol + offs_d[None, :] * stride_dod,
                      mask=mask, other=0.0).to(tl.float32)
    # delta_i = sum_d dout_id * out_id  (= sum_j p_ij dp_ij, the softmax-backward row term)
    delta = tl.sum(do_tile * o_tile, 1)  # (BLOCK_M,)
    tl.store(DELTA + (b * H + h) * L + offs_m, delta, mask=offs_m < L)


@triton.jit
def _attn_bwd_dkdv_inner(
    dk, dv,  # running (BLOCK_N, BLOCK_D) float32 gradients of this key tile
    k_tile, v_tile,  # (BLOCK_N, BLOCK_D) this program's keys and values
    q_base, do_base,  # pointers to q[b, h, 0, 0] and dout[b, h, 0, 0]
    lse_base, delta_base,  # pointers to lse[b, h, 0] and delta[b, h, 0]
    stride_ql, stride_qd,  # strides of q along L and D
    stride_dol, stride_dod,  # strides of dout along L and D
    offs_n,  # (BLOCK_N,) key indices of this tile
    offs_d,  # (BLOCK_D,) head-dim indices
    L,  # query length
    S,  # key length
    qk_scale,  # scale * log2(e)
    lo, hi,  # query range [lo, hi), lo a multiple of BLOCK_M
    MASK: tl.constexpr,  # apply the key-tail and causal masks to p^T
    HEAD_DIM: tl.constexpr,  # D, the head dim
    IS_CAUSAL: tl.constexpr,  # query i sees keys j <= i
    BLOCK_M: tl.constexpr,  # queries per step
    UPCAST: tl.constexpr,  # upcast tiles to float32 before tl.dot (interpreter)
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs
):
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        q_mask = (offs_m[:, None] < L) & (offs_d[None, :] < HEAD_DIM)  # (BLOCK_M, BLOCK_D)
        q_tile = tl.load(q_base + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)
        do_tile = tl.load(do_base + offs_m[:, None] * stride_dol + offs_d[None, :] * stride_dod, mask=q_mask, other=0.0)
        if UPCAST:
            q_tile = q_tile.to(tl.float32)
            do_tile = do_tile.to(tl.float32)
        # rows past L get lse = +inf, so their p is exactly 0 (their q and dout are 0 too)
        lse2 = tl.load(lse_base + offs_m, mask=offs_m < L, other=float("inf")) * 1.4426950408889634  # (BLOCK_M,)
        delta = tl.load(delta_base + offs_m, mask=offs_m < L, other=0.0)  # (BLOCK_M,)
        # Transposed tiles, (BLOCK_N, BLOCK_M): this program's keys are the rows, so p^T and
        # ds^T come out of tl.dot already laid out as the left operand of the next dot.
        # p^T = exp(s^T - lse), recomputed in base 2
        s_t = tl.dot(k_tile, tl.trans(q_tile), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        if MASK:
            # keys past S and (causal) keys after the query get -inf, so p = 0 there (a
            # padded key has k = 0: unmasked, its p = exp(0 - lse) would overflow for lse < -88)
            valid = offs_n[:, None] < S  # (BLOCK_N, 1)
            if IS_CAUSAL:
                valid = valid & (offs_m[None, :] >= offs_n[:, None])  # (BLOCK_N, BLOCK_M)
            s_t = tl.where(valid, s_t, float("-inf"))
        p_t = tl.math.exp2(s_t - lse2[None, :])  # (BLOCK_N, BLOCK_M)
        # dv += p^T @ dout
        dv = tl.dot(p_t.to(do_tile.dtype), do_tile, dv, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_D)
        # dp^T = v @ dout^T
        dp_t = tl.dot(v_tile, tl.trans(do_tile), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        # ds = p * (dp - delta)  (softmax backward; the scale is applied once at the end)
        ds_t = p_t * (dp_t - delta[None, :])  # (BLOCK_N, BLOCK_M)
        # dk += ds^T @ q
        dk = tl.dot(ds_t.to(q_tile.dtype), q_tile, dk, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_D)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V,  # forward inputs: q (B, H, L, D), k and v (B, Hkv, S, D)
    DO,  # (B, H, L, D) gradient of the output
    LSE,  # (B, H, L) float32 from the forward, contiguous
    DELTA,  # (B, H, L) float32 from _attn_bwd_preprocess, contiguous
    DK, DV,  # (B, Hkv, S, D) outputs, dtype of k, contiguous-or-not
    stride_qb, stride_qh, stride_ql, stride_qd,  # strides of q
    stride_kb, stride_kh, stride_ks, stride_kd,  # strides of k
    stride_vb, stride_vh, stride_vs, stride_vd,  # strides of v
    stride_dob, stride_doh, stride_dol, stride_dod,  # strides of dout
    stride_dkb, stride_dkh, stride_dks, stride_dkd,  # strides of dk
    stride_dvb, stride_dvh, stride_dvs, stride_dvd,  # strides of dv
    H,  # query heads
    GROUP,  # H // Hkv
    L,  # query length
    S,  # key length
    l_bucket, s_bucket,  # next_power_of_2(L), next_power_of_2(S): autotune key only, unused
    sm_scale,  # scale
    qk_scale,  # scale * log2(e)
    IS_CAUSAL: tl.constexpr,  # query i sees keys j <= i
    BLOCK_M: tl.constexpr,  # queries per inner-loop step
    BLOCK_N: tl.constexpr,  # keys per program
    HEAD_DIM: tl.constexpr,  # D, the head dim (a constexpr: masks on it keep loads vectorised)
    BLOCK_D: tl.constexpr,  # D padded to a power of two >= 16
    UPCAST: tl.constexpr,  # upcast tiles to float32 before tl.dot (interpreter)
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs
):
    start_n = tl.program_id(0)  # key tile
    h_kv = tl.program_id(1).to(tl.int64)  # key/value head
    b = tl.program_id(2).to(tl.int64)  # batch

    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    kv_mask = (offs_n[:, None] < S) & (offs_d[None, :] < HEAD_DIM)  # (BLOCK_N, BLOCK_D)
    k_tile = tl.load(K + b * stride_kb + h_kv * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd,
                     mask=kv_mask, other=0.0)
    v_tile = tl.load(V + b * stride_vb + h_kv * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd,
                     mask=kv_mask, other=0.0)
    if UPCAST:
        k_tile = k_tile.to(tl.float32)
        v_tile = v_tile.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # Query tiles: [m_lo, m_full) masked, [m_full, L) unmasked. Causal skips the queries
    # before this key tile and masks the diagonal tiles (the key tail, if this tile has one,
    # lies in the diagonal: every query after it is a padded row). Non-causal masks every
    # query tile of the one program whose key tile runs past S, and nothing elsewhere.
    # Rows past L need no mask anywhere: their lse is +inf, so p = 0 and ds = 0 there.
    if IS_CAUSAL:
        m_lo = ((start_n * BLOCK_N) // BLOCK_M) * BLOCK_M
        m_full = tl.minimum(tl.cdiv((start_n + 1) * BLOCK_N, BLOCK_M) * BLOCK_M, L)
    else:
        m_lo = 0
        m_full = tl.where((start_n + 1) * BLOCK_N > S, L, 0)  # L for the key-tail tile, else 0
    # GQA: dk, dv of a kv head are sums over the GROUP query heads that read it
    for g in range(0, GROUP):
        h = h_kv * GROUP + g  # query head
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        lse_base = LSE + (b * H + h) * L
        delta_base = DELTA + (b * H + h) * L
        dk, dv = _attn_bwd_dkdv_inner(
            dk, dv, k_tile, v_tile, q_base, do_base, lse_base, delta_base,
            stride_ql, stride_qd, stride_dol, stride_dod, offs_n, offs_d, L, S, qk_scale, m_lo, m_full,
            MASK=True, HEAD_DIM=HEAD_DIM, IS_CAUSAL=IS_CAUSAL, BLOCK_M=BLOCK_M, UPCAST=UPCAST, DOT_PRECISION=DOT_PRECISION,
        )
        dk, dv = _attn_bwd_dkdv_inner(
            dk, dv, k_tile, v_tile, q_base, do_base, lse_base, delta_base,
            stride_ql, stride_qd, stride_dol, stride_dod, offs_n, offs_d, L, S, qk_scale, tl.maximum(m_lo, m_full), L,
            MASK=False, HEAD_DIM=HEAD_DIM, IS_CAUSAL=IS_CAUSAL, BLOCK_M=BLOCK_M, UPCAST=UPCAST, DOT_PRECISION=DOT_PRECISION,
        )
    # dk = scale * sum ds^T q  (the chain rule through s = scale * q k^T)
    dk = dk * sm_scale
    tl.store(DK + b * stride_dkb + h_kv * stride_dkh + offs_n[:, None] * stride_dks + offs_d[None, :] * stride_dkd,
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b * stride_dvb + h_kv * stride_dvh + offs_n[:, None] * stride_dvs + offs_d[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq_inner(
    dq,  # running (BLOCK_M, BLOCK_D) float32 gradient of this query tile
    q_tile, do_tile,  # (BLOCK_M, BLOCK_D) this program's queries and output gradient
    lse2, delta,  # (BLOCK_M,) lse * log2(e) and delta of these rows
    k_base, v_base,  # pointers to k[b, h // GROUP, 0, 0] and v[b, h // GROUP, 0, 0]
    stride_ks, stride_kd,  # strides of k along S and D
    stride_vs, stride_vd,  # strides of v along S and D
    offs_m,  # (BLOCK_M,) query indices of this tile
    offs_d,  # (BLOCK_D,) head-dim indices
    S,  # key length
    qk_scale,  # scale * log2(e)
    lo, hi,  # key range [lo, hi), lo a multiple of BLOCK_N
    MASK: tl.constexpr,  # apply the key-tail and causal masks to p
    HEAD_DIM: tl.constexpr,  # D, the head dim
    IS_CAUSAL: tl.constexpr,  # query i sees keys j <= i
    BLOCK_N: tl.constexpr,  # keys per step
    UPCAST: tl.constexpr,  # upcast tiles to float32 before tl.dot (interpreter)
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs
):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        kv_mask = (offs_n[:, None] < S) & (offs_d[None, :] < HEAD_DIM)  # (BLOCK_N, BLOCK_D)
        k_tile = tl.load(k_base + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v_tile = tl.load(v_base + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        if UPCAST:
            k_tile = k_tile.to(tl.float32)
            v_tile = v_tile.to(tl.float32)
        # p = exp(s - lse), recomputed in base 2
        s = tl.dot(q_tile, tl.trans(k_tile), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASK:
            # keys past S and (causal) keys after the query get -inf, so p = 0 there. Not
            # optional for the tail: a padded key has k = 0, so s = 0 and p = exp(-lse), which
            # is inf once lse < -88 (inf * 0 = NaN in the dot below) and overflows the float16
            # cast of ds on a GPU once lse < -11.
            valid = offs_n[None, :] < S  # (1, BLOCK_N)
            if IS_CAUSAL:
                valid = valid & (offs_m[:, None] >= offs_n[None, :])  # (BLOCK_M, BLOCK_N)
            s = tl.where(valid, s, float("-inf"))
        p = tl.math.exp2(s - lse2[:, None])  # (BLOCK_M, BLOCK_N)
        # dp = dout @ v^T
        dp = tl.dot(do_tile, tl.trans(v_tile), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        # ds = p * (dp - delta)  (softmax backward; the scale is applied once at the end)
        ds = p * (dp - delta[:, None])  # (BLOCK_M, BLOCK_N)
        # dq += ds @ k
        dq = tl.dot(ds.to(k_tile.dtype), k_tile, dq, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_D)
    return dq


@triton.jit
def _attn_bwd_dq(
    Q, K, V,  # forward inputs: q (B, H, L, D), k and v (B, Hkv, S, D)
    DO,  # (B, H, L, D) gradient of the output
    LSE,  # (B, H, L) float32 from the forward, contiguous
    DELTA,  # (B, H, L) float32 from _attn_bwd_preprocess, contiguous
    DQ,  # (B, H, L, D) output, dtype of q
    stride_qb, stride_qh, stride_ql, stride_qd,  # strides of q
    stride_kb, stride_kh, stride_ks, stride_kd,  # strides of k
    stride_vb, stride_vh, stride_vs, stride_vd,  # strides of v
    stride_dob, stride_doh, stride_dol, stride_dod,  # strides of dout
    stride_dqb, stride_dqh, stride_dql, stride_dqd,  # strides of dq
    H,  # query heads
    GROUP,  # H // Hkv
    L,  # query length
    S,  # key length
    l_bucket, s_bucket,  # next_power_of_2(L), next_power_of_2(S): autotune key only, unused
    sm_scale,  # scale
    qk_scale,  # scale * log2(e)
    IS_CAUSAL: tl.constexpr,  # query i sees keys j <= i
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per inner-loop step
    HEAD_DIM: tl.constexpr,  # D, the head dim (a constexpr: masks on it keep loads vectorised)
    BLOCK_D: tl.constexpr,  # D padded to a power of two >= 16
    UPCAST: tl.constexpr,  # upcast tiles to float32 before tl.dot (interpreter)
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs
):
    start_m = tl.program_id(0)  # query tile
    h = tl.program_id(1)  # query head
    b = tl.program_id(2).to(tl.int64)  # batch
    h_kv = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    q_mask = (offs_m[:, None] < L) & (offs_d[None, :] < HEAD_DIM)  # (BLOCK_M, BLOCK_D)
    q_tile = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd,
                     mask=q_mask, other=0.0)
    do_tile = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dol + offs_d[None, :] * stride_dod,
                      mask=q_mask, other=0.0)
    if UPCAST:
        q_tile = q_tile.to(tl.float32)
        do_tile = do_tile.to(tl.float32)
    # rows past L: lse = +inf gives p = 0
    lse2 = tl.load(LSE + (b * H + h) * L + offs_m, mask=offs_m < L, other=float("inf")) * 1.4426950408889634
    delta = tl.load(DELTA + (b * H + h) * L + offs_m, mask=offs_m < L, other=0.0)
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Key tiles, as in the forward: [0, n_full) every query of the tile sees every key
    # (unmasked); [n_full, n_end) masked (the diagonal when causal, the tail past S).
    if IS_CAUSAL:
        n_end = tl.minimum((start_m + 1) * BLOCK_M, S)
        n_full = ((start_m * BLOCK_M) // BLOCK_N) * BLOCK_N
    else:
        n_end = S
        n_full = (S // BLOCK_N) * BLOCK_N
    dq = _attn_bwd_dq_inner(
        dq, q_tile, do_tile, lse2, delta, k_base, v_base, stride_ks, stride_kd, stride_vs, stride_vd,
        offs_m, offs_d, S, qk_scale, 0, n_full,
        MASK=False, HEAD_DIM=HEAD_DIM, IS_CAUSAL=IS_CAUSAL, BLOCK_N=BLOCK_N, UPCAST=UPCAST, DOT_PRECISION=DOT_PRECISION,
    )
    dq = _attn_bwd_dq_inner(
        dq, q_tile, do_tile, lse2, delta, k_base, v_base, stride_ks, stride_kd, stride_vs, stride_vd,
        offs_m, offs_d, S, qk_scale, n_full, n_end,
        MASK=True, HEAD_DIM=HEAD_DIM, IS_CAUSAL=IS_CAUSAL, BLOCK_N=BLOCK_N, UPCAST=UPCAST, DOT_PRECISION=DOT_PRECISION,
    )
    # dq = scale * sum ds k
    dq = dq * sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dql + offs_d[None, :] * stride_dqd,
             dq.to(DQ.dtype.element_ty), mask=q_mask)


# ---------------------------------------------------------------------------------------
# Launch configurations
# ---------------------------------------------------------------------------------------

# GPU configs (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel, per dtype family
# ("16bit" = float16/bfloat16 on the tensor cores, "fp32" = IEEE float32 FMA dots) and per
# BLOCK_D (head dim padded to a power of two). triton.autotune times the candidates of a
# shape once and keeps the fastest. GPU_CONFIGS_SM90 replaces entries on Hopper (and newer),
# where the wgmma register layouts change what fits. `python -m minilm.kernels.compile`
# compiles every candidate for sm_80 and sm_90 and fails on register spills: these lists are
# the ones that compile spill-free, both as the general kernel (any L, S, GQA group) and as
# the one Triton specialises for a typical launch (GROUP = 1, L and S multiples of 16:
# ``--ints aligned``), for every head dim of each BLOCK_D, causal and not. ptxas allocates
# the two builds anew and they spill differently, so a config stays only if both are clean.
GPU_CONFIGS: dict[str, dict[tuple[str, int], list[tuple[int, int, int, int]]]] = {
    "fwd": {
        ("16bit", 16): [(128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 3)],
        # sm_80 aligned: 128/64/8/3 and 64/64/4/3 spill (8 B); 4 and 2 stages do not
        ("16bit", 32): [(128, 64, 8, 4), (64, 64, 4, 2), (128, 128, 8, 3)],
        ("16bit", 64): [(128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 3)],
        # sm_80 aligned causal, D = 80, 96, 128: 128/64/8/3 spills at 255 registers; 2 stages
        # need 221
        ("16bit", 128): [(128, 64, 8, 2), (64, 64, 4, 3)],
        ("fp32", 16): [(16, 16, 4, 2)],
        ("fp32", 32): [(16, 64, 4, 2), (16, 16, 4, 2)],
        ("fp32", 64): [(16, 64, 4, 2), (16, 16, 4, 2)],
        ("fp32", 128): [(16, 16, 4, 2)],
    },
    "dkdv": {
        ("16bit", 16): [(32, 128, 8, 2)],  # 3 stages spill at D = 8 on sm_80
        ("16bit", 32): [(32, 128, 8, 3)],
        ("16bit", 64): [(32, 128, 8, 3)],
        ("16bit", 128): [(32, 64, 8, 2), (32, 32, 8, 2)],
        ("fp32", 16): [(16, 32, 4, 2)],
        ("fp32", 32): [(16, 16, 4, 2)],
        ("fp32", 64): [(16, 16, 4, 1)],  # 2 stages spill at D = 48 on sm_80 and sm_90
        ("fp32", 128): [(16, 16, 8, 2)],  # 4 warps spill on sm_80
    },
    "dq": {
        ("16bit", 16): [(64, 64, 4, 3)],
        ("16bit", 32): [(64, 64, 4, 3)],
        ("16bit", 64): [(64, 64, 4, 3), (128, 64, 8, 3)],
        # sm_80 aligned non-causal, D = 80, 96: 64/64/8/2 spills (8 B); 3 stages do not
        ("16bit", 128): [(64, 32, 4, 3), (128, 32, 8, 2), (64, 64, 8, 3)],
        ("fp32", 16): [(32, 16, 4, 2)],
        ("fp32", 32): [(32, 16, 4, 2)],
        ("fp32", 64): [(32, 16, 4, 2)],
        ("fp32", 128): [(32, 16, 4, 2)],
    },
}
GPU_CONFIGS_SM90: dict[str, dict[tuple[str, int], list[tuple[int, int, int, int]]]] = {
    "fwd": {
        # Hopper keeps the configs sm_80 gave up above: they compile clean here (with wgmma)
        ("16bit", 32): [(128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 3)],
        ("16bit", 128): [(128, 64, 8, 3), (64, 64, 4, 3)],
        ("fp32", 128): [(16, 64, 4, 2)],
    },
    "dkdv": {
        ("16bit", 128): [(32, 32, 8, 2)],  # no wgmma (BLOCK_N < 64), but no spills
        ("fp32", 16): [(16, 16, 4, 2)],
        # 16/16/4/1 spills at D = 48 aligned, 16/16/4/2 at D = 48 general, 8 warps at D = 48
        # and 64; a 32-key tile does not
        ("fp32", 64): [(16, 32, 4, 1)],
    },
    "dq": {
        ("16bit", 128): [(64, 32, 4, 3), (128, 32, 8, 2), (64, 64, 8, 2)],  # as sm_80 had them
        ("fp32", 64): [(32, 16, 8, 2)],  # 4 warps spill on sm_90
    },
}
PREPROCESS_BLOCK_M = 64  # rows per program of _attn_bwd_preprocess (GPU)

# Under the interpreter: one small fixed config per kernel (BLOCK_M, BLOCK_N). BLOCK_M !=
# BLOCK_N on purpose, so the CPU tests walk the uneven causal-diagonal bookkeeping too.
INTERPRETER_CONFIGS: dict[str, tuple[int, int]] = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)}


def block_d_for(head_dim: int) -> int:
    """BLOCK_D: the head dim padded to a power of two, at least 16 (the smallest tl.dot K)."""
    return max(16, triton.next_power_of_2(head_dim))


def dtype_family(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


def gpu_configs(kernel: str, dtype: torch.dtype, head_dim: int, arch: int) -> list[tuple[int, int, int, int]]:
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) candidates of a kernel on a GPU of compute
    capability ``arch`` (80 for sm_80, 90 for sm_90, ...)."""
    key = (dtype_family(dtype), block_d_for(head_dim))
    if arch >= 90 and key in GPU_CONFIGS_SM90.get(kernel, {}):
        return GPU_CONFIGS_SM90[kernel][key]
    return GPU_CONFIGS[kernel][key]


def _device_arch(device: torch.device) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _is_interpreted(kernel) -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return isinstance(kernel, InterpretedFunction)


INTERPRET = _is_interpreted(_attn_fwd)  # decided once, when the decorators above ran

_TORCH_DTYPE_OF = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _autotuned(kernel, name: str, key: list[str]):
    """Wrap a kernel in triton.autotune over every GPU config of `name`, pruned per call to
    the ones listed for the call's dtype and BLOCK_D."""
    tables = [GPU_CONFIGS[name], GPU_CONFIGS_SM90.get(name, {})]
    all_configs = sorted({c for table in tables for configs in table.values() for c in configs})

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        q = args["Q"]
        wanted = set(gpu_configs(name, q.dtype, args["HEAD_DIM"], _device_arch(q.device)))
        kept = [c for c in configs
                if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted]
        return kept or configs[:1]

    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in all_configs]
    return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": prune})(kernel)


# The autotune key. Lengths enter as power-of-two buckets (the kernel arguments l_bucket,
# s_bucket), not as L and S themselves: the best tile depends on the rough size, and keying
# on the raw lengths would re-time every config at every new length (with a KV cache,
# decoding one token at a time, at every step). Triton adds the dtypes of the tensor
# arguments to the key itself.
AUTOTUNE_KEY = ["l_bucket", "s_bucket", "GROUP", "HEAD_DIM", "IS_CAUSAL"]


def _length_buckets(L: int, S: int) -> tuple[int, int]:
    """(l_bucket, s_bucket): L and S rounded up to powers of two, the autotune key's lengths."""
    return triton.next_power_of_2(L), triton.next_power_of_2(S)


if INTERPRET:
    _fwd_kernel, _dkdv_kernel, _dq_kernel = _attn_fwd, _attn_bwd_dkdv, _attn_bwd_dq
else:
    _fwd_kernel = _autotuned(_attn_fwd, "fwd", AUTOTUNE_KEY)
    _dkdv_kernel = _autotuned(_attn_bwd_dkdv, "dkdv", AUTOTUNE_KEY)
    _dq_kernel = _autotuned(_attn_bwd_dq, "dq", AUTOTUNE_KEY)


def _launch_config(kernel: str) -> dict:
    """Meta-parameters passed at launch: the fixed ones under the interpreter, none on a GPU
    (the autotuner supplies BLOCK_M, BLOCK_N, num_warps, num_stages)."""
    if INTERPRET:
        block_m, block_n = INTERPRETER_CONFIGS[kernel]
        return {"BLOCK_M": block_m, "BLOCK_N": block_n}
    return {}


# ---------------------------------------------------------------------------------------
# Python side: checks, allocation, launches
# ---------------------------------------------------------------------------------------


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, scale: float | None) -> float:
    """Raise ValueError naming what is wrong; return the softmax scale."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"flash_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"flash_attention: {name} must have rank 4, (B, H, L, D) for q and (B, Hkv, S, D) "
                             f"for k and v; got {name}.shape={tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"flash_attention: {name}.dtype={t.dtype} is not supported; "
                             "use float16, bfloat16 or float32")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flash_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"flash_attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"flash_attention: k and v must have the same shape (B, Hkv, S, D), "
                         f"got k {tuple(k.shape)} and v {tuple(v.shape)}")
    B, H, L, D = q.shape
    Bk, Hkv, S, Dk = k.shape
    if Bk != B:
        raise ValueError(f"flash_attention: batch sizes differ: q {tuple(q.shape)} has B={B}, k {tuple(k.shape)} has B={Bk}")
    if Dk != D:
        raise ValueError(f"flash_attention: head dims differ: q {tuple(q.shape)} has D={D}, k {tuple(k.shape)} has D={Dk}")
    if Hkv < 1 or H % Hkv != 0:
        raise ValueError(f"flash_attention: query heads H={H} must be a multiple of key/value heads Hkv={Hkv} "
                         f"(q {tuple(q.shape)}, k {tuple(k.shape)})")
    if B < 1 or H < 1 or L < 1 or S < 1:
        raise ValueError(f"flash_attention: empty input: q {tuple(q.shape)}, k {tuple(k.shape)}; B, H, L, S must be >= 1")
    if not MIN_HEAD_DIM <= D <= MAX_HEAD_DIM:
        raise ValueError(f"flash_attention: head dim D={D} is out of range [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]")
    if is_causal and L != S:
        raise ValueError(f"flash_attention: is_causal=True needs L == S (top-left aligned causal mask), "
                         f"got L={L}, S={S}")
    if q.device.type == "cpu" and not INTERPRET:
        raise ValueError("flash_attention: got CPU tensors but the kernels were compiled for a GPU; on a CPU set "
                         "TRITON_INTERPRET=1 before importing minilm.kernels (the Triton interpreter)")
    if q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"flash_attention: tensors on {q.device} are not supported; use cuda (or cpu with TRITON_INTERPRET=1)")
    if scale is None:
        return 1.0 / math.sqrt(D)
    scale = float(scale)
    if not math.isfinite(scale):  # zero and negative are fine, as in torch's sdpa
        raise ValueError(f"flash_attention: scale must be a finite number, got {scale}")
    return scale


def _store_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels write: float32 under the interpreter (its bfloat16 rounding
    truncates; torch then rounds to nearest), the input dtype on a GPU."""
    return torch.float32 if INTERPRET else dtype


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, scale: float):
    B, H, L, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    # allocate (float32 under the interpreter, rounded to q.dtype by torch below)
    out = torch.empty_like(q, dtype=_store_dtype(q.dtype), memory_format=torch.contiguous_format)  # (B, H, L, D)
    lse = torch.empty((B, H, L), device=q.device, dtype=torch.float32)  # (B, H, L)
    # launch: one program per (query tile, head, batch)
    grid = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), H, B)  # noqa: E731
    _fwd_kernel[grid](
        q, k, v, out, lse,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        H, H // Hkv, L, S, *_length_buckets(L, S),
        scale * LOG2E,
        HEAD_DIM=D,
        IS_CAUSAL=is_causal,
        BLOCK_D=block_d_for(D),
        UPCAST=INTERPRET,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        **_launch_config("fwd"),
    )
    return out.to(q.dtype), lse


def _backward(dout, q, k, v, out, lse, dlse, is_causal: bool, scale: float):
    B, H, L, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    block_d = block_d_for(D)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    store = _store_dtype(q.dtype)
    dq = torch.empty_like(q, dtype=store, memory_format=torch.contiguous_format)  # (B, H, L, D)
    dk = torch.empty_like(k, dtype=store, memory_format=torch.contiguous_format)  # (B, Hkv, S, D)
    dv = torch.empty_like(v, dtype=store, memory_format=torch.contiguous_format)  # (B, Hkv, S, D)
    delta = torch.empty((B, H, L), device=q.device, dtype=torch.float32)  # (B, H, L)

    block_m = INTERPRETER_CONFIGS["fwd"][0] if INTERPRET else PREPROCESS_BLOCK_M
    _attn_bwd_preprocess[(triton.cdiv(L, block_m), H, B)](
        out, dout, delta, *_strides(out), *_strides(dout), H, L, HEAD_DIM=D, BLOCK_M=block_m, BLOCK_D=block_d,
    )
    if dlse is not None:
        # lse is differentiable too: d lse_i / d s_ij = p_ij, so ds = p * (dp - (delta - dlse))
        delta = delta - dlse.to(torch.float32)

    grid_kv = lambda meta: (triton.cdiv(S, meta["BLOCK_N"]), Hkv, B)  # noqa: E731
    _dkdv_kernel[grid_kv](
        q, k, v, dout, lse, delta, dk, dv,
        *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dk), *_strides(dv),
        H, H // Hkv, L, S, *_length_buckets(L, S), scale, scale * LOG2E,
        IS_CAUSAL=is_causal, HEAD_DIM=D, BLOCK_D=block_d, UPCAST=INTERPRET, DOT_PRECISION=precision,
        **_launch_config("dkdv"),
    )
    grid_q = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), H, B)  # noqa: E731
    _dq_kernel[grid_q](
        q, k, v, dout, lse, delta, dq,
        *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dq),
        H, H // Hkv, L, S, *_length_buckets(L, S), scale, scale * LOG2E,
        IS_CAUSAL=is_causal, HEAD_DIM=D, BLOCK_D=block_d, UPCAST=INTERPRET, DOT_PRECISION=precision,
        **_launch_config("dq"),
    )
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)


class _FlashAttentionFunction(torch.autograd.Function):
    """out, lse = flash attention; backward recomputes p tile by tile from (q, k, v, out, lse).

    Differentiable once: the backward kernels are not themselves differentiable, so a second
    derivative (``create_graph=True`` then backward through the gradients) raises a
    RuntimeError (``once_differentiable``) instead of silently returning a wrong, zero one.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale):
        out, lse = _forward(q, k, v, is_causal, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.is_causal = is_causal
        ctx.scale = scale
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = _backward(dout, q, k, v, out, lse, dlse, ctx.is_causal, ctx.scale)
        return dq, dk, dv, None, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention ``softmax(scale * q @ k^T) @ v`` by the Triton flash-attention kernels.

    q: (B, H, L, D); k, v: (B, Hkv, S, D) with H a multiple of Hkv (query head h uses
    key/value head h // (H // Hkv)); 8 <= D <= 128; float16, bfloat16 or float32, all three
    the same dtype and device; any strides. ``scale`` defaults to 1/sqrt(D). ``is_causal``:
    query i sees keys j <= i (needs L == S).

    Returns out (B, H, L, D) in the input dtype, and with ``return_lse=True`` also lse
    (B, H, L) float32, the natural-log logsumexp of each row of scaled scores. Both are
    differentiable (gradients for q, k and v; for GQA the dk, dv of a key/value head sum over
    its query heads). Accumulation is in float32; results are deterministic.

    Runs on CUDA tensors, or on CPU tensors under the Triton interpreter (set
    ``TRITON_INTERPRET=1`` before importing ``minilm.kernels``).
    """
    scale = _check_inputs(q, k, v, bool(is_causal), scale)
    out, lse = _FlashAttentionFunction.apply(q, k, v, bool(is_causal), scale)
    return (out, lse) if return_lse else out
