"""Byte-level byte-pair encoding (BPE), written from scratch in the style of karpathy/minbpe.

Tokens are byte strings. The vocabulary starts as the 256 single bytes (ids ``0 .. 255``), so
ANY text is representable: encode it as UTF-8 and every byte is already a token. Training
then repeats ``n_merges = vocab_size - 256 - len(special_tokens)`` times:

    find the most frequent adjacent pair of tokens (a, b) in the training text
    give the pair a new id, 256 + rank, whose bytes are bytes(a) + bytes(b)
    replace every occurrence of (a, b) by the new id

Encoding applies the learned merges in rank order (earliest first) and decoding concatenates
the tokens' bytes and decodes them as UTF-8, so ``decode(encode(s)) == s`` for every string
``s`` (a lone surrogate, which is not Unicode text, is a ValueError).

Pre-splitting. As in GPT-2, the text is first cut into chunks by a regex (words with their
leading space, runs of digits, runs of punctuation, runs of whitespace) and merges never
cross a chunk boundary, so no token spans ``"dog."`` or ``"the end"``. GPT-2's pattern uses
``\\p{L}`` / ``\\p{N}``, which the standard-library ``re`` lacks; ``GPT2_SPLIT_PATTERN``
approximates them:

- letters ``\\p{L}`` ~ ``[^\\W\\d_]`` (word characters that are not decimal digits or ``_``;
  this also counts numeric characters such as ``"²"`` or ``"Ⅻ"`` as letters),
- numbers ``\\p{N}`` ~ ``\\d`` (decimal digits only),
- other ``[^\\s\\p{L}\\p{N}]`` ~ ``(?:[^\\s\\w]|_)`` (combining marks, which Python does not
  count as word characters, land here and may be split from their base letter).

Every character falls in exactly one class, so the chunks always join back to the text.

Special tokens are boundaries. ``train`` first cuts the text at every occurrence of a
special token's string (``<|endoftext|>`` between documents, ``[SEP]`` between segments), drops
those strings and pre-splits each piece on its own: no merge ever crosses a special token or
learns a piece of one (``<|``, ``|>``, ``.<|``).

Ties. When several pairs are equally frequent, the SMALLEST pair ``(a, b)`` wins, comparing
ids as tuples (first ``a``, then ``b``). Over single bytes that is byte order, so ``" a"``
(32, 97) beats ``"ab"`` (97, 98), which beats ``"zz"`` (122, 122), wherever they occur in the
text. (minbpe picks the pair seen first in the text instead; both are deterministic.)

GPT-2's files. ``BPETokenizer.from_gpt2(vocab_json, merges_txt)`` loads GPT-2's
``encoder.json``/``vocab.json`` and ``vocab.bpe``/``merges.txt``: their token strings are bytes
written through GPT-2's ``bytes_to_unicode`` table (printable bytes stand for themselves, the
other 68 are shifted to U+0100 and up, so a space is ``"Ġ"``), which is undone; GPT-2's ids
are kept (its 256 byte tokens sit at ids 0..255 in the table's order, not in byte order, which
``byte_ids`` records); merge r makes id 256 + r; ``<|endoftext|>`` (50256) is a special token;
the split pattern is GPT-2's published regex ``GPT2_PATTERN`` (``\\p{L}``, ``\\p{N}`` and
``\\s`` translated to exact character classes for the standard-library ``re``, from the
Unicode tables of the running Python). Encoding then is GPT-2's ``bpe()``: in each pre-token,
repeatedly merge every occurrence of the adjacent pair of lowest rank, left to right, until
no pair has a rank. There is no network here, so the tests check it on files in GPT-2's format
written by ``save_gpt2`` from our own trainer: ids round-trip, ``<|endoftext|>`` keeps its id,
an independent re-implementation of GPT-2's published ``bpe()`` written in the test gives the
same ids, and, when the ``tokenizers`` package is installed, Hugging Face's loader of the same
local files does too.

Speed. Training works on the counts of the distinct chunks (tinyshakespeare: ~1.1 M
characters, ~300 k chunks, only ~15 k distinct ones), keeps the pair counts up to date after
each merge by recounting only the chunks that contain the merged pair (an index pair ->
chunks), and finds the most frequent pair with a heap whose stale entries are skipped (the
heap orders by (-count, pair), which is the tie rule above). Encoding caches the ids of each distinct chunk. ``benchmarks/bench_tokenizer.py``
times both and checks the merges against a naive trainer that recounts everything per merge
(tinyshakespeare to vocab 1000 on a 2-core box: 0.9 s to train, 4.3 MB/s to encode with a
cold cache, 9 MB/s warm; about 3x slower in wall time when the box is 5x oversubscribed).

File fields (besides the common ones in ``minilm/data/tokenizer.py``)::

    "pattern": "<the split regex>",
    "merges": [
        {"id": 256, "pair": [32, 116], "text": [" ", "t"]},   # one merge per line, by rank
        ...
    ]

A tokenizer loaded from GPT-2's files also has ``"byte_ids": [...]`` (256 ids: byte b is
token ``byte_ids[b]``); without it byte b is token b.

``text`` shows the two tokens' bytes as UTF-8 (bytes that are not valid UTF-8 on their own
are written ``\\xNN``, and a backslash as ``\\\\``); it is checked against ``pair`` on load.

Deliberately left out: GPT-4's split pattern (its case-insensitive contractions and
``\\p{..}`` forms beyond L and N), tiktoken's and Hugging Face's own file formats (only GPT-2's
vocab.json + merges.txt pair), vocabularies whose merged tokens are not numbered 256 + rank,
dropout-BPE, and a cache that evicts (the chunk cache simply stops growing at 100 000).
"""

from __future__ import annotations

import functools
import heapq
import json
import os
import re
import unicodedata
from collections import Counter, defaultdict
from itertools import repeat
from pathlib import Path
from typing import Any, Iterable, Mapping

from minilm.data.tokenizer import (
    DEFAULT_SPECIAL_TOKENS,
    Tokenizer,
    as_sequence,
    check_special_tokens,
    check_unicode,
    parse_special_tokens,
    register,
)

__all__ = [
    "BPETokenizer",
    "GPT2_SPLIT_PATTERN",
    "GPT2_PATTERN",
    "bytes_to_unicode",
    "split_text",
    "pair_counts",
    "merge",
    "train_merges",
    "bytes_to_text",
    "text_to_bytes",
]

# GPT-2's pre-tokenizer, with \p{L} and \p{N} approximated for the stdlib `re` (see above):
#   's 't 're 've 'm 'll 'd | ?letters | ?digits | ?other | spaces not before a non-space | spaces
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""

# GPT-2's pre-tokenizer exactly as published (for the third-party `regex` module); the
# standard-library `re` compiles it through `compile_pattern`, which writes \p{L}, \p{N} and
# \s out as character classes. `from_gpt2` uses it; `train` defaults to GPT2_SPLIT_PATTERN.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Unicode's White_Space property (what `regex` and Rust mean by \s); Python's `re` \s also
# matches U+001C..U+001F, which are not White_Space.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

_CACHE_MAX = 100_000  # distinct chunks whose ids encode() remembers
_NO_MERGE = 1 << 62  # the "rank" of a pair that has no merge


def split_text(text: str, pattern: re.Pattern[str]) -> list[str]:
    """Cut ``text`` into the pattern's matches, keeping any text between matches as chunks too,
    so the chunks always join back to ``text`` (whatever the pattern).

    >>> split_text("hi, you", re.compile(r"\\w+"))
    ['hi', ', ', 'you']
    """
    chunks: list[str] = []
    end = 0
    for m in pattern.finditer(text):
        if m.start() > end:
            chunks.append(text[end : m.start()])  # text the pattern skipped
        if m.end() > m.start():
            chunks.append(m.group())
        end = max(end, m.end())
    if end < len(text):
        chunks.append(text[end:])
    return chunks


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table byte -> printable character, used to write byte tokens as text.

    The 188 bytes that are printable Latin-1 (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand
    for themselves; the other 68 (controls, space, DEL, NBSP, soft hyphen) get U+0100, U+0101,
    ... in byte order. So b" " is ``"Ġ"`` (U+0120) and b"\\n" is ``"Ċ"`` (U+010A).

    >>> t = bytes_to_unicode(); len(t), t[ord("A")], t[ord(" ")], t[ord("\\n")], t[0]
    (256, 'A', 'Ġ', 'Ċ', 'Ā')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = [b for b in range(256) if b not in table]  # in byte order
    for n, b in enumerate(shifted):
        table[b] = chr(256 + n)
    return dict(sorted(table.items()))


@functools.lru_cache(maxsize=None)
def _category_class(major: str) -> str:
    """The body of a character class (``a-zà-ö...``) of every code point whose Unicode general
    category starts with ``major`` ("L" letters, "N" numbers), from ``unicodedata``."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x110000):
        if unicodedata.category(chr(cp))[0] == major:
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    esc = lambda cp: f"\\U{cp:08x}"  # noqa: E731
    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a split regex, writing ``\\p{L}``, ``\\p{N}``, ``\\s`` and ``\\S`` out as exact
    character classes (Unicode categories L and N, the White_Space property) when the pattern
    uses ``\\p{..}``, so GPT-2's published pattern means in ``re`` what it means in ``regex``.
    Patterns without ``\\p{`` compile unchanged. ValueError for an invalid pattern."""
    source = pattern
    if "\\p{" in pattern:
        source = _translate_classes(pattern)
    try:
        return re.compile(source)
    except re.error as e:
        raise ValueError(f"split pattern {pattern!r} is not a valid regex: {e}") from None


def _translate_classes(pattern: str) -> str:
    """``\\p{L}``/``\\p{N}``/``\\s`` -> class bodies (bracketed outside a class), ``\\S`` ->
    ``[^...]`` (only outside a class)."""
    body = {"\\p{L}": _category_class("L"), "\\p{N}": _category_class("N"), "\\s": _WHITE_SPACE}
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            token = next((t for t in (*body, "\\S") if pattern.startswith(t, i)), None)
            if token is None and pattern.startswith("\\p{", i):
                raise ValueError(f"split pattern {pattern!r}: only \\p{{L}} and \\p{{N}} are supported")
            if token is None:
                out.append(pattern[i : i + 2])
                i += 2
                continue
            if token == "\\S":
                if in_class:
                    raise ValueError(f"split pattern {pattern!r}: \\S inside [...] is not supported")
                out.append(f"[^{_WHITE_SPACE}]")
            else:
                out.append(body[token] if in_class else f"[{body[token]}]")
            i += len(token)
            continue
        if c == "[" and not in_class:
            in_class = True
            out.append(c)
            if pattern.startswith("[^", i):
                out.append("^")
                i += 1
        elif c == "]" and in_class:
            in_class = False
            out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


# Patterns under which no chunk holding a non-whitespace character reaches past whitespace
# (and which look behind nothing), so a stream may be cut before any whitespace character
# that follows a non-whitespace one (``BPETokenizer._stream_cut``).
_WHITESPACE_BOUNDED = (GPT2_SPLIT_PATTERN, GPT2_PATTERN)
# the last such point: greedy scan to the last non-space followed by ASCII whitespace
_LAST_CUT = re.compile(r"(?s).*\S(?=[ \t\n\r\x0b\x0c])")


def _splitter(pattern: str):
    """``text -> chunks`` for ``pattern``: ``findall`` for GPT-2's patterns (they match every
    character), the gap-keeping ``split_text`` for any other pattern."""
    compiled = compile_pattern(pattern)
    if pattern in _WHITESPACE_BOUNDED:
        return compiled.findall
    return lambda text: split_text(text, compiled)


def pair_counts(ids: list[int], counts: dict[tuple[int, int], int] | None = None, weight: int = 1) -> dict[tuple[int, int], int]:
    """Add ``weight`` to ``counts[(a, b)]`` for each adjacent pair in ``ids``.

    >>> pair_counts([1, 2, 3, 1, 2])
    {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``ids``, scanning left to right, by ``new_id``.

    >>> merge([1, 2, 3, 1, 2], (1, 2), 4)
    [4, 3, 4]
    >>> merge([7, 7, 7], (7, 7), 9)       # non-overlapping, leftmost first
    [9, 7]
    """
    a, b = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_merges(chunk_counts: Mapping[bytes, int], n_merges: int) -> list[tuple[int, int]]:
    """Learn up to ``n_merges`` merges from ``{chunk bytes: how often it occurs}``.

    Merge ``r`` (0-based) creates id ``256 + r``. The most frequent pair wins each round;
    ties go to the smallest pair. Stops early only if no pair is left.

    >>> train_merges({b"aaab": 1, b"ab": 2}, 2)   # "ab" occurs 3 times; then "aa" and "a"+"ab" tie at 1
    [(97, 98), (97, 97)]
    """
    words = [list(chunk) for chunk in chunk_counts]  # token ids of each distinct chunk
    freqs = list(chunk_counts.values())  # how often each distinct chunk occurs
    counts: dict[tuple[int, int], int] = defaultdict(int)  # pair -> occurrences in the text
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> chunks containing it
    for w, (ids, f) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            counts[pair] += f
            where[pair].add(w)
    # Max-heap on (count, -pair) via (-count, pair). A pair's count changes after merges, so
    # the heap holds stale entries too: an entry is current iff it matches counts[pair].
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg_count:
            continue  # stale entry
        new_id = 256 + len(merges)
        merges.append(pair)
        changed: set[tuple[int, int]] = set()
        # Recount only the chunks that contain the pair: remove their old pairs, add the new.
        for w in where.pop(pair):
            old, f = words[w], freqs[w]
            new = merge(old, pair, new_id)
            old_pairs = list(zip(old, old[1:]))
            new_pairs = list(zip(new, new[1:]))
            for p in old_pairs:
                counts[p] -= f
            for p in new_pairs:
                counts[p] += f
                where[p].add(w)
            for p in set(old_pairs).difference(new_pairs):
                if p != pair:
                    where[p].discard(w)
            changed.update(old_pairs)
            changed.update(new_pairs)
            words[w] = new
        for p in changed:
            c = counts[p]
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                del counts[p]
                where.pop(p, None)
    return merges


def bytes_to_text(b: bytes) -> str:
    r"""Readable, reversible text for a token's bytes: UTF-8, with ``\xNN`` for stray bytes.

    >>> bytes_to_text(b" the"), bytes_to_text("é".encode()), bytes_to_text(b"\xc3"), bytes_to_text(b"\\")
    (' the', 'é', '\\xc3', '\\\\')
    """
    return b.replace(b"\\", b"\\\\").decode("utf-8", errors="backslashreplace")


def text_to_bytes(s: str) -> bytes:
    r"""Inverse of ``bytes_to_text``.

    >>> text_to_bytes("\\xc3"), text_to_bytes("\\\\"), text_to_bytes("é")
    (b'\xc3', b'\\', b'\xc3\xa9')
    """
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
        elif s[i + 1 : i + 2] == "\\":
            out.append(0x5C)
            i += 2
        elif s[i + 1 : i + 2] == "x" and re.fullmatch(r"[0-9a-f]{2}", s[i + 2 : i + 4]):
            out.append(int(s[i + 2 : i + 4], 16))
            i += 4
        else:
            raise ValueError(f"bad escape in token text {s!r} at position {i}")
    return bytes(out)


@register
class BPETokenizer(Tokenizer):
    """Byte-level BPE: ``train`` learns merges, ``encode`` applies them by rank.

    >>> tok = BPETokenizer.train("aaab ab ab", vocab_size=256 + 2 + 3)
    >>> [tok.vocab[i] for i in range(256, 258)]
    [b'ab', b' ab']
    >>> tok.encode("aab ab"), tok.decode(tok.encode("aab ab"))
    ([97, 256, 257], 'aab ab')
    """

    KIND = "bpe"

    def __init__(
        self,
        merges: Iterable[tuple[int, int]],
        special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
        pattern: str = GPT2_SPLIT_PATTERN,
        byte_ids: Iterable[int] | None = None,
    ) -> None:
        # byte_ids[b] = the id of the one-byte token b: b itself, or GPT-2's order
        self.byte_ids: list[int] = list(range(256)) if byte_ids is None else list(byte_ids)
        if sorted(self.byte_ids) != list(range(256)):
            raise ValueError("byte_ids must list the ids 0..255 once each (byte b is token byte_ids[b])")
        self._byte_table = bytes(self.byte_ids)  # chunk.translate(table): bytes -> their ids
        self.merges: list[tuple[int, int]] = []  # merges[r] = (a, b) creates id 256 + r
        self.ranks: dict[tuple[int, int], int] = {}  # (a, b) -> the id it creates, 256 + r
        self.vocab: dict[int, bytes] = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}  # id -> bytes
        for r, pair in enumerate(merges):
            a, b = pair
            new_id = 256 + r
            if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < new_id and 0 <= b < new_id):
                raise ValueError(f"merge {r} joins ids {pair!r}; ids must be ints below {new_id}")
            if (a, b) in self.ranks:
                raise ValueError(f"merge {r} repeats the pair {pair!r} of merge {self.ranks[(a, b)] - 256}")
            self.merges.append((a, b))
            self.ranks[(a, b)] = new_id
            self.vocab[new_id] = self.vocab[a] + self.vocab[b]
        self._split = _splitter(pattern)  # text -> chunks
        self.pattern = pattern
        specials = check_special_tokens(special_tokens)
        super().__init__({s: len(self.vocab) + k for k, s in enumerate(specials)})
        self._cache: dict[str, list[int]] = {}  # chunk -> its ids

    # ---- training ------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
        pattern: str = GPT2_SPLIT_PATTERN,
    ) -> "BPETokenizer":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        ``pattern`` is the pre-split regex (GPT-2's by default); any regex works, since text
        it does not match becomes chunks of its own (``split_text``).

        Special tokens are boundaries: the text is cut at each occurrence of a special
        token's string and those strings are left out, so no merge crosses or enters one.
        Each round merges the most frequent pair; among equally frequent pairs the smallest
        ``(a, b)`` wins (tuple order of the ids; byte order for single bytes).

        The result has exactly ``vocab_size`` ids; ValueError if ``vocab_size`` leaves no room
        for the 256 bytes and the specials, or if ``text`` has too few distinct pairs to make
        that many merges (the message says how many it could make).
        """
        check_unicode(text)
        specials = check_special_tokens(special_tokens)
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
            raise ValueError(f"vocab_size must be an int, got {vocab_size!r}")
        n_merges = vocab_size - 256 - len(specials)
        if n_merges < 0:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: the 256 byte tokens and "
                f"{len(specials)} special tokens alone need {256 + len(specials)}"
            )
        # Count the distinct chunks: merges only ever look inside one chunk. Special tokens
        # cut the text first and are dropped, so no chunk holds a piece of one.
        split = _splitter(pattern)
        chunk_counts: Counter[str] = Counter()
        for piece in _split_specials(text, specials):
            chunk_counts.update(split(piece))
        merges = train_merges({c.encode("utf-8"): f for c, f in chunk_counts.items()}, n_merges)
        if len(merges) < n_merges:
            raise ValueError(
                f"the training text ({len(text)} characters) only allows {len(merges)} merges, "
                f"so vocab_size can be at most {256 + len(merges) + len(specials)}, "
                f"asked for {vocab_size}"
            )
        return cls(merges, specials, pattern)

    @property
    def vocab_size(self) -> int:
        """V = 256 bytes + number of merges + number of special tokens."""
        return len(self.vocab) + len(self.special_tokens)

    # ---- encoding -------------------------------------------------------------------------
    def _encode_chunk(self, chunk: bytes) -> list[int]:
        """Apply the merges to one chunk's bytes, lowest rank (earliest learned) first.

        With merges [(104, 101) -> 256 "he", (256, 108) -> 257 "hel"]:
        b"hel" = [104, 101, 108] -> [256, 108] -> [257].
        """
        ids = list(chunk.translate(self._byte_table))  # byte b -> byte_ids[b]
        rank_of, merges, no_merge = self.ranks.get, self.merges, _NO_MERGE
        while len(ids) >= 2:
            # the adjacent pair that was merged first during training: the lowest new id
            new_id = min(map(rank_of, zip(ids, ids[1:]), repeat(no_merge)))
            if new_id == no_merge:
                break  # no pair left that has a merge
            ids = merge(ids, merges[new_id - 256], new_id)
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        out: list[int] = []
        cache = self._cache  # chunk -> ids: English has ~300 k chunks per MB but ~15 k distinct
        for chunk in self._split(text):
            ids = cache.get(chunk)
            if ids is None:
                ids = self._encode_chunk(chunk.encode("utf-8"))
                if len(cache) < _CACHE_MAX:
                    cache[chunk] = ids
            out.extend(ids)
        return out

    def _stream_cut(self, text: str) -> int:
        """For GPT-2's patterns: just before the last whitespace character that follows a
        non-whitespace one. The chunk holding that non-whitespace character cannot reach into
        whitespace (letters, numbers, other and contractions all exclude it), and chunks
        after the cut are found as if the text started there (the patterns look behind
        nothing), so what follows cannot change the ids before the cut. Any other pattern: 0."""
        if self.pattern not in _WHITESPACE_BOUNDED:
            return 0
        m = _LAST_CUT.match(text)
        return m.end() if m else 0

    def _decode_ordinary(self, ids: list[int]) -> str:
        vocab = self.vocab
        # A sampled id sequence can cut a UTF-8 character in two: show U+FFFD there.
        return b"".join([vocab[i] for i in ids]).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the raw bytes they stand for (special ids as their UTF-8 strings)."""
        ids = self._check_ids(ids)
        return b"".join(
            self.vocab[i] if i < len(self.vocab) else self._special_by_id[i].encode("utf-8") for i in ids
        )

    # ---- the JSON file --------------------------------------------------------------------
    def _fields_to_dict(self) -> dict[str, Any]:
        merges = [
            {"id": 256 + r, "pair": [a, b], "text": [bytes_to_text(self.vocab[a]), bytes_to_text(self.vocab[b])]}
            for r, (a, b) in enumerate(self.merges)
        ]
        d: dict[str, Any] = {"pattern": self.pattern}
        if self.byte_ids != list(range(256)):
            d["byte_ids"] = list(self.byte_ids)
        d["merges"] = merges
        return d

    @classmethod
    def _from_fields(cls, d: Mapping[str, Any]) -> "BPETokenizer":
        pattern = d.get("pattern")
        if not isinstance(pattern, str):
            raise ValueError(f"'pattern' must be a string, got {pattern!r}")
        rows = as_sequence(d.get("merges"), "merges")
        byte_ids = d.get("byte_ids", list(range(256)))
        if not (isinstance(byte_ids, list) and all(type(i) is int for i in byte_ids)
                and sorted(byte_ids) == list(range(256))):
            raise ValueError("'byte_ids' must list the ids 0..255 once each")
        merges: list[tuple[int, int]] = []
        vocab = {i: bytes([b]) for b, i in enumerate(byte_ids)}
        for r, row in enumerate(rows):
            if not (isinstance(row, Mapping) and set(row) == {"id", "pair", "text"}):
                raise ValueError(f"merge {r} must be an object with keys id, pair, text; got {row!r}")
            pair, text = row["pair"], row["text"]
            ok = (
                row["id"] == 256 + r
                and isinstance(pair, list) and len(pair) == 2
                and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 256 + r for i in pair)
            )
            if not ok:
                raise ValueError(f"merge {r} must have id {256 + r} and a pair of ids below it, got {row!r}")
            if not (isinstance(text, list) and len(text) == 2 and all(isinstance(t, str) for t in text)):
                raise ValueError(f"merge {r}: 'text' must be two strings, got {text!r}")
            if [text_to_bytes(t) for t in text] != [vocab[pair[0]], vocab[pair[1]]]:
                raise ValueError(
                    f"merge {r}: 'text' {text!r} does not match the tokens of pair {pair} "
                    f"({bytes_to_text(vocab[pair[0]])!r}, {bytes_to_text(vocab[pair[1]])!r})"
                )
            merges.append((pair[0], pair[1]))
            vocab[256 + r] = vocab[pair[0]] + vocab[pair[1]]
        specials = parse_special_tokens(d.get("special_tokens"), first_id=256 + len(merges))
        return cls(merges, specials, pattern, byte_ids)

    # ---- GPT-2's files ----------------------------------------------------------------------
    @classmethod
    def from_gpt2(cls, vocab_json_path: str | os.PathLike, merges_txt_path: str | os.PathLike) -> "BPETokenizer":
        """Load GPT-2's ``vocab.json`` (``encoder.json``) and ``merges.txt`` (``vocab.bpe``).

        Token strings are bytes written through ``bytes_to_unicode``; that is undone. GPT-2's
        ids are kept: the 256 one-byte tokens must have ids 0..255 (in any order, recorded
        in ``byte_ids``), the merge on line r of merges.txt must make the token with id
        256 + r, and every other entry (GPT-2: ``<|endoftext|>`` = 50256) is a special token,
        numbered after the merges. The split pattern is ``GPT2_PATTERN``, and encoding is
        GPT-2's ``bpe()`` (lowest-rank pair first within each pre-token). ValueError naming
        the file and the entry on anything else.

        Tested on files in this format written by ``save_gpt2`` (there is no network here to
        fetch GPT-2's own): see the module docstring.
        """
        vocab_path, merges_path = Path(vocab_json_path), Path(merges_txt_path)
        vocab = _read_gpt2_vocab(vocab_path)
        pairs = _read_gpt2_merges(merges_path)
        decoder = {c: b for b, c in bytes_to_unicode().items()}

        def token_id(s: str, where: str) -> int:
            if s not in vocab:
                raise ValueError(f"{where}: token {s!r} is not in {vocab_path}")
            return vocab[s]

        byte_ids = []
        for b, c in bytes_to_unicode().items():
            i = token_id(c, f"{vocab_path}: the one-byte token for byte {b}")
            if not 0 <= i < 256:
                raise ValueError(f"{vocab_path}: the one-byte token {c!r} has id {i}; they must be 0..255")
            byte_ids.append(i)
        merges = []
        for r, (a, b) in enumerate(pairs):
            where = f"{merges_path}: merge {r} ({a!r} {b!r})"
            ida, idb, idab = token_id(a, where), token_id(b, where), token_id(a + b, where)
            if idab != 256 + r:
                raise ValueError(f"{where}: makes {a + b!r}, id {idab} in {vocab_path}; "
                                 f"minilm needs merge r to make id 256 + r = {256 + r}")
            if not (ida < idab and idb < idab):
                raise ValueError(f"{where}: joins ids {ida} and {idb}, not both below {idab}")
            merges.append((ida, idb))
        made = set(bytes_to_unicode().values()) | {a + b for a, b in pairs}
        specials = sorted((i, s) for s, i in vocab.items() if s not in made)
        for k, (i, s) in enumerate(specials):
            if i != 256 + len(merges) + k:
                raise ValueError(f"{vocab_path}: {s!r} (id {i}) is neither a byte nor made by a merge, "
                                 f"so it is a special token, and those must be numbered from "
                                 f"{256 + len(merges)} on after the merges")
        names = []
        for _, s in specials:
            try:
                names.append(bytes(decoder[c] for c in s).decode("utf-8"))
            except (KeyError, UnicodeDecodeError):
                names.append(s)  # not written through the table: keep it as it is
        return cls(merges, names, GPT2_PATTERN, byte_ids)

    def save_gpt2(self, directory: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``vocab.json`` and ``merges.txt`` in GPT-2's format into ``directory``
        (created if missing); returns their paths. ``from_gpt2`` reads them back.

        ValueError if GPT-2's format cannot hold this tokenizer: two merges that make the
        same bytes (GPT-2's vocab is keyed by token string), or a special token's string
        equal to an ordinary token's.
        """
        enc = bytes_to_unicode()
        as_text = lambda b: "".join(enc[x] for x in b)  # noqa: E731
        vocab: dict[str, int] = {}
        for i in range(len(self.vocab)):
            s = as_text(self.vocab[i])
            if s in vocab:
                raise ValueError(f"ids {vocab[s]} and {i} are both the token {self.vocab[i]!r}; "
                                 "GPT-2's vocab.json cannot hold two ids for one token")
            vocab[s] = i
        for name, i in self.special_tokens.items():
            if name in vocab:
                raise ValueError(f"special token {name!r} is also an ordinary token; GPT-2's format cannot hold both")
            vocab[name] = i
        lines = ["#version: 0.2"] + [f"{as_text(self.vocab[a])} {as_text(self.vocab[b])}" for a, b in self.merges]
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
        vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return vocab_path, merges_path


def _split_specials(text: str, specials: Iterable[str]) -> list[str]:
    """``text`` cut at every occurrence of a special string (longest first), specials left out.

    >>> _split_specials("a<eos>b<eos>", ["<eos>"])
    ['a', 'b', '']
    """
    specials = sorted(specials, key=len, reverse=True)
    if not specials:
        return [text]
    return re.split("|".join(re.escape(s) for s in specials), text)


def _read_gpt2_vocab(path: Path) -> dict[str, int]:
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (GPT-2's vocab.json)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a GPT-2 vocab.json ({e})") from None
    if not (isinstance(vocab, dict) and all(type(i) is int for i in vocab.values())):
        raise ValueError(f"{path}: a GPT-2 vocab.json is an object {{token: id}}")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"{path}: the ids must be 0 .. {len(vocab) - 1}, each once")
    return vocab


def _read_gpt2_merges(path: Path) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (GPT-2's merges.txt)") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    pairs = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        parts = line.rstrip("\r").split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}: line {n + 1} {line!r} is not two tokens separated by one space")
        pairs.append((parts[0], parts[1]))
    return pairs
