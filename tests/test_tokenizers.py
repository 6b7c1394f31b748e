"""Tokenizers: round trips, hand-worked BPE merges, a naive reference trainer, special tokens,
the JSON file and its validation. No network, no tinyshakespeare (the "builtin" corpus is
the real text used here)."""

from __future__ import annotations

import doctest
import json
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minilm.data
from minilm.data import (
    ENCODER_SPECIAL_TOKENS,
    GPT2_PATTERN,
    GPT2_SPLIT_PATTERN,
    BPETokenizer,
    bytes_to_unicode,
    CharTokenizer,
    load_corpus,
    load_tokenizer,
    tokenizer_from_dict,
)
from minilm.data.bpe import train_merges

# Valid Unicode text: any code point except the lone surrogates (category Cs), NUL included.
unicode_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)

AWKWARD = [
    "",
    "a",
    "hello world",
    "  leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\n\n\n  indented",
    "NUL \x00 inside",
    "emoji 👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "中文字符和日本語のテキスト、한국어",
    "combining: e\u0301 a\u0308 and precomposed é ä",
    "digits 12345 ² ½ Ⅻ ٣ and _under_scores_",
    "it's we'll they've I'd she'S",
    "<eos> is just text here <pad><bos>",
    "\\x41 a backslash-escape look-alike \\",
]


@pytest.fixture(scope="module")
def builtin() -> str:
    return load_corpus("builtin")


@pytest.fixture(scope="module")
def bpe(builtin: str) -> BPETokenizer:
    return BPETokenizer.train(builtin[:100_000], vocab_size=400)


# ---- reference implementation, written independently of minilm.data.bpe --------------------
def naive_merge(seq: list[int], a: int, b: int, new: int) -> list[int]:
    out: list[int] = []
    i = 0
    while i < len(seq):
        if seq[i : i + 2] == [a, b]:
            out.append(new)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def naive_train(text: str, n_merges: int) -> tuple[list[tuple[int, int]], list[list[int]]]:
    """minbpe's algorithm verbatim: every round recounts every pair of every chunk occurrence
    (no deduplication, no incremental update); ties go to the smallest pair."""
    chunks = [list(c.encode("utf-8")) for c in re.findall(GPT2_SPLIT_PATTERN, text)]
    merges: list[tuple[int, int]] = []
    for r in range(n_merges):
        stats: dict[tuple[int, int], int] = {}
        for seq in chunks:
            for p in zip(seq, seq[1:]):
                stats[p] = stats.get(p, 0) + 1
        if not stats:
            break
        best = min(stats, key=lambda p: (-stats[p], p))
        merges.append(best)
        chunks = [naive_merge(seq, *best, 256 + r) for seq in chunks]
    return merges, chunks


# ---- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("text", AWKWARD)
def test_bpe_round_trips_awkward_text(bpe: BPETokenizer, text: str):
    ids = bpe.encode(text)
    assert all(isinstance(i, int) and 0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


@given(unicode_text)
def test_bpe_round_trips_any_unicode(bpe: BPETokenizer, text: str):
    assert bpe.decode(bpe.encode(text)) == text


@given(unicode_text)
def test_split_pattern_covers_every_character(text: str):
    """The stdlib approximation of GPT-2's pattern must lose nothing: chunks join back to the text."""
    assert "".join(re.findall(GPT2_SPLIT_PATTERN, text)) == text


@given(unicode_text)
def test_bpe_trained_on_any_text_round_trips_it(text: str):
    n = len(train_merges({c.encode(): 1 for c in re.findall(GPT2_SPLIT_PATTERN, text)}, 10**6))
    tok = BPETokenizer.train(text, vocab_size=256 + min(n, 20) + 3)
    assert tok.decode(tok.encode(text)) == text


@given(unicode_text, st.sampled_from([r"\w+", r"(a)(b)?", r"x*", r"\s", r"[^\W\d_]+|\d{1,3}"]))
def test_any_split_pattern_round_trips(text: str, pattern: str):
    """Patterns that skip text, have groups or match empty strings still lose nothing."""
    tok = BPETokenizer.train("abc abc 123 xx" * 3, vocab_size=256 + 1, special_tokens=(), pattern=pattern)
    assert tok.decode(tok.encode(text)) == text
    assert BPETokenizer.from_dict(tok.to_dict()).encode(text) == tok.encode(text)


def test_bpe_round_trips_the_builtin_corpus_and_compresses_it(bpe: BPETokenizer, builtin: str):
    ids = bpe.encode(builtin)
    assert bpe.decode(ids) == builtin
    # 141 merges of frequent English pieces must beat 1 byte per token by a wide margin
    assert len(ids) < 0.6 * len(builtin.encode())


def test_char_round_trips_and_names_the_first_unknown_character(builtin: str):
    tok = CharTokenizer.train(builtin)
    assert tok.decode(tok.encode(builtin)) == builtin
    assert tok.vocab_size == len(set(builtin)) + 3
    assert tok.chars == sorted(set(builtin))
    with pytest.raises(ValueError, match=r"'👍' \(U\+1F44D\) at position 4"):
        tok.encode("abcd👍ef€")


def test_char_ids_are_sorted_characters_then_specials():
    """Worked by hand: sorted("hello") distinct = e h l o -> 0 1 2 3; specials 4 5 6."""
    tok = CharTokenizer.train("hello")
    assert tok.encode("hello") == [1, 0, 2, 2, 3]
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (4, 5, 6)
    assert tok.special_tokens == {"<pad>": 4, "<bos>": 5, "<eos>": 6}
    assert tok.vocab_size == 7


def test_lone_surrogates_are_rejected_by_name(bpe: BPETokenizer):
    for tok in (bpe, CharTokenizer.train("ab")):
        with pytest.raises(ValueError, match=r"lone surrogate U\+D800 at position 1"):
            tok.encode("a\ud800b")
    with pytest.raises(ValueError, match="surrogate"):
        CharTokenizer.train("x\udfff")


def test_decode_checks_ids_and_takes_numpy_arrays(bpe: BPETokenizer):
    ids = bpe.encode("hello there")
    assert bpe.decode(np.array(ids, dtype=np.int64)) == "hello there"
    assert bpe.decode(np.array(ids, dtype=np.int32)) == "hello there"
    with pytest.raises(ValueError, match=rf"id {bpe.vocab_size} at position 1"):
        bpe.decode([1, bpe.vocab_size])
    with pytest.raises(ValueError, match="id -1 at position 0"):
        bpe.decode([-1])
    with pytest.raises(ValueError, match="integers"):
        bpe.decode([1.5])
    with pytest.raises(ValueError, match=r"1-D"):
        bpe.decode(np.zeros((2, 2), dtype=np.int64))


def test_bpe_decode_of_a_cut_character_shows_replacement_char(bpe: BPETokenizer):
    """A model can emit the first byte of a 2-byte character alone: decode must not raise."""
    first_byte = "é".encode()[0]  # 0xC3: a token of its own (ids 0..255 are the bytes)
    assert bpe.decode([first_byte]) == "\ufffd"
    assert bpe.decode_bytes([first_byte]) == b"\xc3"


# ---- training: known answers and the reference trainer ---------------------------------------
def test_bpe_known_answer_aaabdaaabac():
    """Worked by hand (the Wikipedia example, one chunk of letters):
    counts aa=4, ab=2, ... -> merge (a,a)=256: [256,a,b,d,256,a,b,a,c];
    now (a,b)=2 and (256,a)=2 tie -> the smaller pair (97,98)=257: [256,257,d,256,257,a,c];
    (256,257)=2 is the only pair seen twice -> 258 "aaab": [258,d,258,a,c]."""
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=256 + 3 + 3)
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
    assert tok.vocab[258] == b"aaab"
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]
    assert tok.vocab_size == 262 and tok.pad_id == 259 and tok.eos_id == 261


def test_bpe_merges_never_cross_chunks():
    """Worked by hand: "ab ab ab" splits into "ab", " ab", " ab". Pair counts: (a,b)=3,
    (space,a)=2 -> (a,b)=256 first, then (space,256)=257 " ab". A pair (b, space) never
    forms, although "b " occurs twice in the raw text."""
    tok = BPETokenizer.train("ab ab ab", vocab_size=256 + 2, special_tokens=())
    assert tok.merges == [(97, 98), (32, 256)]
    assert tok.encode("ab ab ab") == [256, 257, 257]
    assert tok.special_tokens == {} and tok.pad_id is None


@pytest.mark.parametrize("start,n_merges", [(0, 100), (200_000, 60)])
def test_fast_trainer_matches_naive_reference(builtin: str, start: int, n_merges: int):
    text = builtin[start : start + 10_000]
    expected_merges, expected_chunks = naive_train(text, n_merges)
    tok = BPETokenizer.train(text, vocab_size=256 + n_merges + 3)
    assert tok.merges == expected_merges
    # encoding the training text by rank reproduces the training-time segmentation
    assert tok.encode(text) == [i for seq in expected_chunks for i in seq]


@given(st.text(alphabet="ab c\n", max_size=60), st.integers(0, 30))
def test_fast_trainer_matches_naive_reference_on_random_text(text: str, n_merges: int):
    """Tiny alphabets make many ties and runs like "aaaa" (overlapping pairs)."""
    expected, _ = naive_train(text, n_merges)
    chunks = re.findall(GPT2_SPLIT_PATTERN, text)
    counts = {c.encode(): chunks.count(c) for c in set(chunks)}
    assert train_merges(counts, n_merges) == expected


def test_bpe_vocab_size_is_exactly_as_asked(builtin: str):
    for v in (259, 260, 300, 517):
        assert BPETokenizer.train(builtin[:20_000], vocab_size=v).vocab_size == v
    with pytest.raises(ValueError, match="too small"):
        BPETokenizer.train("abc", vocab_size=258)
    with pytest.raises(ValueError, match=r"only allows 2 merges, so vocab_size can be at most 261"):
        BPETokenizer.train("abc", vocab_size=300)  # "abc" has pairs ab, bc: 2 merges at most


def test_training_is_deterministic(builtin: str):
    a = BPETokenizer.train(builtin[:30_000], vocab_size=350)
    b = BPETokenizer.train(builtin[:30_000], vocab_size=350)
    assert a.merges == b.merges and a == b


# ---- special tokens ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_special_strings_in_text_are_ordinary_unless_allowed(kind: str):
    text = "one<eos>two<pad>"
    tok = CharTokenizer.train(text) if kind == "char" else BPETokenizer.train(text, vocab_size=262)
    plain = tok.encode(text)
    assert tok.eos_id not in plain and tok.pad_id not in plain
    assert tok.decode(plain) == text
    allowed = tok.encode(text, allowed_special="all")
    assert allowed == tok.encode("one") + [tok.eos_id] + tok.encode("two") + [tok.pad_id]
    assert tok.decode(allowed) == text
    only_eos = tok.encode(text, allowed_special={"<eos>"})
    assert only_eos == tok.encode("one") + [tok.eos_id] + tok.encode("two<pad>")
    assert tok.decode([tok.bos_id]) == "<bos>"
    with pytest.raises(ValueError, match="<unk>"):
        tok.encode(text, allowed_special={"<unk>"})


def test_custom_special_tokens_and_longest_match_first():
    tok = BPETokenizer.train("xyz", vocab_size=256 + 1 + 2, special_tokens=("<e", "<eos>"))
    assert tok.special_tokens == {"<e": 257, "<eos>": 258}
    assert tok.eos_id == 258 and tok.bos_id is None
    assert tok.encode("<eos><e", allowed_special="all") == [258, 257]
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer.train("ab", special_tokens=("<a>", "<a>"))
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer.train("ab", special_tokens=("",))


# ---- the file -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_load_round_trip(tmp_path, builtin: str, bpe: BPETokenizer, kind: str):
    tok = CharTokenizer.train(builtin) if kind == "char" else bpe
    path = tmp_path / "tok.json"
    tok.save(path)
    cls = type(tok)
    again = cls.load(path)
    either = load_tokenizer(path)
    assert type(either) is cls and again == tok and either == tok
    sample = builtin[123_000:130_000]
    assert again.encode(sample) == tok.encode(sample)
    assert again.encode(sample, allowed_special="all") == tok.encode(sample, allowed_special="all")
    assert (again.pad_id, again.bos_id, again.eos_id, again.vocab_size) == (
        tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size)
    assert tokenizer_from_dict(tok.to_dict()) == tok
    d = json.loads(path.read_text(encoding="utf-8"))
    assert (d["format"], d["version"], d["kind"]) == ("minilm-tokenizer", 1, kind)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_bpe_file_shows_merges_as_readable_pairs(tmp_path):
    tok = BPETokenizer.train("this that then", vocab_size=256 + 3 + 3)
    path = tmp_path / "bpe.json"
    tok.save(path)
    text = path.read_text(encoding="utf-8")
    d = json.loads(text)
    assert d["merges"][0] == {"id": 256, "pair": [116, 104], "text": ["t", "h"]}
    assert '{"id": 256, "pair": [116, 104], "text": ["t", "h"]}' in text  # one merge per line
    # stray bytes and backslashes survive the readable form
    tok2 = BPETokenizer.train("\\\\ \\\\ é é", vocab_size=256 + 4, special_tokens=())
    tok2.save(path)
    rows = json.loads(path.read_text(encoding="utf-8"))["merges"]
    # worked by hand: pairs (32,195), (92,92), (195,169) occur twice; the smallest goes first
    assert [r["text"] for r in rows] == [[" ", "\\xc3"], ["\\\\", "\\\\"], [" \\xc3", "\\xa9"], [" ", "\\\\\\\\"]]
    assert BPETokenizer.load(path) == tok2


def _write(path, obj) -> str:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return str(path)


def test_bad_files_raise_value_error_naming_the_file(tmp_path, bpe: BPETokenizer):
    good = bpe.to_dict()
    cases = {
        "notjson.json": "{ this is not json",
        "deep.json": "[" * 100_000,
        "list.json": [1, 2, 3],
        "format.json": {**good, "format": "something-else"},
        "version.json": {**good, "version": 99},
        "kind.json": {**good, "kind": "wordpiece"},
        "merges.json": {**good, "merges": "nope"},
        "mergeid.json": {**good, "merges": [{"id": 300, "pair": [1, 2], "text": ["\\x01", "\\x02"]}]},
        "future.json": {**good, "merges": [{"id": 256, "pair": [1, 256], "text": ["\\x01", "x"]}]},
        "mismatch.json": {**good, "merges": [{"id": 256, "pair": [116, 104], "text": ["t", "x"]}, *good["merges"][1:]]},
        "specials.json": {**good, "special_tokens": {"<pad>": 0}},
        "pattern.json": {**good, "pattern": "(unclosed"},
        "repeat.json": {**good, "merges": [{"id": 256, "pair": [1, 2], "text": ["\\x01", "\\x02"]},
                                           {"id": 257, "pair": [1, 2], "text": ["\\x01", "\\x02"]}]},
        "charfield.json": {"format": "minilm-tokenizer", "version": 1, "kind": "char",
                           "special_tokens": {}, "chars": ["ab"]},
    }
    for name, obj in cases.items():
        path = _write(tmp_path / name, obj)
        with pytest.raises(ValueError, match=re.escape(path)):
            load_tokenizer(path)
    (tmp_path / "bytes.json").write_bytes(b"\xff\xfe\x00")
    for path in (tmp_path / "bytes.json", tmp_path / "missing.json", tmp_path):
        with pytest.raises(ValueError, match=re.escape(str(path))):
            load_tokenizer(path)
    # a char file loaded as BPE names both kinds
    char_path = tmp_path / "char.json"
    CharTokenizer.train("abc").save(char_path)
    with pytest.raises(ValueError, match=r"char.json.*'char' tokenizer, not a 'bpe'"):
        BPETokenizer.load(char_path)


def test_loading_executes_nothing(tmp_path):
    """A pickle payload or Python code in the file is data that fails validation, not code."""
    path = tmp_path / "evil.json"
    marker = tmp_path / "pwned"
    path.write_text(json.dumps({"format": "minilm-tokenizer", "version": 1, "kind": "char",
                                "special_tokens": {}, "chars": [f"__import__('os').system('touch {marker}')"]}))
    with pytest.raises(ValueError):
        load_tokenizer(path)
    assert not marker.exists()


def test_encoding_cache_does_not_change_results(builtin: str):
    merges = BPETokenizer.train(builtin[:20_000], vocab_size=300).merges
    warm = BPETokenizer(merges)
    text = builtin[50_000:60_000]
    first = warm.encode(text)
    assert warm.encode(text) == first == BPETokenizer(merges).encode(text)
    # chunk by chunk without the cache, straight from the merge ranks
    cold = BPETokenizer(merges)
    assert [i for c in re.findall(GPT2_SPLIT_PATTERN, text) for i in cold._encode_chunk(c.encode())] == first


def test_docstring_examples():
    for mod in ("tokenizer", "char", "bpe", "batching", "synthetic"):
        module = getattr(minilm.data, mod)
        result = doctest.testmod(module, optionflags=doctest.IGNORE_EXCEPTION_DETAIL)
        assert result.failed == 0 and result.attempted > 0, (mod, result)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 400) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(st.sampled_from(["char", "bpe"]), st.data())
def test_any_corrupted_field_is_a_value_error(kind: str, data):
    """Replace one field (or one merge row / one char) by arbitrary JSON: loading either
    succeeds or raises ValueError naming the source -- never another exception."""
    tok = CharTokenizer.train("hello world") if kind == "char" else BPETokenizer.train("hello hello world", 262)
    d = tok.to_dict()
    key = data.draw(st.sampled_from(sorted(d)))
    listed = key in ("chars", "merges") and data.draw(st.booleans())
    if listed:
        i = data.draw(st.integers(0, len(d[key]) - 1))
        d[key] = [*d[key][:i], data.draw(json_values), *d[key][i + 1 :]]
    else:
        d[key] = data.draw(json_values)
    d = json.loads(json.dumps(d))  # exactly what a file could hold
    try:
        tokenizer_from_dict(d, source="fuzzed.json")
    except ValueError as e:
        assert "fuzzed.json" in str(e)


# ---- BPE training: special tokens are boundaries, and the tie rule -----------------------------
def test_bpe_training_never_merges_into_or_across_special_tokens(builtin: str):
    """Documents joined by <|endoftext|> (and [SEP]): the docs hold none of the characters
    < | > [ ] so ANY token containing one of those bytes would be a piece of a special token
    or span one. Before the fix, training made "<|", "|>" and ".<|"."""
    docs = [d for d in re.sub(r"[<|>\[\]]", "", builtin[:60_000]).split("\n\n") if d]
    text = "<|endoftext|>".join(docs) + "[SEP]" + "[SEP]".join(docs[:20])
    tok = BPETokenizer.train(text, vocab_size=256 + 300 + 2, special_tokens=("<|endoftext|>", "[SEP]"))
    assert len(docs) > 50
    for i, b in tok.vocab.items():
        if i >= 256:
            assert not set(b) & set(b"<|>[]"), (i, b)
    # the special strings encode to their ids, and their text to single bytes only
    eot = tok.special_tokens["<|endoftext|>"]
    assert tok.encode("a<|endoftext|>b", allowed_special="all") == [97, eot, 98]
    pieces = [tok.vocab[i] for i in tok.encode("x<|endoftext|>[SEP]")]
    assert all(len(p) == 1 for p in pieces if set(p) & set(b"<|>[]"))
    # a broken variant that trains on the raw text does learn pieces of the special token
    raw = BPETokenizer.train(text, vocab_size=256 + 300 + 2, special_tokens=("<x>", "<y>"))
    assert any(b"<|" in b or b"|>" in b for b in raw.vocab.values())


def test_bpe_tie_rule_smallest_pair_wins():
    """Worked by hand. "zz ab" splits into "zz" and " ab"; pairs (122,122) "zz", (32,97)
    " a", (97,98) "ab" each occur once: a three-way tie. The smallest pair by id tuple wins:
    (32,97) < (97,98) < (122,122), so merge 256 = " a". Then (256,98) " a"+"b" and (122,122)
    tie at 1: (122,122) < (256,98), so 257 = "zz" and 258 = " ab". (minbpe's first-seen rule
    would take "zz" first.)"""
    tok = BPETokenizer.train("zz ab", vocab_size=256 + 3, special_tokens=())
    assert tok.merges == [(32, 97), (122, 122), (256, 98)]
    assert [tok.vocab[i] for i in (256, 257, 258)] == [b" a", b"zz", b" ab"]
    # a count beats the tie rule: "zz" twice wins over the smaller " a"
    tok = BPETokenizer.train("zz zz ab", vocab_size=256 + 1, special_tokens=())
    assert tok.merges == [(122, 122)]


# ---- the encoder's special tokens ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_encoder_special_tokens(kind: str, builtin: str):
    text = re.sub(r"[\[\]]", "", builtin[:5000])
    train_text = "[CLS] " + text[:2000] + " [SEP] " + text[2000:] + " [SEP][MASK][PAD]"
    if kind == "char":
        tok = CharTokenizer.train(train_text, special_tokens=ENCODER_SPECIAL_TOKENS)
        first = len(tok.chars)
    else:
        tok = BPETokenizer.train(train_text, vocab_size=256 + 200 + 4, special_tokens=ENCODER_SPECIAL_TOKENS)
        first = 256 + 200
        # no merge touches them: no learned token holds a bracket (the text has none besides them)
        assert not any(set(tok.vocab[i]) & set(b"[]") for i in range(256, first))
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) == (first, first + 1, first + 2, first + 3)
    assert tok.special_ids == [first, first + 1, first + 2, first + 3]
    assert tok.bos_id is None and tok.eos_id is None
    s = "[CLS] hello [SEP] world [SEP][MASK][PAD]"
    ids = tok.encode(s, allowed_special="all")
    assert [i for i in ids if i >= first] == [tok.cls_id, tok.sep_id, tok.sep_id, tok.mask_id, tok.pad_id]
    assert tok.decode(ids) == s and tok.decode(tok.encode(s)) == s
    back = tokenizer_from_dict(tok.to_dict())
    assert back == tok and back.cls_id == tok.cls_id and back.pad_id == tok.pad_id
    # defaults: <pad> wins over [PAD]; no encoder tokens
    d = CharTokenizer.train("ab")
    assert (d.pad_id, d.cls_id, d.sep_id, d.mask_id, d.special_ids) == (2, None, None, None, [2, 3, 4])
    both = CharTokenizer.train("ab", special_tokens=("[PAD]", "<pad>"))
    assert both.pad_id == 3


def test_char_error_names_characters_specials_and_vocab_size():
    tok = CharTokenizer.train("abc")
    with pytest.raises(ValueError, match=r"3 characters \+ 3 special tokens = vocab_size 6"):
        tok.encode("abd")


# ---- encode_iterable -------------------------------------------------------------------------------
# text rich in what can straddle a line cut: whitespace runs, \r\n, multi-byte characters,
# contractions, digits, and the special strings themselves
STREAM_ALPHABET = ["a", "b", "é", "中", "👍", "\u0301", "²", "1", "'", "s", "ll", ".", " ", "  ", "\t",
                   "\n", "\r", "\r\n", "\u3000", "\x1c", "<eos>", "<pad>", "<", "os>", "[CLS]"]
stream_text = st.lists(st.sampled_from(STREAM_ALPHABET), max_size=40).map("".join)


def _random_split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0] + points, points + [len(text)])]


@pytest.fixture(scope="module")
def stream_tokenizers():
    corpus = "".join(STREAM_ALPHABET) * 3 + "it's a test. it'll be 12 ab  ab\n\n  ab\r\n"
    specials = ("<pad>", "<bos>", "<eos>", "[CLS]")
    return {
        "char": CharTokenizer.train(corpus, special_tokens=specials),
        "bpe": BPETokenizer.train(corpus * 2, vocab_size=256 + 40 + 4, special_tokens=specials),
        "bpe-gpt2-pattern": BPETokenizer.train(corpus * 2, vocab_size=256 + 40 + 4, special_tokens=specials,
                                               pattern=GPT2_PATTERN),
        "bpe-custom-pattern": BPETokenizer.train(corpus * 2, vocab_size=256 + 20 + 4, special_tokens=specials,
                                                 pattern=r"\w+|\s"),
    }


@given(text=stream_text, cuts=st.lists(st.integers(0, 10_000), max_size=12),
       allowed=st.sampled_from([(), "all", ("<eos>",), ("<eos>", "[CLS]")]))
@pytest.mark.parametrize("kind", ["char", "bpe", "bpe-gpt2-pattern", "bpe-custom-pattern"])
def test_encode_iterable_equals_encode_of_the_joined_text(stream_tokenizers, kind, text, cuts, allowed):
    tok = stream_tokenizers[kind]
    lines = _random_split(text, cuts)
    assert "".join(lines) == text
    got = tok.encode_iterable(iter(lines), allowed_special=allowed)
    assert not isinstance(got, list)  # a generator
    assert list(got) == tok.encode(text, allowed_special=allowed)


def test_encode_iterable_cuts_inside_crlf_and_whitespace_runs_and_specials(stream_tokenizers):
    """The hand-picked splits that a line-by-line encoder gets wrong."""
    tok = stream_tokenizers["bpe"]
    cases = [["ab\r", "\n  ab"], ["ab  ", "  ", "ab"], ["ab \n", "\n", " ab"], ["it'", "ll"], ["it", "'s"],
             ["a<e", "os>b"], ["a<eos", ">"], ["中"[0], " 👍", "\u0301"], ["12", "34"], ["ab ", " "]]
    for lines in cases:
        for allowed in ((), "all"):
            assert list(tok.encode_iterable(lines, allowed)) == tok.encode("".join(lines), allowed), lines


def test_encode_iterable_memory_is_bounded_by_the_longest_line(builtin: str):
    """Read a file line by line: the buffer never holds much more than one line, and ids come
    out before the input ends (the generator is lazy)."""
    tok = BPETokenizer.train(builtin[:50_000], vocab_size=300)
    text = builtin[:200_000]
    lines = text.splitlines(keepends=True)
    longest = max(map(len, lines))
    seen = []

    def feed():
        for line in lines:
            seen.append(len(line))
            yield line

    got = tok.encode_iterable(feed())
    first = next(got)
    assert len(seen) < 5, "ids must come out after the first line(s), not at the end"
    assert [first, *got] == tok.encode(text)
    # white-box: the most text ever held back between lines
    held, buf = 0, ""
    for line in lines:
        buf += line
        _, cut = tok._encode_final_prefix(buf, None, 0)
        buf = buf[cut:]
        held = max(held, len(buf))
    assert held <= longest + 1, (held, longest)


def test_encode_iterable_rejects_bad_lines(stream_tokenizers):
    with pytest.raises(ValueError, match="surrogate"):
        list(stream_tokenizers["bpe"].encode_iterable(["ok", "\ud800"]))


# ---- GPT-2's files ----------------------------------------------------------------------------------
def gpt2_bytes_to_unicode_reference() -> dict[int, str]:
    """GPT-2's table written from its description: printable bytes ! .. ~, ¡ .. ¬, ® .. ÿ map
    to themselves; the remaining bytes, in increasing order, to chr(256), chr(257), ..."""
    keep = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    rest = [b for b in range(256) if b not in keep]
    table = {b: chr(b) for b in keep}
    table.update({b: chr(256 + n) for n, b in enumerate(rest)})
    return table


def test_bytes_to_unicode_is_gpt2s_table():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table == gpt2_bytes_to_unicode_reference()
    for b in range(256):
        if chr(b).isprintable() and b not in (0x20, 0xA0, 0xAD):
            assert table[b] == chr(b), b  # printable bytes map to themselves
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[0] == "Ā"


def reference_bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """GPT-2's published bpe(), re-written from its description: start from the characters of
    the (byte-mapped) pre-token; while some adjacent pair has a rank, take the pair of lowest
    rank and join every occurrence of it, scanning left to right without overlap."""
    parts = list(word)
    while len(parts) > 1:
        ranked = [(ranks[p], p) for p in zip(parts, parts[1:]) if p in ranks]
        if not ranked:
            break
        _, (first, second) = min(ranked)
        joined, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                joined.append(first + second)
                i += 2
            else:
                joined.append(parts[i])
                i += 1
        parts = joined
    return parts


def reference_gpt2_encode(text: str, vocab_json, merges_txt) -> list[int]:
    """GPT-2's encoder from the files alone: pre-split with the published regex (the third-party
    ``regex`` module when installed, else minilm's translation), map bytes through the table,
    bpe() each pre-token, look the pieces up in vocab.json. <|endoftext|> is honoured."""
    vocab = json.loads(open(vocab_json, encoding="utf-8").read())
    lines = open(merges_txt, encoding="utf-8").read().split("\n")[1:]
    ranks = {tuple(line.split(" ")): r for r, line in enumerate(l for l in lines if l)}
    try:
        import regex

        split = regex.compile(GPT2_PATTERN).findall
    except ImportError:  # pragma: no cover
        from minilm.data.bpe import compile_pattern

        split = compile_pattern(GPT2_PATTERN).findall
    table = gpt2_bytes_to_unicode_reference()
    ids = []
    for k, doc in enumerate(text.split("<|endoftext|>")):
        if k:
            ids.append(vocab["<|endoftext|>"])
        for piece in split(doc):
            mapped = "".join(table[b] for b in piece.encode("utf-8"))
            ids.extend(vocab[p] for p in reference_bpe(mapped, ranks))
    return ids


GPT2_TEXTS = AWKWARD + [
    "Hello, world! It's 2024; they're 'quoted' and we've       spaced\t\ttabs\n\n\n\nend",
    "  \r\n\r\n  x  \u3000\u3000 y\x1c\x1dz \u00a0nbsp",
    "doc one.<|endoftext|>doc two<|endoftext|><|endoftext|>",
    "ÀÉÎÕÜ ñ ß ﬁ œ — “curly” ‘quotes’ … ¿¡",
]


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory, builtin: str):
    """A tokenizer trained here, written in GPT-2's format with GPT-2's byte order (byte b gets
    the id of its table character's rank, so "!" is 0 and "Ā" (byte 0) is 188), as GPT-2's
    own vocab.json has it."""
    docs = builtin[:80_000].split("\n\n")
    text = "<|endoftext|>".join(docs) + "".join(GPT2_TEXTS)
    tok = BPETokenizer.train(text, vocab_size=256 + 500 + 1, special_tokens=("<|endoftext|>",), pattern=GPT2_PATTERN)
    d = tmp_path_factory.mktemp("gpt2")
    vocab_path, merges_path = tok.save_gpt2(d)
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    table = bytes_to_unicode()
    gpt2_order = sorted(range(256), key=lambda b: table[b])  # GPT-2's ids 0..255, as bytes
    for new_id, b in enumerate(gpt2_order):
        vocab[table[b]] = new_id
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return tok, vocab_path, merges_path, gpt2_order


def test_from_gpt2_keeps_ids_and_endoftext(gpt2_files):
    tok, vocab_path, merges_path, gpt2_order = gpt2_files
    g = BPETokenizer.from_gpt2(vocab_path, merges_path)
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    assert g.vocab_size == len(vocab) == 757
    assert g.special_tokens == {"<|endoftext|>": 756} and g.eos_id == 756 and g.special_ids == [756]
    assert g.byte_ids[ord("!")] == 0 and g.byte_ids[0] == 188 and g.vocab[0] == b"!"
    table = bytes_to_unicode()
    for s, i in vocab.items():  # every id means what vocab.json says
        if i != 756:
            assert "".join(table[b] for b in g.vocab[i]) == s
    # ids equal the trained tokenizer's, up to GPT-2's renumbering of the 256 byte tokens
    relabel = {b: n for n, b in enumerate(gpt2_order)}
    for text in GPT2_TEXTS:
        expect = [relabel[i] if i < 256 else i for i in tok.encode(text, allowed_special="all")]
        assert g.encode(text, allowed_special="all") == expect
        assert g.decode(g.encode(text, allowed_special="all")) == text
    # without the renumbering, save_gpt2 -> from_gpt2 gives back the very same tokenizer
    assert BPETokenizer.from_gpt2(*tok.save_gpt2(vocab_path.parent / "plain")) == tok
    # the same tokenizer survives minilm's own file
    assert tokenizer_from_dict(g.to_dict()) == g
    back = tokenizer_from_dict(g.to_dict())
    assert back.encode(GPT2_TEXTS[-1]) == g.encode(GPT2_TEXTS[-1])


@settings(deadline=None)
@given(st.lists(st.sampled_from(GPT2_TEXTS + STREAM_ALPHABET), max_size=8).map("".join) | unicode_text)
def test_from_gpt2_matches_a_reference_gpt2_encoder(gpt2_files, text):
    _, vocab_path, merges_path, _ = gpt2_files
    g = _load_gpt2_cached(vocab_path, merges_path)
    expect = reference_gpt2_encode(text, vocab_path, merges_path)
    assert g.encode(text, allowed_special={"<|endoftext|>"}) == expect


_GPT2_CACHE: dict = {}


def _load_gpt2_cached(vocab_path, merges_path):
    key = (str(vocab_path), str(merges_path))
    if key not in _GPT2_CACHE:
        _GPT2_CACHE[key] = BPETokenizer.from_gpt2(vocab_path, merges_path)
    return _GPT2_CACHE[key]


def test_from_gpt2_matches_hugging_face_tokenizers_on_the_same_files(gpt2_files, builtin: str):
    """An independent oracle: Hugging Face's ``tokenizers`` reads the same local files (no
    network). Skipped only when the package is not installed."""
    hf_tokenizers = pytest.importorskip("tokenizers")
    _, vocab_path, merges_path, _ = gpt2_files
    hf = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE.from_file(str(vocab_path), str(merges_path)))
    hf.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = hf_tokenizers.decoders.ByteLevel()
    hf.add_special_tokens(["<|endoftext|>"])
    g = _load_gpt2_cached(vocab_path, merges_path)
    for text in GPT2_TEXTS + [builtin[100_000:110_000]]:
        ids = g.encode(text, allowed_special="all")
        assert ids == hf.encode(text).ids, text
        assert hf.decode(ids, skip_special_tokens=False) == text


def test_gpt2_split_pattern_matches_the_regex_module():
    """compile_pattern's translation of \\p{L}, \\p{N}, \\s against the ``regex`` module itself,
    on characters where Python's ``re`` and ``regex`` disagree by default (U+001C is \\s for
    ``re`` only; ² and Ⅻ are numbers; combining marks are neither letters nor numbers)."""
    regex = pytest.importorskip("regex")
    from minilm.data.bpe import compile_pattern

    ours, theirs = compile_pattern(GPT2_PATTERN), regex.compile(GPT2_PATTERN)
    for text in GPT2_TEXTS + ["a\x1cb \x1c c", "x² Ⅻ ½ e\u0301\u0301 ٣٤"]:
        assert ours.findall(text) == theirs.findall(text), text


def test_from_gpt2_bad_files_raise_value_error_naming_the_file(tmp_path, gpt2_files):
    _, vocab_path, merges_path, _ = gpt2_files
    with pytest.raises(ValueError, match="no such file"):
        BPETokenizer.from_gpt2(tmp_path / "nope.json", merges_path)
    bad = tmp_path / "merges.txt"
    bad.write_text("#version: 0.2\nĠ t h\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges.txt: line 1"):
        BPETokenizer.from_gpt2(vocab_path, bad)
    bad.write_text("#version: 0.2\nq q\n", encoding="utf-8")  # "qq" is not the token with id 256
    with pytest.raises(ValueError, match="merge 0"):
        BPETokenizer.from_gpt2(vocab_path, bad)
    tok = BPETokenizer.train("abcabc abc", vocab_size=256 + 2, special_tokens=())
    tok.merges.append((256, 99))  # "abc" twice: GPT-2's format cannot hold it
    tok.vocab[258] = b"abc"
    tok.merges.append((97, 257))
    tok.vocab[259] = b"abc"
    with pytest.raises(ValueError, match="two ids for one token"):
        tok.save_gpt2(tmp_path / "dup")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_save_honours_the_umask(tmp_path, umask):
    """Tokenizer.save makes its file 0666 minus the umask, as open() does (a temporary file from
    tempfile.mkstemp would be 0600 whatever the umask), and leaves no temporary file behind."""
    old = os.umask(umask)
    try:
        CharTokenizer.train("hello").save(tmp_path / "tok.json")
    finally:
        os.umask(old)
    assert (tmp_path / "tok.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]
