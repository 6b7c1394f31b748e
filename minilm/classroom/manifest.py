"""The assignments as data: one manifest per assignment in ``assignments/NAME.json``.

A manifest names the tutorial chapter, the library files the student gets (file name ->
module), the holes (function or ``Class.method``, what to implement, ``"function"`` or
``"region"``) and the tests (hole, property, check function, points, visibility, timeout).
Loading checks that every test grades a declared hole with a known property and visibility.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Assignment", "Hole", "Test", "list_assignments", "load_assignment", "VISIBILITIES", "MARKER_FILE",
           "PROPERTIES"]

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
