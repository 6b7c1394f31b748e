"""The PyTorch twin of ``minilm.numpy.encoder``: the same BERT-style encoder, autograd backward.

::

    x = emb_ln(tok_emb(idx) + pos_emb[0..T-1] + seg_emb(segment_ids))   # (B, T, C)
    for each block: x = ln1(x + attn(x; padded keys hidden)); x = ln2(x + mlp(x))   # norm="post"
    h = x (then ln_f when norm="pre")                                    # (B, T, C)
    mlm_logits   = mlm.ln(gelu(mlm.dense(h))) tok_emb^T + mlm.bias      # (B, T, V)
    pooled       = tanh(pooler(h[:, 0]))         # (B, C); causal: the last real token
    nsp_logits   = nsp(pooled)                                           # (B, 2)
    class_logits = cls(pooled)                                           # (B, n_classes)

Same ``state_dict`` keys and shapes as the NumPy model (listed in its module docstring);
``TransformerEncoder(config, seed)`` starts from ``init_encoder_params(config, seed)``, so one
seed gives the same weights in both twins, and building draws nothing from torch's generator.
``config.dropout`` is applied in training mode to the summed embeddings (after ``emb_ln``) and
to the blocks' residual branches, as BERT does. ``attention`` as in ``minilm.torch.layers``
(``"triton"`` runs the kernel only without padding; with a padding mask it uses ``"sdpa"``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minilm.config import EncoderConfig
from minilm.numpy.encoder import N_NSP_CLASSES, init_encoder_params
from minilm.torch.layers import ATTENTION_BACKENDS, Block, Embedding, Linear, gelu, to_tensor
from minilm.state_dicts import check_state_dict

__all__ = ["TransformerEncoder"]


class MLMHead(nn.Module):
    """BERT's masked-LM transform and the bias of the tied decoder: h (..., C) -> u (..., C)."""

    def __init__(self, d_model: int, vocab_size: int) -> None:
        super().__init__()
        self.dense = Linear(d_model, d_model)
        self.ln = nn.LayerNorm(d_model)
        self.bias = nn.Parameter(torch.empty(vocab_size))  # (V,)

    def forward(self, h: torch.Tensor, tok_emb: torch.Tensor) -> torch.Tensor:
        u = self.ln(gelu(self.dense(h)))  # (..., C)
        # mlm_logits = u tok_emb^T + mlm.bias
        return F.linear(u, tok_emb, self.bias)  # (..., V)


class TransformerEncoder(nn.Module):
    """BERT-style encoder, the twin of ``minilm.numpy.TransformerEncoder``.

    Args:
        config: the model's shape.
        seed: the NumPy initialisation's seed (``init_encoder_params(config, seed)``).
        attention: ``"naive"``, ``"sdpa"`` (default) or ``"triton"``.
    """

    def __init__(self, config: EncoderConfig, seed: int = 0, attention: str = "sdpa") -> None:
        super().__init__()
        if not isinstance(config, EncoderConfig):
            raise ValueError(f"config must be an EncoderConfig, got {type(config).__name__}")
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
        self.config = config
        C = config.d_model
        self.tok_emb = Embedding(config.vocab_size, C)
        self.pos_emb = Embedding(config.context_length, C)
        self.seg_emb = Embedding(config.n_segment, C)
        self.emb_ln = nn.LayerNorm(C)
        self.blocks = nn.ModuleList(Block(config, attention, is_causal=config.causal)
                                    for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(C) if config.norm == "pre" else None
        self.mlm = MLMHead(C, config.vocab_size)
        self.pooler = Linear(C, C)
        self.nsp = Linear(C, N_NSP_CLASSES)
        self.cls = Linear(C, config.n_classes) if config.n_classes is not None else None
        self.load_state_dict(init_encoder_params(config, seed, np.float32))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load NumPy arrays or tensors (cast to each parameter's dtype and device).

        ValueError naming missing and unexpected keys (only when ``strict``) and shape
        mismatches, before changing anything; ``strict=False`` loads the keys both sides have.
        """
        own = super().state_dict()
        tensors = {k: to_tensor(v) for k, v in state_dict.items()}
        check_state_dict({k: t.shape for k, t in own.items()}, {k: t.shape for k, t in tensors.items()}, strict)
        if not strict:
            tensors = {k: v for k, v in tensors.items() if k in own}
        return super().load_state_dict(tensors, strict=strict, assign=assign)

    # -- forward --------------------------------------------------------------------------

    def forward(self, idx: Any, segment_ids: Any = None, attention_mask: Any = None) -> torch.Tensor:
        """The hidden states h (B, T, C)."""
        idx, seg, mask = self._check_inputs(idx, segment_ids, attention_mask)
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)  # (T,)
        # x = emb_ln(tok_emb[idx] + pos_emb[0..T-1] + seg_emb[segment_ids])
        x = self.emb_ln(self.tok_emb(idx) + self.pos_emb(pos) + self.seg_emb(seg))  # (B, T, C)
        x = F.dropout(x, float(self.config.dropout), self.training)
        for block in self.blocks:
            x = block(x, key_padding_mask=mask)  # (B, T, C)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return x

    def _pooled(self, h: torch.Tensor, attention_mask: Any) -> torch.Tensor:
        B, T = h.shape[:2]
        pos = torch.zeros(B, dtype=torch.long, device=h.device)  # (B,) [CLS]
        if self.config.causal:  # the last real token, the only one that saw the whole row
            pos = pos + T - 1
            if attention_mask is not None:
                m = attention_mask if isinstance(attention_mask, torch.Tensor) else torch.as_tensor(
                    np.asarray(attention_mask))
                pos = (m != 0).sum(dim=1).to(h.device) - 1
        # pooled = tanh(h[b, pos_b] W_pool^T + b_pool)
        return torch.tanh(self.pooler(h[torch.arange(B, device=h.device), pos]))  # (B, C)

    def mlm_logits(self, idx: Any, segment_ids: Any = None, attention_mask: Any = None) -> torch.Tensor:
        """Masked-LM logits (B, T, V) at every position."""
        return self.mlm(self.forward(idx, segment_ids, attention_mask), self.tok_emb.weight)

    def nsp_logits(self, idx: Any, segment_ids: Any = None, attention_mask: Any = None) -> torch.Tensor:
        """Next-sentence logits (B, 2): class 1 = segment B follows segment A."""
        return self.nsp(self._pooled(self.forward(idx, segment_ids, attention_mask), attention_mask))

    def class_logits(self, idx: Any, segment_ids: Any = None, attention_mask: Any = None) -> torch.Tensor:
        """Sequence-classification logits (B, n_classes); needs ``config.n_classes``."""
        if self.cls is None:
            raise ValueError("this encoder has no classification head: build it with EncoderConfig(n_classes=...)")
        return self.cls(self._pooled(self.forward(idx, segment_ids, attention_mask), attention_mask))

    def loss(self, idx: Any, segment_ids: Any = None, attention_mask: Any = None, *, mlm_targets: Any = None,
             nsp_labels: Any = None, labels: Any = None, ignore_index: int = -100) -> torch.Tensor:
        """Sum of the cross-entropies of the targets given (see the NumPy twin), differentiable."""
        if mlm_targets is None and nsp_labels is None and labels is None:
            raise ValueError("loss: give mlm_targets, nsp_labels or labels (or several)")
        if labels is not None and self.cls is None:
            raise ValueError("this encoder has no classification head: build it with EncoderConfig(n_classes=...)")
        h = self.forward(idx, segment_ids, attention_mask)  # (B, T, C)
        B, T = h.shape[:2]
        total = h.new_zeros(())
        if mlm_targets is not None:
            t = _check_ints(mlm_targets, (B, T), self.config.vocab_size, "mlm_targets", h.device,
                            ignore_index)  # (B, T)
            chosen = t != ignore_index  # (B, T)
            if bool(chosen.any()):
                # only the chosen positions go through the head
                logits = self.mlm(h[chosen], self.tok_emb.weight)  # (n, V)
                total = total + F.cross_entropy(logits, t[chosen])
        if nsp_labels is not None or labels is not None:
            pooled = self._pooled(h, attention_mask)  # (B, C)
            for head, y, n, name in ((self.nsp, nsp_labels, N_NSP_CLASSES, "nsp_labels"),
                                     (self.cls, labels, self.config.n_classes, "labels")):
                if y is not None:
                    y = _check_ints(y, (B,), n, name, h.device)  # (B,)
                    total = total + F.cross_entropy(head(pooled), y)
        return total

    # -- checks ---------------------------------------------------------------------------

    def _check_inputs(self, idx: Any, segment_ids: Any, attention_mask: Any):
        cfg = self.config
        device = self.tok_emb.weight.device
        if not isinstance(idx, torch.Tensor):
            idx = torch.as_tensor(np.asarray(idx))
        if idx.dtype == torch.bool or idx.is_floating_point() or idx.dim() != 2 or idx.numel() == 0:
            raise ValueError(f"idx must be a non-empty (B, T) array of integer token ids, got shape "
                             f"{tuple(idx.shape)}, dtype {idx.dtype}")
        B, T = idx.shape
        if T > cfg.context_length:
            raise ValueError(f"idx: T={T} exceeds context_length={cfg.context_length}")
        if int(idx.min()) < 0 or int(idx.max()) >= cfg.vocab_size:
            raise ValueError(f"idx: token ids must be in [0, {cfg.vocab_size}), got min {int(idx.min())}, "
                             f"max {int(idx.max())}")
        if segment_ids is None:
            seg = torch.zeros((B, T), dtype=torch.long, device=device)
        else:
            seg = _check_ints(segment_ids, (B, T), cfg.n_segment, "segment_ids", device)
        mask = None
        if attention_mask is not None:
            mask = attention_mask if isinstance(attention_mask, torch.Tensor) else torch.as_tensor(
                np.asarray(attention_mask))
            if tuple(mask.shape) != (B, T):
                raise ValueError(f"attention_mask shape {tuple(mask.shape)} must equal idx shape {(B, T)}")
            if mask.dtype != torch.bool:
                if not bool(((mask == 0) | (mask == 1)).all()):
                    raise ValueError("attention_mask must be bool or 0/1 (1 = real token, 0 = padding)")
                mask = mask != 0
            if not bool(mask[:, 0].all()):
                raise ValueError("attention_mask: position 0 ([CLS]) must be a real token in every row")
            mask = mask.to(device)
        return idx.to(device=device, dtype=torch.long), seg, mask


def _check_ints(x: Any, shape: tuple[int, ...], n: int, name: str, device: torch.device,
                ignore_index: int | None = None) -> torch.Tensor:
    """x as a long tensor of ``shape`` on ``device`` with values in [0, n) (or ``ignore_index``),
    else a ValueError naming it (the checks of the NumPy twin's ``_check_ints``)."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise ValueError(f"{name} must hold integers, got dtype {x.dtype}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} shape {tuple(x.shape)} must be {tuple(shape)}")
    ok = (x >= 0) & (x < n)
    if ignore_index is not None:
        ok |= x == ignore_index
    if not bool(ok.all()):
        extra = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
        raise ValueError(f"{name} must be in [0, {n}){extra}, got {x[~ok][:5].tolist()}")
    return x.to(device=device, dtype=torch.long)
