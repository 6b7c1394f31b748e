"""Autoregressive sampling from a language model: the PyTorch twin of ``minilm.numpy.generate``.

The same algorithm, line for line, with torch ops on the model's device:

    l_i   = -inf  for i in suppress_ids             tokens never to sample (special tokens)
    z     = (l - max(l)) / temperature              logits of the last position, scaled
    z     = top_p_filter(top_k_filter(z, k), p)     outside tokens get -inf (top-k first, as HF)
    p     = softmax(z)                              renormalised over the kept tokens
    token = sample_from_probs(p, u),  u ~ U[0, 1)   inverse CDF: the first i with CDF_i > u

``temperature=0`` is greedy decoding: ``argmax(l)``, ties going to the lowest token id.

The uniforms ``u`` are NOT drawn with a ``torch.Generator``: they come from
``np.random.default_rng(seed)``, one per row per step, exactly as in the NumPy twin, and the
distribution is computed in float64. So with the same weights and seed the two twins sample
the same tokens (barring a uniform that lands within rounding error of a CDF step).

Model kinds, context cropping and the KV cache / LSTM state are handled as described in
``minilm.numpy.generate``: the Transformer sees the last ``context_length`` tokens; with
``use_cache=True`` it feeds one token per step into ``model.init_cache(B)``, re-prefilling a
fresh cache from the cropped window once the window slides; the LSTM carries ``(h, c)``.

The model runs under ``torch.no_grad()`` in eval mode (dropout off); its train/eval mode is
restored afterwards.

Deliberately left out: beam search, repetition penalties, min-p / typical sampling, streaming,
and per-row prompt lengths (pad your prompts yourself).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from minilm.numpy.generate import check_sampling_args, model_kind, suppress_mask

__all__ = ["generate", "top_k_filter", "top_p_filter", "sample_from_probs"]


# ---------------------------------------------------------------------------------------
# The three sampling pieces, shared by name with minilm.numpy.generate.
# ---------------------------------------------------------------------------------------


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the rest to ``-inf``.

    logits: (N, V) -> (N, V). Exactly ``min(k, V)`` tokens survive: ties at the k-th place go
    to the lowest token ids (a stable sort), so ``top_k=1`` is the same as greedy decoding.
    """
    k = min(k, logits.shape[-1])
    # rank tokens by logit, largest first; equal logits keep their id order (stable sort)
    order = torch.argsort(-logits, dim=-1, stable=True)  # (N, V)
    # keep_i = rank(i) < k
    keep_sorted = torch.arange(logits.shape[-1], device=logits.device) < k  # (V,) rank order
    keep_sorted = keep_sorted.expand(logits.shape)  # (N, V) in rank order
    keep = torch.empty(logits.shape, dtype=torch.bool, device=logits.device)  # (N, V) id order
    keep.scatter_(-1, order, keep_sorted)
    return logits.masked_fill(~keep, -torch.inf)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the nucleus of each row: the fewest most-probable tokens whose probability sums to >= p.

    logits: (N, V) -> (N, V), tokens outside the nucleus set to ``-inf``. With the tokens
    sorted by probability, largest first (equal ones by lowest id, a stable sort), token
    ``j`` is kept when the tokens ranked before it sum to less than ``p``:

        keep_j  <=>  sum_{i ranked before j} p_i < p

    so the most probable token is always kept, and among tied tokens at the edge of the
    nucleus only the lowest ids enter. ``p = 1`` keeps every token.
    """
    probs = softmax64(logits)  # (N, V)
    order = torch.argsort(-logits, dim=-1, stable=True)  # (N, V) ids by rank
    sorted_probs = torch.gather(probs, -1, order)  # (N, V) in rank order
    # mass ranked before j: cumsum_j - p_j
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # (N, V)
    keep_sorted = mass_before < p  # (N, V) in rank order; rank 0 always kept since p > 0
    keep = torch.empty(logits.shape, dtype=torch.bool, device=logits.device)  # (N, V) id order
    keep.scatter_(-1, order, keep_sorted)
    return logits.masked_fill(~keep, -torch.inf)


def sample_from_probs(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: row ``n`` draws token ``i`` with ``CDF_{i-1} <= u_n < CDF_i``.

    probs: (N, V) non-negative (need not sum to 1: the CDF is normalised by the row total),
    u: (N,) uniforms in [0, 1) -> (N,) int64 token ids. A zero-probability token is never
    drawn (its CDF step is empty). Counting ``CDF_i <= u`` gives the index.
    """
    cdf = torch.cumsum(probs, dim=-1)  # (N, V)
    # normalise so the last entry is exactly 1.0 (x / x == 1 in IEEE arithmetic), so u < 1
    # always lands inside the table
    cdf = cdf / cdf[:, -1:]  # (N, V)
    # token = #{i : CDF_i <= u}
    return torch.sum(cdf <= u[:, None], dim=-1).long()  # (N,)


def softmax64(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis in float64; ``-inf`` logits get probability exactly 0."""
    z = logits.double()
    # p_i = exp(z_i - max z) / sum_j exp(z_j - max z)   (subtract the max: no overflow)
    e = torch.exp(z - torch.amax(z, dim=-1, keepdim=True))
    return e / torch.sum(e, dim=-1, keepdim=True)


def next_token(
    logits: torch.Tensor,
    u: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    suppress: torch.Tensor | None = None,
) -> torch.Tensor:
    """One sampling step: last-position logits (N, V) and uniforms (N,) -> token ids (N,).

    ``suppress``: None or a (V,) bool mask (``suppress_mask``) of tokens never to sample.
    """
    logits = logits.double()
    if not bool(torch.all(torch.isfinite(torch.amax(logits, dim=-1)))):
        raise ValueError("the model produced logits whose maximum is NaN or inf")
    if suppress is not None:
        # l_i = -inf for suppressed i: probability exactly 0 under every rule below
        logits = logits.masked_fill(suppress, -torch.inf)  # (N, V)
    if temperature == 0.0:
        # greedy: argmax, ties -> lowest id (torch.argmax returns the first maximum)
        return torch.argmax(logits, dim=-1).long()  # (N,)
    # z = (l - max l) / temperature: the same distribution as l / temperature, but it cannot
    # overflow for a tiny temperature
    z = (logits - torch.amax(logits, dim=-1, keepdim=True)) / temperature  # (N, V)
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

    def __call__(self, seq: torch.Tensor) -> torch.Tensor:
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

    def __call__(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: (N, T) every token so far -> logits (N, V) for the token after them."""
        if not self.use_cache:
            logits, _ = self.model.forward(seq)  # (N, T, V), from the zero state
            return logits[:, -1, :]
        logits, self.state = self.model.forward(seq[:, self.seen :], state=self.state)
        self.seen = seq.shape[1]
        return logits[:, -1, :]  # (N, V)


# ---------------------------------------------------------------------------------------
# Argument checks (the same messages as the NumPy twin).
# ---------------------------------------------------------------------------------------


def check_prompt(idx: torch.Tensor, vocab_size: int) -> None:
    """idx must be a non-empty (B, T) integer tensor of token ids in [0, V)."""
    if idx.ndim != 2:
        raise ValueError(f"idx must have shape (B, T), got shape {tuple(idx.shape)}")
    if idx.shape[0] == 0 or idx.shape[1] == 0:
        raise ValueError(f"idx must be non-empty, got shape {tuple(idx.shape)}")
    if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
        raise ValueError(f"idx must hold integer token ids, got dtype {idx.dtype}")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"idx holds token ids in [{lo}, {hi}], outside the vocabulary [0, {vocab_size})"
        )


def _device_of(model: Any) -> torch.device:
    for p in model.parameters() if hasattr(model, "parameters") else ():
        return p.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------


def generate(
    model: Any,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_return_sequences: int = 1,
    eos_id: int | None = None,
    seed: int | np.random.Generator | None = None,
    use_cache: bool = True,
    suppress_ids: Iterable[int] | None = None,
) -> torch.Tensor:
    """Continue each prompt by ``max_new_tokens`` sampled tokens.

    Args:
        model: a PyTorch ``TransformerLM`` or ``LSTMLM`` (any device).
        idx: (B, T) int prompt token ids in [0, V) (a tensor on any device, or array-like).
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
        seed: seed (or a ``np.random.Generator``) for the uniforms, one per row per step;
            the same NumPy stream as the NumPy twin.
        use_cache: reuse past keys/values (Transformer) or carry the recurrent state (LSTM);
            gives the same tokens as ``use_cache=False``, faster.
        suppress_ids: token ids never to sample (probability 0 before temperature, top-k
            and top-p), e.g. the tokenizer's special ids; ``eos_id`` is never suppressed,
            even if listed. ValueError for an id outside [0, V) or if every id would be
            suppressed.

    Returns:
        (B * num_return_sequences, T + max_new_tokens) long tensor on the model's device.
    """
    kind = model_kind(model)
    vocab_size = model.config.vocab_size
    check_sampling_args(
        max_new_tokens, temperature, top_k, top_p, num_return_sequences, eos_id, vocab_size
    )
    if isinstance(suppress_ids, torch.Tensor):
        suppress_ids = suppress_ids.tolist()
    suppress = suppress_mask(suppress_ids, eos_id, vocab_size)  # (V,) bool, or None
    device = _device_of(model)
    if suppress is not None:
        suppress = torch.from_numpy(suppress).to(device)  # (V,)
    idx = torch.as_tensor(idx)
    check_prompt(idx, vocab_size)
    idx = idx.to(device=device, dtype=torch.long)
    temperature = float(temperature)
    rng = np.random.default_rng(seed)

    was_training = model.training if hasattr(model, "training") else None
    if was_training is not None:
        model.eval()
    try:
        with torch.no_grad():
            B, T = idx.shape
            N = B * num_return_sequences
            out = torch.empty((N, T + max_new_tokens), dtype=torch.long, device=device)
            out[:, :T] = idx.repeat_interleave(num_return_sequences, dim=0)  # (N, T)
            if kind == "transformer":
                steps = _TransformerSteps(model, N, use_cache)
            else:
                steps = _LSTMSteps(model, use_cache)
            done = torch.zeros(N, dtype=torch.bool, device=device)  # (N,) sampled eos_id

            for t in range(T, T + max_new_tokens):
                logits = steps(out[:, :t])  # (N, V)
                # (N,) one uniform per row from the NumPy generator, finished rows included
                u = torch.from_numpy(rng.random(N)).to(device)
                tok = next_token(logits, u, temperature, top_k, top_p, suppress)  # (N,)
                if eos_id is not None:
                    tok = tok.masked_fill(done, eos_id)  # finished rows are padded with eos_id
                    done |= tok == eos_id
                out[:, t] = tok
                if eos_id is not None and bool(done.all()):
                    out[:, t + 1 :] = eos_id
                    break
    finally:
        if was_training is not None:
            model.train(was_training)
    return out
