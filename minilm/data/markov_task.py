"""A labelled task with a known, quickly learnable answer: which Markov source wrote this text?

``n_classes`` random Markov chains (``minilm.data.MarkovSource``, order 1, ``vocab_size``
symbols, rows from Dirichlet(``concentration``)) each write strings of ``length`` symbols; the
label is the source. The Bayes-optimal classifier compares the strings' likelihoods under the
sources; even the symbols' frequencies (the sources' stationary distributions differ) separate
them well, so a small encoder learns it in a few hundred steps: the smoke test of the
pre-train-then-fine-tune pipeline that CI can afford, where the speaker task
(``minilm.data.speakers``) needs far more compute.

``markov_corpus`` writes unlabelled lines from the same sources, to pre-train on
(``minilm pretrain --corpus markov``). Everything is deterministic from ``seed``; the splits
are drawn from separate streams and a test string equal to a training one is dropped.

Deliberately left out: higher orders, sources that differ only in their transitions.
"""

from __future__ import annotations

import numpy as np

from minilm.data.speakers import SpeakerTask
from minilm.data.synthetic import MarkovSource

__all__ = ["markov_sources", "markov_task", "markov_corpus"]


def markov_sources(n_classes: int = 2, vocab_size: int = 8, concentration: float = 0.5,
                   seed: int = 0) -> list[MarkovSource]:
    """The task's sources: source k is ``MarkovSource(vocab_size, 1, concentration, seed=1000 seed + k)``."""
    if not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
    return [MarkovSource(vocab_size, 1, concentration, seed=1000 * seed + k) for k in range(n_classes)]


def markov_task(n_classes: int = 2, length: int = 40, n_train: int = 400, n_val: int = 100,
                n_test: int = 200, vocab_size: int = 8, concentration: float = 0.5, seed: int = 0) -> SpeakerTask:
    """Labelled strings: each split has its examples' labels cycling 0, 1, .., n_classes - 1."""
    sources = markov_sources(n_classes, vocab_size, concentration, seed)
    task = SpeakerTask([f"source {k}" for k in range(n_classes)])
    seen: set[str] = set()
    for i, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        rng = np.random.default_rng([seed, i])  # one stream per split
        for j in range(n):
            text = sources[j % n_classes].sample_text(length, rng)
            if text in seen:  # never the same string in two splits (or twice in one)
                continue
            seen.add(text)
            task.split(name).append((text, j % n_classes))
    return task


def markov_corpus(n_lines: int = 2000, length: int = 64, n_classes: int = 2, vocab_size: int = 8,
                  concentration: float = 0.5, seed: int = 0) -> str:
    """Unlabelled pre-training text: ``n_lines`` lines, each from a random source of the task."""
    sources = markov_sources(n_classes, vocab_size, concentration, seed)
    rng = np.random.default_rng([seed, 3])
    return "\n".join(sources[int(rng.integers(n_classes))].sample_text(length, rng) for _ in range(n_lines)) + "\n"
