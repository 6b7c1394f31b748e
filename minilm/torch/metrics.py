"""Accuracy metrics on torch tensors: the twins of ``minilm.numpy.metrics`` (same names, same
arguments, same tie rule; formulas in that module's docstring). They run on the tensors' device
without a copy to the CPU, so a training loop can call them on every batch.

Deliberately left out: the plot (use ``minilm.numpy.metrics.plot_confusion_matrix`` on
``confusion_matrix(...).cpu().numpy()``) and the text report.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["accuracy", "next_token_accuracy", "top_k_accuracy", "confusion_matrix",
           "precision_recall_f1"]


def top_k_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 5, ignore_index: int = -100) -> float:
    """Fraction of counted targets among the k largest logits: logits (..., V), targets (...)."""
    logits, targets = _as_tensor(logits), _as_tensor(targets)
    if logits.dim() < 1 or tuple(logits.shape[:-1]) != tuple(targets.shape):
        raise ValueError(f"top_k_accuracy: logits (..., V) {tuple(logits.shape)} and targets (...) "
                         f"{tuple(targets.shape)} do not match")
    V = logits.shape[-1]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= V:
        raise ValueError(f"top_k_accuracy: k must be an int in [1, V={V}], got {k!r}")
    z = logits.detach().reshape(-1, V)  # (N, V)
    t = targets.reshape(-1).long()  # (N,)
    keep = t != ignore_index  # (N,)
    if not bool(keep.any()):
        return math.nan
    z, t = z[keep], t[keep]  # (n, V), (n,)
    # rank of the target = number of logits strictly larger than the target's logit
    zt = z.gather(1, t[:, None])  # (n, 1)
    rank = (z > zt).sum(dim=-1)  # (n,)
    return float((rank < k).double().mean())


def next_token_accuracy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> float:
    """Fraction of counted positions where the most likely next token is the target."""
    return top_k_accuracy(logits, targets, 1, ignore_index)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> float:
    """Fraction of equal entries (labels equal to ``ignore_index`` not counted); nan if none."""
    p, y = _as_tensor(predictions), _as_tensor(labels)
    if tuple(p.shape) != tuple(y.shape):
        raise ValueError(f"accuracy: predictions shape {tuple(p.shape)} must equal labels shape {tuple(y.shape)}")
    keep = y != ignore_index
    if not bool(keep.any()):
        return math.nan
    return float((p[keep] == y[keep]).double().mean())


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(n_classes, n_classes) int64 counts: row = true class, column = predicted class."""
    y, p = _as_tensor(labels).reshape(-1).long(), _as_tensor(predictions).reshape(-1).long()
    if y.shape != p.shape:
        raise ValueError(f"confusion_matrix: labels and predictions differ in size ({y.numel()} vs {p.numel()})")
    for a, an in ((y, "labels"), (p, "predictions")):
        if a.numel() and (int(a.min()) < 0 or int(a.max()) >= n_classes):
            raise ValueError(f"confusion_matrix: {an} must be in [0, {n_classes}), got range "
                             f"[{int(a.min())}, {int(a.max())}]")
    # confusion[i, j] = #{n : y_n = i and p_n = j}
    flat = torch.bincount(y * n_classes + p, minlength=n_classes * n_classes)  # (K*K,)
    return flat.reshape(n_classes, n_classes)  # (K, K)


def precision_recall_f1(labels: torch.Tensor, predictions: torch.Tensor,
                        n_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class precision, recall and F1, each (n_classes,) float64; 0 where undefined."""
    cm = confusion_matrix(labels, predictions, n_classes).double()  # (K, K)
    tp = torch.diagonal(cm)  # (K,)
    predicted, actual = cm.sum(dim=0), cm.sum(dim=1)  # (K,), (K,)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), 0.0)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / torch.where(denom > 0, denom, 1.0), 0.0)
    return precision, recall, f1


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
