"""A fine-tuning task with real labels: who says this speech in tinyshakespeare?

tinyshakespeare (``load_corpus("tinyshakespeare")``) is a sequence of speeches, each a line
``NAME:`` followed by the lines spoken, separated by blank lines. The task: given a speech's
text (without the name), predict which of the ``n_speakers`` most frequent speakers says it.

Splitting without leaks. The corpus has no play boundaries, and each play has its own
characters, so a plain "first 80 % / last 20 %" split would test on speakers never seen in
training. Instead the speeches are cut into consecutive chunks of ``chunk`` speeches and the
chunks are dealt to train / validation / test in turn, 8 : 1 : 1 (chunk k goes to test when
k % 10 == 9, to validation when k % 10 == 8): every play lands in every split, and nearby
speeches (which share words and topics) mostly stay together. Then, so that no text is seen
in two splits (the corpus repeats short lines such as "My lord?"):

- a speech is kept in the first split (in the order train, validation, test) where its text
  appears; a later copy, in that split or another, is dropped;
- a validation or test speech is dropped if any of its lines (stripped) occurs in a speech
  of an earlier split.

So no line's text occurs in two splits, and each text occurs once. Speakers are ranked by
their number of training speeches (ties by name); labels 0 .. n_speakers - 1 follow that
order. Everything is deterministic (no randomness at all).

Deliberately left out: speaker aliases (``KING RICHARD III`` and ``GLOUCESTER`` are one person
in the plays, two labels here), per-line examples across speech boundaries.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from minilm.data.corpus import load_corpus

__all__ = ["Speech", "SpeakerTask", "parse_speeches", "speaker_task"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Speech:
    speaker: str  # the name before the colon, e.g. "ROMEO"
    text: str  # the lines spoken, joined by "\n"
    index: int  # position of the speech in the corpus (0-based)


@dataclass
class SpeakerTask:
    """The labelled splits: each a list of ``(text, label)``; ``classes[label]`` is the name."""

    classes: list[str]
    train: list[tuple[str, int]] = field(default_factory=list)
    val: list[tuple[str, int]] = field(default_factory=list)
    test: list[tuple[str, int]] = field(default_factory=list)

    def split(self, name: str) -> list[tuple[str, int]]:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)


def parse_speeches(text: str) -> list[Speech]:
    """The speeches of a tinyshakespeare-style text, in order (blocks split at blank lines whose
    first line is ``NAME:``; other blocks are skipped).

    >>> [(s.speaker, s.text) for s in parse_speeches("A:\\nhi\\nthere\\n\\nB:\\nyes\\n")]
    [('A', 'hi\\nthere'), ('B', 'yes')]
    """
    speeches = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        if len(lines) < 2 or not lines[0].endswith(":") or not lines[0][:-1].strip():
            continue
        body = "\n".join(lines[1:]).strip()
        if body:
            speeches.append(Speech(lines[0][:-1].strip(), body, len(speeches)))
    return speeches


def speaker_task(n_speakers: int = 5, chunk: int = 20, text: str | None = None) -> SpeakerTask:
    """Build the task from tinyshakespeare (or ``text``), as the module docstring describes."""
    if not isinstance(n_speakers, int) or n_speakers < 2:
        raise ValueError(f"n_speakers must be an int >= 2, got {n_speakers!r}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    speeches = parse_speeches(load_corpus("tinyshakespeare") if text is None else text)
    by_split: dict[str, list[Speech]] = {s: [] for s in SPLITS}
    for sp in speeches:
        k = sp.index // chunk
        by_split["test" if k % 10 == 9 else "val" if k % 10 == 8 else "train"].append(sp)

    seen_texts: set[str] = set()
    seen_lines: set[str] = set()  # lines of every split before the current one
    kept: dict[str, list[Speech]] = {}
    for name in SPLITS:
        kept[name] = []
        lines_here: set[str] = set()
        for sp in by_split[name]:
            lines = {ln.strip() for ln in sp.text.split("\n")}
            if sp.text in seen_texts or (name != "train" and lines & seen_lines):
                continue
            seen_texts.add(sp.text)
            lines_here |= lines
            kept[name].append(sp)
        seen_lines |= lines_here

    counts = Counter(sp.speaker for sp in kept["train"])
    if len(counts) < n_speakers:
        raise ValueError(f"only {len(counts)} speakers in the training split, asked for {n_speakers}")
    classes = [s for s, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_speakers]]
    label = {s: i for i, s in enumerate(classes)}
    task = SpeakerTask(classes)
    for name in SPLITS:
        task.split(name).extend((sp.text, label[sp.speaker]) for sp in kept[name] if sp.speaker in label)
    return task
