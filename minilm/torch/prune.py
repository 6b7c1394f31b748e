"""The PyTorch twin of ``minilm.numpy.prune``: the same masks from the same weights.

Same rules (see the NumPy module for the maths): unstructured magnitude pruning ranked by
(|w|, tensor order, flat index) with a stable sort, globally or per tensor; attention heads
ranked by the L2 norm of their q/k/v rows and o_proj columns; MLP neurons by the L2 norm of
their fc row, fc bias and proj column. ``params`` is a mapping name -> tensor
(``dict(model.named_parameters())`` or a state dict); a module is accepted too.

``Masks.apply(model)`` and ``Masks.mask_grads(model)`` work on a module's parameters (or a
dict of tensors) in place. With ``torch.optim.AdamW`` the order is::

    loss.backward(); masks.mask_grads(model); clip; opt.step(); masks.apply(model)

Deliberately left out: ``torch.nn.utils.prune`` (it reparametrises each weight as
``weight_orig * weight_mask`` and changes the state dict keys; these masks keep the model and
its checkpoints unchanged), gradient-based scores.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from minilm.config import TransformerConfig
from minilm.numpy.optim import cosine_schedule
from minilm.numpy.prune import check_sparsity

__all__ = ["Masks", "prunable_names", "magnitude_masks", "head_importance", "prune_heads",
           "neuron_importance", "prune_neurons", "finetune"]


def _params(params: Any) -> Mapping[str, torch.Tensor]:
    return dict(params.named_parameters()) if isinstance(params, nn.Module) else params


class Masks(dict):
    """name -> bool tensor (True = keep); the twin of ``minilm.numpy.prune.Masks``."""

    @torch.no_grad()
    def apply(self, params: Any) -> None:
        """theta <- theta * mask, in place (a module's parameters or a dict of tensors)."""
        p = _params(params)
        for name, m in self.items():
            p[name].mul_(m.to(p[name].device))

    @torch.no_grad()
    def mask_grads(self, params: Any) -> None:
        """grad <- grad * mask, in place, for every masked parameter that has a gradient."""
        p = _params(params)
        for name, m in self.items():
            if p[name].grad is not None:
                p[name].grad.mul_(m.to(p[name].device))

    def sparsity(self) -> float:
        """Fraction of the masked tensors' entries that are pruned."""
        total = sum(m.numel() for m in self.values())
        return float(sum(m.numel() - int(m.sum()) for m in self.values()) / max(total, 1))

    def __and__(self, other: "Masks") -> "Masks":
        out = Masks({k: v.clone() for k, v in self.items()})
        for k, v in other.items():
            out[k] = out[k] & v if k in out else v.clone()
        return out


def prunable_names(params: Any) -> list[str]:
    """The 2-D ``.weight`` matrices that are not embeddings, in ``params`` order."""
    return [k for k, v in _params(params).items()
            if k.endswith(".weight") and v.dim() == 2 and "emb" not in k]


def magnitude_masks(params: Any, sparsity: float, scope: str = "global",
                    names: Iterable[str] | None = None) -> Masks:
    """Masks that prune the floor(sparsity * n) smallest-magnitude weights (as NumPy's)."""
    sparsity = check_sparsity(sparsity)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    params = _params(params)
    names = prunable_names(params) if names is None else list(names)
    missing = [k for k in names if k not in params]
    if missing:
        raise ValueError(f"cannot prune {missing}: not among the parameters")
    if not names:
        raise ValueError("nothing to prune: no prunable tensors (2-D non-embedding weights)")
    arrays = {k: params[k].detach().abs().cpu() for k in names}
    groups = [names] if scope == "global" else [[k] for k in names]
    masks = Masks()
    for group in groups:
        flat = torch.cat([arrays[k].reshape(-1).to(torch.float64) for k in group])  # (n,)
        k_prune = int(sparsity * flat.numel())
        # stable: equal magnitudes keep their (tensor, index) order
        order = torch.argsort(flat, stable=True)  # (n,)
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        keep[order[:k_prune]] = False
        start = 0
        for k in group:
            n = arrays[k].numel()
            masks[k] = keep[start : start + n].reshape(arrays[k].shape)
            start += n
    return masks


def head_importance(params: Any, config: TransformerConfig) -> torch.Tensor:
    """score (n_layer, H), float64: the L2 norm of each attention head's weights."""
    params = _params(params)
    H, D = config.n_head, config.head_dim
    own_kv = config.n_kv_head == config.n_head
    scores = torch.zeros(config.n_layer, H, dtype=torch.float64)
    for i in range(config.n_layer):
        a = f"blocks.{i}.attn."
        sq = torch.zeros(H, dtype=torch.float64)
        for proj in ["q_proj"] + (["k_proj", "v_proj"] if own_kv else []):
            w = params[a + proj + ".weight"].detach().cpu().double().reshape(H, D, -1)  # (H, D, C)
            b = params[a + proj + ".bias"].detach().cpu().double().reshape(H, D)  # (H, D)
            sq += (w * w).sum(dim=(1, 2)) + (b * b).sum(dim=1)
        wo = params[a + "o_proj.weight"].detach().cpu().double()  # (C, H*D)
        wo = wo.reshape(wo.shape[0], H, D)  # (C, H, D)
        sq += (wo * wo).sum(dim=(0, 2))
        scores[i] = sq.sqrt()
    return scores


def prune_heads(params: Any, config: TransformerConfig, fraction: float, scope: str = "global") -> Masks:
    """Masks that remove the ``fraction`` of attention heads with the lowest ``head_importance``."""
    params = _params(params)
    drop = _lowest(head_importance(params, config), fraction, scope)  # (n_layer, H) bool
    D = config.head_dim
    own_kv = config.n_kv_head == config.n_head
    masks = Masks()
    for i in range(config.n_layer):
        a = f"blocks.{i}.attn."
        keep_rows = (~drop[i]).repeat_interleave(D)  # (H*D,)
        for proj in ["q_proj"] + (["k_proj", "v_proj"] if own_kv else []):
            shape = params[a + proj + ".weight"].shape
            masks[a + proj + ".weight"] = keep_rows[:, None].expand(shape).clone()
            masks[a + proj + ".bias"] = keep_rows.clone()
        masks[a + "o_proj.weight"] = keep_rows[None, :].expand(params[a + "o_proj.weight"].shape).clone()
    return masks


def neuron_importance(params: Any, config: TransformerConfig) -> torch.Tensor:
    """score (n_layer, F), float64: the L2 norm of each MLP neuron's fc row, bias and proj column."""
    params = _params(params)
    scores = []
    for i in range(config.n_layer):
        m = f"blocks.{i}.mlp."
        fc = params[m + "fc.weight"].detach().cpu().double()  # (F, C)
        fb = params[m + "fc.bias"].detach().cpu().double()  # (F,)
        pj = params[m + "proj.weight"].detach().cpu().double()  # (C, F)
        scores.append(((fc * fc).sum(dim=1) + fb * fb + (pj * pj).sum(dim=0)).sqrt())  # (F,)
    return torch.stack(scores)  # (n_layer, F)


def prune_neurons(params: Any, config: TransformerConfig, fraction: float, scope: str = "global") -> Masks:
    """Masks that remove the ``fraction`` of MLP neurons with the lowest ``neuron_importance``."""
    params = _params(params)
    drop = _lowest(neuron_importance(params, config), fraction, scope)  # (n_layer, F) bool
    masks = Masks()
    for i in range(config.n_layer):
        m = f"blocks.{i}.mlp."
        keep = ~drop[i]  # (F,)
        C = params[m + "proj.weight"].shape[0]
        masks[m + "fc.weight"] = keep[:, None].expand(keep.numel(), C).clone()  # (F, C)
        masks[m + "fc.bias"] = keep.clone()  # (F,)
        masks[m + "proj.weight"] = keep[None, :].expand(C, keep.numel()).clone()  # (C, F)
    return masks


def finetune(model: nn.Module, masks: Masks, batches: Callable[[int], tuple[Any, Any]], steps: int,
             lr: float = 5e-4, weight_decay: float = 0.1, grad_clip: float = 1.0) -> list[float]:
    """Train a pruned torch model ``steps`` steps under its masks (the twin of NumPy's:
    AdamW, decay on 2-D weights only, cosine lr to lr / 10, clipping). Returns the losses."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    device = next(model.parameters()).device
    masks.apply(model)
    model.train()
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_schedule(step, lr, lr / 10, 0, steps)
        x, y = batches(step)
        loss = model.loss(torch.as_tensor(np.asarray(x), device=device),
                          torch.as_tensor(np.asarray(y), device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        masks.mask_grads(model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        masks.apply(model)
        losses.append(float(loss.item()))
    model.eval()
    return losses


def _lowest(scores: torch.Tensor, fraction: float, scope: str) -> torch.Tensor:
    """bool (n_layer, n_units): the floor(fraction * n) lowest scores, globally or per layer."""
    fraction = check_sparsity(fraction, "fraction")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    drop = torch.zeros(scores.shape, dtype=torch.bool)
    if scope == "global":
        order = torch.argsort(scores.reshape(-1), stable=True)[: int(fraction * scores.numel())]
        drop.view(-1)[order] = True
    else:
        k = int(fraction * scores.shape[1])
        for i in range(scores.shape[0]):
            drop[i, torch.argsort(scores[i], stable=True)[:k]] = True
    return drop
