"""Text corpora: two that work offline, or any file.

``load_corpus(name_or_path)`` returns the whole corpus as one ``str``:

- ``"tinyshakespeare"``: Karpathy's 1.1 MB of Shakespeare (the char-rnn corpus, 40,000 lines
  of plays, speaker names on lines of their own). It ships inside the package, gzipped
  (``minilm/data/tinyshakespeare.txt.gz``, about 0.43 MB), so it needs no network. Provenance:
  the text is public domain (Shakespeare's plays); this file is byte for byte ``input.txt``
  of karpathy/char-rnn (``data/tinyshakespeare/input.txt``), 1,115,394 bytes, SHA-256
  ``86c4e6aa...565ed`` (in full in ``CORPORA``). The decompressed bytes are checked against
  that hash at every load; a mismatch is a ValueError, never silently used.
- ``"builtin"``: text that ships with every CPython: the documentation topics that
  ``help("assert")`` and friends print (``pydoc_data.topics``), joined in sorted order of
  their keys, each stripped and separated by a blank line. About 465 kB of Python's reference
  manual on Python 3.11: English sentences mixed with grammar rules, code and
  reStructuredText markup, so a model trained on it writes documentation-like text. The
  exact text changes with the Python version.
- any other string or path: a UTF-8 text file (a leading byte-order mark is dropped; the
  text is otherwise returned exactly, ``\\r\\n`` included).

Every problem is a ValueError naming the corpus or the file (unknown name, missing file,
directory, not UTF-8, empty, bad checksum).

Deliberately left out: downloading (every named corpus ships with the package or with
Python), corpora larger than memory.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PackagedCorpus", "CORPORA", "BUILTIN", "load_corpus", "builtin_text", "corpus_names"]

BUILTIN = "builtin"


@dataclass(frozen=True)
class PackagedCorpus:
    """A corpus shipped gzipped inside ``minilm/data``: its file and the checksum of its text."""

    filename: str  # gzip file inside minilm/data/
    sha256: str  # hex SHA-256 of the exact decompressed bytes
    size: int  # decompressed bytes, for messages
    source: str  # where the bytes come from


CORPORA: dict[str, PackagedCorpus] = {
    "tinyshakespeare": PackagedCorpus(
        filename="tinyshakespeare.txt.gz",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
        source="karpathy/char-rnn data/tinyshakespeare/input.txt (public-domain text)",
    ),
}


def corpus_names() -> list[str]:
    """Every name ``load_corpus`` knows, ``"builtin"`` included."""
    return [BUILTIN, *CORPORA]


def builtin_text() -> str:
    """The ``"builtin"`` corpus: CPython's pydoc topics, sorted by key, blank-line separated."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - some stripped-down Pythons drop pydoc_data
        raise ValueError(
            "corpus 'builtin' needs the standard-library module pydoc_data, which this Python "
            "lacks; use 'tinyshakespeare' or a path to a text file"
        ) from None
    return "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _decode(data: bytes, path: Path | str) -> str:
    if not data:
        raise ValueError(f"{path}: the file is empty")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None


def packaged_text(name: str) -> str:
    """Decompress corpus ``name`` from the package and check its SHA-256."""
    spec = CORPORA[name]
    path = Path(__file__).with_name(spec.filename)
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: packaged corpus {name!r} cannot be read ({e}); reinstall minilm") from None
    got = _sha256(data)
    if got != spec.sha256:
        raise ValueError(
            f"{path}: packaged corpus {name!r} is corrupt: SHA-256 {got}, expected {spec.sha256} "
            f"({len(data)} bytes, expected {spec.size}); reinstall minilm"
        )
    return _decode(data, path)


def load_corpus(name_or_path: str | os.PathLike) -> str:
    """The whole corpus as one str: ``"builtin"``, a name in ``CORPORA``, or a UTF-8 text file.

    Errors: see the module docstring.
    """
    if isinstance(name_or_path, str) and name_or_path == BUILTIN:
        return builtin_text()
    if isinstance(name_or_path, str) and name_or_path in CORPORA:
        return packaged_text(name_or_path)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"corpus must be a name or a path, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        names = ", ".join(repr(n) for n in corpus_names())
        raise ValueError(f"unknown corpus {str(name_or_path)!r}: not one of {names}, and no such file {path}")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; a corpus file must be a UTF-8 text file")
    return _decode(path.read_bytes(), path)
