"""Softmax, log-softmax and cross-entropy in PyTorch: the twin of ``minilm.numpy.functional``.

Maths (x a row of logits, V entries, y the output):

    softmax(x)_i     = exp(x_i) / sum_j exp(x_j)
    log_softmax(x)_i = x_i - logsumexp(x),   logsumexp(x) = log sum_j exp(x_j)
    cross_entropy    = mean over counted positions n of  -log_softmax(x_n)[t_n]

Both are invariant to adding a constant to the row, so we subtract the row max m before
``exp`` (the "max trick"): every exponent is then <= 0, nothing overflows, and the largest
term is exp(0) = 1, so the sum never underflows to 0 either. This keeps them exact for any
finite input, logits of +-1e4 included. ``logsumexp(x) = m + log sum_j exp(x_j - m)``.

The backward passes are left to autograd (the NumPy twin writes them by hand). Because the
result does not depend on m, m is detached: no gradient needs to flow through the max.

``cross_entropy`` follows ``torch.nn.functional.cross_entropy`` with the class axis LAST
(logits ``(..., V)``, targets ``(...)``) and ``reduction="mean"``. Positions whose target
equals ``ignore_index`` are left out of the mean. If every target is ignored the mean is over
nothing and, as in torch, the loss is ``nan`` (0 / 0) while its gradient is all zeros.

Deliberately left out: class weights, label smoothing, reductions other than the mean, and
probability ("soft") targets.
"""

from __future__ import annotations

import torch

__all__ = ["softmax", "log_softmax", "cross_entropy"]


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """x as a tensor; integer/bool input becomes float64, float input keeps its dtype."""
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.float64)
    return x


def softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Softmax along ``axis``: x (..., V) -> probabilities (..., V) summing to 1 along ``axis``.

    >>> softmax(torch.tensor([0.0, 1.0986122886681098], dtype=torch.float64))
    tensor([0.2500, 0.7500], dtype=torch.float64)
    """
    x = _as_float(x)
    # max trick: softmax(x) = softmax(x - m) with m the row max, so every exp(.) is <= 1
    m = torch.amax(x, dim=axis, keepdim=True).detach()  # (..., 1)
    e = torch.exp(x - m)  # (..., V)
    # y_i = exp(x_i - m) / sum_j exp(x_j - m)
    return e / torch.sum(e, dim=axis, keepdim=True)


def log_softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Log-softmax along ``axis``: x (..., V) -> log-probabilities (..., V).

    >>> log_softmax(torch.tensor([1e4, 1e4], dtype=torch.float64))  # finite where exp overflows
    tensor([-0.6931, -0.6931], dtype=torch.float64)
    """
    x = _as_float(x)
    # log-sum-exp with the max trick: logsumexp(x) = m + log sum_j exp(x_j - m)
    m = torch.amax(x, dim=axis, keepdim=True).detach()  # (..., 1)
    z = x - m  # (..., V), every entry <= 0, the max is exactly 0
    # log_softmax(x)_i = x_i - logsumexp(x) = (x_i - m) - log sum_j exp(x_j - m)
    return z - torch.log(torch.sum(torch.exp(z), dim=axis, keepdim=True))


def _check_targets(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, name: str) -> torch.Tensor:
    """Validate targets against logits (..., V); return a bool mask (...) of counted positions."""
    if logits.ndim < 1:
        raise ValueError(f"{name}: logits must have a class axis (..., V), got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"{name}: targets shape {tuple(targets.shape)} must equal the leading dims of logits "
            f"{tuple(logits.shape[:-1])} (logits shape {tuple(logits.shape)})"
        )
    if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
        raise ValueError(f"{name}: targets must be integers, got dtype {targets.dtype}")
    V = logits.shape[-1]
    counted = targets != ignore_index  # (...)
    bad = counted & ((targets < 0) | (targets >= V))
    if bad.any():
        where = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(
            f"{name}: target {int(targets[where])} at index {where} is outside [0, {V}) "
            f"and is not ignore_index={ignore_index}"
        )
    return counted


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean negative log-likelihood in nats: logits (..., V), targets (...) ints -> scalar.

    loss = -(1/N) sum_n log softmax(logits_n)[targets_n] over the N positions whose target is
    not ``ignore_index``; ``nan`` if N = 0 (as torch). Returned as a 0-dim tensor of the
    logits' float dtype, differentiable by autograd.

    Worked example: uniform logits over V = 4 classes give loss log 4 = 1.386... whatever the
    targets.
    """
    logits = _as_float(logits)
    targets = torch.as_tensor(targets, device=logits.device)
    counted = _check_targets(logits, targets, ignore_index, "cross_entropy")
    logp = log_softmax(logits, axis=-1)  # (..., V)
    safe_t = torch.where(counted, targets, 0).long()  # (...), ignored positions read class 0, then drop
    # log p(t_n) for each position n
    logp_t = torch.gather(logp, -1, safe_t[..., None])[..., 0]  # (...)
    n = counted.sum()
    # loss = -(1/N) sum_n counted_n log p(t_n); N = 0 gives 0/0 = nan, as torch
    return -torch.where(counted, logp_t, 0).sum() / n
