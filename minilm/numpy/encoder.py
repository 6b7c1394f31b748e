"""A BERT-style Transformer encoder in NumPy, with its whole backward by hand.

The model (B batch, T length, C width, V vocab; ``m`` the attention mask, True at real tokens)::

    x = emb_ln(tok_emb[idx] + pos_emb[0..T-1] + seg_emb[segment_ids])   # (B, T, C)
    for each of the n_layer blocks:               # norm="post" (BERT), bidirectional
        x = ln1(x + attn(x; keys where m))        # no causal mask; padded keys hidden
        x = ln2(x + mlp(x))
    (norm="pre": x = x + attn(ln1(x)) ...; then a final ln_f)
    h = x                                          # (B, T, C) the hidden states

Three heads read h:

    masked LM (BERT's transform, the decoder tied to the token embedding):
        u = mlm.ln(gelu(h mlm.dense^T + b))                  # (B, T, C)
        mlm_logits = u tok_emb^T + mlm.bias                   # (B, T, V)
    pooler (BERT): the first token (by convention [CLS]) through a dense layer and tanh
        pooled = tanh(h[:, 0] pooler.weight^T + pooler.bias)  # (B, C)
        (with config.causal, the attention is causal and the pooler reads the last real token
        instead, the only one that has seen the whole row: a left-to-right LM as an encoder)
    next sentence:   nsp_logits   = pooled nsp.weight^T + nsp.bias     # (B, 2); 1 = "B follows A"
    classification:  class_logits = pooled cls.weight^T + cls.bias     # (B, n_classes)

Loss (``loss_and_grads``): the sum of the cross-entropies of the targets given: masked-LM
targets (B, T) with ``ignore_index`` at every position not chosen for prediction (mean over
the chosen ones), next-sentence labels (B,), class labels (B,).

Parameter names (``params`` and ``state_dict()`` keys, the same in ``minilm.torch.encoder``)::

    tok_emb.weight (V, C)   pos_emb.weight (T_max, C)   seg_emb.weight (n_segment, C)
    emb_ln.weight, .bias (C,)
    blocks.{i}.*            as in minilm.numpy.transformer (n_kv_head = n_head)
    ln_f.weight, .bias (C,)                      only when config.norm == "pre"
    mlm.dense.weight (C, C) .bias (C,)   mlm.ln.weight, .bias (C,)   mlm.bias (V,)
    pooler.weight (C, C) .bias (C,)
    nsp.weight (2, C) .bias (2,)
    cls.weight (n_classes, C) .bias (n_classes,)  only when config.n_classes is set

Initialisation (BERT), from ``np.random.default_rng(seed)`` in the key order above: every
weight matrix and embedding ~ N(0, 0.02^2), biases 0, LayerNorm weights 1; drawn in float64
and rounded to the model's dtype. Fine-tuning builds the config with ``n_classes`` set and
loads a pre-trained state_dict with ``load_state_dict(sd, strict=False)``: the new ``cls.*``
head keeps its initialisation.

Padding: ``attention_mask`` (B, T), True (or 1) at real tokens, False (0) at padding. No real
position attends to a padded one, so the real positions' hidden states, and every head's
output, do not depend on what the padded positions hold. Position 0 must be real (the pooler
reads it).

Deliberately left out: dropout (the PyTorch twin applies ``config.dropout`` in training mode
to the embeddings and the residual branches), relative positions, whole-word masking, a
separate MLM decoder matrix (always tied), the gradient of padded positions' MLM logits
(targets there must be ``ignore_index``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from minilm.config import EncoderConfig
from minilm.numpy.layers import (
    param_dtype,
    block_backward,
    block_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    gelu_backward,
    gelu_forward,
    layer_norm_backward,
    layer_norm_forward,
    linear_backward,
    linear_forward,
    to_numpy,
)
from minilm.state_dicts import check_state_dict

__all__ = ["TransformerEncoder", "encoder_param_shapes", "init_encoder_params", "N_NSP_CLASSES"]

INIT_STD = 0.02  # BERT's standard deviation for weights and embeddings
N_NSP_CLASSES = 2  # next-sentence labels: 0 = B is a random segment, 1 = B follows A


def encoder_param_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the canonical (initialisation) order."""
    V, T, C, F = config.vocab_size, config.context_length, config.d_model, config.d_ff
    shapes: dict[str, tuple[int, ...]] = {
        "tok_emb.weight": (V, C), "pos_emb.weight": (T, C), "seg_emb.weight": (config.n_segment, C),
        "emb_ln.weight": (C,), "emb_ln.bias": (C,),
    }
    for i in range(config.n_layer):
        b = f"blocks.{i}."
        shapes.update({
            b + "ln1.weight": (C,), b + "ln1.bias": (C,),
            b + "attn.q_proj.weight": (C, C), b + "attn.q_proj.bias": (C,),
            b + "attn.k_proj.weight": (C, C), b + "attn.k_proj.bias": (C,),
            b + "attn.v_proj.weight": (C, C), b + "attn.v_proj.bias": (C,),
            b + "attn.o_proj.weight": (C, C), b + "attn.o_proj.bias": (C,),
            b + "ln2.weight": (C,), b + "ln2.bias": (C,),
            b + "mlp.fc.weight": (F, C), b + "mlp.fc.bias": (F,),
            b + "mlp.proj.weight": (C, F), b + "mlp.proj.bias": (C,),
        })
    if config.norm == "pre":
        shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    shapes.update({
        "mlm.dense.weight": (C, C), "mlm.dense.bias": (C,), "mlm.ln.weight": (C,), "mlm.ln.bias": (C,),
        "mlm.bias": (V,),
        "pooler.weight": (C, C), "pooler.bias": (C,),
        "nsp.weight": (N_NSP_CLASSES, C), "nsp.bias": (N_NSP_CLASSES,),
    })
    if config.n_classes is not None:
        shapes.update({"cls.weight": (config.n_classes, C), "cls.bias": (config.n_classes,)})
    return shapes


def _is_layer_norm_weight(name: str) -> bool:
    return name.endswith(("ln1.weight", "ln2.weight", "ln.weight")) or name in ("ln_f.weight", "emb_ln.weight")


def init_encoder_params(config: EncoderConfig, seed: int = 0, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """BERT initialisation from ``np.random.default_rng(seed)`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for name, shape in encoder_param_shapes(config).items():
        if _is_layer_norm_weight(name):
            p = np.ones(shape)
        elif name.endswith("bias"):
            p = np.zeros(shape)
        else:
            p = rng.normal(0.0, INIT_STD, size=shape)
        params[name] = np.ascontiguousarray(p, dtype=dtype)
    return params


class TransformerEncoder:
    """BERT-style encoder (NumPy reference, forward and hand-written backward).

    Args:
        config: the model's shape; ``config.dropout`` is ignored (no dropout in NumPy).
        seed: seeds ``np.random.default_rng`` for the initialisation.
        dtype: float32 (default) or float64.

    Every method takes ``idx`` (B, T) ints, ``segment_ids`` (B, T) ints in [0, n_segment)
    (default all 0) and ``attention_mask`` (B, T) bool/0-1 (default all real).
    """

    def __init__(self, config: EncoderConfig, seed: int = 0, dtype: Any = np.float32) -> None:
        if not isinstance(config, EncoderConfig):
            raise ValueError(f"config must be an EncoderConfig, got {type(config).__name__}")
        dtype = param_dtype(dtype)
        self.config = config
        self.dtype = dtype
        self.params: dict[str, np.ndarray] = init_encoder_params(config, seed, dtype)

    # -- parameters -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, keyed like ``params`` (and the PyTorch twin)."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Copy NumPy arrays or torch tensors into the parameters (cast to the model's dtype).

        Raises ValueError naming missing keys, unexpected keys (both only when ``strict``) and
        shape mismatches; nothing is changed then. ``strict=False`` loads the keys both sides
        have (a pre-trained encoder into a classifier: the ``cls.*`` head stays as it was).
        """
        arrays = {k: to_numpy(v) for k, v in state_dict.items()}  # torch tensors too
        check_state_dict({k: v.shape for k, v in self.params.items()}, {k: v.shape for k, v in arrays.items()},
                         strict)
        for k, v in arrays.items():
            if k not in self.params:  # not strict: keys this model lacks are left out
                continue
            self.params[k][...] = v  # in place: optimisers hold these arrays

    def num_params(self) -> int:
        """Number of scalar parameters (the tied MLM decoder counted once)."""
        return sum(p.size for p in self.params.values())

    # -- forward --------------------------------------------------------------------------

    def _block_params(self, i: int) -> dict[str, np.ndarray]:
        prefix = f"blocks.{i}."
        n = len(prefix)
        return {k[n:]: v for k, v in self.params.items() if k.startswith(prefix)}

    def _encode(self, idx: np.ndarray, seg: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list]:
        cfg, P = self.config, self.params
        B, T = idx.shape
        tok, c_tok = embedding_forward(idx, P["tok_emb.weight"])  # (B, T, C)
        seg_e, c_seg = embedding_forward(seg, P["seg_emb.weight"])  # (B, T, C)
        # x = emb_ln(tok_emb[idx] + pos_emb[0..T-1] + seg_emb[segment_ids])
        x = tok + P["pos_emb.weight"][:T] + seg_e  # (B, T, C)
        x, c_eln = layer_norm_forward(x, P["emb_ln.weight"], P["emb_ln.bias"])  # (B, T, C)
        block_caches = []
        for i in range(cfg.n_layer):
            x, c = block_forward(x, self._block_params(i), cfg.n_head, cfg.n_head, None, norm=cfg.norm,
                                 is_causal=cfg.causal, key_padding_mask=mask)  # (B, T, C)
            block_caches.append(c)
        c_lnf = None
        if cfg.norm == "pre":
            x, c_lnf = layer_norm_forward(x, P["ln_f.weight"], P["ln_f.bias"])  # (B, T, C)
        return x, [c_tok, c_seg, c_eln, block_caches, c_lnf, T]

    def _mlm_head(self, h: np.ndarray) -> tuple[np.ndarray, Any]:
        """h (..., C) -> logits (..., V) through BERT's transform and the tied decoder."""
        P = self.params
        u, c_dense = linear_forward(h, P["mlm.dense.weight"], P["mlm.dense.bias"])  # (..., C)
        u, c_gelu = gelu_forward(u)  # (..., C)
        u, c_ln = layer_norm_forward(u, P["mlm.ln.weight"], P["mlm.ln.bias"])  # (..., C)
        # mlm_logits = u tok_emb^T + mlm.bias
        logits, c_dec = linear_forward(u, P["tok_emb.weight"], P["mlm.bias"])  # (..., V)
        return logits, (c_dense, c_gelu, c_ln, c_dec)

    def _pool_positions(self, h: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """(B,) the position the pooler reads: 0 ([CLS]), or the last real token when causal."""
        B, T = h.shape[:2]
        if not self.config.causal:
            return np.zeros(B, dtype=np.int64)
        return np.full(B, T - 1) if mask is None else mask.sum(axis=1) - 1

    def _pooler(self, h: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, Any]:
        """pooled = tanh(h[b, pos_b] W_pool^T + b_pool): h (B, T, C) -> (B, C); pos_b = 0 unless causal."""
        pos = self._pool_positions(h, mask)  # (B,)
        hp = h[np.arange(len(pos)), pos]  # (B, C)
        z, c_pool = linear_forward(hp, self.params["pooler.weight"], self.params["pooler.bias"])  # (B, C)
        pooled = np.tanh(z)  # (B, C)
        return pooled, (c_pool, pooled, pos)

    def forward(self, idx: Any, segment_ids: Any = None, attention_mask: Any = None) -> np.ndarray:
        """The hidden states h (B, T, C)."""
        idx, seg, mask = self._check_inputs(idx, segment_ids, attention_mask)
        return self._encode(idx, seg, mask)[0]

    __call__ = forward

    def mlm_logits(self, idx: Any, segment_ids: Any = None, attention_mask: Any = None) -> np.ndarray:
        """Masked-LM logits (B, T, V) at every position."""
        return self._mlm_head(self.forward(idx, segment_ids, attention_mask))[0]

    def nsp_logits(self, idx: Any, segment_ids: Any = None, attention_mask: Any = None) -> np.ndarray:
        """Next-sentence logits (B, 2): class 1 = segment B follows segment A."""
        idx, seg, mask = self._check_inputs(idx, segment_ids, attention_mask)
        pooled, _ = self._pooler(self._encode(idx, seg, mask)[0], mask)
        return linear_forward(pooled, self.params["nsp.weight"], self.params["nsp.bias"])[0]  # (B, 2)

    def class_logits(self, idx: Any, segment_ids: Any = None, attention_mask: Any = None) -> np.ndarray:
        """Sequence-classification logits (B, n_classes); needs ``config.n_classes``."""
        self._need_classifier()
        idx, seg, mask = self._check_inputs(idx, segment_ids, attention_mask)
        pooled, _ = self._pooler(self._encode(idx, seg, mask)[0], mask)
        return linear_forward(pooled, self.params["cls.weight"], self.params["cls.bias"])[0]  # (B, K)

    # -- loss and backward ----------------------------------------------------------------

    def loss(self, idx: Any, segment_ids: Any = None, attention_mask: Any = None, *, mlm_targets: Any = None,
             nsp_labels: Any = None, labels: Any = None, ignore_index: int = -100) -> float:
        """The loss of ``loss_and_grads`` without the gradients."""
        return self.loss_and_grads(idx, segment_ids, attention_mask, mlm_targets=mlm_targets,
                                   nsp_labels=nsp_labels, labels=labels, ignore_index=ignore_index,
                                   _grads=False)[0]

    def loss_and_grads(
        self, idx: Any, segment_ids: Any = None, attention_mask: Any = None, *, mlm_targets: Any = None,
        nsp_labels: Any = None, labels: Any = None, ignore_index: int = -100, _grads: bool = True,
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Sum of the cross-entropies of the targets given, and its gradient.

        mlm_targets (B, T): the original token at each chosen position, ``ignore_index``
        elsewhere; nsp_labels (B,) in {0, 1}; labels (B,) in [0, n_classes). At least one
        must be given. Returns ``(loss, grads)``, grads keyed like ``params`` (zeros for the
        heads not used); ``grads["tok_emb.weight"]`` sums the embedding's and the tied MLM
        decoder's gradients.
        """
        cfg, P = self.config, self.params
        idx, seg, mask = self._check_inputs(idx, segment_ids, attention_mask)
        B, T = idx.shape
        if mlm_targets is None and nsp_labels is None and labels is None:
            raise ValueError("loss_and_grads: give mlm_targets, nsp_labels or labels (or several)")
        mlm_targets = None if mlm_targets is None else _check_ints(
            mlm_targets, (B, T), cfg.vocab_size, "mlm_targets", ignore_index)
        nsp_labels = None if nsp_labels is None else _check_ints(nsp_labels, (B,), N_NSP_CLASSES, "nsp_labels")
        if labels is not None:
            self._need_classifier()
            labels = _check_ints(labels, (B,), cfg.n_classes, "labels")

        h, (c_tok, c_seg, c_eln, block_caches, c_lnf, _) = self._encode(idx, seg, mask)
        loss = 0.0
        dh = np.zeros_like(h)  # (B, T, C)
        grads = {k: np.zeros_like(v) for k, v in P.items()}
        if mlm_targets is not None:
            # only the chosen positions go through the head: gather (n, C), scatter back
            # (no chosen position at all: the loss term is 0, as cross_entropy_forward's)
            rows, cols = np.nonzero(mlm_targets != ignore_index)  # (n,), (n,)
            if rows.size:
                logits, c_head = self._mlm_head(h[rows, cols])  # (n, V)
                l_mlm, c_ce = cross_entropy_forward(logits, mlm_targets[rows, cols])
                loss += l_mlm
            if _grads and rows.size:
                c_dense, c_gelu, c_ln, c_dec = c_head
                dlogits = cross_entropy_backward(c_ce)  # (n, V)
                du, dW_dec, grads["mlm.bias"] = linear_backward(dlogits, c_dec)  # (n, C), (V, C), (V,)
                grads["tok_emb.weight"] += dW_dec  # tied decoder: one matrix, two uses
                du, grads["mlm.ln.weight"], grads["mlm.ln.bias"] = layer_norm_backward(du, c_ln)
                du = gelu_backward(du, c_gelu)  # (n, C)
                dhs, grads["mlm.dense.weight"], grads["mlm.dense.bias"] = linear_backward(du, c_dense)
                np.add.at(dh, (rows, cols), dhs)  # scatter-add into (B, T, C)
        pooled_heads = [(name, y) for name, y in (("nsp", nsp_labels), ("cls", labels)) if y is not None]
        if pooled_heads:
            pooled, (c_pool, _, pos) = self._pooler(h, mask)  # (B, C)
            dpooled = np.zeros_like(pooled)  # (B, C)
            for name, y in pooled_heads:
                logits, c_lin = linear_forward(pooled, P[f"{name}.weight"], P[f"{name}.bias"])  # (B, K)
                l_head, c_ce = cross_entropy_forward(logits, y)
                loss += l_head
                if _grads:
                    dp, grads[f"{name}.weight"], grads[f"{name}.bias"] = linear_backward(
                        cross_entropy_backward(c_ce), c_lin)  # (B, C)
                    dpooled += dp
            if _grads:
                # d tanh(z)/dz = 1 - tanh(z)^2
                dz = dpooled * (1.0 - pooled * pooled)  # (B, C)
                dh0, grads["pooler.weight"], grads["pooler.bias"] = linear_backward(dz, c_pool)  # (B, C)
                dh[np.arange(B), pos] += dh0
        if not _grads:
            return loss, {}

        dx = dh
        if cfg.norm == "pre":
            dx, grads["ln_f.weight"], grads["ln_f.bias"] = layer_norm_backward(dx, c_lnf)  # (B, T, C)
        for i in reversed(range(cfg.n_layer)):
            dx, g = block_backward(dx, block_caches[i])  # (B, T, C)
            grads.update({f"blocks.{i}.{k}": v for k, v in g.items()})
        dx, grads["emb_ln.weight"], grads["emb_ln.bias"] = layer_norm_backward(dx, c_eln)  # (B, T, C)
        # x = tok + pos + seg: each gets dx; pos_emb rows T.. were not used
        grads["pos_emb.weight"][:T] = dx.sum(axis=0)
        grads["seg_emb.weight"] = embedding_backward(dx, c_seg)  # (n_segment, C)
        grads["tok_emb.weight"] += embedding_backward(dx, c_tok)  # (V, C)
        return loss, grads

    # -- checks ---------------------------------------------------------------------------

    def _need_classifier(self) -> None:
        if self.config.n_classes is None:
            raise ValueError("this encoder has no classification head: build it with EncoderConfig(n_classes=...)")

    def _check_inputs(self, idx: Any, segment_ids: Any, attention_mask: Any
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        cfg = self.config
        idx = to_numpy(idx)
        if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer) or idx.ndim != 2 or not idx.size:
            raise ValueError(f"idx must be a non-empty (B, T) array of integer token ids, got shape "
                             f"{idx.shape}, dtype {idx.dtype}")
        B, T = idx.shape
        if T > cfg.context_length:
            raise ValueError(f"idx: T={T} exceeds context_length={cfg.context_length}")
        if idx.min() < 0 or idx.max() >= cfg.vocab_size:
            raise ValueError(f"idx: token ids must be in [0, {cfg.vocab_size}), got min {idx.min()}, max {idx.max()}")
        seg = np.zeros((B, T), np.int64) if segment_ids is None else _check_ints(
            segment_ids, (B, T), cfg.n_segment, "segment_ids")
        mask = None
        if attention_mask is not None:
            mask = to_numpy(attention_mask)
            if mask.shape != (B, T):
                raise ValueError(f"attention_mask shape {mask.shape} must equal idx shape {(B, T)}")
            if mask.dtype != np.bool_:
                if not np.isin(mask, (0, 1)).all():
                    raise ValueError("attention_mask must be bool or 0/1 (1 = real token, 0 = padding)")
                mask = mask.astype(bool)
            if not mask[:, 0].all():
                raise ValueError("attention_mask: position 0 ([CLS]) must be a real token in every row")
        return idx, seg, mask


def _check_ints(x: Any, shape: tuple[int, ...], n: int, name: str, ignore_index: int | None = None) -> np.ndarray:
    """x as an int array of ``shape`` with values in [0, n) (or ``ignore_index``), else ValueError."""
    x = to_numpy(x)
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {x.dtype}")
    if x.shape != tuple(shape):
        raise ValueError(f"{name} shape {x.shape} must be {tuple(shape)}")
    ok = (x >= 0) & (x < n)
    if ignore_index is not None:
        ok |= x == ignore_index
    if not ok.all():
        extra = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
        raise ValueError(f"{name} must be in [0, {n}){extra}, got {x[~ok][:5].tolist()}")
    return x.astype(np.int64)


