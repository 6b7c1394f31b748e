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

from pathlib import Path
from typing import Any

from minilm.classroom.folders import gradescope_zip as _gradescope_zip
from minilm.classroom.folders import make_folder
from minilm.classroom.grader import Report
from minilm.classroom.grader import grade as _grade
from minilm.classroom.manifest import (MARKER_FILE, PROPERTIES, VISIBILITIES, Assignment, Hole, Test,
                                       list_assignments, load_assignment)

__all__ = ["Assignment", "Hole", "Test", "Report", "list_assignments", "load_assignment", "make", "grade",
           "gradescope_zip", "VISIBILITIES", "PROPERTIES", "MARKER_FILE"]


def make(name: str, out: str | Path, solution: bool = False, force: bool = False) -> Path:
    """Write the student's folder (or with ``solution`` the complete key) for ``name``."""
    return make_folder(load_assignment(name), Path(out), solution=solution, force=force)


def grade(folders: Any, *, json_path: str | Path | None = None, visible_only: bool = False,
          timeout: float | None = None):
    """Grade one student folder (or a list of them: one worker for all); see ``grader.grade``."""
    return _grade(folders, json_path=json_path, visible_only=visible_only, timeout=timeout)


def gradescope_zip(name: str, out: str | Path) -> Path:
    """Write Gradescope's autograder zip (setup.sh, run_autograder, the assignment, minilm)."""
    return _gradescope_zip(load_assignment(name), Path(out))
