"""A synthetic language with a known answer: a random Markov chain and its exact entropy rate.

A Markov source of order k over V tokens draws each token from a distribution that depends
only on the k tokens before it:

    p(w_t | w_<t) = P[s_t, w_t],   s_t = (w_{t-k}, ..., w_{t-1}),  P: (V^k, V), rows sum to 1

Each row of P is drawn from a symmetric Dirichlet(``concentration``): small concentrations
give peaked, predictable rows (low entropy), large ones near-uniform rows (entropy near
log V). The context s_t itself moves as a Markov chain on V^k states; with π its
stationary distribution (π = π Q, where Q moves s to (s[1:], w) with probability P[s, w]),
the entropy rate -- the best cross-entropy ANY model can reach on this source, in the limit
of long text -- is

    H = - Σ_s π_s Σ_w P[s, w] log P[s, w]        (nats per token; / log 2 for bits)

A language model trained on ``sample`` output can be scored against H: its validation
cross-entropy can approach H from above but not beat it (beyond sampling noise).

Samples start in the stationary distribution (the first k tokens are the context drawn
from π), so every position has the same distribution and the mean NLL of the true model
converges to H.

Deliberately left out: hidden-state (HMM) sources, non-stationary starts, and sparse
storage (P is dense, so V^k * V must stay modest; the constructor refuses more than 2**24
entries).
"""

from __future__ import annotations

import bisect
import math
import string

import numpy as np

__all__ = ["MarkovSource", "DEFAULT_ALPHABET"]

# Characters for rendering tokens as text, in code-point order, so a CharTokenizer trained
# on the rendered text gives token w the id w (once every token has appeared).
DEFAULT_ALPHABET = "".join(sorted(string.digits + string.ascii_uppercase + string.ascii_lowercase))

_MAX_ENTRIES = 1 << 24


def stationary_distribution(p: np.ndarray, order: int, tol: float = 1e-14, max_iter: int = 100_000) -> np.ndarray:
    """π over the V^k contexts, by power iteration on the lazy chain (π + πQ) / 2.

    p: (V^k, V) transition rows. The lazy chain has the same stationary distribution as Q and
    is aperiodic, so the iteration converges whenever the chain is irreducible.

    Worked example (k = 1): P = [[0.9, 0.1], [0.5, 0.5]] -> π = [5/6, 1/6], because
    π_0 * 0.1 = π_1 * 0.5 (flow 0 -> 1 equals flow 1 -> 0).
    """
    n_ctx, v = p.shape
    pi = np.full(n_ctx, 1.0 / n_ctx)  # (V^k,)
    for _ in range(max_iter):
        # (πQ)[(s[1:], w)] = Σ_{s[0]} π[s] P[s, w]: context (a, rest) -> (rest, w)
        flow = pi[:, None] * p  # (V^k, V): mass moving from context s via next token w
        nxt = flow.reshape(v, n_ctx // v, v).sum(axis=0).reshape(n_ctx)  # (V^(k-1), V) -> (V^k,)
        new = 0.5 * (pi + nxt)
        new /= new.sum()
        if np.abs(new - pi).max() < tol:
            return new
        pi = new
    raise RuntimeError(
        f"the stationary distribution did not converge in {max_iter} iterations "
        "(is the chain irreducible? a tiny concentration can make rows exactly 0)"
    )


class MarkovSource:
    """Order-k Markov chain over V tokens with random transitions and an exact entropy rate.

    >>> src = MarkovSource.from_transition([[0.9, 0.1], [0.5, 0.5]])
    >>> round(src.entropy_rate, 6)   # 5/6 * H(0.9, 0.1) + 1/6 * log 2, worked out by hand
    0.386427
    """

    def __init__(self, vocab_size: int, order: int = 1, concentration: float = 1.0, seed: int = 0) -> None:
        """Draw each of the V^k rows of P from Dirichlet(concentration) with ``default_rng(seed)``."""
        for name, val, lo in (("vocab_size", vocab_size, 2), ("order", order, 1)):
            if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {val!r}")
        if not (isinstance(concentration, (int, float)) and concentration > 0 and math.isfinite(concentration)):
            raise ValueError(f"concentration must be a positive finite number, got {concentration!r}")
        if vocab_size ** (order + 1) > _MAX_ENTRIES:
            raise ValueError(
                f"vocab_size={vocab_size}, order={order} needs a dense table of "
                f"V^(k+1) = {vocab_size ** (order + 1)} entries; at most {_MAX_ENTRIES} are allowed"
            )
        rng = np.random.default_rng(seed)
        p = rng.dirichlet(np.full(vocab_size, float(concentration)), size=vocab_size**order)  # (V^k, V)
        self._setup(p, order)
        self.concentration = float(concentration)
        self.seed = seed

    @classmethod
    def from_transition(cls, transition: np.ndarray, order: int = 1) -> "MarkovSource":
        """A source with a given table P ``(V^k, V)``: rows non-negative, summing to 1.

        Context s = (w_{t-k}, ..., w_{t-1}) is row ``Σ_i w_{t-k+i} V^(k-1-i)`` (base-V digits,
        oldest first).
        """
        if not isinstance(order, (int, np.integer)) or isinstance(order, bool) or order < 1:
            raise ValueError(f"order must be an int >= 1, got {order!r}")
        p = np.asarray(transition, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] < 2 or p.shape[0] != p.shape[1] ** order:
            raise ValueError(f"transition must be (V^order, V) with V >= 2, got shape {p.shape} for order={order}")
        if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-9):
            raise ValueError("transition rows must be non-negative and sum to 1")
        self = cls.__new__(cls)
        self._setup(p / p.sum(axis=1, keepdims=True), order)
        self.concentration = None
        self.seed = None
        return self

    @classmethod
    def fit(cls, tokens: np.ndarray, vocab_size: int, order: int = 1, alpha: float = 1.0) -> "MarkovSource":
        """Count-based estimate from a sample: P[s, w] = (count(s, w) + alpha) / (count(s) + V alpha).

        The add-alpha ("Laplace" at alpha = 1) n-gram model; the classic baseline, whose
        held-out cross-entropy on the true source is >= its entropy rate.
        """
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0 (else unseen pairs get probability 0), got {alpha!r}")
        tok = cls._check_tokens(tokens, vocab_size, order)
        ctx = cls._contexts(tok, vocab_size, order)  # (N - k,)
        counts = np.zeros((vocab_size**order, vocab_size))  # (V^k, V)
        np.add.at(counts, (ctx, tok[order:]), 1.0)
        # P[s, w] = (count(s, w) + α) / (count(s) + V α)
        p = (counts + alpha) / (counts.sum(axis=1, keepdims=True) + vocab_size * alpha)
        return cls.from_transition(p, order)

    def _setup(self, p: np.ndarray, order: int) -> None:
        self.transition: np.ndarray = p  # (V^k, V): P[s, w]
        self.order: int = int(order)
        self.vocab_size: int = int(p.shape[1])
        self.stationary: np.ndarray = stationary_distribution(p, order)  # (V^k,): π
        # H = - Σ_s π_s Σ_w P[s, w] log P[s, w], with 0 log 0 = 0
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)  # (V^k, V)
        self.entropy_rate: float = float(-(self.stationary * plogp.sum(axis=1)).sum())  # nats/token
        self._cdf = np.cumsum(p, axis=1)  # (V^k, V): inverse-CDF tables for sampling
        self._cdf_rows: dict[int, list[float]] = {}  # rows as Python lists, built when first visited

    @property
    def entropy_rate_bits(self) -> float:
        """H in bits per token."""
        return self.entropy_rate / math.log(2.0)

    # ---- sampling and scoring -------------------------------------------------------------
    def sample(self, n_tokens: int, rng: np.random.Generator) -> np.ndarray:
        """``n_tokens`` ids ``(N,)`` int64, started in the stationary distribution.

        Draws: one ``rng.random()`` picks the first k tokens (a context from π), then one
        ``rng.random(N - k)`` drives the inverse-CDF draws of the rest.
        """
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        k, v = self.order, self.vocab_size
        if not isinstance(n_tokens, (int, np.integer)) or n_tokens < k:
            raise ValueError(f"n_tokens must be an int >= order={k}, got {n_tokens!r}")
        s = min(int(np.searchsorted(np.cumsum(self.stationary), rng.random(), side="right")), v**k - 1)
        out = [(s // v ** (k - 1 - i)) % v for i in range(k)]  # the context's base-V digits
        u = rng.random(n_tokens - k).tolist()
        rows, mod = self._cdf_rows, v ** (k - 1)
        for ut in u:
            cdf = rows.get(s)
            if cdf is None:
                cdf = rows[s] = self._cdf[s].tolist()
            w = min(bisect.bisect_right(cdf, ut), v - 1)  # first w with CDF > u
            out.append(w)
            s = (s % mod) * v + w  # drop the oldest token, append w
        return np.asarray(out[:n_tokens], dtype=np.int64)

    @staticmethod
    def _check_tokens(tokens: np.ndarray, vocab_size: int, order: int) -> np.ndarray:
        tok = np.asarray(tokens)
        if tok.ndim != 1 or not np.issubdtype(tok.dtype, np.integer) or len(tok) <= order:
            raise ValueError(f"tokens must be a 1-D int array longer than order={order}, got {tok.dtype} {tok.shape}")
        if tok.min() < 0 or tok.max() >= vocab_size:
            raise ValueError(f"tokens must be in [0, {vocab_size}), got range [{tok.min()}, {tok.max()}]")
        return tok.astype(np.int64)

    @staticmethod
    def _contexts(tok: np.ndarray, v: int, k: int) -> np.ndarray:
        """Row index of the context before each of ``tok[k:]``: (N - k,)."""
        n = len(tok)
        ctx = np.zeros(n - k, dtype=np.int64)
        for i in range(k):
            ctx = ctx * v + tok[i : n - k + i]
        return ctx

    def log_probs(self, tokens: np.ndarray) -> np.ndarray:
        """log p(w_t | context) for t = k .. N-1 under this source: ``(N - k,)`` nats."""
        tok = self._check_tokens(tokens, self.vocab_size, self.order)
        ctx = self._contexts(tok, self.vocab_size, self.order)  # (N - k,)
        with np.errstate(divide="ignore"):
            return np.log(self.transition[ctx, tok[self.order :]])

    def cross_entropy(self, tokens: np.ndarray) -> float:
        """Mean negative log-likelihood of ``tokens`` (after the first k) in nats per token."""
        return float(-self.log_probs(tokens).mean())

    # ---- as text --------------------------------------------------------------------------
    def to_text(self, tokens: np.ndarray, alphabet: str = DEFAULT_ALPHABET) -> str:
        """Render ids as characters: token w is ``alphabet[w]`` (per-char entropy = H)."""
        if len(alphabet) < self.vocab_size or len(set(alphabet)) != len(alphabet):
            raise ValueError(
                f"alphabet needs {self.vocab_size} distinct characters, got {len(alphabet)} ({alphabet!r})"
            )
        return "".join(alphabet[int(w)] for w in np.asarray(tokens))

    def sample_text(self, n_chars: int, rng: np.random.Generator, alphabet: str = DEFAULT_ALPHABET) -> str:
        """``to_text(sample(n_chars, rng))``."""
        return self.to_text(self.sample(n_chars, rng), alphabet)

    def __repr__(self) -> str:
        return (
            f"MarkovSource(vocab_size={self.vocab_size}, order={self.order}, "
            f"entropy_rate={self.entropy_rate:.4f} nats = {self.entropy_rate_bits:.4f} bits)"
        )
