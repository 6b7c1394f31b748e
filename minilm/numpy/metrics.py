"""Accuracy metrics for language models and classifiers, in NumPy (twin: ``minilm.torch.metrics``).

For a language model's logits (B, T, V) and next-token targets (B, T)::

    next_token_accuracy = mean over counted (b, t) of [argmax_v logits[b, t, v] == targets[b, t]]
    top_k_accuracy      = mean over counted (b, t) of [targets[b, t] is among the k largest logits]

"counted" means ``targets != ignore_index`` (as in ``cross_entropy``); the same functions take a
classifier's logits (N, n_classes) and labels (N,). Ties go in the target's favour: a hit is
a target with fewer than k logits strictly larger than its own (the same rule in both twins,
so they agree even where ``argmax`` and ``topk`` would break a tie differently). A position
whose logits hold a NaN (a diverged model) is a miss.

For a classifier's predictions (after argmax) and true labels, both (N,) ints in
[0, n_classes)::

    confusion[i, j]  = number of examples of true class i predicted as class j
    precision_c = confusion[c, c] / sum_i confusion[i, c]     (0 when nothing was predicted c)
    recall_c    = confusion[c, c] / sum_j confusion[c, j]     (0 when class c never occurs)
    f1_c        = 2 precision_c recall_c / (precision_c + recall_c)   (0 when both are 0)

(scikit-learn's ``precision_recall_fscore_support(..., zero_division=0)`` and
``confusion_matrix(..., labels=range(n_classes))`` give the same numbers; the tests check it.)

``plot_confusion_matrix`` draws a confusion matrix with matplotlib (imported only there).

Deliberately left out: micro/weighted averages (macro is one ``.mean()`` away), ROC/AUC and
calibration, multi-label metrics.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["accuracy", "next_token_accuracy", "top_k_accuracy", "confusion_matrix",
           "precision_recall_f1", "classification_report", "plot_confusion_matrix", "TopKCounter"]


def top_k_accuracy(logits: Any, targets: Any, k: int = 5, ignore_index: int = -100) -> float:
    """Fraction of counted targets among the k largest logits: logits (..., V), targets (...).

    Returns nan when no target is counted.

    >>> top_k_accuracy(np.array([[0.1, 0.5, 0.4], [0.9, 0.0, 0.1]]), np.array([2, 1]), k=2)
    0.5
    """
    logits, targets = _check_logits_targets(logits, targets, "top_k_accuracy")
    V = logits.shape[-1]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= V:
        raise ValueError(f"top_k_accuracy: k must be an int in [1, V={V}], got {k!r}")
    z = logits.reshape(-1, V)  # (N, V)
    t = targets.reshape(-1)  # (N,)
    keep = t != ignore_index  # (N,)
    if not keep.any():
        return float("nan")
    z, t = z[keep], t[keep]  # (n, V), (n,)
    # rank of the target = number of logits strictly larger than the target's logit
    zt = z[np.arange(len(t)), t]  # (n,)
    rank = (z > zt[:, None]).sum(axis=-1)  # (n,)
    # hit if fewer than k logits beat it (ties with the target count in the target's favour);
    # a row with a NaN logit predicts nothing (every comparison with NaN is False: no miss)
    hit = (rank < k) & ~np.isnan(z).any(axis=-1)  # (n,)
    return float(hit.mean())


def next_token_accuracy(logits: Any, targets: Any, ignore_index: int = -100) -> float:
    """Fraction of counted positions where the most likely next token is the target.

    logits (B, T, V), targets (B, T); the top-1 case of ``top_k_accuracy``.
    """
    return top_k_accuracy(logits, targets, 1, ignore_index)


class TopKCounter:
    """Next-token (top-1) and top-k accuracy summed over many batches, for a language model's
    evaluation: ``update(logits, targets)`` per batch (NumPy arrays, or torch tensors, which
    are scored on their device by ``minilm.torch.metrics``), then ``result()``.

    >>> c = TopKCounter(ks=(1, 2))
    >>> c.update(np.array([[[0.1, 0.5, 0.4], [0.9, 0.0, 0.1]]]), np.array([[2, 0]]))
    >>> c.result()
    {'val_next_token_accuracy': 0.5, 'val_top2_accuracy': 1.0}
    """

    def __init__(self, ks: Sequence[int] = (1, 5), prefix: str = "val_") -> None:
        self.ks, self.prefix = tuple(ks), prefix
        self.hits = {k: 0.0 for k in self.ks}
        self.count = 0

    def update(self, logits: Any, targets: Any, ignore_index: int = -100) -> None:
        if hasattr(logits, "detach"):  # a torch tensor: torch is imported already
            from minilm.torch.metrics import top_k_accuracy as topk

            n = int((targets != ignore_index).sum())
        else:
            topk = top_k_accuracy
            n = int((np.asarray(targets) != ignore_index).sum())
        if n == 0:
            return
        V = logits.shape[-1]
        for k in self.ks:
            # hits = accuracy * counted targets (exact: accuracy is hits / n)
            self.hits[k] += round(topk(logits, targets, min(k, V), ignore_index) * n)
        self.count += n

    def result(self) -> dict[str, float]:
        """{"val_next_token_accuracy": ..., "val_top5_accuracy": ...} (nan before any update)."""
        out = {}
        for k in self.ks:
            name = "next_token_accuracy" if k == 1 else f"top{k}_accuracy"
            out[self.prefix + name] = self.hits[k] / self.count if self.count else float("nan")
        return out


def accuracy(predictions: Any, labels: Any, ignore_index: int = -100) -> float:
    """Fraction of equal entries of predictions and labels (both (...) ints); labels equal to
    ``ignore_index`` are not counted. Returns nan when nothing is counted.

    >>> accuracy([0, 1, 2, 2], [0, 1, 1, 2])
    0.75
    """
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape:
        raise ValueError(f"accuracy: predictions shape {p.shape} must equal labels shape {y.shape}")
    keep = y != ignore_index
    if not keep.any():
        return float("nan")
    return float((p[keep] == y[keep]).mean())


def confusion_matrix(labels: Any, predictions: Any, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts: row = true class, column = predicted class.

    >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist()
    [[1, 0], [1, 1]]
    """
    y, p = _check_labels(labels, predictions, n_classes, "confusion_matrix")
    # confusion[i, j] = #{n : y_n = i and p_n = j}; a scatter-add over flat index i * K + j
    flat = np.bincount(y * n_classes + p, minlength=n_classes * n_classes)  # (K*K,)
    return flat.reshape(n_classes, n_classes).astype(np.int64)  # (K, K)


def precision_recall_f1(labels: Any, predictions: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1, each (n_classes,) float64 (formulas above)."""
    cm = confusion_matrix(labels, predictions, n_classes).astype(np.float64)  # (K, K)
    tp = np.diag(cm)  # (K,)
    predicted = cm.sum(axis=0)  # (K,) column sums
    actual = cm.sum(axis=1)  # (K,) row sums
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def classification_report(labels: Any, predictions: Any, class_names: Sequence[str]) -> str:
    """A text table: per-class precision, recall, F1 and support, then accuracy and macro F1."""
    K = len(class_names)
    precision, recall, f1 = precision_recall_f1(labels, predictions, K)
    support = confusion_matrix(labels, predictions, K).sum(axis=1)
    w = max(12, max(len(str(c)) for c in class_names))
    lines = [f"{'class':<{w}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for c in range(K):
        lines.append(f"{str(class_names[c]):<{w}} {precision[c]:9.3f} {recall[c]:9.3f} {f1[c]:9.3f} "
                     f"{int(support[c]):8d}")
    lines.append(f"{'accuracy':<{w}} {accuracy(predictions, labels):29.3f} {int(support.sum()):8d}")
    lines.append(f"{'macro f1':<{w}} {f1.mean():29.3f}")
    return "\n".join(lines)


def plot_confusion_matrix(cm: Any, class_names: Sequence[str] | None = None, path: Any = None,
                          normalize: bool = True, title: str = "confusion matrix") -> Any:
    """Draw ``cm`` (K, K) as a heat map (rows true, columns predicted), each cell annotated
    with its count; colours show each row's fraction when ``normalize``. Saves to ``path``
    when given; returns the matplotlib Figure. Needs matplotlib (imported here only)."""
    # the object-oriented API: no pyplot state and no global backend switched, so the figure
    # shows inline in a notebook and saves anywhere
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"plot_confusion_matrix: cm must be square (K, K), got shape {cm.shape}")
    K = cm.shape[0]
    names = [str(i) for i in range(K)] if class_names is None else [str(c) for c in class_names]
    if len(names) != K:
        raise ValueError(f"plot_confusion_matrix: {len(names)} class names for a {K}x{K} matrix")
    rows = cm.sum(axis=1, keepdims=True)
    shown = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0) if normalize else cm
    fig = Figure(figsize=(1.0 + 0.6 * K, 0.8 + 0.6 * K))
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of row" if normalize else "count")
    ax.set_xticks(range(K), names, rotation=45, ha="right")
    ax.set_yticks(range(K), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    hi = shown.max() if shown.size else 0
    for i in range(K):
        for j in range(K):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if shown[i, j] > 0.6 * hi else "black", fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


# ---------------------------------------------------------------------------------------------
# Checks


def _check_logits_targets(logits: Any, targets: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    logits, targets = np.asarray(logits), np.asarray(targets)
    if logits.ndim < 1 or logits.shape[:-1] != targets.shape:
        raise ValueError(f"{name}: logits (..., V) {logits.shape} and targets (...) {targets.shape} "
                         f"do not match")
    if not np.issubdtype(targets.dtype, np.integer) or targets.dtype == np.bool_:
        raise ValueError(f"{name}: targets must be ints, got dtype {targets.dtype}")
    return logits, targets


def _check_labels(labels: Any, predictions: Any, n_classes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(labels).reshape(-1), np.asarray(predictions).reshape(-1)
    if not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"{name}: n_classes must be a positive int, got {n_classes!r}")
    if y.shape != p.shape:
        raise ValueError(f"{name}: labels {np.shape(labels)} and predictions {np.shape(predictions)} "
                         f"differ in size")
    for a, an in ((y, "labels"), (p, "predictions")):
        if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() >= n_classes):
            raise ValueError(f"{name}: {an} must be ints in [0, {n_classes}), got dtype {a.dtype}, "
                             f"range [{a.min()}, {a.max()}]")
    return y.astype(np.int64), p.astype(np.int64)
