"""Corpora: the builtin text, files, and the download path -- offline, with fake fetchers and
file:// URLs standing in for the network."""

from __future__ import annotations

import hashlib
import re
import urllib.error
from collections import Counter
from pathlib import Path

import pytest

from minilm.data import corpus
from minilm.data.corpus import CORPORA, RemoteCorpus, data_dir, load_corpus

PAYLOAD = "First Citizen:\nBefore we proceed any further, hear me speak. — ½ ✓\n".encode("utf-8")
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty MINILM_DATA_DIR and a fake corpus "fake" whose bytes are PAYLOAD."""
    d = tmp_path / "cache"
    monkeypatch.setenv("MINILM_DATA_DIR", str(d))
    monkeypatch.setitem(CORPORA, "fake", RemoteCorpus(
        url="https://example.invalid/fake.txt", sha256=PAYLOAD_SHA, filename="fake.txt", size=len(PAYLOAD)))
    return d


class Fetcher:
    """Stands in for the network: returns ``data`` and counts the calls."""

    def __init__(self, data: bytes | Exception) -> None:
        self.data, self.urls = data, []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        if isinstance(self.data, Exception):
            raise self.data
        return self.data


# ---- builtin -------------------------------------------------------------------------------------
def test_builtin_is_the_pydoc_topics_in_sorted_order():
    from pydoc_data.topics import topics

    text = load_corpus("builtin")
    assert isinstance(text, str) and text == load_corpus("builtin")  # deterministic
    assert len(text) > 200_000  # ~465 kB on CPython 3.11
    keys = sorted(topics)
    assert text.startswith(topics[keys[0]].strip() + "\n\n" + topics[keys[1]].strip())
    assert text.endswith(topics[keys[-1]].strip() + "\n")
    # real English prose: the most common word is "the"
    words = Counter(re.findall(r"[a-z]+", text.lower()))
    assert words.most_common(1)[0][0] == "the"


# ---- files ---------------------------------------------------------------------------------------
def test_text_file_is_read_exactly(tmp_path):
    text = "Hello\r\nwörld 中文 👍\n\ttabs\x00NUL\n"
    p = tmp_path / "t.txt"
    p.write_bytes(text.encode("utf-8"))
    assert load_corpus(str(p)) == text and load_corpus(p) == text
    p.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # a byte-order mark is dropped
    assert load_corpus(p) == text


def test_bad_files_are_named(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café au lait".encode("latin-1"))
    missing = tmp_path / "missing.txt"
    for path, why in [(empty, "empty"), (latin1, r"not UTF-8.*offset 3"), (tmp_path, "directory"),
                      (missing, "no such file")]:
        with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + why):
            load_corpus(path)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown corpus 'shakespear'.*'builtin', 'tinyshakespeare'"):
        load_corpus("shakespear")
    with pytest.raises(ValueError, match="name or a path"):
        load_corpus(42)  # type: ignore[arg-type]


# ---- where the cache lives --------------------------------------------------------------------
def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MINILM_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert data_dir() == tmp_path / "home" / ".cache" / "minilm"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "minilm"
    monkeypatch.setenv("MINILM_DATA_DIR", str(tmp_path / "mine"))
    assert data_dir() == tmp_path / "mine"


# ---- downloading ---------------------------------------------------------------------------------
def test_downloads_once_then_uses_the_cache(cache):
    fetch = Fetcher(PAYLOAD)
    assert load_corpus("fake", fetch=fetch) == PAYLOAD.decode("utf-8")
    assert fetch.urls == ["https://example.invalid/fake.txt"]
    assert (cache / "fake.txt").read_bytes() == PAYLOAD
    assert sorted(p.name for p in cache.iterdir()) == ["fake.txt"]  # no temporary file left
    offline = Fetcher(urllib.error.URLError("no network"))
    assert load_corpus("fake", fetch=offline) == PAYLOAD.decode("utf-8")
    assert offline.urls == []  # cached: the network is never asked again


def test_refuses_a_download_with_the_wrong_checksum(cache):
    bad = PAYLOAD.replace(b"proceed", b"precede")
    with pytest.raises(ValueError) as e:
        load_corpus("fake", fetch=Fetcher(bad))
    msg = str(e.value)
    assert "https://example.invalid/fake.txt" in msg
    assert PAYLOAD_SHA in msg and hashlib.sha256(bad).hexdigest() in msg
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing saved


def test_reports_a_corrupt_cached_file_instead_of_using_it(cache):
    cache.mkdir()
    (cache / "fake.txt").write_bytes(PAYLOAD[:-5])  # e.g. a truncated copy put there by hand
    fetch = Fetcher(PAYLOAD)
    with pytest.raises(ValueError) as e:
        load_corpus("fake", fetch=fetch)
    msg = str(e.value)
    assert str(cache / "fake.txt") in msg and "corrupt" in msg
    assert PAYLOAD_SHA in msg and hashlib.sha256(PAYLOAD[:-5]).hexdigest() in msg
    assert fetch.urls == []


def test_network_failure_says_where_to_put_the_file(cache):
    with pytest.raises(OSError, match=re.escape(str(cache / "fake.txt"))):
        load_corpus("fake", fetch=Fetcher(urllib.error.URLError("no network")))


def test_default_fetcher_reads_file_urls(cache, tmp_path, monkeypatch):
    """The real downloader (urllib), pointed at a file:// URL instead of the network."""
    src = tmp_path / "served.txt"
    src.write_bytes(PAYLOAD)
    monkeypatch.setitem(CORPORA, "fake", RemoteCorpus(src.as_uri(), PAYLOAD_SHA, "fake.txt", len(PAYLOAD)))
    assert load_corpus("fake") == PAYLOAD.decode("utf-8")
    src.write_bytes(b"tampered")
    (cache / "fake.txt").unlink()
    with pytest.raises(ValueError, match="refusing"):
        load_corpus("fake")


def test_tinyshakespeare_goes_through_the_checked_download(cache, monkeypatch):
    """The real entry: a fake downloader that serves the wrong bytes is refused by checksum."""
    spec = CORPORA["tinyshakespeare"]
    assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256) and spec.url.startswith("https://")
    fetch = Fetcher(b"not shakespeare")
    monkeypatch.setattr(corpus, "fetch_url", fetch)
    with pytest.raises(ValueError, match=spec.sha256):
        load_corpus("tinyshakespeare")
    assert fetch.urls == [spec.url]
    assert not (cache / spec.filename).exists()
