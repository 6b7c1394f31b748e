"""Cutting a token stream into training batches: next-token prediction windows.

A language model trained on a stream of N token ids learns ``p(w_{t+1} | w_<=t)``. A batch
is B windows of T+1 consecutive ids; the first T are the input ``x`` and the last T (the same
window shifted by one) are the targets ``y``::

    data:  w0 w1 w2 w3 w4 w5 ...
    x[b]:  w_s     ... w_{s+T-1}
    y[b]:  w_{s+1} ... w_{s+T}      (y[b, t] is the token that follows x[b, t])

- ``train_val_split``: the head of the stream trains, the tail validates (contiguous, so
  no window straddles both sets).
- ``get_batch``: B random windows for training (random start positions from ``rng``).
- ``iter_batches``: non-overlapping windows in order, for deterministic evaluation.
- ``pad_batch``: variable-length sequences (documents, prompts) padded on the right, with
  targets ignored at the padding and a boolean attention mask; ``causal_key_mask`` turns
  that mask into the ``(B, 1, T, T)`` mask attention takes.

Deliberately left out: shuffling without replacement, document packing with cross-document
masking, left padding, and data loaders with worker processes (the arrays fit in memory).
"""

from __future__ import annotations

from typing import Iterator, Sequence, TypeVar

import numpy as np

__all__ = ["train_val_split", "get_batch", "iter_batches", "pad_batch", "causal_key_mask"]

S = TypeVar("S", bound=Sequence)


def train_val_split(data: S, val_fraction: float = 0.1) -> tuple[S, S]:
    """Split ``data`` (N,) into ``(train, val)``: the first N - n_val items and the last n_val.

    ``n_val = round(N * val_fraction)``. Works on anything sliceable (a NumPy array gives
    views, a str gives strs). ``val_fraction`` must be in [0, 1); when it is > 0 both parts
    must be non-empty.

    >>> train_val_split(list(range(10)), 0.2)
    ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9])
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n = len(data)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and (n_val == 0 or n_val == n):
        raise ValueError(
            f"cannot split {n} items with val_fraction={val_fraction}: one part would be empty "
            f"(n_val={n_val})"
        )
    return data[: n - n_val], data[n - n_val :]  # type: ignore[return-value]


def _as_tokens(data: np.ndarray | Sequence[int]) -> np.ndarray:
    arr = np.asarray(data)
    if arr.ndim != 1:
        raise ValueError(f"data must be a 1-D sequence of token ids (N,), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"data must hold integer token ids, got dtype {arr.dtype}")
    return arr


def _check_sizes(batch_size: int, block_size: int) -> None:
    for name, v in (("batch_size", batch_size), ("block_size", block_size)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def get_batch(
    data: np.ndarray | Sequence[int],
    batch_size: int,
    block_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """B random windows of the stream: ``x (B, T)`` and ``y (B, T)`` int64, y = x shifted by one.

    data: (N,) integer ids, N >= T + 1. Start positions are ONE draw
    ``rng.integers(0, N - T, size=B)`` (uniform over all N - T windows, with replacement), so
    the same generator state gives the same batch.
    """
    _check_sizes(batch_size, block_size)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    arr = _as_tokens(data)
    n, t = len(arr), block_size
    if n < t + 1:
        raise ValueError(
            f"data has {n} tokens, too short for block_size={t}: a window needs T + 1 = {t + 1} tokens"
        )
    starts = rng.integers(0, n - t, size=batch_size)  # (B,)
    idx = starts[:, None] + np.arange(t)  # (B, T)
    x = arr[idx].astype(np.int64)  # (B, T)
    y = arr[idx + 1].astype(np.int64)  # (B, T)
    return x, y


def iter_batches(
    data: np.ndarray | Sequence[int],
    batch_size: int,
    block_size: int,
    tail: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Non-overlapping windows in order: yields ``x, y`` of shape ``(b, T)``, b <= B, int64.

    Window k covers inputs ``data[k*T : (k+1)*T]`` and targets ``data[k*T+1 : (k+1)*T+1]``,
    so the n_win = (N - 1) // T full windows score each of the targets ``data[1 : n_win*T + 1]``
    exactly once; the last batch holds the n_win % B windows left over. The
    ``r = (N - 1) % T`` targets after them are dropped, unless ``tail=True``: then one more
    batch ``(1, r)`` scores them, so every target ``data[1:]`` is scored exactly once.

    >>> [x.tolist() for x, y in iter_batches(list(range(8)), batch_size=2, block_size=3)]
    [[[0, 1, 2], [3, 4, 5]]]
    >>> [y.tolist() for x, y in iter_batches(list(range(8)), 2, 3, tail=True)]
    [[[1, 2, 3], [4, 5, 6]], [[7]]]
    """
    _check_sizes(batch_size, block_size)
    arr = _as_tokens(data)
    n, t = len(arr), block_size
    if n < 2:
        raise ValueError(f"data has {n} tokens; scoring needs at least 2 (one input, one target)")
    n_win = (n - 1) // t
    for k0 in range(0, n_win, batch_size):
        starts = np.arange(k0, min(k0 + batch_size, n_win)) * t  # (b,)
        idx = starts[:, None] + np.arange(t)  # (b, T)
        yield arr[idx].astype(np.int64), arr[idx + 1].astype(np.int64)
    r = (n - 1) - n_win * t
    if tail and r > 0:
        s = n_win * t
        yield arr[None, s : s + r].astype(np.int64), arr[None, s + 1 : s + 1 + r].astype(np.int64)  # (1, r)


def pad_batch(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    ignore_index: int = -100,
    max_length: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-pad B sequences to a common length T: ``(x, y, attn_mask)``, each ``(B, T)``.

    - ``x`` int64: the tokens, then ``pad_id``;
    - ``y`` int64: ``y[b, t] = x[b, t+1]`` while that is a real token, else ``ignore_index``
      (the last real token has nothing to predict, and padding predicts nothing) -- the
      ``ignore_index`` of ``cross_entropy``;
    - ``attn_mask`` bool: True at real tokens, False at padding.

    T is the longest sequence, or ``max_length`` if given (a longer sequence is a
    ValueError). For attention, combine the mask with causality: see ``causal_key_mask``.

    >>> x, y, m = pad_batch([[5, 6, 7], [8]], pad_id=0)
    >>> x.tolist(), y.tolist(), m.tolist()
    ([[5, 6, 7], [8, 0, 0]], [[6, 7, -100], [-100, -100, -100]], [[True, True, True], [True, False, False]])
    """
    seqs = [np.asarray(s) for s in sequences]
    if not seqs:
        raise ValueError("pad_batch needs at least one sequence")
    for b, s in enumerate(seqs):
        if s.ndim != 1 or s.size == 0:
            raise ValueError(f"sequence {b} must be a non-empty 1-D sequence of ids, got shape {s.shape}")
        if not np.issubdtype(s.dtype, np.integer):
            raise ValueError(f"sequence {b} must hold integer ids, got dtype {s.dtype}")
    lengths = np.array([len(s) for s in seqs])  # (B,)
    t = int(lengths.max()) if max_length is None else max_length
    if lengths.max() > t:
        b = int(lengths.argmax())
        raise ValueError(f"sequence {b} has length {lengths[b]} > max_length={t}")
    bsz = len(seqs)
    x = np.full((bsz, t), pad_id, dtype=np.int64)  # (B, T)
    y = np.full((bsz, t), ignore_index, dtype=np.int64)  # (B, T)
    for b, s in enumerate(seqs):
        x[b, : len(s)] = s
        # y_t = x_{t+1} for t = 0 .. len-2
        y[b, : len(s) - 1] = s[1:]
    attn_mask = np.arange(t)[None, :] < lengths[:, None]  # (B, T)
    return x, y, attn_mask


def causal_key_mask(attn_mask: np.ndarray) -> np.ndarray:
    """Padding mask ``(B, T)`` -> attention mask ``(B, 1, T, T)``: True = query i may see key j.

    mask[b, 0, i, j] = (j <= i) and attn_mask[b, j]: causal, and never a padded key. It
    broadcasts over heads. Padding is on the right, so every query row -- padded ones
    included -- still sees key 0 (a real token) and no row is fully masked; the padded rows'
    outputs are ignored through ``ignore_index`` in the targets. This is the same as passing
    ``attn_mask[:, None, None, :]`` together with ``is_causal=True``.
    """
    m = np.asarray(attn_mask)
    if m.ndim != 2 or m.dtype != np.bool_:
        raise ValueError(f"attn_mask must be a bool (B, T) array, got {m.dtype} {m.shape}")
    t = m.shape[1]
    causal = np.tril(np.ones((t, t), dtype=bool))  # (T, T): j <= i
    return causal[None, None, :, :] & m[:, None, None, :]  # (B, 1, T, T)
