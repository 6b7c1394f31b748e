"""The PyTorch twin of ``minilm.numpy.quantize``: the same symmetric int8/int4 quantiser, the
int8 x int8 -> int32 matmul, and a Transformer whose Linear layers run on integers.

Same maths, same names, same results (``round`` is round-half-to-even in both, scales are
computed in float64 and rounded up into the weight's dtype)::

    s = max_block |w| / Q;   q = clamp(round(w / s), -Q, Q);   deq = s q;   |w - deq| <= s / 2
    y_ij = s_x_i s_w_j sum_k qx_ik qw_jk                     (int8 x int8 -> int32, then scaled)

``QuantizedTransformerLM(config, state_dict, activations="int8")`` is a ``TransformerLM``
whose block Linears are ``QuantizedLinear`` modules (int8 weight buffers, one scale per
output channel, activations quantised per token at run time); its embeddings and output
head hold the dequantised int8 matrices. Everything else (KV cache, ``generate``) is the
ordinary model's.

``dynamic_quantize(model)`` is the peer a PyTorch user would pick instead:
``torch.ao.quantization.quantize_dynamic`` on a copy of the model whose ``minilm`` Linear
modules are swapped for ``torch.nn.Linear`` (``quantize_dynamic`` only recognises those).
That quantises the block Linears to int8 with ONE scale per tensor and quantises the
activations per tensor (per batch), asymmetric, at run time; the tied output head, which is
``F.linear`` with the embedding matrix, stays float32. ``torch.ao.quantization`` is
deprecated upstream (in favour of torchao); its warnings are silenced here.

Deliberately left out: pack/unpack of int4 (storage is framework-free, NumPy's
``pack_int4``), integer kernels on CUDA (there the int32 sum is computed in float64, which
holds every such sum exactly), backward through quantised layers.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Mapping

import torch
from torch import nn

from minilm.config import TransformerConfig
from minilm.numpy.quantize import BITS, MAX_K_INT32, check_bits
from minilm.torch.layers import Linear
from minilm.torch.transformer import TransformerLM

__all__ = ["BITS", "quantize", "dequantize", "quantize_activations", "int8_matmul",
           "QuantizedLinear", "QuantizedTransformerLM", "dynamic_quantize"]


def quantize(w: Any, bits: int = 8, per_channel: bool = False,
             group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantisation of w to ``bits`` (8 or 4): ``(q int8, scale)``, shapes as NumPy's:
    scale () per tensor, (C_out, 1) per channel, (C_out, C_in / G) group-wise."""
    w = _check_weight(w)
    qmax = check_bits(bits)
    sdtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    wg = _blocks(w, per_channel, group_size).to(torch.float64)  # (R, n_groups, G)
    # s = max |w| / Q over each block, in float64, then rounded up into the scale's dtype
    amax = wg.abs().amax(dim=-1)  # (R, n_groups)
    scale = (amax / qmax).to(sdtype)  # (R, n_groups)
    for _ in range(3):  # rounding (to float32, or in a subnormal) can leave Q s < max|w|: step up
        low = scale.to(torch.float64) * qmax < amax
        if not bool(low.any()):
            break
        scale = torch.where(low, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)
    # q = clamp(round(w / s), -Q, Q); a zero block (s = 0) divides by 1 instead: q = 0
    safe = torch.where(scale == 0, torch.ones_like(amax), scale.to(torch.float64))[..., None]  # (R, n_groups, 1)
    q = torch.clamp(torch.round(wg / safe), -qmax, qmax).to(torch.int8)  # (R, n_groups, G)
    q = q.reshape(w.shape)
    if not per_channel and group_size is None:
        return q, scale.reshape(())
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """deq = scale * q, block by block (layout read from scale's shape, as in NumPy)."""
    if scale.dim() == 0:
        # deq = s q
        return scale * q.to(scale.dtype)
    R, n_groups = scale.shape
    if q.shape[0] != R or q[0].numel() % n_groups:
        raise ValueError(f"dequantize: scale of shape {tuple(scale.shape)} does not fit q of shape {tuple(q.shape)}")
    qg = q.reshape(R, n_groups, -1).to(scale.dtype)  # (R, n_groups, G)
    # deq = s_block q
    return (qg * scale[..., None]).reshape(q.shape)


def quantize_activations(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token quantisation: x (..., K) -> (qx (..., K) int8, sx (..., 1))."""
    x = _check_weight(x, "quantize_activations")
    if x.dim() == 0:
        raise ValueError("quantize_activations: x must have at least one axis (..., K)")
    q, s = quantize(x.reshape(-1, x.shape[-1]), bits, per_channel=True)  # (N, K), (N, 1)
    return q.reshape(x.shape), s.reshape(*x.shape[:-1], 1)


def int8_matmul(qx: torch.Tensor, sx: torch.Tensor, qw: torch.Tensor, sw: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = (s_x s_w^T) * (qx @ qw^T) [+ b], the int32 sum exact (see the NumPy twin)."""
    _check_int8_operands(qx, sx, qw, sw)
    K = qx.shape[-1]
    qx2 = qx.reshape(-1, K)  # (N, K)
    # acc_ij = sum_k qx_ik qw_jk     (int8 x int8 -> int32)
    if qx.device.type == "cpu":
        acc = qx2.to(torch.int32) @ qw.to(torch.int32).T  # (N, C_out) int32
    else:  # no int32 matmul there: float64 holds these integer sums exactly (|acc| < 2^31)
        acc = (qx2.to(torch.float64) @ qw.to(torch.float64).T).to(torch.int32)  # (N, C_out)
    dtype = torch.promote_types(sx.dtype, sw.dtype)
    sx2 = sx.reshape(-1, 1) if sx.dim() else sx  # (N, 1) or ()
    sw2 = sw.reshape(1, -1) if sw.dim() else sw  # (1, C_out) or ()
    # y_ij = s_x_i s_w_j acc_ij
    y = acc.to(dtype) * (sx2 * sw2)  # (N, C_out)
    if bias is not None:
        y = y + bias.to(dtype)
    return y.reshape(*qx.shape[:-1], qw.shape[0])  # (..., C_out)


class QuantizedLinear(nn.Module):
    """y = int8_matmul(q(x), s_x, q_W, s_W) + b, or weight-only y = x deq(W)^T + b.

    Buffers ``qweight`` (C_out, C_in) int8, ``scale`` (C_out, 1) or (), ``bias`` (C_out,).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, activations: str | None = "int8",
                 per_channel: bool = True) -> None:
        super().__init__()
        if activations not in ("int8", None):
            raise ValueError(f"activations must be 'int8' or None, got {activations!r}")
        q, s = quantize(weight.detach(), 8, per_channel)
        self.register_buffer("qweight", q)  # (C_out, C_in) int8
        self.register_buffer("scale", s)  # (C_out, 1) or ()
        self.register_buffer("bias", None if bias is None else bias.detach().clone())  # (C_out,)
        self.activations = activations

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (C_out, C_in)."""
        return dequantize(self.qweight, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations is None:
            y = x @ self.weight.to(x.dtype).T  # (..., C_out)
            return y if self.bias is None else y + self.bias
        qx, sx = quantize_activations(x)  # (..., C_in) int8, (..., 1)
        return int8_matmul(qx, sx, self.qweight, self.scale, self.bias).to(x.dtype)  # (..., C_out)


class QuantizedTransformerLM(TransformerLM):
    """``TransformerLM`` with int8 block Linears (see the module docstring), the twin of
    ``minilm.numpy.quantize.QuantizedTransformerLM``: same arguments, same logits."""

    LINEARS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.fc", "mlp.proj")

    def __init__(self, config: TransformerConfig, state_dict: Mapping[str, Any],
                 activations: str | None = "int8", per_channel: bool = True,
                 dtype: torch.dtype = torch.float32, attention: str = "sdpa") -> None:
        if getattr(config, "norm", "pre") != "pre":
            raise ValueError(f"QuantizedTransformerLM: only pre-LayerNorm models, got norm={config.norm!r}")
        if activations not in ("int8", None):
            raise ValueError(f"activations must be 'int8' or None, got {activations!r}")
        super().__init__(config, attention=attention)
        self.to(dtype)
        # embeddings and head: the dequantised int8 matrices; vectors as they are
        deq = {}
        for k, v in state_dict.items():
            t = v if isinstance(v, torch.Tensor) else torch.as_tensor(v)
            t = t.to(dtype)
            deq[k] = dequantize(*quantize(t, 8, per_channel)) if t.dim() == 2 else t
        self.load_state_dict(deq)
        self.activations = activations
        with torch.no_grad():
            for block in self.blocks:
                for path in self.LINEARS:
                    parent_name, child = path.split(".")
                    parent = getattr(block, parent_name)
                    lin = getattr(parent, child)
                    setattr(parent, child, QuantizedLinear(lin.weight, lin.bias, activations, per_channel))


def dynamic_quantize(model: nn.Module) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` (int8) on a copy of ``model`` whose minilm
    ``Linear`` modules became ``torch.nn.Linear`` (the same weights)."""
    m = copy.deepcopy(model).float().cpu().eval()
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Linear):
                lin = nn.Linear(child.weight.shape[1], child.weight.shape[0], bias=child.bias is not None)
                with torch.no_grad():
                    lin.weight.copy_(child.weight)
                    if child.bias is not None:
                        lin.bias.copy_(child.bias)
                setattr(parent, name, lin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        return torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)


# ---------------------------------------------------------------------------------------------
# Checks


def _check_weight(w: Any, name: str = "quantize") -> torch.Tensor:
    """w as a finite float tensor (float32/float64; narrower floats widened to float32)."""
    if not isinstance(w, torch.Tensor):
        w = torch.as_tensor(w)
    if not w.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {w.dtype}")
    if w.dtype not in (torch.float32, torch.float64):
        w = w.to(torch.float32)
    if w.numel() == 0:
        raise ValueError(f"{name}: got an empty tensor of shape {tuple(w.shape)}")
    finite = torch.isfinite(w)
    if not bool(finite.all()):
        bad = w[~finite]
        raise ValueError(f"{name}: values must be finite, got {bad.numel()} non-finite (e.g. {bad[0].item()})")
    return w


def _blocks(w: torch.Tensor, per_channel: bool, group_size: int | None) -> torch.Tensor:
    """w viewed as (R, n_groups, G): the blocks that share one scale."""
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        if w.dim() != 2:
            raise ValueError(f"group-wise quantisation needs a 2-D (C_out, C_in) weight, got shape {tuple(w.shape)}")
        if w.shape[1] % group_size:
            raise ValueError(f"group_size {group_size} does not divide C_in = {w.shape[1]} "
                             f"(weight of shape {tuple(w.shape)})")
        return w.reshape(w.shape[0], w.shape[1] // group_size, group_size)  # (C_out, n_groups, G)
    if per_channel:
        if w.dim() < 2:
            raise ValueError(f"per-channel quantisation needs a weight with an output axis, got shape {tuple(w.shape)}")
        return w.reshape(w.shape[0], 1, -1)  # (C_out, 1, C_in)
    return w.reshape(1, 1, -1)  # (1, 1, N)


def _check_int8_operands(qx: torch.Tensor, sx: torch.Tensor, qw: torch.Tensor, sw: torch.Tensor) -> None:
    for name, a in (("qx", qx), ("qw", qw)):
        if a.dtype != torch.int8:
            raise ValueError(f"int8_matmul: {name} must be int8, got {a.dtype}")
    if qw.dim() != 2 or qx.dim() < 1 or qx.shape[-1] != qw.shape[1]:
        raise ValueError(f"int8_matmul: qx (..., K) and qw (C_out, K) do not fit: "
                         f"{tuple(qx.shape)}, {tuple(qw.shape)}")
    if qx.shape[-1] > MAX_K_INT32:
        raise ValueError(f"int8_matmul: K = {qx.shape[-1]} > {MAX_K_INT32} could overflow int32")
    if sx.dim() and tuple(sx.shape) != (*qx.shape[:-1], 1):
        raise ValueError(f"int8_matmul: sx must be () or {(*qx.shape[:-1], 1)}, got {tuple(sx.shape)}")
    if sw.dim() and tuple(sw.shape) != (qw.shape[0], 1):
        raise ValueError(f"int8_matmul: sw must be () or {(qw.shape[0], 1)}, got {tuple(sw.shape)}")
