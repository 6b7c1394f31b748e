"""Corpora: the packaged tinyshakespeare (checked by SHA-256), the builtin text, and files."""

from __future__ import annotations

import gzip
import hashlib
import re
from collections import Counter

import pytest

from minilm.data import corpus
from minilm.data.corpus import CORPORA, PackagedCorpus, corpus_names, load_corpus


# ---- tinyshakespeare, shipped with the package ----------------------------------------------------
def test_tinyshakespeare_ships_with_the_package_and_matches_its_checksum():
    """The known answer: char-rnn's input.txt is 1,115,394 bytes, begins with "First Citizen:"
    and has SHA-256 86c4e6aa...; the packaged gzip must decompress to exactly those bytes."""
    text = load_corpus("tinyshakespeare")
    data = text.encode("utf-8")
    assert len(data) == 1_115_394 == CORPORA["tinyshakespeare"].size
    assert hashlib.sha256(data).hexdigest() == CORPORA["tinyshakespeare"].sha256
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert text.count("ROMEO:") > 100  # speaker names stand on lines of their own
    path = corpus.Path(corpus.__file__).with_name(CORPORA["tinyshakespeare"].filename)
    assert path.stat().st_size < 500_000  # gzipped: about 0.43 MB in the package


def test_a_corrupt_packaged_corpus_is_refused(tmp_path, monkeypatch):
    good = b"To be, or not to be, that is the question:\n"
    (tmp_path / "fake.txt.gz").write_bytes(gzip.compress(good.replace(b"be,", b"bee,")))
    (tmp_path / "broken.txt.gz").write_bytes(b"not gzip at all")
    monkeypatch.setattr(corpus, "__file__", str(tmp_path / "corpus.py"))
    sha = hashlib.sha256(good).hexdigest()
    monkeypatch.setitem(CORPORA, "fake", PackagedCorpus("fake.txt.gz", sha, len(good), "a test"))
    monkeypatch.setitem(CORPORA, "broken", PackagedCorpus("broken.txt.gz", sha, len(good), "a test"))
    with pytest.raises(ValueError, match=r"fake.txt.gz.*corrupt.*" + sha):
        load_corpus("fake")
    with pytest.raises(ValueError, match=r"broken.txt.gz.*cannot be read"):
        load_corpus("broken")
    (tmp_path / "fake.txt.gz").write_bytes(gzip.compress(good))
    assert load_corpus("fake") == good.decode()


def test_corpus_names():
    assert corpus_names() == ["builtin", "tinyshakespeare"]


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
