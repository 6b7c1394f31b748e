"""The layers of a language model in PyTorch: the twins of ``minilm.numpy.layers``.

Each ``nn.Module`` here computes what the NumPy pair ``<layer>_forward`` / ``_backward``
computes; autograd supplies the backward. Parameter names are the NumPy dict keys, so a
``state_dict`` moves between the twins unchanged:

| module | parameters | NumPy twin |
| --- | --- | --- |
| ``Embedding(V, C)`` | ``weight`` (V, C) | ``embedding_forward`` |
| ``Linear(C_in, C_out, bias=True)`` | ``weight`` (C_out, C_in), ``bias`` (C_out,) | ``linear_forward`` |
| ``torch.nn.LayerNorm(C)`` | ``weight``, ``bias`` (C,); eps 1e-5 | ``layer_norm_forward`` |
| ``gelu`` | | ``gelu_forward`` (tanh approximation) |
| ``MLP(C, F)`` | ``fc.*``, ``proj.*`` | ``mlp_forward`` |
| ``CausalSelfAttention(C, H, Hkv, is_causal=True)`` | ``q_proj.*``, ``k_proj.*``, ``v_proj.*``, ``o_proj.*`` | ``attention_forward`` |
| ``Block(config, is_causal=True)``, pre- or post-LN by ``config.norm`` | ``ln1.*``, ``attn.*``, ``ln2.*``, ``mlp.*`` | ``block_forward`` |

``Embedding`` and ``Linear`` are written out (rather than ``torch.nn``'s) so that building
one draws nothing from torch's global random generator: parameters start uninitialised
(``torch.empty``) and the models fill them from the NumPy initialisation.

Attention backends (``attention=`` of ``CausalSelfAttention``/``Block``):

- ``"naive"``: softmax(q k^T / sqrt(D) + mask) v by ``minilm.torch.attention`` (the NumPy code's twin);
- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (``enable_gqa=True``);
- ``"triton"``: ``minilm.kernels.flash_attention`` (imported when a ``TransformerLM`` with it is
  built, or on first use). The kernel only has top-left causal masking with L == S, so a
  KV-cache step with 1 < T_new and cached keys (a chunked prefill) runs through ``"sdpa"``
  with an explicit mask instead.

Dropout (``p = config.dropout``) is applied, in training mode only, to the output of each
residual branch (attention and MLP), as the config describes; the NumPy layers have none.

``check_targets`` is the twin of the NumPy models' target check (``minilm.numpy.layers``):
both PyTorch models validate their targets with it, so a bad target is the same ValueError
in both frameworks (torch's own ``cross_entropy`` would give an IndexError, or silently cast
float targets). ``check_triton_head_dim`` tells at construction whether the Triton kernel
covers the model's head dim.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minilm.torch.attention import merge_heads, scaled_dot_product_attention, split_heads

__all__ = ["ATTENTION_BACKENDS", "Embedding", "Linear", "gelu", "MLP", "KVCacheLayer",
           "CausalSelfAttention", "Block", "check_targets", "check_triton_head_dim"]

ATTENTION_BACKENDS = ("naive", "sdpa", "triton")


class Embedding(nn.Module):
    """y = W[idx]: idx (...) ints, W (V, C) -> (..., C)."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))  # (V, C)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight)  # (..., C)


class Linear(nn.Module):
    """y = x W^T + b: x (..., C_in), W (C_out, C_in), b (C_out,) -> (..., C_out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))  # (C_out, C_in)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None  # (C_out,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)  # (..., C_out)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation: x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))."""
    return F.gelu(x, approximate="tanh")


class MLP(nn.Module):
    """y = proj(gelu(fc(x))): (B, T, C) -> (B, T, C) through hidden width F."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.fc = Linear(d_model, d_ff)
        self.proj = Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(gelu(self.fc(x)))  # (B, T, C)


class KVCacheLayer:
    """One layer's key/value cache: k, v (B, Hkv, T_max, D); the first ``length`` are filled."""

    def __init__(self, batch_size: int, n_kv_head: int, max_length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (batch_size, n_kv_head, max_length, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (B, Hkv, T_max, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)  # (B, Hkv, T_max, D)
        self.length = 0


def _triton_flash_attention():
    try:
        from minilm.kernels import flash_attention
    except Exception as exc:  # ImportError, or triton failing to set itself up
        raise RuntimeError(
            f'attention="triton" needs minilm.kernels.flash_attention, which failed to import: '
            f"{type(exc).__name__}: {exc}. Install the extra (`pip install 'minilm[triton]'`, "
            'Linux only), set TRITON_INTERPRET=1 on a machine without a CUDA GPU, or use '
            'attention="sdpa"'
        ) from exc
    return flash_attention


def check_triton_head_dim(d_model: int, n_head: int) -> None:
    """ValueError unless the Triton kernel covers D = d_model / n_head (its MIN_HEAD_DIM ..
    MAX_HEAD_DIM, read from ``minilm.kernels.flash_attention``, which this imports)."""
    _triton_flash_attention()  # the clear error if the kernels cannot be imported
    kernel = importlib.import_module("minilm.kernels.flash_attention")
    D = d_model // n_head
    if not kernel.MIN_HEAD_DIM <= D <= kernel.MAX_HEAD_DIM:
        raise ValueError(
            f'attention="triton": head dim D = d_model / n_head = {d_model} / {n_head} = {D} is '
            f"outside the kernel's [{kernel.MIN_HEAD_DIM}, {kernel.MAX_HEAD_DIM}]; change d_model "
            'or n_head, or use attention="sdpa"')


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with Hkv key/value heads: (B, T, C) -> (B, T, C).

    Causal by default; ``is_causal=False`` gives the encoder's bidirectional attention, and
    ``forward(x, key_padding_mask=m)`` with m (B, T) bool (True = real token) hides padded keys
    (the twin of ``attention_forward``'s arguments of the same names).
    """

    def __init__(self, d_model: int, n_head: int, n_kv_head: int, attention: str = "sdpa",
                 is_causal: bool = True) -> None:
        super().__init__()
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
        self.is_causal = bool(is_causal)
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_dim = d_model // n_head
        self.attention = attention
        self.q_proj = Linear(d_model, n_head * self.head_dim)
        self.k_proj = Linear(d_model, n_kv_head * self.head_dim)
        self.v_proj = Linear(d_model, n_kv_head * self.head_dim)
        self.o_proj = Linear(n_head * self.head_dim, d_model)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t0: int) -> torch.Tensor:
        """q (B, H, T, D) at positions t0.., k, v (B, Hkv, S, D) at 0..S-1 -> (B, H, T, D)."""
        T, S = q.shape[2], k.shape[2]
        n_rep = self.n_head // self.n_kv_head
        # bottom-right causal: query i sits at position t0 + i and sees keys j <= t0 + i
        # (with t0 == 0 this is the ordinary top-left causal mask)
        backend = self.attention
        if backend == "triton" and t0 > 0 and T > 1:
            backend = "sdpa"  # the kernel's causal mask needs L == S (see the module docstring)
        if backend == "triton":
            flash_attention = _triton_flash_attention()
            return flash_attention(q, k, v, is_causal=(T > 1))  # (B, H, T, D)
        mask = None
        if t0 > 0 and T > 1:
            mask = torch.arange(S, device=q.device)[None, :] <= (t0 + torch.arange(T, device=q.device))[:, None]  # (T, S)
        is_causal = t0 == 0 and T > 1
        if backend == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                                  enable_gqa=n_rep > 1)  # (B, H, T, D)
        # each key/value head serves n_rep consecutive query heads
        k = k.repeat_interleave(n_rep, dim=1)  # (B, H, S, D)
        v = v.repeat_interleave(n_rep, dim=1)  # (B, H, S, D)
        # out = softmax(q k^T / sqrt(D) + causal mask) v
        return scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)  # (B, H, T, D)

    def _attend_masked(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Bidirectional and/or padded attention (no cache): q (B, H, T, D), k, v (B, Hkv, T, D)."""
        n_rep = self.n_head // self.n_kv_head
        # key j is visible to every query of its row when key_padding_mask[b, j] is True
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]  # (B, 1, 1, T)
        if self.attention == "triton" and mask is None:
            return _triton_flash_attention()(q, k, v, is_causal=self.is_causal)  # (B, H, T, D)
        if self.attention == "naive":
            k = k.repeat_interleave(n_rep, dim=1)  # (B, H, T, D)
            v = v.repeat_interleave(n_rep, dim=1)  # (B, H, T, D)
            # out = softmax(q k^T / sqrt(D) + mask) v
            return scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.is_causal)
        # sdpa (the kernel has no padding mask, so "triton" with one comes here too)
        if mask is not None and self.is_causal:
            T = q.shape[2]
            mask = mask & torch.ones(T, T, dtype=torch.bool, device=q.device).tril()  # (B, 1, T, T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                              is_causal=self.is_causal and mask is None,
                                              enable_gqa=n_rep > 1)  # (B, H, T, D)

    def forward(self, x: torch.Tensor, kv_cache: KVCacheLayer | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        T = x.shape[1]
        q = split_heads(self.q_proj(x), self.n_head)  # (B, H, T, D)
        k = split_heads(self.k_proj(x), self.n_kv_head)  # (B, Hkv, T, D)
        v = split_heads(self.v_proj(x), self.n_kv_head)  # (B, Hkv, T, D)
        if not self.is_causal or key_padding_mask is not None:
            if kv_cache is not None:
                raise ValueError("a KV cache needs causal attention without a padding mask")
            return self.o_proj(merge_heads(self._attend_masked(q, k, v, key_padding_mask)))  # (B, T, C)
        t0 = 0
        if kv_cache is not None:
            # inference only: the cache holds detached copies
            t0 = kv_cache.length
            kv_cache.k[:, :, t0 : t0 + T] = k.detach()
            kv_cache.v[:, :, t0 : t0 + T] = v.detach()
            k = kv_cache.k[:, :, : t0 + T]  # (B, Hkv, S, D)
            v = kv_cache.v[:, :, : t0 + T]  # (B, Hkv, S, D)
        o = self._attend(q, k, v, t0)  # (B, H, T, D)
        return self.o_proj(merge_heads(o))  # (B, T, C)


class Block(nn.Module):
    """Transformer block, (B, T, C) -> (B, T, C), LayerNorms placed by ``config.norm``:
    "pre": x = x + attn(ln1(x)); x = x + mlp(ln2(x)).  "post": x = ln1(x + attn(x)); x = ln2(x + mlp(x)).
    """

    def __init__(self, config: Any, attention: str = "sdpa", is_causal: bool = True) -> None:
        super().__init__()
        self.norm = getattr(config, "norm", "pre")
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config.d_model, config.n_head, config.n_kv_head, attention,
                                        is_causal)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config.d_model, config.d_ff)
        self.dropout = float(config.dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCacheLayer | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm == "post":
            # x = ln1(x + attn(x));  x = ln2(x + mlp(x))   (dropout on the branches, training only)
            a = self.attn(x, kv_cache, key_padding_mask)
            x = self.ln1(x + F.dropout(a, self.dropout, self.training))
            x = self.ln2(x + F.dropout(self.mlp(x), self.dropout, self.training))
            return x  # (B, T, C)
        # x = x + attn(ln1(x))   (dropout on the branch, training mode only)
        x = x + F.dropout(self.attn(self.ln1(x), kv_cache, key_padding_mask), self.dropout, self.training)
        # x = x + mlp(ln2(x))
        x = x + F.dropout(self.mlp(self.ln2(x)), self.dropout, self.training)
        return x  # (B, T, C)


def to_tensor(x: Any) -> torch.Tensor:
    """A tensor of x: tensors as they are, NumPy arrays and lists through ``torch.as_tensor``
    (the twin of ``minilm.numpy.layers.to_numpy``)."""
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def check_targets(targets: Any, shape: tuple[int, ...], vocab_size: int, ignore_index: int = -100,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """targets as a long tensor of ``shape`` (B, T) on ``device``, each in [0, V) or
    ``ignore_index``; otherwise a ValueError naming the dtype, the shapes or (up to five of)
    the bad values. NumPy arrays and lists are accepted."""
    if not isinstance(targets, torch.Tensor):
        targets = torch.as_tensor(np.asarray(targets))
    if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
        raise ValueError(f"targets must hold integer token ids, got dtype {targets.dtype}")
    if tuple(targets.shape) != tuple(shape):
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal idx shape {tuple(shape)}")
    bad = targets[(targets != ignore_index) & ((targets < 0) | (targets >= vocab_size))]  # (n_bad,)
    if bad.numel():
        raise ValueError(f"targets must be in [0, {vocab_size}) or ignore_index={ignore_index}, "
                         f"got {bad[:5].tolist()}")
    return targets.to(device=device, dtype=torch.long)
