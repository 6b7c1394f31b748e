"""The PyTorch twin of ``minilm.numpy.transformer``: the same GPT-style model, autograd backward.

::

    x = tok_emb(idx) + pos_emb[0..T-1]             # (B, T, C)
    for each block: x = x + attn(ln1(x)); x = x + mlp(ln2(x))     # norm="pre"
                or x = ln1(x + attn(x)); x = ln2(x + mlp(x))     # norm="post"
    logits = ln_f(x) @ W_head^T                    # (B, T, V); W_head = tok_emb.weight when tied
                                                   # post-LN has no ln_f: logits = x @ W_head^T

Same ``state_dict`` keys and shapes as the NumPy model (listed in its module docstring); with
tied weights there is no ``lm_head.weight`` key, and ``parameters()`` yields the shared matrix
once. ``TransformerLM(config, seed)`` starts from ``minilm.numpy.transformer.init_params(config,
seed)``, so one seed gives the same weights in both twins, and building a model draws nothing
from torch's global random generator.

``attention`` picks the attention backend, ``"naive"``, ``"sdpa"`` or ``"triton"`` (see
``minilm.torch.layers``); all three compute the same function. ``config.dropout`` is applied to
the residual branches in training mode (``model.train()``) and not in ``model.eval()``.

KV cache: ``cache = model.init_cache(B)``, ``model(idx, cache=cache)``, exactly as in NumPy
(tensors on the model's device and dtype; inference only: the cache holds detached values).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minilm.config import TransformerConfig
from minilm.numpy.transformer import init_params
from minilm.torch.layers import (
    ATTENTION_BACKENDS,
    Block,
    Embedding,
    KVCacheLayer,
    Linear,
    check_targets,
    check_triton_head_dim,
    to_tensor,
)
from minilm.state_dicts import check_state_dict

__all__ = ["TransformerLM", "KVCache"]


class KVCache:
    """Per-layer keys and values (B, Hkv, T_max, D) of the positions seen so far; ``length``
    of them are filled (settable lower to rewind)."""

    def __init__(self, config: TransformerConfig, batch_size: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.max_length = config.context_length
        self.layers = [
            KVCacheLayer(self.batch_size, config.n_kv_head, config.context_length, config.head_dim,
                         dtype, device)
            for _ in range(config.n_layer)
        ]

    @property
    def length(self) -> int:
        """Number of positions cached so far."""
        return self.layers[0].length

    @length.setter
    def length(self, value: int) -> None:
        if not 0 <= value <= self.max_length:
            raise ValueError(f"cache length must be in [0, {self.max_length}], got {value}")
        for layer in self.layers:
            layer.length = int(value)


def _check_idx(idx: Any, config: TransformerConfig, device: torch.device, start: int = 0) -> torch.Tensor:
    """idx as an integer tensor (B, T) on ``device``, or a ValueError naming what is wrong."""
    if not isinstance(idx, torch.Tensor):
        idx = torch.as_tensor(np.asarray(idx))
    if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
        raise ValueError(f"idx must hold integer token ids, got dtype {idx.dtype}")
    if idx.dim() != 2:
        raise ValueError(f"idx must have shape (B, T), got shape {tuple(idx.shape)}")
    B, T = idx.shape
    if B == 0 or T == 0:
        raise ValueError(f"idx must be non-empty, got shape {tuple(idx.shape)}")
    if start + T > config.context_length:
        where = f"cache.length={start} + T={T}" if start else f"T={T}"
        raise ValueError(f"idx: {where} exceeds context_length={config.context_length}")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= config.vocab_size:
        raise ValueError(f"idx: token ids must be in [0, {config.vocab_size}), got min {lo}, max {hi}")
    return idx.to(device=device, dtype=torch.long)


class TransformerLM(nn.Module):
    """Decoder-only Transformer LM, the twin of ``minilm.numpy.TransformerLM``.

    Args:
        config: the model's shape.
        seed: the NumPy initialisation's seed (``init_params(config, seed)``).
        attention: ``"naive"``, ``"sdpa"`` (default) or ``"triton"``; ``"triton"`` needs a head
            dim D = d_model / n_head in [8, 128] (ValueError here otherwise).
    """

    def __init__(self, config: TransformerConfig, seed: int = 0, attention: str = "sdpa") -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise ValueError(f"config must be a TransformerConfig, got {type(config).__name__}")
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
        if attention == "triton":
            # now rather than at the first forward (this imports minilm.kernels; nothing else does)
            check_triton_head_dim(config.d_model, config.n_head)
        self.config = config
        self.attention = attention
        self.tok_emb = Embedding(config.vocab_size, config.d_model)
        self.pos_emb = Embedding(config.context_length, config.d_model)
        self.blocks = nn.ModuleList(Block(config, attention) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model) if config.norm == "pre" else None
        self.lm_head = None if config.tie_weights else Linear(config.d_model, config.vocab_size, bias=False)
        self.load_state_dict(init_params(config, seed, np.float32))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load NumPy arrays or tensors (cast to each parameter's dtype and device).

        With ``strict`` (the default) raises ValueError naming missing keys, unexpected keys
        and shape mismatches before changing anything.
        """
        own = super().state_dict()
        tensors = {k: to_tensor(v) for k, v in state_dict.items()}
        check_state_dict({k: t.shape for k, t in own.items()}, {k: t.shape for k, t in tensors.items()}, strict)
        return super().load_state_dict(tensors, strict=strict, assign=assign)

    def _param(self) -> torch.Tensor:
        return self.tok_emb.weight

    def init_cache(self, batch_size: int) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences on the model's device and dtype."""
        w = self._param()
        return KVCache(self.config, batch_size, w.dtype, w.device)

    def forward(self, idx: Any, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, V) for integer tokens idx (B, T); with ``cache`` see ``init_cache``."""
        start = 0
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise ValueError(f"cache must come from init_cache, got {type(cache).__name__}")
            start = cache.length
        idx = _check_idx(idx, self.config, self._param().device, start)
        B, T = idx.shape
        if cache is not None and B != cache.batch_size:
            raise ValueError(f"idx has batch size {B} but the cache was made for {cache.batch_size}")
        # x = tok_emb[idx] + pos_emb[t0 .. t0+T-1]
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.tok_emb(idx) + self.pos_emb(pos)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i])  # (B, T, C)
        if self.ln_f is not None:
            x = self.ln_f(x)  # (B, T, C)
        # logits = ln_f(x) W_head^T
        W_head = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight  # (V, C)
        logits = F.linear(x, W_head)  # (B, T, V)
        if cache is not None:
            cache.length = start + T
        return logits

    def loss(self, idx: Any, targets: Any, ignore_index: int = -100) -> torch.Tensor:
        """Mean cross-entropy (nats) of the next-token predictions, differentiable."""
        logits = self.forward(idx)  # (B, T, V)
        targets = check_targets(targets, logits.shape[:2], self.config.vocab_size, ignore_index,
                                logits.device)  # (B, T)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=ignore_index)
