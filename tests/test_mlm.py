"""Tests for minilm.data.mlm (BERT's masking recipe, next-sentence pairs) and
minilm.data.speakers (the fine-tuning task and its leak-free split)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minilm.data.char import CharTokenizer
from minilm.data.mlm import ENCODER_SPECIALS, mask_tokens, nsp_pairs, single_segments, text_segments
from minilm.data.speakers import parse_speeches, speaker_task

PAD, CLS, SEP, MASK = 60, 61, 62, 63  # specials after 60 ordinary ids
VOCAB = 64
SPECIAL = (PAD, CLS, SEP, MASK)


def within_binomial(k: int, n: int, p: float, z: float = 5.0) -> bool:
    """Is the count k a plausible draw of Binomial(n, p)?

    Bound: k ~ Binomial(n, p) has mean n p and standard deviation s = sqrt(n p (1 - p)); by the
    normal approximation (n p (1 - p) is in the thousands here, so it is accurate),
    P(|k - n p| > z s) = erfc(z / sqrt 2), about 5.7e-7 for z = 5: a correct recipe fails this
    check less than once in a million runs, while a wrong proportion (0.15 -> 0.16, say, with
    n = 200 000: |k - n p| = 2000 against z s = 800) fails it every time.
    """
    return abs(k - n * p) <= z * math.sqrt(n * p * (1 - p))


def sample_ids(rng, B=400, T=512):
    ids = rng.integers(0, 60, (B, T))
    ids[:, 0] = CLS
    ids[:, T // 2] = SEP
    ids[:, -(T // 10):] = PAD
    return ids


def test_masking_proportions_within_binomial_bounds(rng):
    ids = sample_ids(rng)
    inputs, targets = mask_tokens(ids, 1234, VOCAB, MASK, SPECIAL)
    eligible = ~np.isin(ids, SPECIAL)
    chosen = targets != -100
    n, c = int(eligible.sum()), int(chosen.sum())
    assert within_binomial(c, n, 0.15), (c, n)
    assert not chosen[~eligible].any(), "specials and padding are never chosen"
    assert (targets[chosen] == ids[chosen]).all() and (inputs[~chosen] == ids[~chosen]).all()
    # of the chosen: 80 % [MASK]; 10 % random ordinary token, which equals the original with
    # probability 1/60, so "changed to another token" is 0.1 * 59/60 and "unchanged" 0.1 + 0.1/60
    masked = int((inputs[chosen] == MASK).sum())
    changed = int(((inputs[chosen] != MASK) & (inputs[chosen] != ids[chosen])).sum())
    same = int((inputs[chosen] == ids[chosen]).sum())
    assert within_binomial(masked, c, 0.8), masked / c
    assert within_binomial(changed, c, 0.1 * 59 / 60), changed / c
    assert within_binomial(same, c, 0.1 + 0.1 / 60), same / c
    assert not np.isin(inputs[chosen & (inputs != MASK)], SPECIAL).any(), "random tokens are ordinary"
    # the check can fail: a 16 % recipe is out of bounds
    _, t16 = mask_tokens(ids, 1234, VOCAB, MASK, SPECIAL, mask_prob=0.16)
    assert not within_binomial(int((t16 != -100).sum()), n, 0.15)


def test_masking_is_deterministic_from_the_seed(rng):
    ids = sample_ids(rng, 8, 64)
    a = mask_tokens(ids, 7, VOCAB, MASK, SPECIAL)
    b = mask_tokens(ids, np.random.default_rng(7), VOCAB, MASK, SPECIAL)
    c = mask_tokens(ids, 8, VOCAB, MASK, SPECIAL)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    with pytest.raises(ValueError, match="mask_id"):
        mask_tokens(ids, 0, VOCAB, 5, SPECIAL)
    with pytest.raises(ValueError, match="rng"):
        mask_tokens(ids, "seed", VOCAB, MASK, SPECIAL)


def test_nsp_pairs_layout_and_balance(rng):
    segments = [list(rng.integers(0, 60, rng.integers(1, 30))) for _ in range(300)]
    b = nsp_pairs(segments, 3, 40, CLS, SEP, PAD, n_pairs=4000)
    assert b.idx.shape == (4000, 40) and b.nsp_labels.shape == (4000,)
    assert within_binomial(int(b.nsp_labels.sum()), 4000, 0.5)
    for r in range(300):
        row, seg, m = b.idx[r], b.segment_ids[r], b.attention_mask[r]
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any() and (row[n:] == PAD).all()
        assert row[0] == CLS and row[n - 1] == SEP and (row[:n] == SEP).sum() == 2
        s1 = int(np.flatnonzero(row[:n] == SEP)[0])
        assert (seg[: s1 + 1] == 0).all() and (seg[s1 + 1 : n] == 1).all() and not seg[n:].any()
        a, bb = list(row[1:s1]), list(row[s1 + 1 : n - 1])
        # A and B are (cut) segments; consecutive rows of label 1 follow each other
        i = [k for k, s in enumerate(segments) if s[: len(a)] == a]
        assert i, "A is the start of some segment"
        if b.nsp_labels[r] == 1:
            assert any(segments[k + 1][: len(bb)] == bb for k in i if k + 1 < len(segments))
    again = nsp_pairs(segments, 3, 40, CLS, SEP, PAD, n_pairs=4000)
    assert np.array_equal(again.idx, b.idx) and np.array_equal(again.nsp_labels, b.nsp_labels)


def test_single_segments_and_a_char_tokenizer_with_encoder_specials():
    tok = CharTokenizer.train("to be or not to be", special_tokens=ENCODER_SPECIALS)
    pad, cls, sep, _ = (tok.special_tokens[s] for s in ENCODER_SPECIALS)
    segs = [tok.encode(s) for s in text_segments("to be\n\n  or not  \nto be or not to be\n")]
    b = single_segments(segs, 8, cls, sep, pad)
    assert tok.decode(b.idx[0][b.attention_mask[0]]) == "[CLS]to be[SEP]"
    assert tok.decode(b.idx[2][b.attention_mask[2]]) == "[CLS]to be [SEP]"  # cut to 6 characters to fit 8
    assert not b.segment_ids.any() and b.nsp_labels is None


def test_speaker_split_leaks_no_line():
    task = speaker_task(n_speakers=5)
    assert len(task.classes) == 5 and len(task.test) >= 80 and len(task.train) >= 500
    lines = {}
    for name in ("train", "val", "test"):
        lines[name] = {ln.strip() for text, _ in task.split(name) for ln in text.split("\n")}
        texts = [t for t, _ in task.split(name)]
        assert len(texts) == len(set(texts)), f"duplicate texts in {name}"
        assert {y for _, y in task.split(name)} == set(range(5)), name
    assert not lines["train"] & lines["val"]
    assert not lines["train"] & lines["test"]
    assert not lines["val"] & lines["test"]
    # the corpus does repeat lines, so the rule had work to do
    all_lines = [ln.strip() for sp in parse_speeches(_corpus()) for ln in sp.text.split("\n")]
    assert len(all_lines) - len(set(all_lines)) > 100
    # deterministic
    again = speaker_task(n_speakers=5)
    assert again.test == task.test and again.classes == task.classes


def test_speaker_split_drops_a_repeated_line():
    """Known answer: 40 speeches of chunk 2, speaker X / Y alternating; speech 0 (train) and
    speech 18 (chunk 9 -> test) share the line 'My lord?', so the test copy is dropped."""
    blocks = []
    for i in range(40):
        body = "My lord?" if i in (0, 18) else f"line {i}\nmore {i}"
        blocks.append(f"{'XY'[i % 2]}:\n{body}")
    task = speaker_task(n_speakers=2, chunk=2, text="\n\n".join(blocks) + "\n")
    test_texts = [t for t, _ in task.test]
    assert test_texts == ["line 19\nmore 19", "line 38\nmore 38", "line 39\nmore 39"]
    assert [t for t, _ in task.val] == ["line 16\nmore 16", "line 17\nmore 17", "line 36\nmore 36",
                                        "line 37\nmore 37"]


def _corpus() -> str:
    from minilm.data import load_corpus
    return load_corpus("tinyshakespeare")
