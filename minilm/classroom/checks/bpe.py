"""Checks of assignment 'bpe' (chapter 2): byte-pair encoding, against a plain-Python reference
written here the slow and obvious way (count every pair each round; apply merges one by one),
and the round trip decode(encode(s)) == s."""

from __future__ import annotations

from collections import Counter

from minilm.classroom.checks import check
from minilm.data.bpe import GPT2_SPLIT_PATTERN, _splitter

TEXT = """First Citizen: Before we proceed any further, hear me speak.
All: Speak, speak. First Citizen: You are all resolved rather to die than to famish?
All: Resolved. resolved. First Citizen: First, you know Caius Marcius is chief enemy to the people.
All: We know't, we know't. 1234 5678 the the the thee thou thy -- naive café, déjà vu 😀😀!
"""
UNSEEN = "Speak, Marcius! Unseen words: zebra, quixotic 42 — ünïcödé 😀 and\ttabs\n\n"


def ref_merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def ref_train(chunk_counts, n_merges):
    words = {bytes(c): list(c) for c in chunk_counts}
    merges = []
    while len(merges) < n_merges:
        counts = Counter()
        for c, f in chunk_counts.items():
            ids = words[c]
            for p in zip(ids, ids[1:]):
                counts[p] += f
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent, ties: the smallest pair
        new_id = 256 + len(merges)
        merges.append(best)
        words = {c: ref_merge(ids, best, new_id) for c, ids in words.items()}
    return merges


def ref_encode_chunk(b, merges):
    ids = list(b)
    rank = {tuple(p): 256 + r for r, p in enumerate(merges)}
    while True:
        pairs = [p for p in zip(ids, ids[1:]) if p in rank]
        if not pairs:
            return ids
        p = min(pairs, key=rank.get)
        ids = ref_merge(ids, p, rank[p])


def _chunks(text):
    return Counter(c.encode("utf-8") for c in _splitter(GPT2_SPLIT_PATTERN)(text))


def _list(x, name):
    if not isinstance(x, list):
        raise AssertionError(f"{name} must return a list, got {type(x).__name__}")
    return x


def merge_known(s):
    got = _list(s.bpe.merge([1, 2, 3, 1, 2], (1, 2), 4), "merge")
    check(got == [4, 3, 4], f"merge([1, 2, 3, 1, 2], (1, 2), 4) = {got}, expected [4, 3, 4]")
    ids = list(TEXT.encode("utf-8"))
    for pair in ((101, 32), (116, 104), (0, 1)):
        got = s.bpe.merge(ids, pair, 300)
        check(got == ref_merge(ids, pair, 300), f"merge(text bytes, {pair}, 300) differs from the reference")


def merge_edges(s):
    for ids, pair, want in (([7, 7, 7], (7, 7), [9, 7]), ([7, 7, 7, 7], (7, 7), [9, 9]), ([], (1, 2), []),
                            ([1], (1, 2), [1]), ([1, 2], (1, 2), [9]), ([2, 1, 2, 1], (1, 2), [2, 9, 1])):
        got = _list(s.bpe.merge(list(ids), pair, 9), "merge")
        check(got == want, f"merge({ids}, {pair}, 9) = {got}, expected {want} (left to right, no overlaps)")


def train_merges(s):
    cc = _chunks(TEXT)
    got = _list(s.bpe.train_merges(dict(cc), 60), "train_merges")
    got = [tuple(p) for p in got]
    want = ref_train(cc, 60)
    for r, (g, w) in enumerate(zip(got, want)):
        check(g == w, f"merge {r} is {g}, expected {w} (the most frequent pair; ties: the smallest pair)")
    check(len(got) == len(want), f"train_merges made {len(got)} merges, expected {len(want)}")
    return f"{len(got)} merges as the reference"


def train_merges_ties(s):
    got = [tuple(p) for p in _list(s.bpe.train_merges({b"aaab": 1, b"ab": 2}, 2), "train_merges")]
    check(got == [(97, 98), (97, 97)], f"train_merges({{b'aaab': 1, b'ab': 2}}, 2) = {got}, expected "
          f"[(97, 98), (97, 97)]: 'ab' occurs 3 times, then 'aa' and 'a'+'ab' tie and the smaller pair wins")
    cc = {b"zyxw": 1, b"dcba": 1}
    got = [tuple(p) for p in s.bpe.train_merges(cc, 4)]
    check(got == ref_train(cc, 4), f"with every pair counted once the smallest pair must win each round: got {got}, "
          f"expected {ref_train(cc, 4)}")


def train_merges_runs_out(s):
    got = [tuple(p) for p in _list(s.bpe.train_merges({b"abc": 5, b"x": 3}, 10), "train_merges")]
    want = ref_train({b"abc": 5, b"x": 3}, 10)
    check(got == want, f"train_merges must stop when no pair is left: got {got}, expected {want}")


def _tokenizer(s):
    merges = ref_train(_chunks(TEXT), 80)
    return s.bpe.BPETokenizer(merges), merges


def encode(s):
    tok, merges = _tokenizer(s)
    got = tok.encode(TEXT)
    want = [i for c in _splitter(GPT2_SPLIT_PATTERN)(TEXT) for i in ref_encode_chunk(c.encode("utf-8"), merges)]
    check(isinstance(got, list), f"encode must return a list of ints, got {type(got).__name__}")
    check(got == want, f"encode(text) differs from applying the merges in rank order: first difference at "
          f"position {next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))} "
          f"({len(got)} ids vs {len(want)})")
    return f"{len(got)} ids for {len(TEXT.encode('utf-8'))} bytes"


def encode_round_trip(s):
    tok, _ = _tokenizer(s)
    for text in (TEXT, UNSEEN, "", " ", "😀"):
        ids = tok.encode(text)
        back = tok.decode(ids)
        check(back == text, f"decode(encode({text[:30]!r})) gave {back[:30]!r}")
        check(all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids), "encode returned an id outside the vocabulary")


def encode_rank_order(s):
    # merges: 256 = (b, c), 257 = (a, b). "abc": the earliest merge (b, c) applies first -> [a, 256]
    tok = s.bpe.BPETokenizer([(98, 99), (97, 98), (97, 256)])
    got = tok._encode_chunk(b"abc")
    check(list(got) == [258], f"_encode_chunk(b'abc') with merges [(b,c), (a,b), (a,bc)] = {list(got)}, expected [258]: "
          f"apply the earliest learned merge first, not the leftmost pair")
    unseen = [i for c in _splitter(GPT2_SPLIT_PATTERN)(UNSEEN) for i in _tokenizer(s)[0]._encode_chunk(c.encode("utf-8"))]
    want = [i for c in _splitter(GPT2_SPLIT_PATTERN)(UNSEEN) for i in ref_encode_chunk(c.encode("utf-8"), _tokenizer(s)[1])]
    check(unseen == want, "encoding text unseen in training differs from the reference")
