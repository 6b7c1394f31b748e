"""Symmetric integer quantisation in NumPy: int8 and int4 weights, int8 activations, int matmul.

A b-bit symmetric quantiser keeps one float ``scale`` s per block of numbers and stores each
number w as the integer q nearest to w / s, clamped to [-Q, Q] with Q = 2^(b-1) - 1
(Q = 127 for int8, 7 for int4; -128 and -8 are never used, so the grid is symmetric)::

    s = max_block |w| / Q                         (rounded UP to the scale's dtype, see below)
    q = clamp(round(w / s), -Q, Q)                (round half to even, as np.rint and torch.round)
    deq(q) = s * q

The error bound. Because s >= max|w| / Q, every |w / s| <= Q, so the clamp never moves a
value by more than the rounding does (where the division's own rounding leaves |w / s| a hair
above Q, the clamp moves it by that hair), and for every element

    |w - deq(q(w))| <= s / 2

in exact arithmetic. In floating point the division w / s (done in float64) and the product
s * q add rounding of relative size 2^-53 (float64) or 2^-24 (a float32 result): the tests
check ``|w - deq| <= s/2 + eps(dtype) * |w|``. The scale is computed in float64 and stored
in the weight's dtype (float32 for float32 weights); where that rounding left Q s below
max|w| it is stepped up to the next representable value, so the bound also holds for
denormal weights. An all-zero block has s = 0 and q = 0, and dequantises exactly. -0.0
quantises to 0 (the integer has no sign of zero). inf and NaN are rejected (ValueError): a
single inf would make every other element of its block quantise to 0.

Blocks (``granularity``), for a weight matrix W (C_out, C_in) of a Linear y = x W^T + b:

- ``per tensor``: one scale, shape () (``per_channel=False``, ``group_size=None``);
- ``per channel``: one scale per output channel (row), shape (C_out, 1) (``per_channel=True``);
  a row with an outlier no longer spoils the other rows' resolution;
- ``group-wise``: one scale per ``group_size`` consecutive inputs of a row, shape (C_out,
  C_in / G) (``group_size=G``); what int4 needs to keep its 15 levels useful.

Integer inference. With x quantised per token (one scale s_x per row of x, computed from the
activations at run time: "dynamic") and W per channel (one s_w per output channel)::

    y_ij = sum_k x_ik W_jk ~= sum_k (s_x_i qx_ik)(s_w_j qw_jk) = s_x_i s_w_j sum_k qx_ik qw_jk

so the whole sum runs on integers (int8 x int8 products accumulated in int32: each product is
at most 127^2 = 16129, so K inputs fit in int32 while K <= 2^31 / 127^2 = 133143) and the two
scales are applied once per output, after. ``int8_matmul`` does exactly that; its error
against the float product is bounded by ``int8_matmul_error_bound`` (derived there).

Storage: ``quantize_state_dict`` turns every 2-D float array of a model's state dict (weight
matrices and embeddings) into ``name.int8`` (int8 values) or ``name.int4`` (two int4 values
per byte, ``pack_int4``) plus ``name.scale``; 1-D arrays (biases, LayerNorm) stay as they
are. ``state_dict_bytes`` counts what that really stores.

Deliberately left out: asymmetric (zero-point) quantisation, calibration of static
activation scales, quantisation-aware training, int4 activations, integer attention (the
softmax and the attention matmuls run in float), per-channel scales along the input axis.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from minilm.config import TransformerConfig
from minilm.numpy.attention import merge_heads, scaled_dot_product_attention, split_heads
from minilm.numpy.layers import gelu_forward, layer_norm_forward, to_numpy

__all__ = [
    "BITS",
    "check_bits",
    "quantize",
    "dequantize",
    "quantize_activations",
    "int8_matmul",
    "int8_matmul_error_bound",
    "pack_int4",
    "unpack_int4",
    "quantize_state_dict",
    "dequantize_state_dict",
    "state_dict_bytes",
    "QuantizedTransformerLM",
]

BITS = (8, 4)  # the supported bit widths
MAX_K_INT32 = 2**31 // 127**2  # 133143: the longest int8 dot product that cannot overflow int32


def quantize(w: Any, bits: int = 8, per_channel: bool = False,
             group_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric quantisation of w to ``bits`` (8 or 4): returns ``(q, scale)``.

    q: int8 array of w's shape, values in [-Q, Q] (Q = 127 or 7). scale (in w's float dtype,
    float32 for anything narrower): shape () per tensor; (C_out, 1) per channel (C_out =
    w.shape[0]); (C_out, C_in / G) with ``group_size=G`` (groups along the last axis of a 2-D
    w). ``dequantize(q, scale)`` inverts it to within scale / 2 per element.

    >>> q, s = quantize(np.array([0.5, -1.27, 0.0]))
    >>> q.tolist(), float(s)
    ([50, -127, 0], 0.01)
    """
    w = _check_weight(w)
    qmax = check_bits(bits)
    sdtype = np.float64 if w.dtype == np.float64 else np.float32
    wg = _blocks(w, per_channel, group_size).astype(np.float64)  # (R, n_groups, G)
    # s = max |w| / Q over each block, in float64, then rounded up into the scale's dtype
    amax = np.abs(wg).max(axis=-1)  # (R, n_groups)
    scale = (amax / qmax).astype(sdtype)  # (R, n_groups)
    for _ in range(3):  # rounding (to float32, or in a subnormal) can leave Q s < max|w|: step up
        low = scale.astype(np.float64) * qmax < amax
        if not low.any():
            break
        scale = np.where(low, np.nextafter(scale, sdtype(np.inf)), scale)
    # q = clamp(round(w / s), -Q, Q); a zero block (s = 0) divides by 1 instead: q = 0
    safe = np.where(scale == 0, 1.0, scale.astype(np.float64))[..., None]  # (R, n_groups, 1)
    q = np.clip(np.rint(wg / safe), -qmax, qmax).astype(np.int8)  # (R, n_groups, G)
    q = q.reshape(w.shape)
    if not per_channel and group_size is None:
        return q, scale.reshape(())
    return q, scale


def dequantize(q: Any, scale: Any) -> np.ndarray:
    """deq = scale * q, block by block: the inverse of ``quantize`` (to within scale / 2).

    The block layout is read from scale's shape: () per tensor; (C_out, n_groups) with
    groups of C_in / n_groups along the last axis (n_groups = 1: per channel).
    """
    q, scale = np.asarray(q), np.asarray(scale)
    if scale.ndim == 0:
        # deq = s q
        return scale * q.astype(scale.dtype)
    R, n_groups = scale.shape
    if q.shape[0] != R or q[0].size % n_groups:
        raise ValueError(f"dequantize: scale of shape {scale.shape} does not fit q of shape {q.shape}")
    qg = q.reshape(R, n_groups, -1).astype(scale.dtype)  # (R, n_groups, G)
    # deq = s_block q
    return (qg * scale[..., None]).reshape(q.shape)


def quantize_activations(x: Any, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic per-token quantisation: x (..., K) -> (qx (..., K) int8, sx (..., 1)).

    Each row (token) gets its own scale s_x = max_k |x_k| / Q, computed from the values
    themselves at run time, so a token with large activations does not crush the others.
    """
    x = _check_weight(x, "quantize_activations")
    if x.ndim == 0:
        raise ValueError("quantize_activations: x must have at least one axis (..., K)")
    lead = x.shape[:-1]
    q, s = quantize(x.reshape(-1, x.shape[-1]), bits, per_channel=True)  # (N, K), (N, 1)
    return q.reshape(x.shape), s.reshape(*lead, 1)


def int8_matmul(qx: Any, sx: Any, qw: Any, sw: Any, bias: Any = None) -> np.ndarray:
    """y = (s_x s_w^T) * (qx @ qw^T) [+ b]: the Linear y = x W^T + b on int8 operands.

    qx (..., K) int8 with sx (..., 1) (per token) or (); qw (C_out, K) int8 with sw (C_out, 1)
    (per channel) or (). The products are summed in int32 (exact for K <= 133143), the scales
    multiply the int32 sums once per output, after. Returns (..., C_out) in the scales' dtype.
    """
    qx, qw, sx, sw = np.asarray(qx), np.asarray(qw), np.asarray(sx), np.asarray(sw)
    _check_int8_operands(qx, sx, qw, sw)
    K = qx.shape[-1]
    # acc_ij = sum_k qx_ik qw_jk     (int8 x int8 -> int32; no overflow for K <= 2^31 / 127^2)
    acc = qx.reshape(-1, K).astype(np.int32) @ qw.astype(np.int32).T  # (N, C_out) int32
    dtype = np.result_type(sx.dtype, sw.dtype)
    sx2 = sx.reshape(-1, 1) if sx.ndim else sx  # (N, 1) or ()
    sw2 = sw.reshape(1, -1) if sw.ndim else sw  # (1, C_out) or ()
    # y_ij = s_x_i s_w_j acc_ij
    y = acc.astype(dtype) * (sx2 * sw2)  # (N, C_out)
    if bias is not None:
        y = y + np.asarray(bias, dtype=dtype)
    return y.reshape(*qx.shape[:-1], qw.shape[0])  # (..., C_out)


def int8_matmul_error_bound(x: Any, w: Any, sx: Any, sw: Any) -> np.ndarray:
    """An upper bound on |int8_matmul(q(x), q(w)) - x @ w^T| for each output (..., C_out).

    With x^ = x + e_x, |e_x| <= s_x / 2 and w^ = w + e_w, |e_w| <= s_w / 2 (the quantisation
    bound, per element)::

        x^ w^ - x w = e_x w + x e_w + e_x e_w
        |y^_ij - y_ij| <= s_x_i/2 sum_k |w_jk| + s_w_j/2 sum_k |x_ik| + K s_x_i s_w_j / 4

    The integer sum itself is exact; only the final float multiply adds a rounding (relative
    eps of the output dtype) on top.
    """
    x, w = np.abs(np.asarray(x, dtype=np.float64)), np.abs(np.asarray(w, dtype=np.float64))
    sx, sw = np.asarray(sx, dtype=np.float64), np.asarray(sw, dtype=np.float64)
    K = x.shape[-1]
    sx_ = sx if sx.ndim == 0 else sx  # (..., 1) or ()
    sw_ = sw.reshape(-1) if sw.ndim else sw  # (C_out,) or ()
    return (sx_ / 2 * w.sum(axis=-1) + sw_ / 2 * x.sum(axis=-1, keepdims=True)
            + K * sx_ * sw_ / 4)  # (..., C_out)


def pack_int4(q: Any) -> np.ndarray:
    """Two int4 values per byte: q (..., 2n) int8 in [-8, 7] -> (..., n) uint8.

    Byte i holds q[2i] in its low nibble and q[2i+1] in its high nibble, each as a 4-bit
    two's complement (q & 0xF).
    """
    q = np.asarray(q)
    if not np.issubdtype(q.dtype, np.integer) or q.ndim == 0 or q.shape[-1] % 2:
        raise ValueError(f"pack_int4: q must be integers with an even last axis, got "
                         f"{q.dtype} of shape {q.shape}")
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError(f"pack_int4: values must be in [-8, 7], got [{q.min()}, {q.max()}]")
    u = (q.astype(np.int16) & 0xF).astype(np.uint8)  # (..., 2n) nibbles
    # byte = low | high << 4
    return u[..., 0::2] | (u[..., 1::2] << 4)  # (..., n)


def unpack_int4(packed: Any) -> np.ndarray:
    """Inverse of ``pack_int4``: (..., n) uint8 -> (..., 2n) int8 in [-8, 7]."""
    p = np.asarray(packed, dtype=np.uint8)
    nib = np.stack([p & 0xF, p >> 4], axis=-1).astype(np.int8)  # (..., n, 2)
    # a nibble >= 8 is negative in 4-bit two's complement: v - 16
    nib = np.where(nib >= 8, nib - 16, nib).astype(np.int8)
    return nib.reshape(*p.shape[:-1], 2 * p.shape[-1])  # (..., 2n)


def quantize_state_dict(state_dict: Mapping[str, Any], bits: int = 8, per_channel: bool = True,
                        group_size: int | None = None) -> dict[str, np.ndarray]:
    """A flat dict of arrays ready for safetensors: every 2-D float array ``name`` becomes
    ``name.int8`` (int8, bits=8) or ``name.int4`` (packed uint8, bits=4) and ``name.scale``;
    every other array is copied as it is (biases, LayerNorm weights)."""
    check_bits(bits)
    out: dict[str, np.ndarray] = {}
    for name, v in state_dict.items():
        a = to_numpy(v)
        if a.ndim == 2 and np.issubdtype(a.dtype, np.floating):
            q, s = quantize(a, bits, per_channel, group_size)
            if bits == 8:
                out[name + ".int8"] = q
            else:
                if a.shape[-1] % 2:
                    raise ValueError(f"int4 packing needs an even number of columns; "
                                     f"{name} has shape {a.shape}")
                out[name + ".int4"] = pack_int4(q)
            out[name + ".scale"] = np.asarray(s)
        else:
            out[name] = np.array(a, copy=True)
    return out


def dequantize_state_dict(qstate: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The float state dict back from ``quantize_state_dict``'s output (names restored)."""
    out: dict[str, np.ndarray] = {}
    for key, v in qstate.items():
        a = to_numpy(v)
        if key.endswith(".int8"):
            name = key[: -len(".int8")]
            out[name] = dequantize(a, _scale_of(qstate, name))
        elif key.endswith(".int4"):
            name = key[: -len(".int4")]
            out[name] = dequantize(unpack_int4(a), _scale_of(qstate, name))
        elif not key.endswith(".scale"):
            out[key] = np.array(a, copy=True)
    return out


def state_dict_bytes(state_dict: Mapping[str, Any]) -> int:
    """Bytes the arrays really hold: sum of ``nbytes`` (int8 values, packed int4 bytes, float
    scales and every float array), a tied matrix counted once (it is one key)."""
    return int(sum(to_numpy(v).nbytes for v in state_dict.values()))


class QuantizedTransformerLM:
    """The ``TransformerLM`` forward with its Linear layers run as integer matmuls.

    Built from a float state dict (quantised here, int8, ``per_channel`` or per tensor)::

        x = deq(tok_emb)[idx] + deq(pos_emb)[0..T-1]
        every Linear in every block:  y = int8_matmul(q(x), s_x, q_W, s_W) + b   (activations="int8")
                                      y = x deq(W)^T + b                       (activations=None)
        logits = ln_f(x) deq(W_head)^T

    ``activations="int8"`` quantises the input of every block Linear per token, at run time;
    ``None`` is weight-only. The output head shares its matrix with the embedding (when tied)
    and runs weight-only in both twins, as does attention's softmax(q k^T / sqrt(D)) v.
    Pre-LayerNorm models only; no KV cache (generate with ``use_cache=False``).
    """

    LINEARS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.fc", "mlp.proj")

    def __init__(self, config: TransformerConfig, state_dict: Mapping[str, Any],
                 activations: str | None = "int8", per_channel: bool = True,
                 dtype: Any = np.float32) -> None:
        if not isinstance(config, TransformerConfig):
            raise ValueError(f"config must be a TransformerConfig, got {type(config).__name__}")
        if getattr(config, "norm", "pre") != "pre":
            raise ValueError(f"QuantizedTransformerLM: only pre-LayerNorm models, got norm={config.norm!r}")
        if activations not in ("int8", None):
            raise ValueError(f"activations must be 'int8' or None, got {activations!r}")
        self.config, self.activations = config, activations
        self.dtype = np.dtype(dtype)
        self.float = {k: to_numpy(v).astype(self.dtype) for k, v in state_dict.items()}
        self.q = {k: quantize(v, 8, per_channel) for k, v in self.float.items() if v.ndim == 2}
        # what the forward reads: dequantised matrices, float vectors
        self.deq = {k: dequantize(*self.q[k]) if k in self.q else v for k, v in self.float.items()}

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        qw, sw = self.q[name + ".weight"]
        b = self.deq[name + ".bias"]
        if self.activations is None:
            return x @ self.deq[name + ".weight"].T + b  # (B, T, C_out)
        qx, sx = quantize_activations(x)  # (B, T, C_in) int8, (B, T, 1)
        return int8_matmul(qx, sx, qw, sw, b).astype(self.dtype)  # (B, T, C_out)

    def forward(self, idx: Any) -> np.ndarray:
        """Logits (B, T, V) for integer tokens idx (B, T)."""
        cfg, P = self.config, self.deq
        idx = np.asarray(idx)
        B, T = idx.shape
        n_rep = cfg.n_head // cfg.n_kv_head
        x = P["tok_emb.weight"][idx] + P["pos_emb.weight"][:T]  # (B, T, C)
        for i in range(cfg.n_layer):
            b = f"blocks.{i}."
            h, _ = layer_norm_forward(x, P[b + "ln1.weight"], P[b + "ln1.bias"])  # (B, T, C)
            q = split_heads(self._linear(h, b + "attn.q_proj"), cfg.n_head)  # (B, H, T, D)
            k = split_heads(self._linear(h, b + "attn.k_proj"), cfg.n_kv_head)  # (B, Hkv, T, D)
            v = split_heads(self._linear(h, b + "attn.v_proj"), cfg.n_kv_head)  # (B, Hkv, T, D)
            k, v = np.repeat(k, n_rep, axis=1), np.repeat(v, n_rep, axis=1)  # (B, H, T, D)
            o = scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
            # x = x + attn(ln1(x))
            x = x + self._linear(merge_heads(o), b + "attn.o_proj")  # (B, T, C)
            h, _ = layer_norm_forward(x, P[b + "ln2.weight"], P[b + "ln2.bias"])  # (B, T, C)
            a, _ = gelu_forward(self._linear(h, b + "mlp.fc"))  # (B, T, F)
            # x = x + mlp(ln2(x))
            x = x + self._linear(a, b + "mlp.proj")  # (B, T, C)
        h, _ = layer_norm_forward(x, P["ln_f.weight"], P["ln_f.bias"])  # (B, T, C)
        W_head = P["tok_emb.weight" if cfg.tie_weights else "lm_head.weight"]  # (V, C)
        return h @ W_head.T  # (B, T, V)

    __call__ = forward


# ---------------------------------------------------------------------------------------------
# Checks


def check_bits(bits: Any) -> int:
    """Q = 2^(bits-1) - 1 for a supported bit width (8 or 4); ValueError for any other."""
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"unknown bit width {bits!r}: supported are {list(BITS)}")
    return 2 ** (int(bits) - 1) - 1


def _check_weight(w: Any, name: str = "quantize") -> np.ndarray:
    """w as a finite float array (float32/float64; narrower floats widened to float32)."""
    w = to_numpy(w)
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"{name}: expected a floating-point array, got dtype {w.dtype}")
    if w.dtype not in (np.float32, np.float64):
        w = w.astype(np.float32)
    if w.size == 0:
        raise ValueError(f"{name}: got an empty array of shape {w.shape}")
    if not np.isfinite(w).all():
        bad = w[~np.isfinite(w)]
        raise ValueError(f"{name}: values must be finite, got {bad.size} non-finite (e.g. {bad[0]})")
    return w


def _blocks(w: np.ndarray, per_channel: bool, group_size: int | None) -> np.ndarray:
    """w viewed as (R, n_groups, G): the blocks that share one scale."""
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        if w.ndim != 2:
            raise ValueError(f"group-wise quantisation needs a 2-D (C_out, C_in) weight, got shape {w.shape}")
        if w.shape[1] % group_size:
            raise ValueError(f"group_size {group_size} does not divide C_in = {w.shape[1]} "
                             f"(weight of shape {w.shape})")
        return w.reshape(w.shape[0], w.shape[1] // group_size, group_size)  # (C_out, n_groups, G)
    if per_channel:
        if w.ndim < 2:
            raise ValueError(f"per-channel quantisation needs a weight with an output axis, got shape {w.shape}")
        return w.reshape(w.shape[0], 1, -1)  # (C_out, 1, C_in)
    return w.reshape(1, 1, -1)  # (1, 1, N)


def _check_int8_operands(qx: np.ndarray, sx: np.ndarray, qw: np.ndarray, sw: np.ndarray) -> None:
    for name, a in (("qx", qx), ("qw", qw)):
        if a.dtype != np.int8:
            raise ValueError(f"int8_matmul: {name} must be int8, got {a.dtype}")
    if qw.ndim != 2 or qx.ndim < 1 or qx.shape[-1] != qw.shape[1]:
        raise ValueError(f"int8_matmul: qx (..., K) and qw (C_out, K) do not fit: {qx.shape}, {qw.shape}")
    if qx.shape[-1] > MAX_K_INT32:
        raise ValueError(f"int8_matmul: K = {qx.shape[-1]} > {MAX_K_INT32} could overflow int32")
    if sx.ndim and sx.shape != (*qx.shape[:-1], 1):
        raise ValueError(f"int8_matmul: sx must be () or {(*qx.shape[:-1], 1)}, got {sx.shape}")
    if sw.ndim and sw.shape != (qw.shape[0], 1):
        raise ValueError(f"int8_matmul: sw must be () or {(qw.shape[0], 1)}, got {sw.shape}")


def _scale_of(qstate: Mapping[str, Any], name: str) -> np.ndarray:
    if name + ".scale" not in qstate:
        raise ValueError(f"quantised state dict: {name} has values but no {name}.scale")
    return to_numpy(qstate[name + ".scale"])

