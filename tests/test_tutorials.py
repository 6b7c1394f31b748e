"""The book of minilm (tutorials/): its shape, its index, the command, and every chapter run.

The conventions a chapter ``tutorials/NN_slug.py`` (jupytext percent format) follows, checked
here without running anything:

- title: the first markdown cell opens with ``# N. Title``, N the file's number;
- goals: that cell has a ``**Learning goals**`` line followed by at least two ``- `` items;
- figure: at least one code cell calls ``plt.show()`` (executed, it must leave an image/png
  output: checked when the chapter runs);
- measured claim: at least one markdown paragraph starting ``**Measured:**``; each such
  paragraph states a number (not 0, 1 or 2) that also appears on an ``assert`` line of a code
  cell, so the prose and the check cannot drift apart;
- exercises: a ``## Exercises`` markdown cell naming a classroom assignment as
  ``minilm assignment make NAME --out hw/``;
- the chapter's file name appears in ``tutorials/README.md``.

Then each chapter is built with ``minilm tutorials build --execute`` (nbclient, a kernel of
this interpreter, figures inline): an exception or a failed assert in any cell fails the test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from minilm import cli
from minilm import tutorials as tut

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "tutorials"
CHAPTERS = tut.find_chapters(BOOK)
IDS = [c.name for c in CHAPTERS]

# The classroom's assignments (issue 12), by the chapter that teaches them.
ASSIGNMENTS = {"likelihood", "bpe", "softmax", "attention", "attention-backward",
               "flash-attention", "triton-flash", "layernorm-mlp", "transformer-block", "lstm",
               "adamw", "sampling"}

NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?(?:e-?\d+)?)(?![\w.]*\d)")
ASSIGNMENT = re.compile(r"minilm assignment make ([a-z0-9-]+) --out hw/")

jupytext = pytest.importorskip("jupytext")


def cells(chapter: tut.Chapter) -> list:
    return jupytext.read(chapter.path, fmt="py:percent").cells


def shape_problems(chapter: tut.Chapter) -> list[str]:
    """Everything about a chapter that breaks the book's conventions (see the module docstring)."""
    nb_cells = cells(chapter)
    markdown = [c.source for c in nb_cells if c.cell_type == "markdown"]
    code = [c.source for c in nb_cells if c.cell_type == "code"]
    problems = []
    first = markdown[0] if markdown else ""
    if not first.startswith(f"# {chapter.number}. "):
        problems.append(f"the first markdown cell must open with '# {chapter.number}. Title'")
    goals = first.split("**Learning goals**", 1)
    if len(goals) < 2 or len(re.findall(r"^- ", goals[1], flags=re.M)) < 2:
        problems.append("the first markdown cell needs '**Learning goals**' and at least two '- ' items")
    if not any("plt.show()" in src for src in code):
        problems.append("no figure: no code cell calls plt.show()")
    asserts = "\n".join(line for src in code for line in src.splitlines() if line.lstrip().startswith("assert"))
    claims = [para for src in markdown for para in src.split("\n\n") if para.startswith("**Measured:**")]
    if not claims:
        problems.append("no '**Measured:**' paragraph")
    for claim in claims:
        numbers = {n for n in NUMBER.findall(claim) if n not in ("0", "1", "2")}
        if not any(re.search(rf"(?<![\w.]){re.escape(n)}(?![\w.]*\d)", asserts) for n in numbers):
            problems.append(f"no assert line contains a number of the claim {claim[:70]!r}... "
                            f"(numbers {sorted(numbers)})")
    exercises = [src for src in markdown if src.startswith("## Exercises")]
    named = {n for src in exercises for n in ASSIGNMENT.findall(src)}
    if not exercises:
        problems.append("no '## Exercises' markdown cell")
    elif not named:
        problems.append("the exercises name no assignment as 'minilm assignment make NAME --out hw/'")
    elif not named <= ASSIGNMENTS:
        problems.append(f"unknown assignment(s) {sorted(named - ASSIGNMENTS)}")
    return problems


def test_the_book_has_chapters():
    numbers = [c.number for c in CHAPTERS]
    assert len(CHAPTERS) >= 1 and numbers == sorted(set(numbers)), numbers


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_chapter_shape(chapter):
    assert shape_problems(chapter) == []


def test_shape_check_catches_a_broken_chapter(tmp_path):
    """A chapter missing each convention in turn is reported, not waved through."""
    good = CHAPTERS[0].path.read_text()
    path = tmp_path / CHAPTERS[0].path.name
    breakages = {
        "figure": ("plt.show()", "plt.close()"),
        "Measured": ("**Measured:**", "**Seen:**"),
        "Exercises": ("## Exercises", "## Homework"),
        "Learning goals": ("**Learning goals**", "**Goals**"),
        f"'# {CHAPTERS[0].number}. Title'": (f"# # {CHAPTERS[0].number}. ", "# # 99. "),
    }
    for expected, (old, new) in breakages.items():
        assert old in good
        path.write_text(good.replace(old, new))
        broken = tut.Chapter(CHAPTERS[0].number, path.stem, "t", path)
        assert any(expected in p for p in shape_problems(broken)), expected
    # a claim whose number no assert checks
    path.write_text(good.replace("# %% [markdown]\n# ## Exercises",
                                 "# %% [markdown]\n# **Measured:** it takes 12345 steps.\n\n"
                                 "# %% [markdown]\n# ## Exercises"))
    assert any("12345" in p for p in shape_problems(tut.Chapter(CHAPTERS[0].number, path.stem, "t", path)))


def test_readme_lists_every_chapter():
    index = (BOOK / "README.md").read_text()
    missing = [c.path.name for c in CHAPTERS if c.path.name not in index]
    assert missing == []


def test_list_prints_every_chapter(capsys):
    assert cli.main(["tutorials", "list"]) == 0
    out = capsys.readouterr().out
    for c in CHAPTERS:
        assert f"{c.number:2d}. {c.name}" in out and c.title in out


def test_build_writes_one_notebook_per_chapter(tmp_path, capsys):
    assert cli.main(["tutorials", "build", "--out", str(tmp_path)]) == 0
    nbformat = pytest.importorskip("nbformat")
    written = sorted(p.stem for p in tmp_path.glob("*.ipynb"))
    assert written == IDS
    nb = nbformat.read(tmp_path / f"{IDS[0]}.ipynb", as_version=4)
    assert nb.cells[0].source.startswith(f"# {CHAPTERS[0].number}. ")
    assert not (tmp_path / "timings.json").exists()  # nothing ran, nothing timed


def test_tutorials_command_errors(tmp_path, capsys, monkeypatch):
    assert cli.main(["tutorials", "--dir", str(tmp_path / "nowhere"), "list"]) == 1
    assert "no tutorials folder" in capsys.readouterr().err
    assert cli.main(["tutorials", "build", "99"]) == 1
    assert "no chapter '99'" in capsys.readouterr().err
    assert cli.main(["tutorials", "build", "--record"]) == 1
    assert "--record needs --execute" in capsys.readouterr().err
    # installed from a wheel: no checkout around the package
    monkeypatch.setattr(tut, "__file__", str(tmp_path / "site-packages" / "minilm" / "tutorials.py"))
    with pytest.raises(FileNotFoundError, match="repository checkout"):
        tut.tutorials_dir()


def test_timings_json_names_real_chapters():
    timings = tut.load_timings(BOOK)
    assert set(timings) <= set(IDS)
    assert all(t["seconds"] > 0 for t in timings.values())


@pytest.mark.slow
def test_a_failing_claim_fails_the_build(tmp_path, capsys):
    """The execution test can fail: a chapter whose assert no longer holds exits 1."""
    (tmp_path / "01_broken.py").write_text(
        "# %% [markdown]\n# # 1. Broken\n\n# %%\nx = 2 + 2\n\n# %%\nassert x == 5, 'claim no longer true'\n")
    assert cli.main(["tutorials", "--dir", str(tmp_path), "build", "--execute", "--out",
                     str(tmp_path / "out")]) == 1
    assert "claim no longer true" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_chapter_runs(chapter, tmp_path, capsys):
    """``minilm tutorials build --execute`` runs the chapter: every cell, every assert, a figure."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    assert cli.main(["tutorials", "build", "--execute", "--out", str(tmp_path), chapter.name]) == 0, \
        capsys.readouterr().err
    nb = nbformat.read(tmp_path / f"{chapter.name}.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure in the executed chapter"
    timing = json.loads((tmp_path / "timings.json").read_text())[chapter.name]
    print(f"{chapter.name}: {timing['seconds']} s ({timing['machine']})")
