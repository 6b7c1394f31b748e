"""Text corpora: one that ships with Python, one downloaded once and checked, or any file.

``load_corpus(name_or_path)`` returns the whole corpus as one ``str``:

- ``"builtin"``: real English prose that ships with every CPython, so it works offline: the
  documentation topics that ``help("assert")`` and friends print (``pydoc_data.topics``),
  joined in sorted order of their keys, each stripped and separated by a blank line. About
  465 kB on Python 3.11; the exact text changes with the Python version.
- ``"tinyshakespeare"``: Karpathy's 1.1 MB of Shakespeare (char-rnn). Downloaded on first
  use from its public URL, checked against its SHA-256, and cached in ``data_dir()`` (the
  ``MINILM_DATA_DIR`` environment variable, else ``$XDG_CACHE_HOME/minilm``, else
  ``~/.cache/minilm``). The download is written to a temporary file and renamed into place,
  so an interrupted download never leaves a half file. Once cached, the network is never
  touched again; a cached file whose checksum is wrong is reported (ValueError naming the
  file and both hashes), never used.
- any other string or path: a UTF-8 text file (a leading byte-order mark is dropped; the
  text is otherwise returned exactly, ``\\r\\n`` included).

Every problem is a ValueError naming the corpus or the file (unknown name, missing file,
directory, not UTF-8, empty, bad checksum), except a failed download, which is an OSError
naming the URL and where to put the file by hand.

Deliberately left out: decompression, corpora larger than memory, and any other network
source (add one to ``CORPORA`` with its URL and SHA-256).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["RemoteCorpus", "CORPORA", "BUILTIN", "data_dir", "load_corpus", "builtin_text", "fetch_url"]

BUILTIN = "builtin"


@dataclass(frozen=True)
class RemoteCorpus:
    """A corpus downloaded once: where from, its checksum, and its cache file name."""

    url: str  # where to download it from
    sha256: str  # hex SHA-256 of the exact bytes
    filename: str  # name of the cached file inside data_dir()
    size: int  # bytes, for messages


CORPORA: dict[str, RemoteCorpus] = {
    "tinyshakespeare": RemoteCorpus(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        filename="tinyshakespeare.txt",
        size=1_115_394,
    ),
}


def data_dir() -> Path:
    """Where downloaded corpora are cached: ``$MINILM_DATA_DIR``, else ``$XDG_CACHE_HOME/minilm``,
    else ``~/.cache/minilm``."""
    env = os.environ.get("MINILM_DATA_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "minilm"


def fetch_url(url: str, timeout: float = 60.0) -> bytes:
    """Download ``url`` and return its bytes (``urllib``; ``file://`` URLs work too)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed URLs
        return response.read()


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


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def download(name: str, fetch: Callable[[str], bytes] | None = None) -> Path:
    """Make sure corpus ``name`` is in ``data_dir()``, checked; return the file's path.

    ``fetch(url) -> bytes`` defaults to ``fetch_url`` (tests pass their own). It is called
    only if the file is not cached yet.
    """
    spec = CORPORA[name]
    path = data_dir() / spec.filename
    if path.is_file():
        got = _sha256(path.read_bytes())
        if got != spec.sha256:
            raise ValueError(
                f"{path}: cached corpus {name!r} is corrupt: SHA-256 {got}, expected {spec.sha256}; "
                "delete the file to download it again"
            )
        return path
    url = spec.url
    try:
        data = (fetch or fetch_url)(url)
    except OSError as e:
        raise OSError(
            f"could not download corpus {name!r} from {url}: {e}. Without network access, "
            f"put the file at {path} (or set MINILM_DATA_DIR)"
        ) from e
    got = _sha256(data)
    if got != spec.sha256:
        raise ValueError(
            f"{url}: downloaded corpus {name!r} has SHA-256 {got}, expected {spec.sha256} "
            f"({len(data)} bytes, expected {spec.size}); refusing to save it to {path}"
        )
    _write_atomic(path, data)
    return path


def load_corpus(name_or_path: str | os.PathLike, fetch: Callable[[str], bytes] | None = None) -> str:
    """The whole corpus as one str: ``"builtin"``, a name in ``CORPORA``, or a UTF-8 text file.

    ``fetch`` replaces the downloader (see ``download``). Errors: see the module docstring.
    """
    if isinstance(name_or_path, str) and name_or_path == BUILTIN:
        return builtin_text()
    if isinstance(name_or_path, str) and name_or_path in CORPORA:
        path = download(name_or_path, fetch)
        return _decode(path.read_bytes(), path)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"corpus must be a name or a path, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        names = ", ".join(repr(n) for n in (BUILTIN, *CORPORA))
        raise ValueError(f"unknown corpus {str(name_or_path)!r}: not one of {names}, and no such file {path}")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; a corpus file must be a UTF-8 text file")
    return _decode(path.read_bytes(), path)
