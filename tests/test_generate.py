"""Tests for generation (``minilm.numpy.generate`` and its PyTorch twin ``minilm.torch.generate``).

Every generation test runs on both twins and on both model kinds, twice over: on small fake
models defined here (a position-aware bigram "Transformer" with a real KV cache, and a tiny
recurrent "LSTM"), which pin down generate's own logic independently of the real models, and
on the real ``TransformerLM`` / ``LSTMLM`` (tiny configs, float64).

Invariants: cached == uncached (tokens and per-step logits), and the cache really feeds one
token per step; top_k=1 == temperature 0 == a hand-written argmax loop; the twins sample the
same tokens from the same weights and seed; top-k / top-p never sample outside their set and
sample inside it with the right frequencies; eos padding; num_return_sequences order; seeds;
prompts longer than the context window; bad arguments.
"""

from __future__ import annotations

import importlib
import itertools
import math

import numpy as np
import pytest
import torch

from minilm.config import LSTMConfig, TransformerConfig
# the modules (``from minilm.numpy import generate`` is the function)
npgen = importlib.import_module("minilm.numpy.generate")
tgen = importlib.import_module("minilm.torch.generate")

TWINS = {"numpy": npgen, "torch": tgen}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These tests run thousands of tiny ops, which an intra-op thread pool only slows down
    (by 10-100x on a loaded machine, where the pool's threads wait for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------
# Fake models: the interfaces of TransformerLM (with KV cache) and LSTMLM, tiny maths.
# ---------------------------------------------------------------------------------------


class _FakeCache:
    def __init__(self, batch_size):
        self.batch_size = batch_size
        self.length = 0
        self.last = None  # (B, 1) the last token fed, the only "key" this model needs


class NpFakeTransformer:
    """logits_t = E[x_t] + P[x_{t-1}] + Pos[t]; P is absent at window position 0.

    The absolute-position term makes cropping matter (the same tokens at other positions
    give other logits), and the previous-token term makes the cache matter.
    """

    def __init__(self, config: TransformerConfig, seed: int = 0):
        rng = np.random.default_rng(seed)
        V, Tm = config.vocab_size, config.context_length
        self.config = config
        self.params = {
            "tok": rng.normal(size=(V, V)),
            "prev": rng.normal(size=(V, V)),
            "pos": rng.normal(size=(Tm, V)),
        }

    def state_dict(self):
        return {k: v.copy() for k, v in self.params.items()}

    def init_cache(self, batch_size):
        return _FakeCache(batch_size)

    def forward(self, idx, cache=None):
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        if start + T > self.config.context_length:
            raise ValueError("cache overflow")
        p = self.params
        logits = p["tok"][idx] + p["pos"][start : start + T]  # (B, T, V)
        if T > 1:
            logits[:, 1:] += p["prev"][idx[:, :-1]]
        if start > 0:
            logits[:, 0] += p["prev"][cache.last[:, 0]]
        if cache is not None:
            cache.length += T
            cache.last = idx[:, -1:].copy()
        return logits

    __call__ = forward


class TorchFakeTransformer(torch.nn.Module):
    def __init__(self, config: TransformerConfig, seed: int = 0):
        super().__init__()
        self.config = config
        ref = NpFakeTransformer(config, seed)
        self.tok = torch.nn.Parameter(torch.from_numpy(ref.params["tok"]))
        self.prev = torch.nn.Parameter(torch.from_numpy(ref.params["prev"]))
        self.pos = torch.nn.Parameter(torch.from_numpy(ref.params["pos"]))

    def init_cache(self, batch_size):
        return _FakeCache(batch_size)

    def forward(self, idx, cache=None):
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        if start + T > self.config.context_length:
            raise ValueError("cache overflow")
        logits = self.tok[idx] + self.pos[start : start + T]  # (B, T, V)
        if T > 1:
            logits = torch.cat([logits[:, :1], logits[:, 1:] + self.prev[idx[:, :-1]]], dim=1)
        if start > 0:
            logits = torch.cat([logits[:, :1] + self.prev[cache.last], logits[:, 1:]], dim=1)
        if cache is not None:
            cache.length += T
            cache.last = idx[:, -1:].clone()
        return logits


class NpFakeLSTM:
    """h_t = tanh(E[x_t] + 0.5 h_{t-1} + h_below), c_t = c_{t-1} + h_t; logits = W h_top."""

    def __init__(self, config: LSTMConfig, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.config = config
        V, D = config.vocab_size, config.d_hidden
        self.params = {"emb": rng.normal(size=(V, D)), "out": rng.normal(size=(V, D))}

    def state_dict(self):
        return {k: v.copy() for k, v in self.params.items()}

    def forward(self, idx, state=None):
        B, T = idx.shape
        L, D = self.config.n_layer, self.config.d_hidden
        h, c = (np.zeros((L, B, D)), np.zeros((L, B, D))) if state is None else state
        h, c = h.copy(), c.copy()
        tops = []
        for t in range(T):
            below = self.params["emb"][idx[:, t]]  # (B, D)
            for layer in range(L):
                h[layer] = np.tanh(below + 0.5 * h[layer])
                c[layer] = c[layer] + h[layer]
                below = h[layer]
            tops.append(below)
        logits = np.stack(tops, axis=1) @ self.params["out"].T  # (B, T, V)
        return logits, (h, c)

    __call__ = forward


class TorchFakeLSTM(torch.nn.Module):
    def __init__(self, config: LSTMConfig, seed: int = 0):
        super().__init__()
        self.config = config
        ref = NpFakeLSTM(config, seed)
        self.emb = torch.nn.Parameter(torch.from_numpy(ref.params["emb"]))
        self.out = torch.nn.Parameter(torch.from_numpy(ref.params["out"]))

    def forward(self, idx, state=None):
        B, T = idx.shape
        L, D = self.config.n_layer, self.config.d_hidden
        if state is None:
            h = [torch.zeros(B, D, dtype=torch.float64) for _ in range(L)]
            c = [torch.zeros(B, D, dtype=torch.float64) for _ in range(L)]
        else:
            h, c = list(state[0].unbind(0)), list(state[1].unbind(0))
        tops = []
        for t in range(T):
            below = self.emb[idx[:, t]]
            for layer in range(L):
                h[layer] = torch.tanh(below + 0.5 * h[layer])
                c[layer] = c[layer] + h[layer]
                below = h[layer]
            tops.append(below)
        logits = torch.stack(tops, dim=1) @ self.out.T  # (B, T, V)
        return logits, (torch.stack(h), torch.stack(c))


class FixedLogits:
    """A 'Transformer' whose next-token logits are the same vector at every position."""

    def __init__(self, logits, framework="numpy", context_length=64):
        self.config = TransformerConfig(
            vocab_size=len(logits), context_length=context_length, d_model=2, n_layer=1, n_head=1
        )
        self.logits = np.asarray(logits, dtype=np.float64)
        self.framework = framework
        self.calls = 0

    def init_cache(self, batch_size):
        return _FakeCache(batch_size)

    def forward(self, idx, cache=None):
        self.calls += 1
        B, T = idx.shape
        if cache is not None:
            cache.length += T
        out = np.broadcast_to(self.logits, (B, T, len(self.logits))).copy()
        return torch.from_numpy(out) if self.framework == "torch" else out


class Spy:
    """Wraps a model, recording the length of every forward call and its last-position logits."""

    def __init__(self, model):
        self._model = model
        self.lengths = []
        self.last_logits = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward(self, idx, *args, **kwargs):
        self.lengths.append(int(idx.shape[1]))
        out = self._model.forward(idx, *args, **kwargs)
        logits = out[0] if isinstance(out, tuple) else out
        self.last_logits.append(_np(logits[:, -1]).astype(np.float64))
        return out


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ---------------------------------------------------------------------------------------
# Model pairs (NumPy, PyTorch) with the same float64 weights.
# ---------------------------------------------------------------------------------------

T_CFG = TransformerConfig(vocab_size=13, context_length=12, d_model=12, n_layer=2, n_head=3,
                          n_kv_head=1, d_ff=20)
L_CFG = LSTMConfig(vocab_size=13, d_embed=6, d_hidden=7, n_layer=2)


def _import_real(module: str, name: str):
    """Our own modules: a broken import fails the test, never skips it."""
    return getattr(importlib.import_module(module), name)


def make_pair(family: str, kind: str, config=None, seed: int = 0):
    """(numpy_model, torch_model) with identical float64 weights."""
    if family == "fake":
        if kind == "transformer":
            cfg = config or T_CFG
            return NpFakeTransformer(cfg, seed), TorchFakeTransformer(cfg, seed)
        cfg = config or L_CFG
        return NpFakeLSTM(cfg, seed), TorchFakeLSTM(cfg, seed)
    name = "TransformerLM" if kind == "transformer" else "LSTMLM"
    module = "transformer" if kind == "transformer" else "lstm"
    np_cls = _import_real(f"minilm.numpy.{module}", name)
    t_cls = _import_real(f"minilm.torch.{module}", name)
    cfg = config or (T_CFG if kind == "transformer" else L_CFG)
    np_model = np_cls(cfg, seed=seed, dtype=np.float64)
    t_model = t_cls(cfg, seed=seed).double()
    t_model.load_state_dict(np_model.state_dict())
    t_model.eval()
    return np_model, t_model


def make_model(family, kind, twin, config=None, seed=0):
    return make_pair(family, kind, config, seed)[0 if twin == "numpy" else 1]


def run(twin, model, idx, n, **kw):
    """generate through the given twin, result as a NumPy int64 array."""
    idx = np.asarray(idx, dtype=np.int64)
    if twin == "torch":
        idx = torch.from_numpy(idx)
    out = TWINS[twin].generate(model, idx, n, **kw)
    if twin == "torch":
        assert isinstance(out, torch.Tensor) and out.dtype == torch.long
    else:
        assert isinstance(out, np.ndarray) and out.dtype == np.int64
    return _np(out)


MODELS = [
    pytest.param(fam, kind, id=f"{fam}-{kind}")
    for fam in ("fake", "real")
    for kind in ("transformer", "lstm")
]
TWIN_NAMES = ["numpy", "torch"]
SETTINGS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=4),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=1.0, top_k=5, top_p=0.6),
]


def prompt(rng, B=2, T=4, V=13):
    return rng.integers(0, V, size=(B, T))


# ---------------------------------------------------------------------------------------
# The sampling pieces, on worked examples and against brute force.
# ---------------------------------------------------------------------------------------


def _kept(filtered):
    return set(np.flatnonzero(np.isfinite(_np(filtered)[0])).tolist())


def _as(twin, x):
    x = np.array(x, dtype=np.float64)  # a writable copy
    return torch.from_numpy(x) if twin == "torch" else x


@pytest.mark.parametrize("twin", TWIN_NAMES)
def test_top_k_filter_worked_example_and_ties(twin):
    """Logits (1, 3, 3, 2, 3): top-2 keeps ids 1, 2 (ties at 3 -> lowest ids), top-4 adds 4, 3."""
    g = TWINS[twin]
    logits = _as(twin, [[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert _kept(g.top_k_filter(logits, 2)) == {1, 2}
    assert _kept(g.top_k_filter(logits, 1)) == {1}
    assert _kept(g.top_k_filter(logits, 4)) == {1, 2, 3, 4}
    assert _kept(g.top_k_filter(logits, 99)) == {0, 1, 2, 3, 4}
    kept = _np(g.top_k_filter(logits, 3))[0]
    np.testing.assert_array_equal(kept, [-np.inf, 3.0, 3.0, -np.inf, 3.0])


@pytest.mark.parametrize("twin", TWIN_NAMES)
def test_top_p_filter_worked_examples(twin):
    """Nuclei worked by hand from the sorted probabilities and the mass before each rank.

    p = (0.1, 0.5, 0.15, 0.25): ranks 1, 3, 2, 0 with mass-before 0, 0.5, 0.75, 0.9, so
    top_p 0.5 -> {1}; 0.7 -> {1, 3}; 0.75 -> {1, 3} (0.75 is reached); 0.8 -> {1, 3, 2};
    0.95 -> all. Ties: p = (0.4, 0.3, 0.3), top_p 0.6 -> {0, 1} (tie -> lower id enters).
    """
    g = TWINS[twin]
    logits = _as(twin, np.log([[0.1, 0.5, 0.15, 0.25]]))
    assert _kept(g.top_p_filter(logits, 0.3)) == {1}
    assert _kept(g.top_p_filter(logits, 0.7)) == {1, 3}
    assert _kept(g.top_p_filter(logits, 0.749)) == {1, 3}
    assert _kept(g.top_p_filter(logits, 0.8)) == {1, 2, 3}
    assert _kept(g.top_p_filter(logits, 0.95)) == {0, 1, 2, 3}
    assert _kept(g.top_p_filter(logits, 1.0)) == {0, 1, 2, 3}
    ties = _as(twin, np.log([[0.4, 0.3, 0.3]]))
    assert _kept(g.top_p_filter(ties, 0.6)) == {0, 1}
    # exactly on the edge (probabilities 1/4 each, all exact in binary): mass-before is
    # 0, 1/4, 1/2, 3/4, so top_p 1/2 is reached by 2 tokens and the third stays out
    flat = _as(twin, [[0.0, 0.0, 0.0, 0.0]])
    assert _kept(g.top_p_filter(flat, 0.5)) == {0, 1}
    assert _kept(g.top_p_filter(flat, 0.25)) == {0}
    assert _kept(g.top_p_filter(flat, 0.5000001)) == {0, 1, 2}
    # -inf logits (e.g. from top-k) stay out and do not break the sums
    masked = _as(twin, [[0.0, -np.inf, 0.0, -np.inf]])
    assert _kept(g.top_p_filter(masked, 0.4)) == {0}
    assert _kept(g.top_p_filter(masked, 0.9)) == {0, 2}


@pytest.mark.parametrize("twin", TWIN_NAMES)
def test_top_p_filter_matches_brute_force_over_subsets(twin):
    """The nucleus has the fewest tokens of any subset with mass >= p, and is the top ones."""
    g = TWINS[twin]
    rng = np.random.default_rng(0)
    V = 6
    for _ in range(40):
        probs = rng.dirichlet(np.ones(V))
        p = float(rng.uniform(0.05, 0.99))
        size = min(
            len(s)
            for r in range(1, V + 1)
            for s in itertools.combinations(range(V), r)
            if probs[list(s)].sum() >= p
        )
        expected = set(np.argsort(-probs)[:size].tolist())
        assert _kept(g.top_p_filter(_as(twin, np.log(probs)[None]), p)) == expected, (probs, p)


@pytest.mark.parametrize("twin", TWIN_NAMES)
def test_sample_from_probs_inverse_cdf(twin):
    """probs (0.2, 0, 0.8), unnormalised x2: CDF (0.2, 0.2, 1.0), so u < 0.2 -> 0, else 2."""
    g = TWINS[twin]
    probs = _as(twin, [[0.4, 0.0, 1.6]] * 5)
    u = _as(twin, [0.0, 0.199999, 0.2, 0.5, 0.9999999999])
    np.testing.assert_array_equal(_np(g.sample_from_probs(probs, u)), [0, 0, 2, 2, 2])
    # evenly spaced uniforms reproduce the distribution to within 1/M
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(7) * 0.5)
    M = 10000
    u = (np.arange(M) + 0.5) / M
    toks = _np(g.sample_from_probs(_as(twin, np.broadcast_to(p, (M, 7))), _as(twin, u)))
    np.testing.assert_allclose(np.bincount(toks, minlength=7) / M, p, atol=1.5 / M)


def test_sampling_pieces_agree_across_twins():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(50, 17)) * 3
    logits[:, 3] = logits[:, 5]  # ties
    u = rng.random(50)
    t = torch.from_numpy
    for k, p in [(None, None), (3, None), (None, 0.5), (6, 0.7)]:
        a = npgen.next_token(logits, u, 0.9, k, p)
        b = tgen.next_token(t(logits), t(u), 0.9, k, p)
        np.testing.assert_array_equal(a, _np(b))
    np.testing.assert_array_equal(
        _np(npgen.top_p_filter(logits, 0.6)), _np(tgen.top_p_filter(t(logits), 0.6))
    )


# ---------------------------------------------------------------------------------------
# Statistical checks with a known distribution.
# ---------------------------------------------------------------------------------------

PROBS = np.array([0.1, 0.5, 0.15, 0.25, 0.0])


@pytest.mark.parametrize("twin", TWIN_NAMES)
@pytest.mark.parametrize(
    "kw, support",
    [
        (dict(top_p=0.7), [1, 3]),
        (dict(top_p=0.8), [1, 2, 3]),
        (dict(top_k=2), [1, 3]),
        (dict(top_k=3), [1, 2, 3]),
        # top-k first: (0.5, 0.25, 0.15) / 0.9 has mass-before 0, .556, .833 -> {1, 3} for
        # top_p 0.8, where top_p 0.8 alone keeps {1, 3, 2}
        (dict(top_k=3, top_p=0.8), [1, 3]),
        (dict(), [0, 1, 2, 3]),
    ],
)
def test_samples_stay_in_the_set_with_the_right_frequencies(twin, kw, support):
    """8000 draws (4000 rows x 2 steps): every one in the set, frequencies within 5 sigma."""
    with np.errstate(divide="ignore"):
        model = FixedLogits(np.log(PROBS), framework=twin)
    out = run(twin, model, [[0]], 2, num_return_sequences=4000, seed=3, **kw)
    toks = out[:, 1:].ravel()
    assert set(np.unique(toks).tolist()) == set(support)
    expected = np.zeros_like(PROBS)
    expected[support] = PROBS[support] / PROBS[support].sum()
    freq = np.bincount(toks, minlength=len(PROBS)) / toks.size
    sigma = np.sqrt(expected * (1 - expected) / toks.size)
    assert np.all(np.abs(freq - expected) <= 5 * sigma + 1e-12), (freq, expected)


@pytest.mark.parametrize("twin", TWIN_NAMES)
def test_greedy_ties_go_to_the_lowest_id(twin):
    model = FixedLogits([1.0, 3.0, -2.0, 3.0], framework=twin)
    for kw in (dict(temperature=0), dict(top_k=1), dict(top_k=1, temperature=0.1)):
        out = run(twin, model, [[0], [2]], 3, seed=0, **kw)
        np.testing.assert_array_equal(out[:, 1:], 1)


@pytest.mark.parametrize("twin", TWIN_NAMES)
def test_temperature_sharpens_and_flattens(twin):
    """Temperature 0.5 squares the odds: p ~ (0.1, 0.5)^2 -> 1/26, 25/26; temperature 1e9 ~ uniform."""
    model = FixedLogits(np.log([0.1, 0.5]), framework=twin)
    toks = run(twin, model, [[0]], 1, num_return_sequences=6000, seed=4, temperature=0.5)[:, 1]
    assert abs(np.mean(toks == 0) - 1 / 26) < 5 * math.sqrt(1 / 26 * 25 / 26 / 6000)
    toks = run(twin, model, [[0]], 1, num_return_sequences=6000, seed=4, temperature=1e9)[:, 1]
    assert abs(np.mean(toks == 0) - 0.5) < 5 * math.sqrt(0.25 / 6000)


# ---------------------------------------------------------------------------------------
# generate on the fake and the real models.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("twin", TWIN_NAMES)
@pytest.mark.parametrize("family, kind", MODELS)
def test_shape_prompt_and_row_order(family, kind, twin, rng):
    model = make_model(family, kind, twin)
    idx = prompt(rng, B=2, T=3)
    out = run(twin, model, idx, 6, num_return_sequences=3, seed=0, temperature=2.0)
    assert out.shape == (6, 9)
    np.testing.assert_array_equal(out[:, :3], np.repeat(idx, 3, axis=0))  # b*n + j order
    assert out.min() >= 0 and out.max() < 13
    # the three samples of one prompt are different draws
    assert len({tuple(r) for r in out[:3, 3:]}) > 1
    # max_new_tokens=0 returns the repeated prompts
    out0 = run(twin, model, idx, 0, num_return_sequences=2)
    np.testing.assert_array_equal(out0, np.repeat(idx, 2, axis=0))


@pytest.mark.parametrize("twin", TWIN_NAMES)
@pytest.mark.parametrize("family, kind", MODELS)
def test_cached_equals_uncached(family, kind, twin, rng):
    """Same tokens and the same next-token logits at every step, with the cache fed 1 token."""
    idx = prompt(rng, B=2, T=3)
    for kw in SETTINGS:
        cached = Spy(make_model(family, kind, twin))
        plain = Spy(make_model(family, kind, twin))
        a = run(twin, cached, idx, 7, seed=5, use_cache=True, num_return_sequences=2, **kw)
        b = run(twin, plain, idx, 7, seed=5, use_cache=False, num_return_sequences=2, **kw)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(
            np.stack(cached.last_logits), np.stack(plain.last_logits), rtol=1e-9, atol=1e-9
        )
        # prefill the prompt once, then one token per step (context 12 is not exceeded)
        assert cached.lengths == [3] + [1] * 6
        assert plain.lengths == list(range(3, 10))


@pytest.mark.parametrize("twin", TWIN_NAMES)
@pytest.mark.parametrize("family, kind", MODELS)
def test_greedy_is_argmax_and_top_k_1(family, kind, twin, rng):
    """temperature=0 == top_k=1 (any temperature, any seed) == a hand-written argmax loop."""
    model = make_model(family, kind, twin)
    idx = prompt(rng, B=3, T=2)
    greedy = run(twin, model, idx, 8, temperature=0.0)
    np.testing.assert_array_equal(greedy, run(twin, model, idx, 8, temperature=0.0, seed=9))
    np.testing.assert_array_equal(greedy, run(twin, model, idx, 8, top_k=1, seed=1))
    np.testing.assert_array_equal(greedy, run(twin, model, idx, 8, top_k=1, temperature=3.0))
    np.testing.assert_array_equal(greedy, run(twin, model, idx, 8, temperature=0, use_cache=False))
    seq = idx.copy()
    for _ in range(8):
        x = torch.from_numpy(seq) if twin == "torch" else seq
        with torch.no_grad():
            logits = model.forward(x)
        logits = _np(logits[0] if isinstance(logits, tuple) else logits)[:, -1]
        seq = np.concatenate([seq, logits.argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(greedy, seq)


@pytest.mark.parametrize("family, kind", MODELS)
def test_twins_sample_the_same_tokens(family, kind, rng):
    np_model, t_model = make_pair(family, kind)
    idx = prompt(rng, B=2, T=3)
    for kw in SETTINGS + [dict(temperature=0.0)]:
        for use_cache in (True, False):
            a = run("numpy", np_model, idx, 8, seed=11, use_cache=use_cache,
                    num_return_sequences=2, **kw)
            b = run("torch", t_model, idx, 8, seed=11, use_cache=use_cache,
                    num_return_sequences=2, **kw)
            np.testing.assert_array_equal(a, b, err_msg=f"{kw} use_cache={use_cache}")


@pytest.mark.parametrize("twin", TWIN_NAMES)
@pytest.mark.parametrize("family, kind", MODELS)
def test_seeds(family, kind, twin, rng):
    model = make_model(family, kind, twin)
    idx = prompt(rng, B=2, T=2)
    a = run(twin, model, idx, 10, seed=21, temperature=2.0)
    np.testing.assert_array_equal(a, run(twin, model, idx, 10, seed=21, temperature=2.0))
    assert not np.array_equal(a, run(twin, model, idx, 10, seed=22, temperature=2.0))
    # a Generator may stand in for the seed: the same stream
    gen = np.random.default_rng(21)
    np.testing.assert_array_equal(a, run(twin, model, idx, 10, seed=gen, temperature=2.0))


@pytest.mark.parametrize("twin", TWIN_NAMES)
@pytest.mark.parametrize("family, kind", MODELS)
def test_eos_padding(family, kind, twin, rng):
    """With eos_id, each row equals the eos-free run up to its first eos, then eos to the end.

    (Uniforms are drawn for every row at every step, so finishing one row changes nothing
    for the others.)
    """
    model = make_model(family, kind, twin)
    idx = prompt(rng, B=3, T=2)
    free = run(twin, model, idx, 12, seed=7, temperature=3.0, num_return_sequences=2)
    eos = int(free[0, 2 + 3])  # row 0 emits it at new position 3 at the latest
    out = run(twin, model, idx, 12, seed=7, temperature=3.0, num_return_sequences=2, eos_id=eos)
    assert out.shape == free.shape
    for r in range(out.shape[0]):
        hits = np.flatnonzero(free[r, 2:] == eos)
        end = 2 + (hits[0] + 1 if hits.size else 12)
        np.testing.assert_array_equal(out[r, :end], free[r, :end])
        assert np.all(out[r, end:] == eos)
    assert np.all(out[0, 2 + 3 + 1 :] == eos)


@pytest.mark.parametrize("twin", TWIN_NAMES)
def test_eos_stops_early_but_keeps_width(twin):
    """All rows certain to emit eos (p = 1) at step 1: one forward call, full-width result."""
    model = FixedLogits([0.0, -np.inf, -np.inf], framework=twin)
    model.logits = np.array([-np.inf, 5.0, -np.inf])
    out = run(twin, model, [[0, 2], [2, 2]], 10, eos_id=1, seed=0)
    assert model.calls == 1
    np.testing.assert_array_equal(out, [[0, 2] + [1] * 10, [2, 2] + [1] * 10])
    # an eos inside the prompt does not finish the row
    model.calls = 0
    model.logits = np.array([0.0, 0.0, 9.0])
    out = run(twin, model, [[1, 1]], 3, eos_id=1, temperature=0)
    np.testing.assert_array_equal(out, [[1, 1, 2, 2, 2]])


@pytest.mark.parametrize("twin", TWIN_NAMES)
@pytest.mark.parametrize("family", ["fake", "real"])
def test_prompt_longer_than_context(family, twin, rng):
    """Context 12, prompt 17, 9 new tokens: the model sees the last 12 tokens, cached or not."""
    cfg = T_CFG
    idx = prompt(rng, B=2, T=17)
    greedy = run(twin, make_model(family, "transformer", twin), idx, 9, temperature=0)
    seq = idx.copy()
    model = make_model(family, "transformer", twin)
    for _ in range(9):
        window = seq[:, -cfg.context_length :]
        x = torch.from_numpy(window) if twin == "torch" else window
        with torch.no_grad():
            logits = _np(model.forward(x))[:, -1]
        seq = np.concatenate([seq, logits.argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(greedy, seq)
    for kw in SETTINGS:
        a = run(twin, make_model(family, "transformer", twin), idx, 9, seed=1, **kw)
        b = run(twin, make_model(family, "transformer", twin), idx, 9, seed=1, use_cache=False, **kw)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("twin", TWIN_NAMES)
@pytest.mark.parametrize("family", ["fake", "real"])
def test_generation_runs_past_the_context_with_the_cache(family, twin, rng):
    """Prompt 5, context 12, 14 new tokens: the cache fills, then re-prefills the window."""
    idx = prompt(rng, B=1, T=5)
    cached = Spy(make_model(family, "transformer", twin))
    plain = Spy(make_model(family, "transformer", twin))
    a = run(twin, cached, idx, 14, seed=2, temperature=1.5)
    b = run(twin, plain, idx, 14, seed=2, temperature=1.5, use_cache=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.stack(cached.last_logits), np.stack(plain.last_logits),
                               rtol=1e-9, atol=1e-9)
    # 5 (prefill), 1 x 7 up to 12 tokens, then the full window of 12 for the remaining 6
    assert cached.lengths == [5] + [1] * 7 + [12] * 6
    assert max(plain.lengths) == 12


@pytest.mark.parametrize("twin", TWIN_NAMES)
def test_lstm_has_no_context_limit(twin, rng):
    model = Spy(make_model("fake", "lstm", twin))
    idx = prompt(rng, B=1, T=40)
    out = run(twin, model, idx, 30, seed=0)
    assert out.shape == (1, 70)
    assert model.lengths == [40] + [1] * 29


# ---------------------------------------------------------------------------------------
# PyTorch twin specifics.
# ---------------------------------------------------------------------------------------


def test_torch_restores_train_mode_and_turns_dropout_off(rng):
    """A real model with dropout, left in train mode: sampling is in eval mode, mode restored."""
    TLM = _import_real("minilm.torch.transformer", "TransformerLM")
    cfg = TransformerConfig(vocab_size=13, context_length=12, d_model=12, n_layer=2, n_head=3,
                            dropout=0.5)
    model = TLM(cfg, seed=0).double()
    idx = torch.from_numpy(prompt(rng, B=2, T=3))
    model.eval()
    expected = tgen.generate(model, idx, 6, seed=3)
    model.train()
    got = tgen.generate(model, idx, 6, seed=3)
    assert model.training
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("training", [True, False])
def test_torch_runs_in_eval_mode_without_grad_and_restores_the_mode(training):
    model = TorchFakeTransformer(T_CFG)
    seen = []
    forward = model.forward

    def spy(idx, cache=None):
        seen.append((model.training, torch.is_grad_enabled()))
        return forward(idx, cache=cache)

    model.forward = spy
    model.train(training)
    tgen.generate(model, torch.tensor([[1, 2]]), 3, seed=0)
    assert seen == [(False, False)] * 3
    assert model.training is training


def test_torch_accepts_array_like_prompts_and_returns_on_model_device(rng):
    model = make_model("fake", "transformer", "torch")
    out = tgen.generate(model, [[1, 2, 3]], 4, seed=0)
    assert out.device == next(model.parameters()).device and out.shape == (1, 7)
    np.testing.assert_array_equal(
        _np(out), _np(tgen.generate(model, torch.tensor([[1, 2, 3]], dtype=torch.int32), 4, seed=0))
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_torch_on_gpu_matches_numpy(kind, rng):
    np_model, t_model = make_pair("real", kind)
    t_model = t_model.cuda()
    idx = prompt(rng, B=2, T=3)
    for kw in SETTINGS:
        out = tgen.generate(t_model, torch.from_numpy(idx), 8, seed=4, **kw)  # CPU prompt
        assert out.is_cuda
        np.testing.assert_array_equal(_np(out), run("numpy", np_model, idx, 8, seed=4, **kw))


# ---------------------------------------------------------------------------------------
# Bad arguments.
# ---------------------------------------------------------------------------------------

BAD = [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(num_return_sequences=0), "num_return_sequences"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(eos_id=13), "eos_id"),
    (dict(eos_id=-1), "eos_id"),
    (dict(idx=np.array([1, 2, 3])), r"shape \(3,\)"),
    (dict(idx=np.zeros((1, 1, 2), dtype=np.int64)), "shape"),
    (dict(idx=np.zeros((1, 0), dtype=np.int64)), "non-empty"),
    (dict(idx=np.zeros((0, 3), dtype=np.int64)), "non-empty"),
    (dict(idx=np.array([[1, 13]])), r"\[1, 13\]"),
    (dict(idx=np.array([[-1, 2]])), "vocabulary"),
    (dict(idx=np.array([[1.0, 2.0]])), "dtype"),
    (dict(suppress_ids=[13]), "suppress_ids"),
    (dict(suppress_ids=[-1]), "suppress_ids"),
    (dict(suppress_ids=[1.0]), "suppress_ids"),
    (dict(suppress_ids=5), "suppress_ids"),
    (dict(suppress_ids=range(13)), "all 13"),
]


@pytest.mark.parametrize("twin", TWIN_NAMES)
@pytest.mark.parametrize("kw, match", BAD, ids=[f"{m}-{i}" for i, (_, m) in enumerate(BAD)])
def test_bad_arguments_raise(twin, kw, match):
    model = make_model("fake", "transformer", twin)
    kw = dict(kw)
    idx = kw.pop("idx", np.array([[1, 2]]))
    n = kw.pop("max_new_tokens", 3)
    if twin == "torch":
        idx = torch.from_numpy(idx)
    with pytest.raises(ValueError, match=match):
        TWINS[twin].generate(model, idx, n, **kw)


@pytest.mark.parametrize("twin", TWIN_NAMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_logits_raise(twin, bad):
    model = FixedLogits([0.0, bad, 1.0], framework=twin)
    with pytest.raises(ValueError, match="NaN or inf"):
        run(twin, model, [[0]], 2, seed=0)


@pytest.mark.parametrize("twin", TWIN_NAMES)
def test_model_without_a_known_config_raises(twin):
    class NoConfig:
        config = None

    with pytest.raises(ValueError, match="TransformerConfig or an LSTMConfig"):
        TWINS[twin].generate(NoConfig(), np.array([[1]]), 1)


# ---------------------------------------------------------------------------------------
# suppress_ids: tokens (special tokens) that are never sampled.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("twin", TWIN_NAMES)
@pytest.mark.parametrize("kw", SETTINGS + [dict(temperature=0.0)], ids=str)
def test_suppressed_ids_are_never_sampled(twin, kw):
    """Logits favour ids 0 and 2 strongly; with both suppressed they never appear, under
    greedy, temperature, top-k and top-p alike (top-k/top-p then keep the others)."""
    model = FixedLogits([9.0, 1.0, 9.0, 0.5, 0.0, 2.0], framework=twin)
    free = run(twin, model, [[1]] * 4, 40, seed=3, **kw)
    assert np.isin(free[:, 1:], [0, 2]).any(), "the unsuppressed run must sample 0 or 2"
    out = run(twin, model, [[1]] * 4, 40, seed=3, suppress_ids=[0, 2], **kw)
    assert not np.isin(out[:, 1:], [0, 2]).any()
    if kw.get("temperature") == 0.0:
        assert np.all(out[:, 1:] == 5)  # the best remaining logit


@pytest.mark.parametrize("twin", TWIN_NAMES)
def test_suppressed_distribution_is_renormalised_over_the_rest(twin):
    """Suppressing id 0 of logits log(0.5, 0.3, 0.2) leaves p(1) = 0.3 / 0.5 = 0.6 exactly."""
    model = FixedLogits(np.log([0.5, 0.3, 0.2]), framework=twin)
    out = run(twin, model, [[1]] * 2000, 1, seed=0, suppress_ids=[0])[:, 1]
    assert not np.any(out == 0)
    frac = np.mean(out == 1)
    assert abs(frac - 0.6) < 4 * math.sqrt(0.6 * 0.4 / 2000), frac


@pytest.mark.parametrize("twin", TWIN_NAMES)
def test_eos_is_never_suppressed_and_still_ends_rows(twin):
    """eos_id listed in suppress_ids stays sampleable: greedy picks it (best logit) and the
    rows are padded after it; the other listed id (also strong) never appears."""
    model = FixedLogits([0.0, 8.0, 7.0, 1.0], framework=twin)
    out = run(twin, model, [[0], [3]], 5, temperature=0, eos_id=1, suppress_ids=[1, 2])
    np.testing.assert_array_equal(out, [[0, 1, 1, 1, 1, 1], [3, 1, 1, 1, 1, 1]])
    # only eos left unsuppressed besides 0 and 3: suppressing everything but eos is allowed
    out = run(twin, model, [[0]], 3, temperature=1.0, seed=1, eos_id=1, suppress_ids=[0, 1, 2, 3])
    np.testing.assert_array_equal(out, [[0, 1, 1, 1]])
    with pytest.raises(ValueError, match="all 4"):
        run(twin, model, [[0]], 3, suppress_ids=[0, 1, 2, 3])


@pytest.mark.parametrize("family, kind", MODELS)
def test_twins_sample_the_same_tokens_with_suppress_ids(family, kind, rng):
    np_model, t_model = make_pair(family, kind)
    idx = prompt(rng, B=2, T=3)
    suppress = [0, 4, 12]
    for kw in SETTINGS + [dict(temperature=0.0)]:
        a = run("numpy", np_model, idx, 8, seed=5, suppress_ids=suppress, num_return_sequences=2, **kw)
        b = run("torch", t_model, idx, 8, seed=5, suppress_ids=torch.tensor(suppress),
                num_return_sequences=2, **kw)
        np.testing.assert_array_equal(a, b, err_msg=str(kw))
        assert not np.isin(a[:, 3:], suppress).any()
