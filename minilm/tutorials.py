"""The book of minilm: the tutorial chapters in ``tutorials/`` and the ``minilm tutorials`` command.

A chapter is one file, ``tutorials/NN_slug.py``, in jupytext's percent format (``# %%`` code
cells, ``# %% [markdown]`` prose). The ``.py`` files are the source of truth; notebooks are
built from them and never committed:

    minilm tutorials list                          # table of contents, measured run times
    minilm tutorials build --out nb/               # one .ipynb per chapter, not run
    minilm tutorials build --execute --out nb/     # run each on this Python's kernel: outputs, figures
    minilm tutorials build --execute 03 04         # only chapters 3 and 4
    jupyter lab tutorials/                         # with jupytext installed: open the .py files as notebooks
    MPLBACKEND=Agg python tutorials/03_softmax.py  # a chapter is also a plain script

A chapter shows the library's code, it never copies it: ``show(minilm.numpy.softmax)``
renders the source of the function the chapter teaches, so there is one copy of every line.

Measured run times live in ``tutorials/timings.json`` (chapter file stem -> seconds, with the
date and the machine). ``build --execute`` always writes the times of the chapters it ran to
``OUT/timings.json``; with ``--record`` it also merges them into ``tutorials/timings.json``,
which ``list`` reads and which is committed with the chapters.

The chapters live in the repository checkout, next to ``benchmarks/`` (they are not part of a
wheel): the command finds ``tutorials/`` beside the installed package (an editable install)
or takes ``--dir``.

Deliberately left out: anything a chapter computes (chapters call minilm itself), notebook
outputs in git, and a second "fast mode" with numbers different from what a student runs.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["show", "Chapter", "tutorials_dir", "find_chapters", "load_timings", "build",
           "add_parser", "run"]

CHAPTER_FILE = re.compile(r"^(\d\d)_([a-z0-9_]+)\.py$")
TITLE_LINE = re.compile(r"^# # (\d+)\. (.+)$")  # the first markdown cell's `# N. Title`
TIMINGS_FILE = "timings.json"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"  # figures become image/png outputs


def show(*objects: Any) -> None:
    """Display the source code of each function, class or module in ``objects``.

    A Triton kernel (``@triton.jit``, also under ``TRITON_INTERPRET=1``) shows the Python
    function it was written as.

    In a notebook the code is rendered with syntax highlighting (``IPython.display.Code``);
    run as a plain script (``python tutorials/03_softmax.py``) it is printed.
    """
    for obj in objects:
        plain = inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isclass(obj) or inspect.ismodule(obj)
        if not plain and inspect.isfunction(getattr(obj, "fn", None)):
            obj = obj.fn  # a @triton.jit kernel (compiled or interpreted) wraps its Python function
        try:
            source = inspect.getsource(obj)
        except (TypeError, OSError) as e:
            raise ValueError(f"show() needs a function, class or module with source, got {obj!r}: {e}") from None
        if _in_notebook():
            from IPython.display import Code, display

            display(Code(source, language="python"))
        else:
            print(source)


@dataclass(frozen=True)
class Chapter:
    """One chapter file: ``tutorials/NN_slug.py`` with title ``# N. Title``."""

    number: int
    name: str  # the file stem, "03_softmax"
    title: str
    path: Path


def tutorials_dir(directory: str | os.PathLike | None = None) -> Path:
    """The ``tutorials/`` folder: ``directory`` if given, else the one in minilm's checkout."""
    if directory is not None:
        path = Path(directory)
        if not path.is_dir():
            raise FileNotFoundError(f"no tutorials folder at {path}")
        return path
    path = Path(__file__).resolve().parents[1] / "tutorials"
    if not path.is_dir():
        raise FileNotFoundError(
            f"the tutorial chapters are not here ({path} does not exist): they live in the "
            "repository checkout, not in an installed wheel; clone the repository and install "
            "it with `pip install -e '.[tutorials]'`, or pass --dir PATH/TO/tutorials")
    return path


def find_chapters(directory: Path) -> list[Chapter]:
    """Every ``NN_slug.py`` in ``directory``, in order, with the title of its first cell."""
    chapters = []
    for path in sorted(directory.glob("*.py")):
        match = CHAPTER_FILE.match(path.name)
        if not match:
            continue
        number = int(match.group(1))
        title = _title(path)
        if title is None:
            raise ValueError(f"{path}: the first markdown cell must start with '# # {number}. Title'")
        chapters.append(Chapter(number, path.stem, title, path))
    return chapters


def load_timings(directory: Path) -> dict[str, dict[str, Any]]:
    """``tutorials/timings.json``: chapter name -> {"seconds", "date", "machine"} ({} if absent)."""
    path = directory / TIMINGS_FILE
    if not path.exists():
        return {}
    with open(path) as f:
        return json.load(f)


def build(chapters: Sequence[Chapter], out: Path, execute: bool = False, timeout: float = 600,
          log: Any = None) -> dict[str, float]:
    """Write ``out/NAME.ipynb`` for each chapter; when ``execute``, run it first.

    Execution uses a kernel on THIS interpreter (``sys.executable -m ipykernel_launcher``),
    in the chapter's folder, with matplotlib's inline backend so figures land in the notebook.
    ``timeout`` bounds each cell, in seconds. Returns chapter name -> seconds (kernel start
    included) for the executed chapters. A failing cell raises ``nbclient``'s
    ``CellExecutionError`` (its message holds the cell and the traceback).
    """
    try:
        import jupytext
        import nbformat
    except ImportError as e:
        raise ImportError(f"building the tutorials needs jupytext and nbformat: pip install "
                          f"'minilm[tutorials]' ({e})") from None
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    for chapter in chapters:
        nb = jupytext.read(chapter.path, fmt="py:percent")
        if execute:
            t0 = time.perf_counter()
            _execute(nb, chapter.path.parent, timeout)
            seconds[chapter.name] = time.perf_counter() - t0
        nbformat.write(nb, out / f"{chapter.name}.ipynb")
        if log is not None:
            ran = f" (executed in {seconds[chapter.name]:.1f} s)" if execute else ""
            print(f"wrote {out / (chapter.name + '.ipynb')}{ran}", file=log, flush=True)
    return seconds


def _execute(nb: Any, cwd: Path, timeout: float) -> None:
    """Run ``nb`` in place with nbclient on a kernel started from ``sys.executable``."""
    try:
        from jupyter_client.kernelspec import KernelSpec
        from jupyter_client.manager import KernelManager
        from nbclient import NotebookClient
    except ImportError as e:
        raise ImportError(f"--execute needs nbclient and ipykernel: pip install "
                          f"'minilm[tutorials]' ({e})") from None

    class ThisPythonKernel(KernelManager):
        """The kernel runs on the interpreter that runs this command, whatever is installed
        as 'python3' elsewhere, so the chapters see this environment's minilm."""

        @property
        def kernel_spec(self) -> KernelSpec:
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name="Python 3", language="python")

    env = dict(os.environ, MPLBACKEND=INLINE_BACKEND, PYDEVD_DISABLE_FILE_VALIDATION="1")
    client = NotebookClient(nb, km=ThisPythonKernel(), timeout=timeout,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(env=env)


def _title(path: Path) -> str | None:
    """The title of the first markdown cell, ``# # N. Title`` in percent format, or None."""
    in_markdown = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("# %%"):
                if in_markdown:
                    return None  # the first markdown cell ended without a title
                in_markdown = "[markdown]" in line
            elif in_markdown and line.strip() not in ("", "#"):
                match = TITLE_LINE.match(line.rstrip("\n"))
                return match.group(2).strip() if match else None
    return None


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


# ---------------------------------------------------------------------------------------------
# The command: minilm tutorials list | build


EXAMPLES = """\
examples:
  minilm tutorials list                          # chapters, what they take to run
  minilm tutorials build --execute --out nb/     # executed notebooks, with outputs and figures
  minilm tutorials build --execute 03            # only chapter 3 (into tutorials/_build/)
  jupyter lab tutorials/                         # open the chapters themselves (needs jupytext)
"""


def add_parser(sub: Any) -> None:
    """``minilm tutorials list|build``: registered through ``COMMAND_MODULES`` in minilm.cli."""
    p = sub.add_parser(
        "tutorials", help="the book of minilm: list or build the tutorial chapters",
        description="The tutorial chapters (tutorials/NN_slug.py, jupytext percent format): list "
                    "them with their measured run times, or build them into Jupyter notebooks.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=None,
                   help="the tutorials folder (default: tutorials/ of minilm's checkout)")
    actions = p.add_subparsers(dest="tutorials_action", metavar="ACTION", required=True,
                               parser_class=type(p))
    actions.add_parser("list", help="the table of contents with each chapter's run time",
                       description="The chapters in order, with the run time measured by "
                                   "'build --execute --record' (tutorials/timings.json).")
    b = actions.add_parser(
        "build", help="write a .ipynb per chapter (run them with --execute)",
        description="Convert chapters to notebooks; with --execute, run each on a kernel of "
                    "this Python (figures inline) and record how long it took.")
    b.add_argument("chapters", nargs="*", metavar="CHAPTER",
                   help="chapter numbers or file stems (default: every chapter)")
    b.add_argument("--execute", action="store_true", help="run each notebook (outputs, figures)")
    b.add_argument("--out", default=None,
                   help="folder for the notebooks (default: tutorials/_build, ignored by git)")
    b.add_argument("--timeout", type=float, default=600, help="seconds allowed per cell (default 600)")
    b.add_argument("--record", action="store_true",
                   help="with --execute: also merge the run times into tutorials/timings.json")
    p.set_defaults(handler=run)


def run(ns: argparse.Namespace) -> int:
    directory = tutorials_dir(ns.dir)
    chapters = find_chapters(directory)
    if not chapters:
        raise FileNotFoundError(f"no chapters (NN_slug.py) in {directory}")
    if ns.tutorials_action == "list":
        timings = load_timings(directory)
        width = max(len(c.name) for c in chapters)
        for c in chapters:
            t = timings.get(c.name)
            when = f"{t['seconds']:5.0f} s" if t else "not measured"
            print(f"{c.number:2d}. {c.name:<{width}}  {when:>12}  {c.title}")
        measured = [timings[c.name]["seconds"] for c in chapters if c.name in timings]
        if measured:
            print(f"total {sum(measured) / 60:.1f} min for {len(measured)} measured chapters "
                  f"({directory / TIMINGS_FILE})")
        return 0
    return _run_build(ns, directory, chapters)


def _run_build(ns: argparse.Namespace, directory: Path, chapters: list[Chapter]) -> int:
    if ns.record and not ns.execute:
        raise ValueError("--record needs --execute (only an executed chapter has a run time)")
    if ns.timeout <= 0:
        raise ValueError(f"--timeout must be > 0 seconds, got {ns.timeout}")
    chosen = _select(chapters, ns.chapters)
    out = Path(ns.out) if ns.out else directory / "_build"
    try:
        from nbclient.exceptions import CellExecutionError
    except ImportError:
        CellExecutionError = RuntimeError  # noqa: N806 - nbclient missing: build() names it
    seconds: dict[str, float] = {}
    failed = None
    for chapter in chosen:
        try:
            seconds.update(build([chapter], out, ns.execute, ns.timeout, log=sys.stdout))
        except CellExecutionError as e:
            failed = chapter
            sys.stderr.write(f"minilm tutorials: chapter {chapter.name} failed:\n{e}\n")
            break
    if seconds:
        entries = {name: {"seconds": round(s, 1), "date": time.strftime("%Y-%m-%d"),
                          "machine": _machine()} for name, s in seconds.items()}
        _merge_json(out / TIMINGS_FILE, entries)
        if ns.record:
            _merge_json(directory / TIMINGS_FILE, entries)
        print(f"executed {len(seconds)} chapter(s) in {sum(seconds.values()) / 60:.1f} min; "
              f"times in {out / TIMINGS_FILE}" + (f" and {directory / TIMINGS_FILE}" if ns.record else ""))
    return 1 if failed else 0


def _select(chapters: list[Chapter], wanted: Sequence[str]) -> list[Chapter]:
    """The chapters named by number ("3", "03") or file stem ("03_softmax"), in book order."""
    if not wanted:
        return chapters
    chosen = []
    for w in wanted:
        hits = [c for c in chapters if c.name == w or (w.isdigit() and c.number == int(w))]
        if not hits:
            names = ", ".join(c.name for c in chapters)
            raise ValueError(f"no chapter {w!r}: choose a number or one of {names}")
        chosen.extend(h for h in hits if h not in chosen)
    return sorted(chosen, key=lambda c: c.number)


def _merge_json(path: Path, entries: dict[str, Any]) -> None:
    data = {}
    if path.exists():
        with open(path) as f:
            data = json.load(f)
    data.update(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(sorted(data.items())), f, indent=1)
        f.write("\n")


def _machine() -> str:
    """Where a time was measured, with the load average: a busy machine runs chapters slower."""
    load = f", load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores{load}, Python {platform.python_version()}"
