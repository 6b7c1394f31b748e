"""The chain rule of probability: token_log_probs, sequence_log_prob, perplexity, bits_per_token.

Independent references: ``torch.nn.functional.cross_entropy`` in float64 (``reduction="none"``
for the per-token values, the mean for perplexity and bits). The normalisation test checks the
chain rule itself: for a causal model, P(W) = prod_t p(w_t | w_<t) summed over every sequence
of length T is exactly 1; a model that peeks at w_t breaks it, which shows the test can fail.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from minilm.numpy import likelihood as nl  # noqa: E402
from minilm.testing import assert_close  # noqa: E402
from minilm.torch import likelihood as tl  # noqa: E402

TOL = dict(atol=1e-12, rtol=1e-10)  # float64 against float64


def make_batch(rng, B=3, T=5, V=7, ignore_frac=0.3, ignore_index=-100):
    logits = rng.standard_normal((B, T, V)) * 2
    targets = rng.integers(0, V, size=(B, T))
    targets[rng.random((B, T)) < ignore_frac] = ignore_index
    targets[0, 0] = 1  # at least one counted token
    return logits, targets


def torch_nll(logits, targets, ignore_index=-100, reduction="none"):
    B, T, V = logits.shape
    out = F.cross_entropy(torch.from_numpy(logits).reshape(-1, V), torch.from_numpy(targets).reshape(-1),
                          ignore_index=ignore_index, reduction=reduction)
    return out.reshape(B, T).numpy() if reduction == "none" else out.item()


@pytest.mark.parametrize("ignore_index", [-100, 0])
def test_token_log_probs_is_minus_torch_cross_entropy_per_token(rng, ignore_index):
    logits, targets = make_batch(rng, ignore_index=ignore_index)
    counted = targets != ignore_index
    expected = -torch_nll(logits, targets, ignore_index)
    for got in (nl.token_log_probs(logits, targets, ignore_index=ignore_index),
                tl.token_log_probs(torch.from_numpy(logits), torch.from_numpy(targets), ignore_index=ignore_index)):
        assert tuple(got.shape) == targets.shape
        got = np.asarray(got)
        assert_close(got[counted], expected[counted], **TOL, name="counted positions")
        assert (got[~counted] == 0).all()  # documented: 0 at ignored positions
    # direct definition at one counted entry: log softmax(logits[b, t])[w]
    b, t = np.argwhere(counted)[0]
    w = targets[b, t]
    direct = logits[b, t, w] - math.log(np.exp(logits[b, t]).sum())
    assert_close(nl.token_log_probs(logits, targets, ignore_index)[b, t], direct, **TOL)


def test_sequence_log_prob_is_the_sum_over_t(rng):
    logits, targets = make_batch(rng)
    expected = -torch_nll(logits, targets).sum(axis=1)
    got = nl.sequence_log_prob(logits, targets)
    assert got.shape == (3,)
    assert_close(got, expected, **TOL)
    assert_close(got, nl.token_log_probs(logits, targets).sum(-1), **TOL)
    t_got = tl.sequence_log_prob(torch.from_numpy(logits), torch.from_numpy(targets))
    assert isinstance(t_got, torch.Tensor) and tuple(t_got.shape) == (3,)
    assert_close(t_got, got, **TOL, name="torch twin")


@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_perplexity_and_bits_match_torch_cross_entropy(rng, ignore_index):
    logits, targets = make_batch(rng, ignore_index=ignore_index)
    nll = torch_nll(logits, targets, ignore_index, reduction="mean")
    ppl = nl.perplexity(logits, targets, ignore_index)
    bits = nl.bits_per_token(logits, targets, ignore_index)
    assert type(ppl) is float and type(bits) is float
    assert_close(ppl, math.exp(nll), **TOL)
    assert_close(bits, nll / math.log(2), **TOL)
    assert_close(bits, math.log2(ppl), **TOL)  # bits = log2(perplexity)
    tx, tt = torch.from_numpy(logits), torch.from_numpy(targets)
    t_ppl, t_bits = tl.perplexity(tx, tt, ignore_index), tl.bits_per_token(tx, tt, ignore_index)
    assert type(t_ppl) is float and type(t_bits) is float
    assert_close(t_ppl, ppl, **TOL)
    assert_close(t_bits, bits, **TOL)
    # the mean is over counted tokens only: mean of -token_log_probs where counted
    counted = targets != ignore_index
    assert_close(math.log(ppl), -nl.token_log_probs(logits, targets, ignore_index)[counted].mean(), **TOL)


def test_uniform_model_known_answer():
    """Uniform logits over V tokens: p = 1/V everywhere, so NLL = ln V, perplexity = V exactly
    (the "effective branching factor"), bits = log2 V, and log P(W) = -T ln V."""
    V, B, T = 5, 2, 4
    logits = np.zeros((B, T, V))
    targets = np.arange(B * T).reshape(B, T) % V
    assert_close(nl.perplexity(logits, targets), V, **TOL)
    assert_close(nl.bits_per_token(logits, targets), math.log2(V), **TOL)
    assert_close(nl.sequence_log_prob(logits, targets), np.full(B, -T * math.log(V)), **TOL)


def test_all_ignored_and_overflow(rng):
    """No counted token: a mean over nothing is nan (as cross_entropy / torch), log P(W) = 0.
    A confidently wrong model (NLL ~ 2e4 nats) has perplexity inf, not an OverflowError."""
    logits = rng.standard_normal((2, 3, 4))
    targets = np.full((2, 3), -100)
    assert math.isnan(nl.perplexity(logits, targets)) and math.isnan(nl.bits_per_token(logits, targets))
    assert math.isnan(tl.perplexity(torch.from_numpy(logits), torch.from_numpy(targets)))
    assert (nl.sequence_log_prob(logits, targets) == 0).all()
    wrong = np.zeros((1, 2, 2))
    wrong[..., 0] = 2e4
    assert nl.perplexity(wrong, np.ones((1, 2), dtype=np.int64)) == math.inf
    assert tl.perplexity(torch.from_numpy(wrong), torch.ones((1, 2), dtype=torch.int64)) == math.inf
    assert_close(nl.bits_per_token(wrong, np.ones((1, 2), dtype=np.int64)), 2e4 / math.log(2), **TOL)


def test_torch_twin_is_differentiable(rng):
    """d sum_b log P(W_b) / d logits equals autograd of -F.cross_entropy(reduction='sum')."""
    logits, targets = make_batch(rng)
    x = torch.tensor(logits, requires_grad=True)
    tl.sequence_log_prob(x, torch.from_numpy(targets)).sum().backward()
    ref = torch.tensor(logits, requires_grad=True)
    (-F.cross_entropy(ref.reshape(-1, 7), torch.from_numpy(targets).reshape(-1), reduction="sum")).backward()
    assert_close(x.grad, ref.grad, **TOL)


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_bad_input_raises_value_error(rng, impl):
    mod, conv = (nl, lambda a: a) if impl == "numpy" else (tl, torch.from_numpy)
    logits, targets = make_batch(rng)
    for fn in (mod.token_log_probs, mod.sequence_log_prob, mod.perplexity, mod.bits_per_token):
        with pytest.raises(ValueError, match=r"\(B, T, V\).*\(5, 7\)"):
            fn(conv(logits[0]), conv(targets[0]))
        with pytest.raises(ValueError, match=r"targets shape \(3, 4\).*\(3, 5\)"):
            fn(conv(logits), conv(targets[:, :4]))
        bad = targets.copy()
        bad[2, 3] = 7
        with pytest.raises(ValueError, match=r"target 7 at index \(2, 3\)"):
            fn(conv(logits), conv(bad))


# ----------------------------------------------------------------------------- normalisation

V, T, BOS = 3, 4, 3  # vocab {0, 1, 2}, length 4, and a beginning-of-sequence id outside the vocab
P = 101  # size of the random logit table (a prime, for the rolling hash)


def prefix_hash_model(idx, table):
    """A tiny autoregressive "model": logits[b, t] = table[h(idx[b, :t+1])].

    h is a rolling hash of the whole prefix, so the logits at t depend on every input token up
    to and including position t, and on nothing after it: the model is causal by construction.
    idx (B, T) ints -> logits (B, T, V).
    """
    B, T_ = idx.shape
    h = np.zeros(B, dtype=np.int64)
    logits = np.empty((B, T_, table.shape[1]))
    for t in range(T_):
        # h_t = (31 h_{t-1} + idx_t + 1) mod P
        h = (31 * h + idx[:, t] + 1) % P
        logits[:, t] = table[h]
    return logits


def all_sequences():
    return np.array(list(itertools.product(range(V), repeat=T)), dtype=np.int64)  # (V**T, T)


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_chain_rule_probabilities_sum_to_one_over_all_sequences(impl):
    """sum over all V**T = 81 sequences W of P(W) = prod_t p(w_t | w_<t) is exactly 1.

    The inputs are W shifted right behind a BOS token, the usual teacher forcing: the logits at
    t see (BOS, w_1 .. w_{t-1}) = w_<t and score w_t. By the chain rule the sum factorises
    into nested sums over w_T, w_{T-1}, ..., each a softmax summing to 1.
    """
    table = np.random.default_rng(7).standard_normal((P, V)) * 2
    W = all_sequences()  # (81, T)
    idx = np.concatenate([np.full((len(W), 1), BOS), W[:, :-1]], axis=1)  # (81, T): BOS, w_1 .. w_{T-1}
    logits = prefix_hash_model(idx, table)  # (81, T, V)
    if impl == "numpy":
        log_p = nl.sequence_log_prob(logits, W)
    else:
        log_p = tl.sequence_log_prob(torch.from_numpy(logits), torch.from_numpy(W)).numpy()
    assert log_p.shape == (V**T,)
    assert (log_p < 0).all()
    assert_close(np.exp(log_p).sum(), 1.0, atol=1e-12, rtol=0, name="sum_W P(W)")
    # the distribution is far from uniform, so the sum being 1 is not an accident of symmetry
    assert np.exp(log_p).max() > 3 / V**T

    # ignoring the last position scores the 3-token prefixes: each appears V times, so the
    # sum over the 27 distinct prefixes (every V-th row) is 1 as well
    W_pad = W.copy()
    W_pad[:, -1] = -100
    log_p3 = nl.sequence_log_prob(logits, W_pad)
    assert_close(log_p3.reshape(-1, V), np.repeat(log_p3[::V, None], V, axis=1), **TOL)
    assert_close(np.exp(log_p3[::V]).sum(), 1.0, atol=1e-12, rtol=0, name="sum over prefixes")


def test_a_model_that_peeks_at_the_target_is_not_normalised():
    """The non-causal cheat: feed W itself (not shifted), so the logits at t see w_t.

    Then "p(w_t | w_<=t)" is no longer a conditional of the chain rule and the products over
    all sequences do not sum to 1; this is the failure the test above would catch."""
    table = np.random.default_rng(7).standard_normal((P, V)) * 2
    W = all_sequences()
    cheat_logits = prefix_hash_model(W, table)  # logits at t depend on w_1 .. w_t
    total = np.exp(nl.sequence_log_prob(cheat_logits, W)).sum()
    assert abs(total - 1.0) > 1e-2, total
    # an extreme cheat: put a big logit on w_t itself; every sequence then gets P(W) ~ 1
    peek = np.zeros((len(W), T, V))
    np.put_along_axis(peek, W[..., None], 20.0, axis=-1)
    assert np.exp(nl.sequence_log_prob(peek, W)).sum() > 0.9 * V**T
