"""Pre-training data for an encoder: BERT's masking recipe and next-sentence pairs.

Masked language modelling (BERT, Devlin et al. 2019, section 3.1)::

    each position that is not a special token (nor padding) is chosen with probability p = 0.15
    a chosen position's input becomes  [MASK]                      with probability 0.8
                                       a uniformly random ordinary token    0.1
                                       itself (unchanged)                   0.1
    targets = the original token at chosen positions, ignore_index everywhere else

so the loss is only on the chosen positions, and the model cannot tell which unmasked tokens
are to be predicted. Each position is chosen independently (a Bernoulli draw, as BERT's
public code and Hugging Face's collator do), so the number chosen is Binomial(n, 0.15).

Next-sentence prediction: from a list of segments in document order, pair segment i with
segment i + 1 (label 1, "B follows A") or, with probability 1/2, with a random other segment
(label 0); lay the pair out as ``[CLS] A [SEP] B [SEP]`` with segment ids 0 for ``[CLS] A
[SEP]`` and 1 for ``B [SEP]``, then pad. ``single_segments`` makes ``[CLS] A [SEP]`` rows for
MLM without NSP (RoBERTa's choice).

Everything is framework-free NumPy and deterministic from a seed or an ``np.random.Generator``;
the special tokens' ids are plain int arguments (``tokenizer.cls_id`` and friends, or the ids a
``CharTokenizer`` trained with ``special_tokens=ENCODER_SPECIALS`` gives them).

Deliberately left out: whole-word masking, dynamic sentence-pair lengths (BERT's short-sequence
probability), sentence-order prediction (ALBERT), span masking (SpanBERT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["ENCODER_SPECIALS", "mask_tokens", "EncoderBatch", "single_segments", "nsp_pairs", "text_segments",
           "as_generator"]

#: the encoder's special tokens, in the order minilm gives them ids after the ordinary tokens
ENCODER_SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")


def as_generator(rng: np.random.Generator | int) -> np.random.Generator:
    """A Generator from a Generator (returned as is) or an int seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be an np.random.Generator or an int seed, got {type(rng).__name__}")


def mask_tokens(
    ids: np.ndarray,
    rng: np.random.Generator | int,
    vocab_size: int,
    mask_id: int,
    special_ids: Sequence[int],
    mask_prob: float = 0.15,
    ignore_index: int = -100,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking recipe (module docstring): ids (B, T) -> (inputs (B, T), targets (B, T)).

    ``special_ids``: every id never to be chosen nor drawn as the random replacement ([PAD],
    [CLS], [SEP], [MASK], ...). The random replacement is uniform over the other ids of
    [0, vocab_size). ``ids`` is not modified.

    >>> inputs, targets = mask_tokens(np.array([[5, 1, 2, 3, 4, 6]]), 0, 10, mask_id=9,
    ...                               special_ids=[5, 6, 7, 8, 9], mask_prob=1.0)
    >>> targets.tolist()   # every ordinary position chosen, the specials (5, 6) never
    [[-100, 1, 2, 3, 4, -100]]
    """
    rng = as_generator(rng)
    ids = np.asarray(ids)
    if ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"mask_tokens: ids must be integers, got dtype {ids.dtype}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_tokens: mask_prob must be in [0, 1], got {mask_prob}")
    special = np.asarray(sorted({int(s) for s in special_ids}), dtype=np.int64)
    if mask_id not in special:
        raise ValueError(f"mask_tokens: mask_id={mask_id} must be one of special_ids {special.tolist()}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"mask_tokens: ids must be in [0, {vocab_size}), got [{ids.min()}, {ids.max()}]")
    ordinary = np.setdiff1d(np.arange(vocab_size), special)  # (V_ordinary,)
    if ordinary.size == 0:
        raise ValueError("mask_tokens: every id is special; nothing to draw random tokens from")
    eligible = ~np.isin(ids, special)  # (B, T)
    # choose each eligible position with probability mask_prob
    chosen = eligible & (rng.random(ids.shape) < mask_prob)  # (B, T)
    # of the chosen: u < 0.8 -> [MASK], 0.8 <= u < 0.9 -> random ordinary token, else unchanged
    u = rng.random(ids.shape)  # (B, T)
    random_tokens = ordinary[rng.integers(0, ordinary.size, ids.shape)]  # (B, T)
    inputs = ids.copy()
    inputs[chosen & (u < 0.8)] = mask_id
    swap = chosen & (u >= 0.8) & (u < 0.9)
    inputs[swap] = random_tokens[swap]
    targets = np.where(chosen, ids, ignore_index).astype(np.int64)  # (B, T)
    return inputs.astype(np.int64), targets


@dataclass
class EncoderBatch:
    """Rows laid out for an encoder, all (N, T) but ``nsp_labels`` (N,) (None without NSP)."""

    idx: np.ndarray  # token ids, [CLS] first, padded with pad_id
    segment_ids: np.ndarray  # 0 for [CLS] A [SEP] (and padding), 1 for B [SEP]
    attention_mask: np.ndarray  # bool, True at real tokens
    nsp_labels: np.ndarray | None = None  # 1 = B follows A, 0 = B is a random segment

    def __len__(self) -> int:
        return len(self.idx)

    def take(self, rows: np.ndarray) -> "EncoderBatch":
        """The rows ``rows`` of every array."""
        return EncoderBatch(self.idx[rows], self.segment_ids[rows], self.attention_mask[rows],
                            None if self.nsp_labels is None else self.nsp_labels[rows])


def single_segments(segments: Sequence[Sequence[int]], max_length: int, cls_id: int, sep_id: int,
                    pad_id: int) -> EncoderBatch:
    """``[CLS] A [SEP]`` rows padded to ``max_length``; A is cut to ``max_length - 2`` tokens."""
    _check_length(max_length, 3)
    rows = [[cls_id, *list(a)[: max_length - 2], sep_id] for a in segments]
    return _pad(rows, [[0] * len(r) for r in rows], max_length, pad_id)


def nsp_pairs(
    segments: Sequence[Sequence[int]],
    rng: np.random.Generator | int,
    max_length: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    n_pairs: int | None = None,
) -> EncoderBatch:
    """Next-sentence pairs (module docstring) from ``segments`` in document order.

    Row r takes A = segments[i] for i drawn uniformly from 0 .. len - 2 (or, with ``n_pairs``
    None, every i in order, one row each); B = segments[i + 1] with label 1 or, with probability
    1/2, a uniformly random segment j not in {i, i + 1} with label 0. The longer of A and B is
    cut from its end until ``[CLS] A [SEP] B [SEP]`` fits in ``max_length`` (BERT cuts the
    longer one too).
    """
    rng = as_generator(rng)
    _check_length(max_length, 5)
    n = len(segments)
    if n < 3:
        raise ValueError(f"nsp_pairs needs at least 3 segments, got {n}")
    firsts = np.arange(n - 1) if n_pairs is None else rng.integers(0, n - 1, n_pairs)  # (N,)
    labels = (rng.random(len(firsts)) < 0.5).astype(np.int64)  # (N,) 1 = consecutive
    # a random j not in {i, i+1}: draw from n - 2 values and skip over i and i + 1
    js = rng.integers(0, n - 2, len(firsts))  # (N,)
    js = js + (js >= firsts) * 2  # values >= i move past i, i + 1
    rows, segs = [], []
    for i, j, label in zip(firsts, js, labels):
        a = list(segments[i])
        b = list(segments[i + 1] if label else segments[j])
        while len(a) + len(b) + 3 > max_length:  # cut the longer one from its end
            (a if len(a) >= len(b) else b).pop()
        rows.append([cls_id, *a, sep_id, *b, sep_id])
        segs.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
    out = _pad(rows, segs, max_length, pad_id)
    out.nsp_labels = labels
    return out


def text_segments(text: str, min_chars: int = 1) -> list[str]:
    """The non-empty lines of ``text`` (stripped), in order, each at least ``min_chars`` long:
    the segments ``nsp_pairs`` pairs up (consecutive lines of a play are "next sentences")."""
    return [s for s in (line.strip() for line in text.splitlines()) if len(s) >= max(1, min_chars)]


def _pad(rows: list[list[int]], segs: list[list[int]], max_length: int, pad_id: int) -> EncoderBatch:
    N = len(rows)
    idx = np.full((N, max_length), pad_id, dtype=np.int64)  # (N, T)
    seg = np.zeros((N, max_length), dtype=np.int64)  # (N, T)
    mask = np.zeros((N, max_length), dtype=bool)  # (N, T)
    for r, (row, s) in enumerate(zip(rows, segs)):
        idx[r, : len(row)] = row
        seg[r, : len(s)] = s
        mask[r, : len(row)] = True
    return EncoderBatch(idx, seg, mask)


def _check_length(max_length: int, least: int) -> None:
    if not isinstance(max_length, (int, np.integer)) or max_length < least:
        raise ValueError(f"max_length must be an int >= {least}, got {max_length!r}")
