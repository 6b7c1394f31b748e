"""Checks of assignment 'likelihood' (chapter 1): the chain rule of probability, log P(W),
perplexity and bits per token, against torch.log_softmax and F.cross_entropy in float64."""

from __future__ import annotations

import math

import numpy as np

from minilm.classroom.checks import check, close, rng, torch64


def _case(seed, B=2, T=5, V=7, scale=2.0):
    r = rng(seed)
    return r.standard_normal((B, T, V)) * scale, r.integers(0, V, size=(B, T))


def _ref_token_log_probs(logits, targets, ignore_index=-100):
    import torch

    lp = torch.log_softmax(torch64(logits), -1)
    t = torch.tensor(np.where(targets == ignore_index, 0, targets))
    out = lp.gather(-1, t[..., None])[..., 0]
    return torch.where(torch.tensor(targets == ignore_index), torch.zeros(()), out).numpy()


def _ref_nll(logits, targets, ignore_index=-100):
    import torch
    import torch.nn.functional as F

    V = logits.shape[-1]
    return float(F.cross_entropy(torch64(logits).reshape(-1, V), torch.tensor(targets.reshape(-1)),
                                 ignore_index=ignore_index))


def _float(x, name):
    try:
        return float(x)
    except (TypeError, ValueError):
        raise AssertionError(f"{name} must return one number (a float), got {type(x).__name__}") from None


def token_log_probs_forward(s):
    logits, t = _case(0)
    return close(s.likelihood.token_log_probs(logits, t), _ref_token_log_probs(logits, t),
                 "token_log_probs (B=2, T=5, V=7)")


def token_log_probs_masks(s):
    logits, t = _case(1)
    t[0, 2:] = -100
    close(s.likelihood.token_log_probs(logits, t), _ref_token_log_probs(logits, t),
          "token_log_probs with ignored targets (0 there)")
    t2 = t.copy()
    t2[1, 0] = 3
    t2 = np.where(t2 == -100, 3, t2)
    return close(s.likelihood.token_log_probs(logits, t2, ignore_index=3), _ref_token_log_probs(logits, t2, 3),
                 "token_log_probs with ignore_index=3")


def token_log_probs_stability(s):
    logits = np.array([[[1e4, 0.0, -1e4], [-1e4, 1e4, 1e4]]])
    t = np.array([[1, 2]])
    with np.errstate(all="ignore"):
        out = s.likelihood.token_log_probs(logits, t)
    return close(out, _ref_token_log_probs(logits, t), "token_log_probs of logits +-1e4 (finite)")


def sequence_log_prob_forward(s):
    logits, t = _case(2, B=3, T=4)
    t[2, 1] = -100
    ref = _ref_token_log_probs(logits, t).sum(-1)
    return close(s.likelihood.sequence_log_prob(logits, t), ref, "sequence_log_prob = sum_t log p(w_t | w_<t), (B,)")


def perplexity_forward(s):
    logits, t = _case(3)
    ppl = _float(s.likelihood.perplexity(logits, t), "perplexity")
    ref = math.exp(_ref_nll(logits, t))
    check(math.isclose(ppl, ref, rel_tol=1e-9), f"perplexity: got {ppl!r}, expected exp(mean NLL) = {ref!r}")
    u = _float(s.likelihood.perplexity(np.zeros((1, 3, 13)), np.array([[1, 2, 3]])), "perplexity")
    check(math.isclose(u, 13.0, rel_tol=1e-9), f"perplexity of uniform logits over V=13 must be 13, got {u!r}")
    return f"perplexity {ppl:.6g} (reference {ref:.6g})"


def perplexity_masks(s):
    logits, t = _case(4, B=2, T=6)
    t[1, 3:] = -100
    ppl = _float(s.likelihood.perplexity(logits, t), "perplexity")
    ref = math.exp(_ref_nll(logits, t))
    check(math.isclose(ppl, ref, rel_tol=1e-9),
          f"perplexity with ignored targets: got {ppl!r}, expected {ref!r} (the mean is over the counted tokens only)")


def perplexity_stability(s):
    logits = np.zeros((1, 2, 3))
    logits[0, :, 0] = 2e3  # the target (class 1) gets log p = -2000: NLL far above log(max float)
    with np.errstate(all="ignore"):
        try:
            ppl = s.likelihood.perplexity(logits, np.array([[1, 1]]))
        except OverflowError as exc:
            raise AssertionError(f"perplexity overflowed ({exc}): a mean NLL of 2000 nats must give inf") from None
    ppl = _float(ppl, "perplexity")
    check(ppl == math.inf, f"perplexity with a mean NLL of 2000 nats must be inf, got {ppl!r}")


def bits_per_token_forward(s):
    logits, t = _case(5)
    t[0, 0] = -100
    b = _float(s.likelihood.bits_per_token(logits, t), "bits_per_token")
    ref = _ref_nll(logits, t) / math.log(2)
    check(math.isclose(b, ref, rel_tol=1e-9), f"bits_per_token: got {b!r}, expected mean NLL / ln 2 = {ref!r}")
    u = _float(s.likelihood.bits_per_token(np.zeros((1, 2, 8)), np.array([[0, 5]])), "bits_per_token")
    check(math.isclose(u, 3.0, rel_tol=1e-9), f"bits_per_token of uniform logits over V=8 must be 3, got {u!r}")
