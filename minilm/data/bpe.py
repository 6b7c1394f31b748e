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

Speed. Training works on the counts of the distinct chunks (tinyshakespeare: ~1.1 M
characters, ~300 k chunks, only ~15 k distinct ones), keeps the pair counts up to date after
each merge by recounting only the chunks that contain the merged pair (an index pair ->
chunks), and finds the most frequent pair with a heap whose stale entries are skipped. Ties
between equally frequent pairs go to the smallest pair ``(a, b)``, so training is
deterministic. Encoding caches the ids of each distinct chunk. ``benchmarks/bench_tokenizer.py``
times both and checks the merges against a naive trainer that recounts everything per merge
(tinyshakespeare to vocab 1000 on a 2-core box: 0.9 s to train, 4.3 MB/s to encode with a
cold cache, 9 MB/s warm; about 3x slower in wall time when the box is 5x oversubscribed).

File fields (besides the common ones in ``minilm/data/tokenizer.py``)::

    "pattern": "<the split regex>",
    "merges": [
        {"id": 256, "pair": [32, 116], "text": [" ", "t"]},   # one merge per line, by rank
        ...
    ]

``text`` shows the two tokens' bytes as UTF-8 (bytes that are not valid UTF-8 on their own
are written ``\\xNN``, and a backslash as ``\\\\``); it is checked against ``pair`` on load.

Deliberately left out: GPT-4's split pattern (needs the third-party ``regex`` module), the
GPT-2 byte-to-unicode remapping of the vocabulary, loading tiktoken/HF vocabularies,
dropout-BPE, and a cache that evicts (the chunk cache simply stops growing at 100 000).
"""

from __future__ import annotations

import heapq
import re
from itertools import repeat
from collections import Counter, defaultdict
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


def _splitter(pattern: str):
    """``text -> chunks`` for ``pattern``: ``findall`` for GPT-2's (it matches every
    character), the gap-keeping ``split_text`` for any other pattern."""
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"split pattern {pattern!r} is not a valid regex: {e}") from None
    if pattern == GPT2_SPLIT_PATTERN:
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
    ) -> None:
        self.merges: list[tuple[int, int]] = []  # merges[r] = (a, b) creates id 256 + r
        self.ranks: dict[tuple[int, int], int] = {}  # (a, b) -> the id it creates, 256 + r
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}  # id -> token bytes
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
        # Count the distinct chunks: merges only ever look inside one chunk.
        chunk_counts = Counter(_splitter(pattern)(text))
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
        ids = list(chunk)
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
        return {"pattern": self.pattern, "merges": merges}

    @classmethod
    def _from_fields(cls, d: Mapping[str, Any]) -> "BPETokenizer":
        pattern = d.get("pattern")
        if not isinstance(pattern, str):
            raise ValueError(f"'pattern' must be a string, got {pattern!r}")
        rows = as_sequence(d.get("merges"), "merges")
        merges: list[tuple[int, int]] = []
        vocab = {i: bytes([i]) for i in range(256)}
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
        return cls(merges, specials, pattern)
