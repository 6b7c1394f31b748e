"""Character-level tokenizer: one id per distinct character of the training text.

``CharTokenizer.train(text)`` sorts the distinct characters (by code point) and numbers them
``0 .. n-1``; the special tokens follow (``<pad>``, ``<bos>``, ``<eos>`` by default, ids
``n, n+1, n+2``). On tinyshakespeare that gives nanoGPT's 65 character ids plus 3 specials.

Special tokens are whatever ``train(text, special_tokens=...)`` is given: the decoder's
``DEFAULT_SPECIAL_TOKENS`` (``<pad> <bos> <eos>``) or an encoder's ``ENCODER_SPECIAL_TOKENS``
(``[PAD] [CLS] [SEP] [MASK]``, with ``cls_id``, ``sep_id``, ``mask_id``, ``pad_id``). Every
character of the training text gets an id, those inside special-token strings included, so
``encode(text)`` of the training text always works (as ordinary characters unless
``allowed_special`` says otherwise).

It represents only the characters it was trained on: encoding any other character is a
``ValueError`` naming the first such character and its position (no silent ``<unk>``).

File fields (besides the common ones in ``minilm/data/tokenizer.py``)::

    "chars": ["\\n", " ", "!", ..., "z"]     # id i is chars[i]

Deliberately left out: an unknown-character token, normalisation, and byte fallback (use
``BPETokenizer`` to represent every string).
"""

from __future__ import annotations

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

__all__ = ["CharTokenizer"]


@register
class CharTokenizer(Tokenizer):
    """One id per character: ``encode("hi") == [stoi["h"], stoi["i"]]``.

    >>> tok = CharTokenizer.train("hello")
    >>> tok.chars, tok.encode("hole"), tok.vocab_size
    (['e', 'h', 'l', 'o'], [1, 3, 2, 0], 7)
    >>> tok.decode([1, 0, 2, 2, 3, tok.eos_id])
    'hello<eos>'
    """

    KIND = "char"

    def __init__(self, chars: Iterable[str], special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS) -> None:
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"each vocabulary entry must be one character, got {c!r}")
            check_unicode(c, f"vocabulary character {c!r}")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"vocabulary characters must be distinct, repeated: {dup}")
        specials = check_special_tokens(special_tokens)
        super().__init__({s: len(chars) + k for k, s in enumerate(specials)})
        self.chars: list[str] = chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars)}  # char -> id
        self.itos: dict[int, str] = dict(enumerate(chars))  # id -> char

    @classmethod
    def train(cls, text: str, special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS) -> "CharTokenizer":
        """The sorted distinct characters of ``text`` become ids ``0 .. n-1``; specials follow."""
        check_unicode(text)
        if not text:
            raise ValueError("cannot train a CharTokenizer on empty text")
        return cls(sorted(set(text)), special_tokens)

    @property
    def vocab_size(self) -> int:
        """V = number of characters + number of special tokens."""
        return len(self.chars) + len(self.special_tokens)

    def _encode_ordinary(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pos, c = next((p, c) for p, c in enumerate(text) if c not in stoi)
            raise ValueError(
                f"character {c!r} (U+{ord(c):04X}) at position {pos} is not in this "
                f"CharTokenizer's vocabulary ({len(self.chars)} characters + "
                f"{len(self.special_tokens)} special tokens = vocab_size {self.vocab_size})"
            ) from None

    def _stream_cut(self, text: str) -> int:
        return len(text)  # one id per character: any point is a boundary

    def _decode_ordinary(self, ids: list[int]) -> str:
        itos = self.itos
        return "".join([itos[i] for i in ids])

    def _fields_to_dict(self) -> dict[str, Any]:
        return {"chars": list(self.chars)}

    @classmethod
    def _from_fields(cls, d: Mapping[str, Any]) -> "CharTokenizer":
        chars = as_sequence(d.get("chars"), "chars")
        specials = parse_special_tokens(d.get("special_tokens"), first_id=len(chars))
        return cls(chars, specials)
