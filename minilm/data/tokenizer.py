"""What every minilm tokenizer shares: special tokens, decoding checks, and the JSON file.

A tokenizer maps text to a list of integer ids and back. minilm has two kinds:

- ``CharTokenizer`` (``minilm/data/char.py``): one id per character seen in training;
- ``BPETokenizer`` (``minilm/data/bpe.py``): byte-level byte-pair encoding, which can
  represent every string.

Both put their ordinary tokens first (ids ``0 .. n-1``) and the special tokens after them,
in the order given to ``train`` (default ``("<pad>", "<bos>", "<eos>")``), as tiktoken and
minbpe do, so a char tokenizer's ordinary ids are nanoGPT's (the sorted characters).

Special tokens in text. ``encode(text)`` treats every character of ``text`` as ordinary text:
the string ``"<eos>"`` inside a document is encoded as its five characters, never as the
``<eos>`` id, so ``decode(encode(s)) == s`` for every string ``s`` and no document can forge
a control token. To turn special strings in text into their ids, pass
``encode(text, allowed_special="all")`` or a set of the special strings to honour, as in
tiktoken. ``decode`` writes a special id as its string.

Which special tokens. Decoders use ``DEFAULT_SPECIAL_TOKENS`` (``<pad> <bos> <eos>``);
encoders (BERT-style) use ``ENCODER_SPECIAL_TOKENS`` (``[PAD] [CLS] [SEP] [MASK]``); any
distinct non-empty strings work. ``pad_id`` is the id of ``<pad>`` or else ``[PAD]``,
``eos_id`` that of ``<eos>`` or else GPT-2's ``<|endoftext|>``; ``cls_id``, ``sep_id``,
``mask_id`` and ``bos_id`` are None when absent; ``special_ids`` lists them all (for example
to pass, minus ``eos_id``, as ``generate(..., suppress_ids=...)``). BPE training never merges
into or across a special token's text (see ``minilm/data/bpe.py``).

Streaming. ``encode_iterable(lines)`` yields the ids of ``"".join(lines)`` without holding the
whole text: see its docstring for why the result is exactly ``encode`` of the joined text.

The file. ``save(path)`` writes readable JSON::

    {
      "format": "minilm-tokenizer",
      "version": 1,
      "kind": "char",              # or "bpe"
      "special_tokens": {"<pad>": 65, "<bos>": 66, "<eos>": 67},
      ...                          # the kind's own fields (see each class)
    }

``load(path)`` (a classmethod of each kind) and ``load_tokenizer(path)`` (either kind) only
parse JSON and check every field; nothing in the file is executed. Any problem is a
``ValueError`` naming the file. ``to_dict()`` / ``tokenizer_from_dict(d)`` do the same
without a file (a checkpoint can embed the dict).

Deliberately left out: normalisation (Unicode NFC, lower-casing), added tokens beyond the
special ones, offsets/alignment, batch encoding, and any pickle- or code-based format.
"""

from __future__ import annotations

import json
import operator
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from minilm.files import atomic_write

__all__ = [
    "FORMAT",
    "VERSION",
    "DEFAULT_SPECIAL_TOKENS",
    "ENCODER_SPECIAL_TOKENS",
    "Tokenizer",
    "load_tokenizer",
    "tokenizer_from_dict",
]

FORMAT = "minilm-tokenizer"
VERSION = 1
DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>")
# BERT's special tokens, for encoders: pass them to ``train(..., special_tokens=...)``.
ENCODER_SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")


def check_unicode(text: str, what: str = "text") -> None:
    """Raise ValueError if ``text`` is not a str or holds a lone surrogate (not UTF-8-encodable).

    >>> check_unicode("héllo")              # fine
    >>> check_unicode("a\\ud800")           # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: text has a lone surrogate U+D800 at position 1 ...
    """
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{what} has a lone surrogate U+{ord(text[e.start]):04X} at position {e.start}; "
            "it is not valid Unicode text and UTF-8 cannot encode it"
        ) from None


def check_special_tokens(special_tokens: Iterable[str]) -> tuple[str, ...]:
    """Validate the special-token strings given to ``train``: non-empty, distinct strs."""
    if isinstance(special_tokens, str):
        raise ValueError(
            f"special_tokens must be a sequence of strings, not the single string {special_tokens!r}"
        )
    tokens = tuple(special_tokens)
    for s in tokens:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
        check_unicode(s, f"special token {s!r}")
    dup = sorted({s for s in tokens if tokens.count(s) > 1})
    if dup:
        raise ValueError(f"special tokens must be distinct, repeated: {dup}")
    return tokens


class Tokenizer:
    """Base class: special-token bookkeeping, id checks, and the JSON round trip.

    Subclasses set ``KIND`` and implement ``_encode_ordinary``, ``_decode_ordinary``,
    ``vocab_size``, ``_fields_to_dict`` and ``_from_fields``.
    """

    KIND = ""

    def __init__(self, special_tokens: Mapping[str, int]) -> None:
        self.special_tokens: dict[str, int] = dict(special_tokens)
        self._special_by_id: dict[int, str] = {i: s for s, i in self.special_tokens.items()}
        self._special_re_cache: dict[tuple[str, ...], re.Pattern[str]] = {}

    # ---- the special ids ------------------------------------------------------------------
    @property
    def pad_id(self) -> int | None:
        """Id of ``"<pad>"``, else of ``"[PAD]"``, or None if this tokenizer has neither."""
        pad = self.special_tokens.get("<pad>")
        return self.special_tokens.get("[PAD]") if pad is None else pad

    @property
    def cls_id(self) -> int | None:
        """Id of ``"[CLS]"`` (the encoder's summary position), or None if absent."""
        return self.special_tokens.get("[CLS]")

    @property
    def sep_id(self) -> int | None:
        """Id of ``"[SEP]"`` (ends a segment), or None if absent."""
        return self.special_tokens.get("[SEP]")

    @property
    def mask_id(self) -> int | None:
        """Id of ``"[MASK]"`` (masked-LM input), or None if absent."""
        return self.special_tokens.get("[MASK]")

    @property
    def special_ids(self) -> list[int]:
        """Every special token's id, sorted."""
        return sorted(self.special_tokens.values())

    @property
    def bos_id(self) -> int | None:
        """Id of ``"<bos>"`` (beginning of sequence), or None if absent."""
        return self.special_tokens.get("<bos>")

    @property
    def eos_id(self) -> int | None:
        """Id of ``"<eos>"`` (end of sequence), else of GPT-2's ``"<|endoftext|>"``, or None."""
        eos = self.special_tokens.get("<eos>")
        return self.special_tokens.get("<|endoftext|>") if eos is None else eos

    @property
    def vocab_size(self) -> int:  # pragma: no cover - abstract
        """V: the number of ids, ordinary and special; every id is in ``range(V)``."""
        raise NotImplementedError

    # ---- encode / decode ------------------------------------------------------------------
    def encode(self, text: str, allowed_special: str | Iterable[str] = ()) -> list[int]:
        """Text -> ids ``(T,)``.

        ``allowed_special``: special-token strings that, where they occur in ``text``, become
        their special id; ``"all"`` means every special token. By default none does, so every
        character is encoded as ordinary text and ``decode(encode(text)) == text``.
        """
        check_unicode(text)
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self._encode_ordinary(text)
        ids: list[int] = []
        # Split around the allowed special strings (longest first, so "<eos>" beats "<e").
        pattern = self._special_re(allowed)
        start = 0
        for m in pattern.finditer(text):
            ids.extend(self._encode_ordinary(text[start : m.start()]))
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        ids.extend(self._encode_ordinary(text[start:]))
        return ids

    def encode_iterable(self, lines: Iterable[str], allowed_special: str | Iterable[str] = ()) -> Iterator[int]:
        """Ids of ``"".join(lines)``, yielded as the text streams in: ``list(encode_iterable(f))
        == encode(f.read())`` for an open text file ``f``, holding about one line at a time.

        The text is read into a buffer; after each line the longest prefix of the buffer whose
        ids can no longer change is encoded, yielded and dropped. A prefix is final when

        1. every special-token match in it is decided: a match starting at position p reads
           at most ``n = max len(special)`` characters, so matches starting before
           ``len(buffer) - n + 1`` cannot change (the last ``n - 1`` characters wait), and
        2. it ends where ``_stream_cut`` says the ordinary encoding may be cut: anywhere for
           characters; for BPE with GPT-2's split pattern, just before a whitespace character
           that follows a non-whitespace one (no pre-token spans that point, whatever follows).

        Memory: the longest line, plus the whitespace run that ends it (a run of blank lines
        is ONE GPT-2 pre-token and must be seen whole), plus ``n - 1`` characters. With a
        custom BPE split pattern nothing is known about where chunks end, so the text waits
        for a special token or the end (unbounded memory, still the exact ids).
        """
        allowed = self._allowed(allowed_special)
        special_re = self._special_re(allowed) if allowed else None
        hold = max((len(s) for s in allowed), default=1) - 1  # characters that may start a special
        buf = ""
        for line in lines:
            check_unicode(line, "line")
            buf += line
            ids, cut = self._encode_final_prefix(buf, special_re, hold)
            yield from ids
            buf = buf[cut:]
        yield from self.encode(buf, allowed)

    def _encode_final_prefix(self, buf: str, special_re: "re.Pattern[str] | None", hold: int) -> tuple[list[int], int]:
        """(ids, cut): the ids of ``buf[:cut]``, the longest prefix that no continuation changes."""
        decided = len(buf) - hold  # a special can start at p < decided only as matched now
        ids: list[int] = []
        start = 0  # end of the last decided special match
        if special_re is not None:
            for m in special_re.finditer(buf):
                if m.start() >= decided:
                    break
                ids.extend(self._encode_ordinary(buf[start : m.start()]))
                ids.append(self.special_tokens[m.group()])
                start = m.end()
        # buf[start:decided] is ordinary text, whatever comes next
        cut = start + self._stream_cut(buf[start:max(start, decided)])
        ids.extend(self._encode_ordinary(buf[start:cut]))
        return ids, cut

    def _stream_cut(self, text: str) -> int:
        """A position i such that, for every continuation s, the ordinary ids of ``text + s``
        are those of ``text[:i]`` followed by those of ``text[i:] + s``."""
        return 0  # always true; subclasses find a later one

    def decode(self, ids: Iterable[int]) -> str:
        """Ids ``(T,)`` (a list, or a 1-D integer NumPy array) -> text.

        Special ids become their strings. An id outside ``range(vocab_size)`` is a ValueError
        naming it and its position.
        """
        ids = self._check_ids(ids)
        if not self._special_by_id:
            return self._decode_ordinary(ids)
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            s = self._special_by_id.get(i)
            if s is None:
                run.append(i)
            else:
                out.append(self._decode_ordinary(run))
                out.append(s)
                run = []
        out.append(self._decode_ordinary(run))
        return "".join(out)

    def _allowed(self, allowed_special: str | Iterable[str]) -> tuple[str, ...]:
        if allowed_special == "all":
            return tuple(self.special_tokens)
        if isinstance(allowed_special, str):
            allowed_special = (allowed_special,)
        allowed = tuple(allowed_special)
        unknown = [s for s in allowed if s not in self.special_tokens]
        if unknown:
            raise ValueError(
                f"allowed_special names {unknown}, which are not special tokens of this "
                f"tokenizer (it has {list(self.special_tokens)})"
            )
        return allowed

    def _special_re(self, allowed: tuple[str, ...]) -> re.Pattern[str]:
        key = tuple(sorted(set(allowed)))
        pattern = self._special_re_cache.get(key)
        if pattern is None:
            longest_first = sorted(key, key=len, reverse=True)
            pattern = re.compile("|".join(re.escape(s) for s in longest_first))
            self._special_re_cache[key] = pattern
        return pattern

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        if hasattr(ids, "ndim") and getattr(ids, "ndim") != 1:
            raise ValueError(f"decode takes a 1-D sequence of ids, got shape {getattr(ids, 'shape', None)}")
        ids = list(ids)
        try:
            out = [operator.index(i) for i in ids]
        except TypeError:
            bad = next(i for i in ids if not _is_int(i))
            raise ValueError(f"ids must be integers, got {bad!r} ({type(bad).__name__})") from None
        v = self.vocab_size
        for pos, i in enumerate(out):
            if not 0 <= i < v:
                raise ValueError(f"id {i} at position {pos} is outside the vocabulary: ids are 0 .. {v - 1} (vocab_size {v})")
        return out

    def _encode_ordinary(self, text: str) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode_ordinary(self, ids: list[int]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- the JSON file --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer, as plain JSON-able values."""
        d: dict[str, Any] = {"format": FORMAT, "version": VERSION, "kind": self.KIND}
        d["special_tokens"] = dict(self.special_tokens)
        d.update(self._fields_to_dict())
        return d

    def _fields_to_dict(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as readable JSON (UTF-8, one list entry per line), atomically."""
        data = _dumps_readable(self.to_dict()).encode("utf-8")
        atomic_write(path, lambda f: f.write(data))  # mode from the umask, like open()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "tokenizer dict") -> "Tokenizer":
        """Rebuild from ``to_dict()``'s output; ValueError naming ``source`` on bad content."""
        kind = _check_header(d, source)
        if cls.KIND and kind != cls.KIND:
            raise ValueError(
                f"{source}: holds a {kind!r} tokenizer, not a {cls.KIND!r} one "
                f"(use minilm.data.load_tokenizer to load either kind)"
            )
        if not cls.KIND:
            return _KINDS[kind].from_dict(d, source)
        try:
            return cls._from_fields(d)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{source}: not a valid {kind!r} tokenizer: {e}") from None

    @classmethod
    def _from_fields(cls, d: Mapping[str, Any]) -> "Tokenizer":  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read a tokenizer saved by ``save``. ValueError naming the file on any bad content."""
        return cls.from_dict(_read_json(path), source=str(path))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.to_dict() == self.to_dict()  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special_tokens={self.special_tokens})"


def _is_int(x: object) -> bool:
    try:
        operator.index(x)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def _dumps_readable(d: Mapping[str, Any]) -> str:
    """JSON with one top-level key per line and one list entry per line.

    >>> print(_dumps_readable({"kind": "bpe", "merges": [[1, 2], [3, 4]]}), end="")
    {
      "kind": "bpe",
      "merges": [
        [1, 2],
        [3, 4]
      ]
    }
    """

    def one(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False, separators=(", ", ": "))

    lines = []
    for k, v in d.items():
        if isinstance(v, list) and v:
            body = ",\n".join("    " + one(x) for x in v)
            lines.append(f"  {one(k)}: [\n{body}\n  ]")
        else:
            lines.append(f"  {one(k)}: {one(v)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _read_json(path: str | os.PathLike) -> Any:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such tokenizer file")
    if p.is_dir():
        raise ValueError(f"{p}: is a directory, not a tokenizer file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text (byte {e.start}), not a tokenizer file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e}), not a tokenizer file") from None
    except RecursionError:
        raise ValueError(f"{p}: JSON nested too deeply, not a tokenizer file") from None


def _check_header(d: Any, source: str) -> str:
    if not isinstance(d, Mapping):
        raise ValueError(f"{source}: a tokenizer file holds a JSON object, got {type(d).__name__}")
    if d.get("format") != FORMAT:
        raise ValueError(f"{source}: 'format' is {d.get('format')!r}, expected {FORMAT!r}")
    if type(d.get("version")) is not int or d.get("version") != VERSION:
        raise ValueError(
            f"{source}: tokenizer format version {d.get('version')!r}; this minilm reads version {VERSION}"
        )
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"{source}: unknown tokenizer kind {kind!r}; known kinds: {sorted(_KINDS)}")
    return kind


def parse_special_tokens(value: Any, first_id: int) -> dict[str, int]:
    """Check a file's ``special_tokens``: ``{str: id}`` with ids ``first_id, first_id+1, ...``."""
    if not isinstance(value, Mapping):
        raise ValueError(f"'special_tokens' must be an object {{string: id}}, got {type(value).__name__}")
    tokens = check_special_tokens(value.keys())
    expected = {s: first_id + k for k, s in enumerate(tokens)}
    if dict(value) != expected:
        raise ValueError(
            f"'special_tokens' must number its tokens {first_id}, {first_id + 1}, ... in order, "
            f"got {dict(value)}"
        )
    return expected


# kind -> class; filled in by the modules that define the kinds.
_KINDS: dict[str, type[Tokenizer]] = {}


def register(cls: type[Tokenizer]) -> type[Tokenizer]:
    _KINDS[cls.KIND] = cls
    return cls


def tokenizer_from_dict(d: Mapping[str, Any], source: str = "tokenizer dict") -> Tokenizer:
    """Rebuild a tokenizer of either kind from ``to_dict()``'s output."""
    kind = _check_header(d, source)
    return _KINDS[kind].from_dict(d, source)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer file of either kind (``CharTokenizer`` or ``BPETokenizer``)."""
    return tokenizer_from_dict(_read_json(path), source=str(path))


def as_sequence(x: Sequence[Any] | Any, what: str) -> list[Any]:
    if not isinstance(x, list):
        raise ValueError(f"{what!r} must be a list, got {type(x).__name__}")
    return x
