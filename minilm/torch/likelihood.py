"""The chain rule of probability in PyTorch: the twin of ``minilm.numpy.likelihood``.

A causal language model gives, at every position t, a distribution over the next token
conditioned on the prefix: logits[b, t] -> p(. | w_<t) = softmax(logits[b, t]). The chain
rule turns these conditionals into the probability of the whole sequence W = w_1 ... w_T:

    P(W) = prod_t p(w_t | w_<t)
    log P(W) = sum_t log p(w_t | w_<t)                     (sequence_log_prob)

Averaging the negative log-likelihood over the N counted tokens of a batch gives

    NLL = -(1/N) sum_{b,t} log p(w_{b,t} | w_{b,<t})        (nats per token = cross_entropy)
    perplexity = exp(NLL)                                   (effective branching factor)
    bits per token = NLL / ln 2                             (the same in base 2)

Perplexity V means "as uncertain as a uniform choice among V tokens"; a model that always
predicts the uniform distribution over V tokens has NLL = ln V, perplexity V, log2 V bits.

Conventions: logits (B, T, V), targets (B, T) ints, ``targets[b, t]`` is the token the model
should predict at position t (the input shifted by one). Positions whose target equals
``ignore_index`` (padding) are not counted: ``token_log_probs`` puts 0 there (log 1, so they
add nothing to ``sequence_log_prob``) and the means of ``perplexity`` and ``bits_per_token``
leave them out. If every target is ignored those means are over nothing and return ``nan``,
as ``cross_entropy`` does.

These functions score logits someone else computed; that the model is causal (logits at t see
only w_<t) is the model's job, and is what makes P(W) sum to 1 over all sequences of length T.
``token_log_probs`` and ``sequence_log_prob`` return tensors (differentiable by autograd);
``perplexity`` and ``bits_per_token`` return Python floats, as the NumPy twin does.
Deliberately left out: per-sequence perplexity and any model running.
"""

from __future__ import annotations

import math
import sys

import torch

from minilm.torch.functional import _check_targets, cross_entropy, log_softmax

__all__ = ["token_log_probs", "sequence_log_prob", "perplexity", "bits_per_token"]

_MAX_LOG = math.log(sys.float_info.max)  # ~709.78: the largest x with exp(x) finite in float64


def _check_btv(logits: torch.Tensor, name: str) -> torch.Tensor:
    """logits as a float tensor of shape (B, T, V)."""
    logits = torch.as_tensor(logits)
    if logits.ndim != 3:
        raise ValueError(f"{name}: logits must be (B, T, V), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        logits = logits.to(torch.float64)
    return logits


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """log p(w_t | w_<t) for every position: logits (B, T, V), targets (B, T) -> (B, T).

    Ignored positions (target == ignore_index) hold 0, so summing over t skips them.
    Worked example: uniform logits over V = 4 give log(1/4) = -1.386... at every counted position.
    """
    logits = _check_btv(logits, "token_log_probs")
    targets = torch.as_tensor(targets, device=logits.device)
    counted = _check_targets(logits, targets, ignore_index, "token_log_probs")  # (B, T)
    logp = log_softmax(logits, axis=-1)  # (B, T, V)
    safe_t = torch.where(counted, targets, 0).long()  # (B, T), ignored positions read class 0, then drop
    # log p(w_t | w_<t) = log_softmax(logits_t)[w_t]
    logp_t = torch.gather(logp, -1, safe_t[..., None])[..., 0]  # (B, T)
    return torch.where(counted, logp_t, 0.0)  # (B, T)


def sequence_log_prob(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """log P(W) = sum_t log p(w_t | w_<t): logits (B, T, V), targets (B, T) -> (B,)."""
    # log P(W) = sum_t log p(w_t | w_<t)  (chain rule)
    return token_log_probs(logits, targets, ignore_index).sum(dim=-1)  # (B,)


def perplexity(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> float:
    """exp(mean NLL over the counted tokens of the batch): logits (B, T, V), targets (B, T)."""
    logits = _check_btv(logits, "perplexity")
    nll = cross_entropy(logits, targets, ignore_index).item()
    if nll > _MAX_LOG:  # exp would overflow a float64 (math.exp raises): the perplexity is inf
        return math.inf
    # perplexity = exp(-(1/N) sum log p(w_t | w_<t)); nan stays nan (no counted tokens)
    return math.exp(nll)


def bits_per_token(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> float:
    """Mean NLL over the counted tokens in bits (NLL in nats / ln 2): logits (B, T, V), targets (B, T)."""
    logits = _check_btv(logits, "bits_per_token")
    # bits = nats / ln 2
    return cross_entropy(logits, targets, ignore_index).item() / math.log(2)
