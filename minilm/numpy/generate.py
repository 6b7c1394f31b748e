"""Autoregressive sampling from a language model: greedy, temperature, top-k, top-p (nucleus).

Generation repeats one step: run the model on the tokens so far, take the logits of the last
position, turn them into a distribution over the next token, draw one token, append it:

    l_i   = -inf  for i in suppress_ids             tokens never to sample (special tokens)
    z     = (l - max(l)) / temperature              logits of the last position, scaled
    z     = top_p_filter(top_k_filter(z, k), p)     outside tokens get -inf (top-k first, as HF)
    p     = softmax(z)                              renormalised over the kept tokens
    token = sample_from_probs(p, u),  u ~ U[0, 1)   inverse CDF: the first i with CDF_i > u

``temperature=0`` is greedy decoding: ``argmax(l)``, ties going to the lowest token id.

``suppress_ids`` (for example a tokenizer's special ids other than ``eos``) get probability
exactly 0 before temperature, top-k and top-p, so they are never sampled, greedy included;
``eos_id`` is never suppressed, even if listed, so it still ends a row.

Every uniform ``u`` comes from ``np.random.default_rng(seed)``, one per row per step (drawn for
finished rows too, so one row's randomness never depends on another's), and the distribution
is computed in float64. The PyTorch twin (``minilm.torch.generate``) draws the same uniforms
from the same NumPy generator and does the same float64 arithmetic with torch ops, so with the
same weights and seed both twins sample the same tokens.

How the next-token logits are computed depends on the model kind:

- ``TransformerLM``: ``forward(idx) -> logits (B, T, V)``. Its learned position embedding
  covers ``config.context_length`` positions, so the model sees at most the last
  ``context_length`` tokens (nanoGPT's crop). With ``use_cache=True`` the keys/values of past
  tokens are kept in ``cache = model.init_cache(B)`` and each step feeds only the newest token,
  ``forward(idx[:, -1:], cache=cache)``. Once the sequence outgrows the context the window
  slides, every position shifts and nothing cached is valid any more, so each step then
  re-prefills a fresh cache from the cropped window: cached and uncached generation compute
  the same logits (up to float rounding) and sample the same tokens.
- ``LSTMLM``: ``forward(idx, state) -> (logits, state)``. With ``use_cache=True`` the
  recurrent state ``(h, c)`` is carried and each step feeds one token; with ``use_cache=False``
  the whole sequence is re-run from the zero state every step (slow; it exists to check the
  carried state). The LSTM has no context limit.

Deliberately left out: beam search, repetition penalties, min-p / typical sampling, streaming,
and per-row prompt lengths (pad your prompts yourself).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from minilm.config import LSTMConfig, TransformerConfig

__all__ = ["generate", "top_k_filter", "top_p_filter", "sample_from_probs", "suppress_mask"]


# ---------------------------------------------------------------------------------------
# The three sampling pieces, shared by name with minilm.torch.generate.
# ---------------------------------------------------------------------------------------


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` largest logits of each row, set the rest to ``-inf``.

    logits: (N, V) -> (N, V). Exactly ``min(k, V)`` tokens survive: ties at the k-th place go
    to the lowest token ids (a stable sort), so ``top_k=1`` is the same as greedy decoding.

    >>> top_k_filter(np.array([[1.0, 3.0, 3.0, 2.0]]), 2)
    array([[-inf,   3.,   3., -inf]])
    """
    k = min(k, logits.shape[-1])
    # rank tokens by logit, largest first; equal logits keep their id order (stable sort)
    order = np.argsort(-logits, axis=-1, kind="stable")  # (N, V)
    # keep_i = rank(i) < k
    keep_sorted = np.arange(logits.shape[-1]) < k  # (V,) in rank order
    keep = np.empty(logits.shape, dtype=bool)  # (N, V) in id order
    np.put_along_axis(keep, order, np.broadcast_to(keep_sorted, logits.shape), axis=-1)
    return np.where(keep, logits, -np.inf)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the nucleus of each row: the fewest most-probable tokens whose probability sums to >= p.

    logits: (N, V) -> (N, V), tokens outside the nucleus set to ``-inf``. With the tokens
    sorted by probability, largest first (equal ones by lowest id, a stable sort), token
    ``j`` is kept when the tokens ranked before it sum to less than ``p``:

        keep_j  <=>  sum_{i ranked before j} p_i < p

    so the most probable token is always kept, and among tied tokens at the edge of the
    nucleus only the lowest ids enter. ``p = 1`` keeps every token.

    Worked example: probabilities (0.1, 0.5, 0.15, 0.25) and p = 0.7 rank as tokens 1, 3, 2, 0
    with sums-before 0, 0.5, 0.75, 0.9: tokens 1 and 3 are kept (0.5 + 0.25 = 0.75 >= 0.7).
    """
    probs = softmax64(logits)  # (N, V)
    order = np.argsort(-logits, axis=-1, kind="stable")  # (N, V) ids by rank
    sorted_probs = np.take_along_axis(probs, order, axis=-1)  # (N, V) in rank order
    # mass ranked before j: cumsum_j - p_j
    mass_before = np.cumsum(sorted_probs, axis=-1) - sorted_probs  # (N, V)
    keep_sorted = mass_before < p  # (N, V) in rank order; rank 0 always kept since p > 0
    keep = np.empty(logits.shape, dtype=bool)  # (N, V) in id order
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return np.where(keep, logits, -np.inf)


def sample_from_probs(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: row ``n`` draws token ``i`` with ``CDF_{i-1} <= u_n < CDF_i``.

    probs: (N, V) non-negative (need not sum to 1: the CDF is normalised by the row total),
    u: (N,) uniforms in [0, 1) -> (N,) int64 token ids. A zero-probability token is never
    drawn (its CDF step is empty). Counting ``CDF_i <= u`` gives the index.

    >>> sample_from_probs(np.array([[0.2, 0.0, 0.8]]), np.array([0.5]))
    array([2])
    """
    cdf = np.cumsum(probs, axis=-1)  # (N, V)
    # normalise so the last entry is exactly 1.0 (x / x == 1 in IEEE arithmetic), so u < 1
    # always lands inside the table
    cdf = cdf / cdf[:, -1:]  # (N, V)
    # token = #{i : CDF_i <= u}
    return np.sum(cdf <= u[:, None], axis=-1).astype(np.int64)  # (N,)


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64; ``-inf`` logits get probability exactly 0."""
    z = np.asarray(logits, dtype=np.float64)
    # p_i = exp(z_i - max z) / sum_j exp(z_j - max z)   (subtract the max: no overflow)
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def next_token(
    logits: np.ndarray,
    u: np.ndarray,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    suppress: np.ndarray | None = None,
) -> np.ndarray:
    """One sampling step: last-position logits (N, V) and uniforms (N,) -> token ids (N,).

    ``suppress``: None or a (V,) bool mask (``suppress_mask``) of tokens never to sample.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if not np.all(np.isfinite(np.max(logits, axis=-1))):
        raise ValueError("the model produced logits whose maximum is NaN or inf")
    if suppress is not None:
        # l_i = -inf for suppressed i: probability exactly 0 under every rule below
        logits = np.where(suppress, -np.inf, logits)  # (N, V)
    if temperature == 0.0:
        # greedy: argmax, ties -> lowest id (np.argmax returns the first maximum)
        return np.argmax(logits, axis=-1).astype(np.int64)  # (N,)
    # z = (l - max l) / temperature: the same distribution as l / temperature, but it cannot
    # overflow for a tiny temperature
    z = (logits - np.max(logits, axis=-1, keepdims=True)) / temperature  # (N, V)
    if top_k is not None:
        z = top_k_filter(z, top_k)
    if top_p is not None and top_p < 1.0:
        z = top_p_filter(z, top_p)
    return sample_from_probs(softmax64(z), u)


# ---------------------------------------------------------------------------------------
# Next-token logits from each model kind.
# ---------------------------------------------------------------------------------------


class _TransformerSteps:
    """Last-position logits for the sequence so far, with or without the KV cache."""

    def __init__(self, model: Any, n_rows: int, use_cache: bool) -> None:
        self.model = model
        self.n_rows = n_rows
        self.use_cache = use_cache
        self.context_length = model.config.context_length
        self.cache = None

    def __call__(self, seq: np.ndarray) -> np.ndarray:
        """seq: (N, T) every token so far -> logits (N, V) for the token after them."""
        window = seq[:, -self.context_length :]  # (N, min(T, T_max)): nanoGPT's crop
        if not self.use_cache:
            return self.model.forward(window)[:, -1, :]  # (N, V)
        if self.cache is not None and seq.shape[1] <= self.context_length:
            # the cache holds positions 0 .. cache.length-1 of seq: feed only the new tokens
            new = seq[:, self.cache.length :]  # (N, T - cache.length), usually (N, 1)
            return self.model.forward(new, cache=self.cache)[:, -1, :]  # (N, V)
        # first step, or the window has slid (every position shifted): re-prefill a fresh
        # cache from the cropped window
        self.cache = self.model.init_cache(self.n_rows)
        return self.model.forward(window, cache=self.cache)[:, -1, :]  # (N, V)


class _LSTMSteps:
    """Last-position logits for the sequence so far, carrying the recurrent state or not."""

    def __init__(self, model: Any, use_cache: bool) -> None:
        self.model = model
        self.use_cache = use_cache
        self.state = None  # (h, c), each (n_layer, N, d_hidden)
        self.seen = 0  # tokens of seq already folded into self.state

    def __call__(self, seq: np.ndarray) -> np.ndarray:
        """seq: (N, T) every token so far -> logits (N, V) for the token after them."""
        if not self.use_cache:
            logits, _ = self.model.forward(seq)  # (N, T, V), from the zero state
            return logits[:, -1, :]
        logits, self.state = self.model.forward(seq[:, self.seen :], state=self.state)
        self.seen = seq.shape[1]
        return logits[:, -1, :]  # (N, V)


# ---------------------------------------------------------------------------------------
# Argument checks (the same messages in both twins).
# ---------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_sampling_args(
    max_new_tokens: Any,
    temperature: Any,
    top_k: Any,
    top_p: Any,
    num_return_sequences: Any,
    eos_id: Any,
    vocab_size: int,
) -> None:
    """Raise ValueError naming the first bad argument; shared with the PyTorch twin."""
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float, np.integer, np.floating))
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (
        isinstance(top_p, bool)
        or not isinstance(top_p, (int, float, np.integer, np.floating))
        or not 0.0 < top_p <= 1.0  # False for NaN too
    ):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
    if not _is_int(num_return_sequences) or num_return_sequences < 1:
        raise ValueError(
            f"num_return_sequences must be an int >= 1, got {num_return_sequences!r}"
        )
    if eos_id is not None and (not _is_int(eos_id) or not 0 <= eos_id < vocab_size):
        raise ValueError(f"eos_id must be None or an int in [0, {vocab_size}), got {eos_id!r}")


def check_prompt(idx: np.ndarray, vocab_size: int) -> None:
    """idx must be a non-empty (B, T) integer array of token ids in [0, V)."""
    if idx.ndim != 2:
        raise ValueError(f"idx must have shape (B, T), got shape {tuple(idx.shape)}")
    if idx.shape[0] == 0 or idx.shape[1] == 0:
        raise ValueError(f"idx must be non-empty, got shape {tuple(idx.shape)}")
    if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"idx must hold integer token ids, got dtype {idx.dtype}")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"idx holds token ids in [{lo}, {hi}], outside the vocabulary [0, {vocab_size})"
        )


def suppress_mask(suppress_ids: Iterable[int] | None, eos_id: int | None, vocab_size: int) -> np.ndarray | None:
    """The (V,) bool mask of tokens never to sample: ``suppress_ids`` minus ``eos_id``.

    None when nothing is suppressed. ValueError for an id that is not an int in [0, V), or
    when every token would be suppressed (nothing left to sample).

    >>> suppress_mask([0, 2, 3], eos_id=3, vocab_size=4)
    array([ True, False,  True, False])
    """
    if suppress_ids is None:
        return None
    if isinstance(suppress_ids, (str, bytes)) or not isinstance(suppress_ids, Iterable):
        raise ValueError(f"suppress_ids must be None or an iterable of token ids, got {suppress_ids!r}")
    ids = list(suppress_ids)
    for i in ids:
        if not _is_int(i) or not 0 <= i < vocab_size:
            raise ValueError(f"suppress_ids holds {i!r}, not a token id in [0, {vocab_size})")
    mask = np.zeros(vocab_size, dtype=bool)  # (V,)
    mask[np.asarray(ids, dtype=np.int64)] = True
    if eos_id is not None:
        mask[eos_id] = False  # eos still ends generation
    if mask.all():
        raise ValueError(f"suppress_ids suppresses all {vocab_size} token ids: nothing left to sample")
    return mask if mask.any() else None


def model_kind(model: Any) -> str:
    """'transformer' or 'lstm', read from the model's config."""
    config = getattr(model, "config", None)
    if isinstance(config, TransformerConfig):
        return "transformer"
    if isinstance(config, LSTMConfig):
        return "lstm"
    raise ValueError(
        "generate needs a model whose .config is a TransformerConfig or an LSTMConfig, "
        f"got {type(model).__name__} with config {type(config).__name__}"
    )


# ---------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------


def generate(
    model: Any,
    idx: np.ndarray,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_return_sequences: int = 1,
    eos_id: int | None = None,
    seed: int | np.random.Generator | None = None,
    use_cache: bool = True,
    suppress_ids: Iterable[int] | None = None,
) -> np.ndarray:
    """Continue each prompt by ``max_new_tokens`` sampled tokens.

    Args:
        model: a NumPy ``TransformerLM`` or ``LSTMLM``.
        idx: (B, T) int prompt token ids in [0, V).
        max_new_tokens: how many tokens to append (0 returns the prompts).
        temperature: divides the logits; 0 means greedy (argmax, ties -> lowest id).
        top_k: keep only the k most likely tokens (exactly k; ties -> lowest ids).
        top_p: keep only the nucleus, the fewest most likely tokens with total mass >= top_p
            (applied after top_k, as in Hugging Face transformers).
        num_return_sequences: samples per prompt; row ``b * n + j`` is sample ``j`` of prompt
            ``b`` (``repeat_interleave`` order).
        eos_id: once a row samples this token it is finished: the rest of the row is
            ``eos_id`` and it is no longer sampled. Generation stops early when every row
            is finished (the result keeps its full width). Prompt tokens never finish a row.
        seed: seed (or a ``np.random.Generator``) for the uniforms, one per row per step.
        use_cache: reuse past keys/values (Transformer) or carry the recurrent state (LSTM);
            gives the same tokens as ``use_cache=False``, faster.
        suppress_ids: token ids never to sample (probability 0 before temperature, top-k
            and top-p), e.g. the tokenizer's special ids; ``eos_id`` is never suppressed,
            even if listed. ValueError for an id outside [0, V) or if every id would be
            suppressed.

    Returns:
        (B * num_return_sequences, T + max_new_tokens) int64: the prompts, then new tokens.
    """
    kind = model_kind(model)
    vocab_size = model.config.vocab_size
    check_sampling_args(
        max_new_tokens, temperature, top_k, top_p, num_return_sequences, eos_id, vocab_size
    )
    suppress = suppress_mask(suppress_ids, eos_id, vocab_size)  # (V,) bool, or None
    idx = np.asarray(idx)
    check_prompt(idx, vocab_size)
    temperature = float(temperature)
    rng = np.random.default_rng(seed)

    B, T = idx.shape
    N = B * num_return_sequences
    out = np.empty((N, T + max_new_tokens), dtype=np.int64)  # (N, T + max_new_tokens)
    out[:, :T] = np.repeat(idx, num_return_sequences, axis=0)  # (N, T), rows b*n + j
    if kind == "transformer":
        steps = _TransformerSteps(model, N, use_cache)
    else:
        steps = _LSTMSteps(model, use_cache)
    done = np.zeros(N, dtype=bool)  # (N,) rows that have sampled eos_id

    for t in range(T, T + max_new_tokens):
        logits = steps(out[:, :t])  # (N, V)
        u = rng.random(N)  # (N,) one uniform per row, finished rows included
        tok = next_token(logits, u, temperature, top_k, top_p, suppress)  # (N,)
        if eos_id is not None:
            tok = np.where(done, eos_id, tok)  # finished rows are padded with eos_id
            done |= tok == eos_id
        out[:, t] = tok
        if eos_id is not None and done.all():
            out[:, t + 1 :] = eos_id
            break
    return out
