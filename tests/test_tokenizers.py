"""Tokenizers: round trips, hand-worked BPE merges, a naive reference trainer, special tokens,
the JSON file and its validation. No network, no tinyshakespeare (the "builtin" corpus is
the real text used here)."""

from __future__ import annotations

import doctest
import json
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minilm.data
from minilm.data import (
    GPT2_SPLIT_PATTERN,
    BPETokenizer,
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
