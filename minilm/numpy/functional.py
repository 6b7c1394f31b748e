"""Softmax, log-softmax and cross-entropy in NumPy, each with its hand-written backward.

Maths (x a row of logits, V entries, y the output):

    softmax(x)_i     = exp(x_i) / sum_j exp(x_j)
    log_softmax(x)_i = x_i - logsumexp(x),   logsumexp(x) = log sum_j exp(x_j)
    cross_entropy    = mean over counted positions n of  -log_softmax(x_n)[t_n]

Both are invariant to adding a constant to the row, so we subtract the row max m before
``exp`` (the "max trick"): every exponent is then <= 0, nothing overflows, and the largest
term is exp(0) = 1, so the sum never underflows to 0 either. This keeps them exact for any
finite input, logits of +-1e4 included. ``logsumexp(x) = m + log sum_j exp(x_j - m)``.

Backward passes (dy the gradient of the loss w.r.t. the output y):

    softmax:      dx = y * (dy - sum_j dy_j y_j)
    log_softmax:  dx = dy - softmax(x) * sum_j dy_j          (softmax(x) = exp(y))
    cross_entropy (mean over N counted targets):
                  dx_n = (softmax(x_n) - onehot(t_n)) / N    for counted n, 0 for ignored n

``cross_entropy`` follows ``torch.nn.functional.cross_entropy`` with the class axis LAST
(logits ``(..., V)``, targets ``(...)``) and ``reduction="mean"``. Positions whose target
equals ``ignore_index`` are left out of the mean. If every target is ignored the mean is over
nothing and, as in torch, the loss is ``nan`` (0 / 0) while its gradient is all zeros.

Deliberately left out: class weights, label smoothing, reductions other than the mean, and
probability ("soft") targets.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "softmax",
    "log_softmax",
    "cross_entropy",
    "softmax_backward",
    "log_softmax_backward",
    "cross_entropy_backward",
]


def _as_float(x: np.ndarray) -> np.ndarray:
    """x as an array; integer/bool input becomes float64, float input keeps its dtype."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``: x (..., V) -> probabilities (..., V) summing to 1 along ``axis``.

    >>> softmax(np.array([0.0, np.log(3.0)]))
    array([0.25, 0.75])
    """
    x = _as_float(x)
    # max trick: softmax(x) = softmax(x - m) with m the row max, so every exp(.) is <= 1
    m = np.max(x, axis=axis, keepdims=True)  # (..., 1)
    e = np.exp(x - m)  # (..., V)
    # y_i = exp(x_i - m) / sum_j exp(x_j - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Log-softmax along ``axis``: x (..., V) -> log-probabilities (..., V).

    >>> log_softmax(np.array([1e4, 1e4]))  # finite even where exp(1e4) overflows
    array([-0.69314718, -0.69314718])
    """
    x = _as_float(x)
    # log-sum-exp with the max trick: logsumexp(x) = m + log sum_j exp(x_j - m)
    m = np.max(x, axis=axis, keepdims=True)  # (..., 1)
    z = x - m  # (..., V), every entry <= 0, the max is exactly 0
    # log_softmax(x)_i = x_i - logsumexp(x) = (x_i - m) - log sum_j exp(x_j - m)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def _check_targets(logits: np.ndarray, targets: np.ndarray, ignore_index: int, name: str) -> np.ndarray:
    """Validate targets against logits (..., V); return a bool mask (...) of counted positions."""
    if logits.ndim < 1:
        raise ValueError(f"{name}: logits must have a class axis (..., V), got shape {logits.shape}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"{name}: targets shape {targets.shape} must equal the leading dims of logits "
            f"{logits.shape[:-1]} (logits shape {logits.shape})"
        )
    if targets.dtype == np.bool_ or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"{name}: targets must be integers, got dtype {targets.dtype}")
    V = logits.shape[-1]
    counted = targets != ignore_index  # (...)
    bad = counted & ((targets < 0) | (targets >= V))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}: target {int(targets[where])} at index {where} is outside [0, {V}) "
            f"and is not ignore_index={ignore_index}"
        )
    return counted


def cross_entropy(logits: np.ndarray, targets: np.ndarray, ignore_index: int = -100) -> np.floating:
    """Mean negative log-likelihood in nats: logits (..., V), targets (...) ints -> scalar.

    loss = -(1/N) sum_n log softmax(logits_n)[targets_n] over the N positions whose target is
    not ``ignore_index``; ``nan`` if N = 0 (as torch). Returned as a NumPy scalar of the
    logits' float dtype.

    Worked example: uniform logits over V = 4 classes give loss log 4 = 1.386... whatever the
    targets.
    """
    logits, targets = _as_float(logits), np.asarray(targets)
    counted = _check_targets(logits, targets, ignore_index, "cross_entropy")
    logp = log_softmax(logits, axis=-1)  # (..., V)
    safe_t = np.where(counted, targets, 0)  # (...), ignored positions read class 0, then drop
    # log p(t_n) for each position n
    logp_t = np.take_along_axis(logp, safe_t[..., None], axis=-1)[..., 0]  # (...)
    n = int(counted.sum())
    if n == 0:
        return logits.dtype.type(np.nan)  # mean over no targets: 0/0, as torch
    # loss = -(1/N) sum_n counted_n log p(t_n)
    return logits.dtype.type(-np.sum(logp_t, where=counted) / n)


def softmax_backward(dy: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Gradient through ``y = softmax(x, axis)``: dy (..., V), y (..., V) -> dx (..., V).

    The Jacobian is dy_i/dx_j = y_i (delta_ij - y_j), so dx = y * (dy - sum_j dy_j y_j).
    """
    # dx = y * (dy - <dy, y>)
    return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))


def log_softmax_backward(dy: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Gradient through ``y = log_softmax(x, axis)``: dy (..., V), y (..., V) -> dx (..., V).

    d y_i / d x_j = delta_ij - softmax(x)_j, and softmax(x) = exp(y), so
    dx = dy - exp(y) * sum_i dy_i.
    """
    # dx = dy - softmax(x) * sum_i dy_i
    return dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True)


def cross_entropy_backward(logits: np.ndarray, targets: np.ndarray, ignore_index: int = -100) -> np.ndarray:
    """Gradient of the MEAN loss ``cross_entropy(logits, targets)`` w.r.t. logits: (..., V).

    dlogits_n = (softmax(logits_n) - onehot(targets_n)) / N at the N counted positions, 0 at
    ignored ones; all zeros when every target is ignored (as torch's autograd gives).
    """
    logits, targets = _as_float(logits), np.asarray(targets)
    counted = _check_targets(logits, targets, ignore_index, "cross_entropy_backward")
    n = int(counted.sum())
    dlogits = softmax(logits, axis=-1)  # (..., V)
    safe_t = np.where(counted, targets, 0)  # (...)
    # subtract the one-hot of the target class: softmax - onehot(t)
    np.put_along_axis(dlogits, safe_t[..., None],
                      np.take_along_axis(dlogits, safe_t[..., None], axis=-1) - 1, axis=-1)
    # ignored positions contribute nothing; the mean divides by N
    dlogits *= counted[..., None] / dlogits.dtype.type(max(n, 1))
    return dlogits
