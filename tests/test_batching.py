"""Batching: splits, random and sequential windows, padding and the attention mask it makes."""

from __future__ import annotations

import numpy as np
import pytest

from minilm.data import causal_key_mask, get_batch, iter_batches, pad_batch, train_val_split
from minilm.testing import assert_close


# ---- train_val_split ---------------------------------------------------------------------------
def test_split_is_contiguous_head_and_tail():
    data = np.arange(1000)
    train, val = train_val_split(data, 0.1)
    assert len(train) == 900 and len(val) == 100
    np.testing.assert_array_equal(np.concatenate([train, val]), data)
    assert train.base is data and val.base is data  # views, no copy
    assert train_val_split("abcdefghij", 0.3) == ("abcdefg", "hij")
    assert train_val_split([1, 2, 3], 0.0) == ([1, 2, 3], [])


@pytest.mark.parametrize("frac", [-0.1, 1.0, 1.5, "0.1"])
def test_split_rejects_bad_fractions(frac):
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(np.arange(10), frac)


def test_split_refuses_an_empty_part():
    with pytest.raises(ValueError, match="3 items"):
        train_val_split([1, 2, 3], 0.1)  # round(0.3) = 0 validation items


# ---- get_batch -------------------------------------------------------------------------------------
def test_get_batch_windows_are_shifted_by_one(rng):
    data = np.arange(100, 200, dtype=np.int32)  # value - 100 is the position
    x, y = get_batch(data, batch_size=16, block_size=7, rng=rng)
    assert x.shape == y.shape == (16, 7) and x.dtype == y.dtype == np.int64
    starts = x[:, 0] - 100
    for b, s in enumerate(starts):
        np.testing.assert_array_equal(x[b], data[s : s + 7])
        np.testing.assert_array_equal(y[b], data[s + 1 : s + 8])


def test_get_batch_is_reproducible_and_reaches_every_window():
    data = np.arange(12)
    x1, _ = get_batch(data, 4, 5, np.random.default_rng(0))
    x2, _ = get_batch(data, 4, 5, np.random.default_rng(0))
    np.testing.assert_array_equal(x1, x2)
    # N - T = 7 possible windows: starts 0..6, all of them reachable, none beyond
    x, y = get_batch(data, 2000, 5, np.random.default_rng(1))
    assert set(x[:, 0].tolist()) == set(range(7))
    assert y.max() == 11
    # the documented draw: one rng.integers(0, N - T, size=B)
    np.testing.assert_array_equal(x1[:, 0], np.random.default_rng(0).integers(0, 7, size=4))


def test_get_batch_accepts_a_window_of_exactly_t_plus_one():
    x, y = get_batch([3, 1, 4, 1], 2, 3, np.random.default_rng(0))
    assert x.tolist() == [[3, 1, 4]] * 2 and y.tolist() == [[1, 4, 1]] * 2


def test_get_batch_errors_name_the_lengths():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"data has 8 tokens, too short for block_size=8"):
        get_batch(np.arange(8), 2, 8, rng)
    with pytest.raises(ValueError, match="Generator"):
        get_batch(np.arange(8), 2, 4, 0)
    with pytest.raises(ValueError, match=r"1-D.*\(2, 4\)"):
        get_batch(np.zeros((2, 4), dtype=np.int64), 2, 2, rng)
    with pytest.raises(ValueError, match="integer"):
        get_batch(np.zeros(10), 2, 2, rng)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            get_batch(np.arange(10), bad, 2, rng)


# ---- iter_batches --------------------------------------------------------------------------------
@pytest.mark.parametrize("n,b,t", [(2, 1, 1), (50, 4, 7), (64, 3, 9), (101, 5, 10), (10, 8, 20)])
def test_iter_batches_scores_each_target_once(n, b, t):
    data = np.arange(n) * 3
    batches = list(iter_batches(data, b, t))
    n_win = (n - 1) // t
    assert sum(len(x) for x, _ in batches) == n_win
    assert all(x.shape[1] == t and x.dtype == np.int64 and len(x) <= b for x, _ in batches)
    xs = np.concatenate([x.ravel() for x, _ in batches]) if batches else np.array([], dtype=int)
    ys = np.concatenate([y.ravel() for _, y in batches]) if batches else np.array([], dtype=int)
    np.testing.assert_array_equal(xs, data[: n_win * t])
    np.testing.assert_array_equal(ys, data[1 : n_win * t + 1])
    # with the tail, every target data[1:] is scored exactly once
    ys_tail = np.concatenate([y.ravel() for _, y in iter_batches(data, b, t, tail=True)])
    np.testing.assert_array_equal(ys_tail, data[1:])


def test_iter_batches_rejects_data_too_short_to_score():
    with pytest.raises(ValueError, match="data has 1 tokens"):
        list(iter_batches([5], 1, 1))


# ---- pad_batch and the attention mask ---------------------------------------------------------
def test_pad_batch_known_answer():
    """Worked by hand: [5, 6, 7] predicts 6, 7 then nothing; [8] predicts nothing."""
    x, y, m = pad_batch([[5, 6, 7], [8], np.array([9, 9])], pad_id=0, ignore_index=-1)
    assert x.tolist() == [[5, 6, 7], [8, 0, 0], [9, 9, 0]]
    assert y.tolist() == [[6, 7, -1], [-1, -1, -1], [9, -1, -1]]
    assert m.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert x.dtype == y.dtype == np.int64 and m.dtype == bool
    x, y, m = pad_batch([[1, 2]], pad_id=3, max_length=4)
    assert x.tolist() == [[1, 2, 3, 3]] and y.tolist() == [[2, -100, -100, -100]]


def test_pad_batch_counts_exactly_the_real_next_tokens(rng):
    seqs = [rng.integers(0, 50, size=n) for n in (1, 2, 7, 13, 13)]
    x, y, m = pad_batch(seqs, pad_id=50)
    assert (y != -100).sum() == sum(len(s) - 1 for s in seqs)
    assert (x[~m] == 50).all() and m.sum() == sum(len(s) for s in seqs)
    for b, s in enumerate(seqs):
        np.testing.assert_array_equal(y[b, : len(s) - 1], s[1:])


def test_pad_batch_errors():
    with pytest.raises(ValueError, match="at least one"):
        pad_batch([], 0)
    with pytest.raises(ValueError, match="sequence 1 must be a non-empty"):
        pad_batch([[1], []], 0)
    with pytest.raises(ValueError, match="sequence 0 has length 3 > max_length=2"):
        pad_batch([[1, 2, 3]], 0, max_length=2)
    with pytest.raises(ValueError, match="integer"):
        pad_batch([[1.5]], 0)


def test_causal_key_mask_matches_its_definition(rng):
    _, _, m = pad_batch([[1] * n for n in (1, 4, 6)], pad_id=0)
    mask = causal_key_mask(m)
    assert mask.shape == (3, 1, 6, 6) and mask.dtype == bool
    for b in range(3):
        for i in range(6):
            for j in range(6):
                assert mask[b, 0, i, j] == (j <= i and m[b, j])
    assert mask.any(axis=-1).all()  # no fully masked query row
    with pytest.raises(ValueError, match="bool"):
        causal_key_mask(m.astype(int))


def _attention(q, k, v, mask):
    """Plain softmax attention, written out here: (B, 1, T, D) with a bool (B, 1, T, T) mask."""
    s = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])  # (B, 1, T, T)
    s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v  # (B, 1, T, D)


def test_padded_attention_equals_attention_on_each_sequence_alone(rng):
    """The point of the mask: at real positions, padding changes nothing."""
    lengths = [3, 6, 1]
    x, _, m = pad_batch([rng.integers(0, 9, size=n) for n in lengths], pad_id=0)
    t, d = x.shape[1], 4
    q, k, v = (rng.standard_normal((3, 1, t, d)) for _ in range(3))
    # make padded keys/values garbage: they must not leak into real positions
    k[~m[:, None, :]] = 1e3
    v[~m[:, None, :]] = -1e3
    out = _attention(q, k, v, causal_key_mask(m))
    for b, n in enumerate(lengths):
        alone = _attention(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                           np.tril(np.ones((n, n), dtype=bool)))
        assert_close(out[b:b + 1, :, :n], alone, atol=1e-12, rtol=1e-12, name=f"sequence {b}")


# ---- padding end to end: the models' losses on a padded batch ------------------------------------
PAD_MODELS = ["numpy-transformer", "numpy-lstm", "torch-transformer-naive", "torch-transformer-sdpa",
              "torch-lstm", "torch-lstm-fused"]


def _padding_model(name: str, V: int):
    """(loss_and_grads(x, y) -> (float, {key: float64 array}), model) for one of PAD_MODELS,
    float64, every twin holding the NumPy init of seed 0."""
    from minilm.config import LSTMConfig, TransformerConfig

    kind = "transformer" if "transformer" in name else "lstm"
    if kind == "transformer":
        from minilm.numpy.transformer import TransformerLM

        config = TransformerConfig(vocab_size=V, context_length=8, d_model=16, n_layer=2, n_head=2)
    else:
        from minilm.numpy.lstm import LSTMLM as TransformerLM  # (the NumPy model of this kind)

        config = LSTMConfig(vocab_size=V, d_embed=8, d_hidden=12, n_layer=2)
    ref = TransformerLM(config, seed=0, dtype=np.float64)
    if name.startswith("numpy"):
        return lambda x, y: ref.loss_and_grads(x, y, ignore_index=-100)
    torch = pytest.importorskip("torch")
    from minilm.torch.functional import cross_entropy

    if kind == "transformer":
        from minilm.torch.transformer import TransformerLM as TorchLM

        model = TorchLM(config, seed=0, attention=name.rsplit("-", 1)[1])
    else:
        from minilm.torch.lstm import LSTMLM as TorchLM

        model = TorchLM(config, seed=0, fused=name.endswith("fused"))
    model = model.to(torch.float64)
    model.load_state_dict(ref.state_dict())

    def loss_and_grads(x, y):
        out = model(torch.from_numpy(x))
        logits = out[0] if isinstance(out, tuple) else out  # the LSTM also returns its state
        loss = cross_entropy(logits, torch.from_numpy(y), ignore_index=-100)
        names, params = zip(*model.named_parameters())
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.item(), {k: (np.zeros(p.shape) if g is None else g.numpy())
                             for k, p, g in zip(names, params, grads)}

    return loss_and_grads


@pytest.mark.parametrize("name", PAD_MODELS)
def test_padded_batch_loss_is_the_token_weighted_mean_of_the_sequences_losses(name, rng):
    """Variable-length sequences padded with ``pad_batch``: the model's mean loss over the
    counted targets (``ignore_index`` at padding) equals sum_b n_b L_b / sum_b n_b, where
    L_b is the loss of sequence b alone (unpadded) and n_b = len_b - 1 its number of
    targets; and so do the gradients. Float64, tolerance 1e-12.

    The models take no attention mask, and need none: padding is on the right and attention
    is causal, so a real token at position t attends only to positions <= t, which are all
    real; the LSTM's state at t likewise depends only on tokens <= t. The padded positions'
    outputs are garbage, and ``ignore_index`` drops exactly them (and each sequence's last
    token, which has nothing to predict). ``pad_batch``'s mask is for attention that does see
    padded keys (``causal_key_mask``; tested above). A sequence of length 1 has no targets:
    it adds nothing (and is skipped when scored alone, whose mean would be 0/0)."""
    V, pad_id = 13, 12
    lengths = [7, 3, 1, 8, 5]
    seqs = [rng.integers(0, V - 1, size=n) for n in lengths]
    loss_and_grads = _padding_model(name, V)
    x, y, _ = pad_batch(seqs, pad_id=pad_id)  # (B, T) each, T = 8
    loss, grads = loss_and_grads(x, y)
    n = np.array(lengths) - 1  # targets per sequence
    want_loss, want_grads = 0.0, {k: np.zeros_like(g) for k, g in grads.items()}
    for s, n_b in zip(seqs, n):
        if n_b == 0:
            continue
        l_b, g_b = loss_and_grads(s[None, :-1].astype(np.int64), s[None, 1:].astype(np.int64))  # (1, n_b)
        # L = sum_b n_b L_b / sum_b n_b, and the same weights for the gradients
        want_loss += n_b * float(l_b) / n.sum()
        for k in want_grads:
            want_grads[k] += n_b * np.asarray(g_b[k]) / n.sum()
    assert_close(np.array(float(loss)), np.array(want_loss), atol=1e-12, rtol=1e-12, name="loss")
    for k, g in grads.items():
        assert_close(np.asarray(g), want_grads[k], atol=1e-12, rtol=1e-10, name=k)
    # and the weighting matters: the plain mean of the sequences' losses is another number
    # (a fresh model is near uniform, so only by ~1e-4 here, but far outside the 1e-12 above)
    plain = np.mean([loss_and_grads(s[None, :-1].astype(np.int64), s[None, 1:].astype(np.int64))[0]
                     for s, n_b in zip(seqs, n) if n_b])
    assert abs(float(loss) - plain) > 1e-8
