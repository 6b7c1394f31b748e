"""The Markov source: exact entropy rates (by hand and by independent linear algebra), the
sampler, and the bound no model can beat."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minilm.data import CharTokenizer, MarkovSource
from minilm.testing import assert_close


def test_two_state_chain_known_answer():
    """Worked by hand: P = [[0.9, 0.1], [0.5, 0.5]]. Balance of flows 0->1 and 1->0:
    0.1 π0 = 0.5 π1 and π0 + π1 = 1 give π = (5/6, 1/6). Then
    H = 5/6 * h(0.1) + 1/6 * h(0.5) with h(p) = -p log p - (1-p) log(1-p), h(0.5) = log 2."""
    src = MarkovSource.from_transition([[0.9, 0.1], [0.5, 0.5]])
    assert_close(src.stationary, np.array([5 / 6, 1 / 6]), atol=1e-13, name="pi")
    h01 = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))
    expected = 5 / 6 * h01 + 1 / 6 * math.log(2)
    assert src.entropy_rate == pytest.approx(expected, abs=1e-13)
    assert src.entropy_rate_bits == pytest.approx(expected / math.log(2), abs=1e-13)


def test_deterministic_and_periodic_chains():
    """A -> B -> A -> ... is periodic (plain power iteration would oscillate) and has H = 0;
    a uniform chain over V tokens has H = log V."""
    flip = MarkovSource.from_transition([[0.0, 1.0], [1.0, 0.0]])
    assert_close(flip.stationary, np.array([0.5, 0.5]), atol=1e-13, name="pi")
    assert flip.entropy_rate == 0.0
    tokens = flip.sample(11, np.random.default_rng(0))
    assert (np.diff(tokens) != 0).all()
    uniform = MarkovSource.from_transition(np.full((5, 5), 0.2))
    assert uniform.entropy_rate == pytest.approx(math.log(5), abs=1e-13)


@pytest.mark.parametrize("v,conc", [(3, 1.0), (10, 0.3), (40, 5.0)])
def test_order1_stationary_matches_eigenvector(v, conc):
    """Independent check: π is the left eigenvector of P for eigenvalue 1, normalised."""
    src = MarkovSource(v, order=1, concentration=conc, seed=v)
    w, vecs = np.linalg.eig(src.transition.T)
    pi = np.real(vecs[:, np.argmin(np.abs(w - 1))])
    pi /= pi.sum()
    assert_close(src.stationary, pi, atol=1e-12, name="pi")
    expected = -np.sum(pi[:, None] * src.transition * np.log(src.transition))
    assert src.entropy_rate == pytest.approx(expected, abs=1e-12)


def test_order2_stationary_is_invariant_under_the_context_chain():
    """Build the dense V^2 x V^2 context chain Q by loops and check π Q = π."""
    v = 4
    src = MarkovSource(v, order=2, concentration=0.7, seed=3)
    q = np.zeros((v * v, v * v))
    for a in range(v):
        for b in range(v):
            for w in range(v):
                q[a * v + b, b * v + w] = src.transition[a * v + b, w]
    assert_close(src.stationary @ q, src.stationary, atol=1e-13, name="pi Q")
    assert src.stationary.sum() == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("order", [1, 2])
def test_true_model_nll_converges_to_the_entropy_rate(order):
    src = MarkovSource(8, order=order, concentration=0.5, seed=11)
    tokens = src.sample(200_000, np.random.default_rng(0))
    nll = src.cross_entropy(tokens)
    # per-token NLL has std ~1 nat; 200k tokens -> standard error ~0.003 (a bit more, correlated)
    assert nll == pytest.approx(src.entropy_rate, abs=0.015)
    assert 0.3 < src.entropy_rate < math.log(8)  # a non-trivial source


def test_sampler_follows_the_transition_table():
    src = MarkovSource(6, order=1, concentration=1.0, seed=5)
    tokens = src.sample(300_000, np.random.default_rng(1))
    # marginal frequencies approach π; transition frequencies approach P
    freq = np.bincount(tokens, minlength=6) / len(tokens)
    assert_close(freq, src.stationary, atol=0.01, name="token frequencies")
    fitted = MarkovSource.fit(tokens, 6, order=1, alpha=1e-9)
    assert_close(fitted.transition, src.transition, atol=0.02, name="transition frequencies")


def test_sampling_is_reproducible():
    src = MarkovSource(5, order=2, seed=0)
    a = src.sample(1000, np.random.default_rng(7))
    b = src.sample(1000, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64 and a.shape == (1000,) and 0 <= a.min() and a.max() < 5
    assert not np.array_equal(a, src.sample(1000, np.random.default_rng(8)))
    assert_close(MarkovSource(5, order=2, seed=0).transition, src.transition, atol=0, name="P")
    assert not np.allclose(MarkovSource(5, order=2, seed=1).transition, src.transition)


def test_count_model_cannot_beat_the_entropy_rate():
    """Add-alpha n-gram models fitted on a training sample: held-out cross-entropy is >= H
    (up to noise), approaches H with more data, and a wrong order (too short) stays above."""
    src = MarkovSource(10, order=2, concentration=0.3, seed=2)
    held_out = src.sample(100_000, np.random.default_rng(100))
    h = src.entropy_rate
    noise = 0.01
    ces = {}
    for n in (2_000, 20_000, 200_000):
        train = src.sample(n, np.random.default_rng(n))
        ces[n] = MarkovSource.fit(train, 10, order=2, alpha=0.1).cross_entropy(held_out)
        assert ces[n] >= h - noise
    assert ces[2_000] > ces[20_000] > ces[200_000]
    assert ces[200_000] - h < 0.05  # enough data: close to the bound
    bigram = MarkovSource.fit(src.sample(200_000, np.random.default_rng(9)), 10, order=1, alpha=0.1)
    assert bigram.cross_entropy(held_out) > h + 0.1


def test_concentration_controls_the_entropy():
    low = MarkovSource(20, concentration=0.05, seed=0).entropy_rate
    high = MarkovSource(20, concentration=100.0, seed=0).entropy_rate
    assert low < 1.5 < math.log(20) - 0.05 < high < math.log(20)


def test_text_rendering_feeds_the_char_tokenizer():
    src = MarkovSource(12, seed=4)
    tokens = src.sample(5_000, np.random.default_rng(0))
    text = src.to_text(tokens)
    assert len(text) == 5_000 and set(text) <= set("0123456789AB")
    tok = CharTokenizer.train(text)
    assert tok.encode(text) == tokens.tolist()  # alphabet in code-point order: id == token
    assert src.sample_text(50, np.random.default_rng(0)) == text[:50]
    with pytest.raises(ValueError, match="12 distinct"):
        src.to_text(tokens, alphabet="abc")


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        MarkovSource(1)
    with pytest.raises(ValueError, match="order"):
        MarkovSource(4, order=0)
    with pytest.raises(ValueError, match="concentration"):
        MarkovSource(4, concentration=0.0)
    with pytest.raises(ValueError, match="entries"):
        MarkovSource(100, order=4)
    with pytest.raises(ValueError, match="sum to 1"):
        MarkovSource.from_transition([[0.5, 0.6], [0.5, 0.5]])
    with pytest.raises(ValueError, match=r"\(V\^order, V\)"):
        MarkovSource.from_transition(np.full((3, 3), 1 / 3), order=2)
    src = MarkovSource(4)
    with pytest.raises(ValueError, match="Generator"):
        src.sample(10, 0)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        src.cross_entropy(np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="alpha"):
        MarkovSource.fit(np.array([0, 1, 2]), 4, alpha=0)
