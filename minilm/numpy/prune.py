"""Magnitude pruning in NumPy: unstructured (single weights) and structured (heads, neurons).

A pruned model is the same model with some weights held at exactly zero. Which ones is a
boolean mask per tensor (True = keep); ``Masks`` holds them and keeps them true through
further training::

    grads <- grads * mask            (before the optimiser step: pruned weights get no
                                      gradient, so they add nothing to the clipping norm)
    theta <- optimiser(theta, grads)
    theta <- theta * mask            (after it: momentum or state from before the pruning
                                      would otherwise move a pruned weight off zero)

Unstructured (``magnitude_masks``): remove the k = floor(sparsity * n) weights of smallest
|w|, either among all prunable weights together (``scope="global"``: layers with many small
weights lose more) or in each tensor separately (``scope="layer"``: every tensor ends at the
same sparsity). Ties are broken by position: the weights are ranked by (|w|, tensor order,
flat index), a stable sort, so the masks are deterministic and the twins agree exactly.

Which tensors are prunable (``prunable_names``): every 2-D ``.weight`` matrix that is not an
embedding, i.e. the attention and MLP projections (and an untied output head, and the LSTM's
``weight_ih``/``weight_hh``). Embeddings (``tok_emb``, also the tied output head, ``pos_emb``,
``emb``), LayerNorm parameters and biases are left alone unless ``names`` lists them: they
are a small share of the parameters and each zero in them costs much more accuracy.

Structured: whole units, so that the pruned model is a smaller dense model.

- attention heads (``prune_heads``), ranked by the L2 norm of everything that belongs to the
  head: its D rows of ``q_proj`` (weight and bias), its D columns of ``o_proj``, and, when
  every query head has its own key/value head (Hkv = H), its rows of ``k_proj`` and
  ``v_proj``::

      score(l, h) = sqrt(||Wq[h]||^2 + ||bq[h]||^2 + ||Wk[h]||^2 + ||bk[h]||^2
                         + ||Wv[h]||^2 + ||bv[h]||^2 + ||Wo[:, h]||^2)

  The masks zero all of those. Zero o_proj columns remove the head's contribution exactly
  (a head whose q is zero still attends, uniformly, but its output is multiplied by 0).
- MLP neurons (``prune_neurons``): neuron j of a block is row j of ``mlp.fc`` (weight and
  bias) and column j of ``mlp.proj``; score sqrt(||W_fc[j]||^2 + b_fc[j]^2 + ||W_proj[:, j]||^2).
  Since GELU(0) = 0, a zeroed neuron contributes exactly nothing.

``fraction`` of the heads (neurons) with the lowest scores go, over all layers together
(``scope="global"``) or the same number in each layer (``scope="layer"``); ties by (layer,
unit) order.

``finetune`` trains a pruned model a few hundred steps with AdamW under its masks.

Deliberately left out: gradient-based (Taylor) importance scores, iterative pruning
schedules, N:M (2:4) sparsity, physically shrinking the matrices of a structured prune
(the masks keep the shapes, so every checkpoint loads into the same model class), sparse
storage formats.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np

from minilm.config import TransformerConfig
from minilm.numpy.layers import to_numpy
from minilm.numpy.optim import AdamW, clip_grad_norm, cosine_schedule

__all__ = ["Masks", "prunable_names", "magnitude_masks", "head_importance", "prune_heads",
           "neuron_importance", "prune_neurons", "finetune", "check_sparsity"]


class Masks(dict):
    """name -> bool mask (True = keep) for the tensors of a model that are pruned.

    ``apply(params)`` zeroes the pruned entries in place; ``mask_grads(grads)`` zeroes their
    gradients in place; ``sparsity()`` is the fraction of masked-out entries.
    """

    def apply(self, params: Mapping[str, np.ndarray]) -> None:
        """theta <- theta * mask, in place, for every masked tensor."""
        for name, m in self.items():
            params[name][...] *= m

    def mask_grads(self, grads: Mapping[str, np.ndarray]) -> None:
        """g <- g * mask, in place."""
        for name, m in self.items():
            grads[name][...] *= m

    def sparsity(self) -> float:
        """Fraction of the masked tensors' entries that are pruned."""
        total = sum(m.size for m in self.values())
        return float(sum(m.size - int(m.sum()) for m in self.values()) / max(total, 1))

    def __and__(self, other: "Masks") -> "Masks":
        """Both masks' pruning together (a weight survives only if both keep it)."""
        out = Masks({k: np.array(v, copy=True) for k, v in self.items()})
        for k, v in other.items():
            out[k] = out[k] & v if k in out else np.array(v, copy=True)
        return out


def prunable_names(params: Mapping[str, Any]) -> list[str]:
    """The 2-D ``.weight`` matrices that are not embeddings, in ``params`` order."""
    return [k for k, v in params.items()
            if k.endswith(".weight") and len(np.shape(v)) == 2 and "emb" not in k]


def magnitude_masks(params: Mapping[str, Any], sparsity: float, scope: str = "global",
                    names: Iterable[str] | None = None) -> Masks:
    """Masks that prune the floor(sparsity * n) smallest-magnitude weights.

    ``names`` (default ``prunable_names(params)``) are the tensors considered; ``scope`` is
    ``"global"`` (one ranking over all of them) or ``"layer"`` (each tensor on its own).
    Ties: ranked by (|w|, position in ``names``, flat index), so earlier entries go first.
    """
    sparsity = check_sparsity(sparsity)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    names = _check_names(params, names)
    arrays = {k: np.abs(to_numpy(params[k])) for k in names}
    groups = [names] if scope == "global" else [[k] for k in names]
    masks = Masks()
    for group in groups:
        flat = np.concatenate([arrays[k].reshape(-1) for k in group])  # (n,)
        k_prune = int(sparsity * flat.size)
        # stable: equal magnitudes keep their (tensor, index) order
        order = np.argsort(flat, kind="stable")  # (n,)
        keep = np.ones(flat.size, dtype=bool)
        keep[order[:k_prune]] = False
        start = 0
        for k in group:
            n = arrays[k].size
            masks[k] = keep[start : start + n].reshape(arrays[k].shape)
            start += n
    return masks


def head_importance(params: Mapping[str, Any], config: TransformerConfig) -> np.ndarray:
    """score (n_layer, H): the L2 norm of each attention head's weights (module docstring)."""
    H, D = config.n_head, config.head_dim
    own_kv = config.n_kv_head == config.n_head
    scores = np.zeros((config.n_layer, H))
    for i in range(config.n_layer):
        a = f"blocks.{i}.attn."
        sq = np.zeros(H)
        rows = ["q_proj"] + (["k_proj", "v_proj"] if own_kv else [])
        for proj in rows:
            w = to_numpy(params[a + proj + ".weight"]).astype(np.float64).reshape(H, D, -1)  # (H, D, C)
            b = to_numpy(params[a + proj + ".bias"]).astype(np.float64).reshape(H, D)  # (H, D)
            sq += (w * w).sum(axis=(1, 2)) + (b * b).sum(axis=1)
        wo = to_numpy(params[a + "o_proj.weight"]).astype(np.float64)  # (C, H*D)
        wo = wo.reshape(wo.shape[0], H, D)  # (C, H, D)
        sq += (wo * wo).sum(axis=(0, 2))
        scores[i] = np.sqrt(sq)
    return scores


def prune_heads(params: Mapping[str, Any], config: TransformerConfig, fraction: float,
                scope: str = "global") -> Masks:
    """Masks that remove the ``fraction`` of attention heads with the lowest ``head_importance``."""
    drop = _lowest(head_importance(params, config), fraction, scope)  # (n_layer, H) bool
    H, D = config.n_head, config.head_dim
    own_kv = config.n_kv_head == config.n_head
    masks = Masks()
    for i in range(config.n_layer):
        a = f"blocks.{i}.attn."
        keep_rows = np.repeat(~drop[i], D)  # (H*D,): the rows of the kept heads
        for proj in ["q_proj"] + (["k_proj", "v_proj"] if own_kv else []):
            w = to_numpy(params[a + proj + ".weight"])
            masks[a + proj + ".weight"] = np.broadcast_to(keep_rows[:, None], w.shape).copy()
            masks[a + proj + ".bias"] = keep_rows.copy()
        wo = to_numpy(params[a + "o_proj.weight"])  # (C, H*D)
        masks[a + "o_proj.weight"] = np.broadcast_to(keep_rows[None, :], wo.shape).copy()
    return masks


def neuron_importance(params: Mapping[str, Any], config: TransformerConfig) -> np.ndarray:
    """score (n_layer, F): the L2 norm of each MLP neuron's fc row, fc bias and proj column."""
    scores = []
    for i in range(config.n_layer):
        m = f"blocks.{i}.mlp."
        fc = to_numpy(params[m + "fc.weight"]).astype(np.float64)  # (F, C)
        fb = to_numpy(params[m + "fc.bias"]).astype(np.float64)  # (F,)
        pj = to_numpy(params[m + "proj.weight"]).astype(np.float64)  # (C, F)
        scores.append(np.sqrt((fc * fc).sum(axis=1) + fb * fb + (pj * pj).sum(axis=0)))  # (F,)
    return np.stack(scores)  # (n_layer, F)


def prune_neurons(params: Mapping[str, Any], config: TransformerConfig, fraction: float,
                  scope: str = "global") -> Masks:
    """Masks that remove the ``fraction`` of MLP neurons with the lowest ``neuron_importance``."""
    drop = _lowest(neuron_importance(params, config), fraction, scope)  # (n_layer, F) bool
    masks = Masks()
    for i in range(config.n_layer):
        m = f"blocks.{i}.mlp."
        keep = ~drop[i]  # (F,)
        C = to_numpy(params[m + "proj.weight"]).shape[0]
        masks[m + "fc.weight"] = np.broadcast_to(keep[:, None], (keep.size, C)).copy()  # (F, C)
        masks[m + "fc.bias"] = keep.copy()  # (F,)
        masks[m + "proj.weight"] = np.broadcast_to(keep[None, :], (C, keep.size)).copy()  # (C, F)
    return masks


def finetune(model: Any, masks: Masks, batches: Callable[[int], tuple[np.ndarray, np.ndarray]],
             steps: int, lr: float = 5e-4, weight_decay: float = 0.1,
             grad_clip: float = 1.0) -> list[float]:
    """Train a pruned NumPy model ``steps`` steps, its pruned weights held at zero.

    ``batches(step) -> (x, y)`` (B, T) ints. AdamW with decay on the 2-D weights only, lr
    decaying from ``lr`` to lr / 10 (cosine, no warm-up), global-norm clipping; masks applied
    to the gradients before and to the weights after every step. Returns the losses.
    """
    decay = {k: v for k, v in model.params.items() if v.ndim >= 2}
    no_decay = {k: v for k, v in model.params.items() if v.ndim < 2}
    opt = AdamW([{"params": decay, "weight_decay": weight_decay},
                 {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    masks.apply(model.params)
    losses = []
    for step in range(steps):
        opt.lr = cosine_schedule(step, lr, lr / 10, 0, steps)
        x, y = batches(step)
        loss, grads = model.loss_and_grads(x, y)
        masks.mask_grads(grads)
        clip_grad_norm(grads, grad_clip)
        opt.step(grads)
        masks.apply(model.params)
        losses.append(float(loss))
    return losses


# ---------------------------------------------------------------------------------------------
# Checks and helpers


def check_sparsity(sparsity: Any, name: str = "sparsity") -> float:
    """sparsity as a float in [0, 1), or a ValueError naming it."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1), got {sparsity!r}") from None
    if isinstance(sparsity, bool) or not 0.0 <= s < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {sparsity!r}")
    return s


def _check_names(params: Mapping[str, Any], names: Iterable[str] | None) -> list[str]:
    names = prunable_names(params) if names is None else list(names)
    missing = [k for k in names if k not in params]
    if missing:
        raise ValueError(f"cannot prune {missing}: not among the parameters")
    if not names:
        raise ValueError("nothing to prune: no prunable tensors (2-D non-embedding weights)")
    return names


def _lowest(scores: np.ndarray, fraction: float, scope: str) -> np.ndarray:
    """bool (n_layer, n_units): the floor(fraction * n) lowest scores, globally or per layer;
    ties by (layer, unit) order."""
    fraction = check_sparsity(fraction, "fraction")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    drop = np.zeros(scores.shape, dtype=bool)
    if scope == "global":
        order = np.argsort(scores.reshape(-1), kind="stable")[: int(fraction * scores.size)]
        drop.reshape(-1)[order] = True
    else:
        k = int(fraction * scores.shape[1])
        for i in range(scores.shape[0]):
            drop[i, np.argsort(scores[i], kind="stable")[:k]] = True
    return drop
