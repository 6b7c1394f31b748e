"""A GPT-style decoder-only Transformer language model in NumPy, with its whole backward by hand.

The model, in the notation of ``minilm.numpy.layers`` (B batch, T length, C width, V vocab)::

    x = tok_emb[idx] + pos_emb[0..T-1]              # (B, T, C)
    for each of the n_layer blocks:                  # norm="pre" (default), GPT-2 style
        x = x + attn(ln1(x))                         # causal, grouped-query heads
        x = x + mlp(ln2(x))                          # Linear(C, F), GELU(tanh), Linear(F, C)
    logits = ln_f(x) @ W_head^T                      # (B, T, V); W_head = tok_emb when tied

    with norm="post" (original Transformer / BERT placement) each block is instead
        x = ln1(x + attn(x));  x = ln2(x + mlp(x))
    and there is no ln_f: logits = x @ W_head^T (the last ln2 already normalised x)

Parameter names (``model.params`` and ``state_dict()`` keys, the same in the PyTorch twin
``minilm.torch.transformer``)::

    tok_emb.weight (V, C)                 pos_emb.weight (T_max, C)
    blocks.{i}.ln1.weight, .bias (C,)     blocks.{i}.ln2.weight, .bias (C,)
    blocks.{i}.attn.q_proj.weight (C, C)        .bias (C,)
    blocks.{i}.attn.k_proj.weight (Hkv*D, C)    .bias (Hkv*D,)
    blocks.{i}.attn.v_proj.weight (Hkv*D, C)    .bias (Hkv*D,)
    blocks.{i}.attn.o_proj.weight (C, C)        .bias (C,)
    blocks.{i}.mlp.fc.weight (F, C)  .bias (F,)  blocks.{i}.mlp.proj.weight (C, F)  .bias (C,)
    ln_f.weight, ln_f.bias (C,)           only when config.norm == "pre"
    lm_head.weight (V, C)                 only when config.tie_weights is False (no bias)

Initialisation (GPT-2 / nanoGPT), all from ``np.random.default_rng(seed)`` in the key order
above: every weight matrix and embedding ~ N(0, 0.02^2), except the two projections that write
into the residual stream (``attn.o_proj.weight``, ``mlp.proj.weight``) ~ N(0, (0.02 /
sqrt(2 n_layer))^2); biases 0; LayerNorm weights 1. The draws are made in float64 and rounded
to the model's dtype, so the float32 and float64 models of one seed agree to float32 rounding.

KV cache (inference): ``cache = model.init_cache(B)`` preallocates, per layer, keys and values
``(B, Hkv, T_max, D)``; ``model.forward(idx, cache=cache)`` treats idx ``(B, T_new)`` as the
tokens at positions ``cache.length .. cache.length + T_new - 1``, writes their keys/values,
attends over everything cached (bottom-right aligned causal mask) and advances
``cache.length``. The logits equal those of ``forward`` on the whole sequence.

Deliberately left out: dropout (``config.dropout`` is ignored here: the NumPy model is the
deterministic reference; the PyTorch twin applies it in training mode), attention masks other
than causal (no padding masks), mixed precision, any backward through the KV cache.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from minilm.config import TransformerConfig
from minilm.numpy.layers import (
    param_dtype,
    KVCacheLayer,
    block_backward,
    block_forward,
    check_targets,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    layer_norm_backward,
    layer_norm_forward,
    linear_backward,
    linear_forward,
    to_numpy,
)
from minilm.state_dicts import check_state_dict

__all__ = ["TransformerLM", "KVCache", "init_params", "param_shapes"]

INIT_STD = 0.02  # GPT-2's standard deviation for weights and embeddings


def param_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the canonical (initialisation) order."""
    V, T, C, F = config.vocab_size, config.context_length, config.d_model, config.d_ff
    Ckv = config.n_kv_head * config.head_dim  # Hkv * D
    shapes: dict[str, tuple[int, ...]] = {"tok_emb.weight": (V, C), "pos_emb.weight": (T, C)}
    for i in range(config.n_layer):
        b = f"blocks.{i}."
        shapes.update({
            b + "ln1.weight": (C,), b + "ln1.bias": (C,),
            b + "attn.q_proj.weight": (C, C), b + "attn.q_proj.bias": (C,),
            b + "attn.k_proj.weight": (Ckv, C), b + "attn.k_proj.bias": (Ckv,),
            b + "attn.v_proj.weight": (Ckv, C), b + "attn.v_proj.bias": (Ckv,),
            b + "attn.o_proj.weight": (C, C), b + "attn.o_proj.bias": (C,),
            b + "ln2.weight": (C,), b + "ln2.bias": (C,),
            b + "mlp.fc.weight": (F, C), b + "mlp.fc.bias": (F,),
            b + "mlp.proj.weight": (C, F), b + "mlp.proj.bias": (C,),
        })
    if config.norm == "pre":
        shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    if not config.tie_weights:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def init_params(config: TransformerConfig, seed: int = 0, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """GPT-2 initialisation from ``np.random.default_rng(seed)`` (see the module docstring).

    The PyTorch twin loads exactly these arrays, so one seed gives one set of weights.
    """
    rng = np.random.default_rng(seed)
    residual_std = INIT_STD / math.sqrt(2 * config.n_layer)
    params: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(config).items():
        if name.endswith("ln1.weight") or name.endswith("ln2.weight") or name == "ln_f.weight":
            p = np.ones(shape)
        elif name.endswith(".bias"):
            p = np.zeros(shape)
        elif name.endswith("o_proj.weight") or name.endswith("mlp.proj.weight"):
            p = rng.normal(0.0, residual_std, size=shape)
        else:
            p = rng.normal(0.0, INIT_STD, size=shape)
        params[name] = np.ascontiguousarray(p, dtype=dtype)
    return params


class KVCache:
    """Keys and values of the positions seen so far, for every layer.

    ``layers[i].k``, ``layers[i].v``: (B, Hkv, T_max, D), of which the first ``length``
    positions are filled. ``length`` may be set lower to rewind (what was written after it is
    then overwritten by the next forward).
    """

    def __init__(self, config: TransformerConfig, batch_size: int, dtype: Any) -> None:
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.max_length = config.context_length
        self.layers = [
            KVCacheLayer(self.batch_size, config.n_kv_head, config.context_length, config.head_dim, dtype)
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


def _check_idx(idx: Any, config: TransformerConfig, name: str = "idx", start: int = 0) -> np.ndarray:
    """idx as an integer array (B, T), or a ValueError naming what is wrong with it."""
    idx = np.asarray(idx)
    if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {idx.dtype}")
    if idx.ndim != 2:
        raise ValueError(f"{name} must have shape (B, T), got shape {idx.shape}")
    B, T = idx.shape
    if B == 0 or T == 0:
        raise ValueError(f"{name} must be non-empty, got shape {idx.shape}")
    if start + T > config.context_length:
        where = f"cache.length={start} + T={T}" if start else f"T={T}"
        raise ValueError(f"{name}: {where} exceeds context_length={config.context_length}")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= config.vocab_size:
        raise ValueError(
            f"{name}: token ids must be in [0, {config.vocab_size}), got min {lo}, max {hi}"
        )
    return idx


class TransformerLM:
    """Decoder-only Transformer LM (NumPy reference, forward and hand-written backward).

    Args:
        config: the model's shape; ``config.dropout`` is ignored (no dropout in NumPy).
        seed: seeds ``np.random.default_rng`` for the GPT-2 initialisation.
        dtype: float32 (default) or float64; parameters, activations and gradients use it.
    """

    def __init__(self, config: TransformerConfig, seed: int = 0, dtype: Any = np.float32) -> None:
        if not isinstance(config, TransformerConfig):
            raise ValueError(f"config must be a TransformerConfig, got {type(config).__name__}")
        dtype = param_dtype(dtype)
        self.config = config
        self.dtype = dtype
        self.params: dict[str, np.ndarray] = init_params(config, seed, dtype)

    # -- parameters -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, keyed like ``params`` (and the PyTorch twin)."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Copy NumPy arrays or torch tensors into the parameters (cast to the model's dtype).

        Raises ValueError naming missing keys, unexpected keys and shape mismatches; nothing
        is changed then.
        """
        arrays = {k: to_numpy(v) for k, v in state_dict.items()}  # torch tensors too, half precision widened exactly
        check_state_dict({k: v.shape for k, v in self.params.items()}, {k: v.shape for k, v in arrays.items()})
        for k, v in arrays.items():
            self.params[k][...] = v  # in place: the arrays stay the same objects (optimisers hold them)

    def num_params(self) -> int:
        """Number of scalar parameters (a tied head counted once)."""
        return sum(p.size for p in self.params.values())

    # -- forward --------------------------------------------------------------------------

    def init_cache(self, batch_size: int) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences (see the module docstring)."""
        return KVCache(self.config, batch_size, self.dtype)

    def _block_params(self, i: int) -> dict[str, np.ndarray]:
        prefix = f"blocks.{i}."
        n = len(prefix)
        return {k[n:]: v for k, v in self.params.items() if k.startswith(prefix)}

    def _head_weight(self) -> np.ndarray:
        return self.params["tok_emb.weight" if self.config.tie_weights else "lm_head.weight"]

    def _forward(self, idx: np.ndarray, cache: KVCache | None, keep: bool) -> tuple[np.ndarray, list]:
        cfg, P = self.config, self.params
        B, T = idx.shape
        t0 = 0 if cache is None else cache.length
        tok, c_tok = embedding_forward(idx, P["tok_emb.weight"])  # (B, T, C)
        # x = tok_emb[idx] + pos_emb[t0 .. t0+T-1]
        x = tok + P["pos_emb.weight"][t0 : t0 + T]  # (B, T, C)
        block_caches = []
        for i in range(cfg.n_layer):
            layer_cache = None if cache is None else cache.layers[i]
            x, c = block_forward(x, self._block_params(i), cfg.n_head, cfg.n_kv_head, layer_cache,
                                 norm=cfg.norm)  # (B, T, C)
            if keep:
                block_caches.append(c)
        h, c_lnf = x, None
        if cfg.norm == "pre":
            h, c_lnf = layer_norm_forward(x, P["ln_f.weight"], P["ln_f.bias"])  # (B, T, C)
        # logits = ln_f(x) W_head^T   (post-LN: logits = x W_head^T)
        logits, c_head = linear_forward(h, self._head_weight())  # (B, T, V)
        if cache is not None:
            cache.length = t0 + T
        return logits, [c_tok, block_caches, c_lnf, c_head, T]

    def forward(self, idx: Any, cache: KVCache | None = None) -> np.ndarray:
        """Logits (B, T, V) of the next token at every position of idx (B, T) ints.

        With ``cache`` (from ``init_cache``) idx holds the tokens at positions
        ``cache.length ...``; their keys/values are appended and ``cache.length`` advances.
        """
        start = 0
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise ValueError(f"cache must come from init_cache, got {type(cache).__name__}")
            start = cache.length
        idx = _check_idx(idx, self.config, start=start)
        if cache is not None and idx.shape[0] != cache.batch_size:
            raise ValueError(f"idx has batch size {idx.shape[0]} but the cache was made for {cache.batch_size}")
        logits, _ = self._forward(idx, cache, keep=False)
        return logits

    __call__ = forward

    # -- loss and backward ----------------------------------------------------------------

    def loss(self, idx: Any, targets: Any, ignore_index: int = -100) -> float:
        """Mean cross-entropy (nats) of the next-token predictions, without gradients."""
        idx = _check_idx(idx, self.config)
        targets = check_targets(targets, idx.shape, self.config.vocab_size, ignore_index)
        loss, _ = cross_entropy_forward(self.forward(idx), targets, ignore_index)
        return loss

    def loss_and_grads(
        self, idx: Any, targets: Any, ignore_index: int = -100
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy of logits(idx) against targets (B, T), and its gradient.

        Returns ``(loss, grads)`` with ``grads`` keyed like ``params``; with tied weights
        ``grads["tok_emb.weight"]`` is the sum of the embedding's and the head's gradients.
        Targets equal to ``ignore_index`` are not counted.
        """
        cfg = self.config
        idx = _check_idx(idx, cfg)
        targets = check_targets(targets, idx.shape, cfg.vocab_size, ignore_index)
        logits, (c_tok, block_caches, c_lnf, c_head, T) = self._forward(idx, None, keep=True)
        loss, c_ce = cross_entropy_forward(logits, targets, ignore_index)

        grads: dict[str, np.ndarray] = {}
        dlogits = cross_entropy_backward(c_ce)  # (B, T, V)
        dh, dW_head, _ = linear_backward(dlogits, c_head)  # (B, T, C), (V, C)
        dx = dh
        if cfg.norm == "pre":
            dx, grads["ln_f.weight"], grads["ln_f.bias"] = layer_norm_backward(dh, c_lnf)  # (B, T, C)
        for i in reversed(range(cfg.n_layer)):
            dx, g = block_backward(dx, block_caches[i])  # (B, T, C)
            grads.update({f"blocks.{i}.{k}": v for k, v in g.items()})
        # x = tok + pos: both get dx; pos_emb rows T.. were not used
        dpos = np.zeros_like(self.params["pos_emb.weight"])  # (T_max, C)
        dpos[:T] = dx.sum(axis=0)
        grads["pos_emb.weight"] = dpos
        dtok = embedding_backward(dx, c_tok)  # (V, C)
        if cfg.tie_weights:
            # one matrix, two uses: its gradient is the sum of both
            dtok += dW_head
        else:
            grads["lm_head.weight"] = dW_head
        grads["tok_emb.weight"] = dtok
        return loss, {k: grads[k] for k in self.params}
