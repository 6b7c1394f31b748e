"""minilm.classroom: assignments cut out of the library, and an autograder that checks them.

A teacher cuts an assignment in one command and grades it in another, with no hand-written
tests::

    minilm assignment list                                   # name, chapter, points, holes
    minilm assignment make attention --out hw4/              # the student's folder
    minilm assignment make attention --solution --out key/   # the same files, complete
    minilm assignment grade hw4/ --json results.json         # table + Gradescope's results.json
    minilm assignment gradescope attention --out attention.zip

Each assignment is data: a manifest ``assignments/NAME.json`` (title, tutorial chapter, the
library files it copies, its holes, and its tests with points, visibility and timeout). A
hole is a library function cut out with ``ast`` (``minilm.classroom.holes``). The tests are
functions in ``minilm.classroom.checks.NAME``: each compares the student's code with an
independent twin (torch autograd and ``torch.nn.functional``, the PyTorch version, finite
differences through ``minilm.testing``, ``attention_conformance`` for the Triton kernel),
never with stored outputs alone.

Grading (``minilm.classroom.grader``) runs the student's files in one worker process per
grading run (``minilm.classroom.worker``), every test under its own timeout; a syntax error,
an import error, an infinite loop, a crash or a wrong return type scores 0 on the tests it
breaks, with a message, and the grader itself never crashes.

Deliberately left out: plagiarism detection, sandboxing beyond a separate process (run
untrusted code in a container, as Gradescope does), and notebooks as submissions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Assignment", "Hole", "Test", "list_assignments", "load_assignment", "make", "grade",
           "gradescope_zip", "VISIBILITIES", "MARKER_FILE"]

_HERE = Path(__file__).parent
MANIFESTS = _HERE / "assignments"
MARKER_FILE = ".assignment.json"  # in every folder `make` writes: which assignment it is
VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")  # Gradescope's
PROPERTIES = ("forward", "backward", "masks", "odd shapes", "stability")


@dataclass(frozen=True)
class Hole:
    """One function (or method, "Class.method") the student writes."""

    name: str  # qualified name in the file
    file: str  # the student's file it is in (e.g. "functional.py")
    todo: str  # what to implement, one sentence
    kind: str = "function"  # "function": the whole body; "region": BEGIN/END SOLUTION lines


@dataclass(frozen=True)
class Test:
    """One graded test: a check function run on the student's modules."""

    name: str
    hole: str  # the hole it grades (partial credit per hole)
    property: str  # forward, backward, masks, odd shapes, stability
    check: str  # function name in the assignment's checks module
    points: float
    visibility: str = "visible"  # "visible" to the student, or hidden until published
    timeout: float = 20.0  # seconds

    @property
    def visible(self) -> bool:
        return self.visibility == "visible"


@dataclass(frozen=True)
class Assignment:
    """An assignment as declared in its manifest."""

    name: str
    title: str
    chapter: int
    summary: str
    files: dict[str, str]  # the student's file name -> the library module it is copied from
    holes: tuple[Hole, ...]
    tests: tuple[Test, ...]
    checks: str  # module with the check functions
    env: dict[str, str] = field(default_factory=dict)  # environment of the worker (TRITON_INTERPRET)
    extras: tuple[str, ...] = ()  # minilm extras the grader needs (setup.sh installs them)
    preload: tuple[str, ...] = ()  # modules the worker imports before any test starts

    @property
    def points(self) -> float:
        return sum(t.points for t in self.tests)

    def hole(self, name: str) -> Hole:
        for h in self.holes:
            if h.name == name:
                return h
        raise KeyError(name)


def _assignment_from_dict(d: dict[str, Any], where: str) -> Assignment:
    try:
        holes = tuple(Hole(**h) for h in d["holes"])
        tests = tuple(Test(**t) for t in d["tests"])
        a = Assignment(name=d["name"], title=d["title"], chapter=int(d["chapter"]), summary=d["summary"],
                       files=dict(d["files"]), holes=holes, tests=tests, checks=d["checks"],
                       env=dict(d.get("env", {})), extras=tuple(d.get("extras", ())),
                       preload=tuple(d.get("preload", ())))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{where}: bad assignment manifest ({exc})") from exc
    names = [h.name for h in a.holes]
    for h in a.holes:
        if h.file not in a.files:
            raise ValueError(f"{where}: hole {h.name!r} is in {h.file!r}, which is not one of the files")
        if h.kind not in ("function", "region"):
            raise ValueError(f"{where}: hole {h.name!r} has kind {h.kind!r}")
    seen = set()
    for t in a.tests:
        if t.hole not in names:
            raise ValueError(f"{where}: test {t.name!r} grades {t.hole!r}, which is not a hole")
        if t.visibility not in VISIBILITIES:
            raise ValueError(f"{where}: test {t.name!r} has visibility {t.visibility!r}, not one of {VISIBILITIES}")
        if t.property not in PROPERTIES:
            raise ValueError(f"{where}: test {t.name!r} has property {t.property!r}, not one of {PROPERTIES}")
        if t.name in seen:
            raise ValueError(f"{where}: two tests are named {t.name!r}")
        seen.add(t.name)
    return a


def list_assignments() -> list[Assignment]:
    """Every assignment that ships with minilm, by chapter."""
    out = [_assignment_from_dict(json.loads(p.read_text("utf-8")), str(p)) for p in MANIFESTS.glob("*.json")]
    return sorted(out, key=lambda a: (a.chapter, a.name))


def load_assignment(name: str) -> Assignment:
    """The assignment called ``name`` (ValueError listing the known names if there is none)."""
    p = MANIFESTS / f"{name}.json"
    if not p.is_file():
        known = ", ".join(a.name for a in list_assignments())
        raise ValueError(f"no assignment named {name!r}; known: {known}")
    return _assignment_from_dict(json.loads(p.read_text("utf-8")), str(p))


def make(name: str, out: str | Path, solution: bool = False, force: bool = False) -> Path:
    """Write the student's folder (or with ``solution`` the complete key) for ``name``."""
    from minilm.classroom.folders import make_folder

    return make_folder(load_assignment(name), Path(out), solution=solution, force=force)


def grade(folders: Any, *, json_path: str | Path | None = None, visible_only: bool = False,
          timeout: float | None = None):
    """Grade one student folder (or a list of them: one worker for all); see ``grader.grade``."""
    from minilm.classroom.grader import grade as _grade

    return _grade(folders, json_path=json_path, visible_only=visible_only, timeout=timeout)


def gradescope_zip(name: str, out: str | Path) -> Path:
    """Write Gradescope's autograder zip (setup.sh, run_autograder, the assignment, minilm)."""
    from minilm.classroom.folders import gradescope_zip as _zip

    return _zip(load_assignment(name), Path(out))
