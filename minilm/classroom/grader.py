"""Grading student folders: one worker process per run, a watchdog, a table and results.json.

``grade(folder)`` reads the folder's ``.assignment.json`` to learn which assignment it is
(the tests and points always come from the installed minilm, never from the folder), starts
``python -m minilm.classroom.worker`` on it and watches the events it writes. A test that runs
past its timeout plus a grace period, or a worker that dies, costs that one test: the worker
is killed (its whole process group) and a fresh one resumes with the tests left. Every test
ends with a score, so the grader never crashes on student code.

The results follow Gradescope's autograder format (``results.json``)::

    {"score": 14.0, "max_score": 20.0, "execution_time": 3.1, "output": "...",
     "tests": [{"name": ..., "score": ..., "max_score": ..., "output": ...,
                "visibility": "visible" | "after_published", "status": "passed" | "failed",
                "tags": [hole, property]}, ...],
     "extra_data": {"assignment": ..., "minilm_version": ..., "graded_files": {...}}}

Several folders of the same assignment can be graded by one worker (a class at once, or the
meta-tests): ``grade([f1, f2, ...])`` returns one report per folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import minilm
from minilm.classroom.manifest import MARKER_FILE, Assignment, Test, load_assignment

GRACE_S = 10.0  # the watchdog's margin over a test's own timeout (the alarm should fire first)
IMPORT_TIMEOUT_S = 30.0  # importing a student's files
START_TIMEOUT_S = 180.0  # the worker importing minilm, torch, the checks


@dataclass
class TestResult:
    name: str
    hole: str
    property: str
    score: float
    max_score: float
    output: str
    visibility: str
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.score == self.max_score

    def gradescope(self) -> dict[str, Any]:
        return {"name": self.name, "score": self.score, "max_score": self.max_score,
                "output": self.output, "visibility": self.visibility,
                "status": "passed" if self.passed else "failed", "tags": [self.hole, self.property]}


@dataclass
class Report:
    """The grade of one folder."""

    assignment: Assignment
    folder: Path
    tests: list[TestResult] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return sum(t.score for t in self.tests)

    @property
    def max_score(self) -> float:
        return sum(t.max_score for t in self.tests)

    def test(self, name: str) -> TestResult:
        for t in self.tests:
            if t.name == name:
                return t
        raise KeyError(name)

    def by_hole(self) -> dict[str, tuple[float, float]]:
        out: dict[str, tuple[float, float]] = {}
        for t in self.tests:
            s, m = out.get(t.hole, (0.0, 0.0))
            out[t.hole] = (s + t.score, m + t.max_score)
        return out

    def to_gradescope(self) -> dict[str, Any]:
        holes = ", ".join(f"{h} {s:g}/{m:g}" for h, (s, m) in self.by_hole().items())
        return {
            "score": self.score,
            "max_score": self.max_score,
            "execution_time": round(self.seconds, 2),
            "output": f"{self.assignment.title} (chapter {self.assignment.chapter}): "
                      f"{self.score:g}/{self.max_score:g}. By function: {holes}.",
            "tests": [t.gradescope() for t in self.tests],
            "extra_data": {"assignment": self.assignment.name, "minilm_version": minilm.__version__,
                           "graded_files": self.files},
        }

    def table(self, width: int = 100) -> str:
        a = self.assignment
        rows = [f"{a.name}: {a.title} (chapter {a.chapter}) -- {self.folder}", ""]
        w = max([len(t.name) for t in self.tests] + [4])
        hw = max([len(t.hole) for t in self.tests] + [4])
        rows.append(f"{'test':<{w}}  {'hole':<{hw}}  {'property':<11} {'score':>9}  ")
        for t in self.tests:
            mark = "ok  " if t.passed else "FAIL"
            hidden = "" if t.visibility == "visible" else " (hidden)"
            rows.append(f"{t.name:<{w}}  {t.hole:<{hw}}  {t.property:<11} {t.score:>4g}/{t.max_score:<4g} {mark}{hidden}")
            if not t.passed:
                first = t.output.strip().splitlines()[0] if t.output.strip() else ""
                if len(first) > width:
                    first = first[: width - 3] + "..."
                rows.append(f"{'':<{w}}    {first}")
        rows.append("")
        for h, (s, m) in self.by_hole().items():
            rows.append(f"  {h:<{hw}} {s:>5g}/{m:g}")
        rows.append(f"total {self.score:g}/{self.max_score:g}")
        return "\n".join(rows)


def read_marker(folder: Path) -> dict[str, Any]:
    """The folder's ``.assignment.json`` (ValueError if missing or unreadable)."""
    p = folder / MARKER_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    try:
        d = json.loads(p.read_text("utf-8"))
        d["assignment"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder} has no readable {MARKER_FILE}: is it a folder made by "
                         f"'minilm assignment make'? ({exc})") from exc
    return d


def grade(folders: Any, *, json_path: str | Path | None = None, visible_only: bool = False,
          timeout: float | None = None) -> Any:
    """Grade one folder (returns a ``Report``) or a list of them (returns a list of reports).

    ``json_path``: write Gradescope's results.json (one folder only). ``visible_only``: only
    the tests the student sees. ``timeout``: every test's timeout in seconds instead of the
    manifest's.
    """
    single = isinstance(folders, (str, Path))
    paths = [Path(folders)] if single else [Path(f) for f in folders]
    if not paths:
        raise ValueError("grade: no folders given")
    names = [read_marker(p)["assignment"] for p in paths]
    reports: list[Report] = []
    for name in dict.fromkeys(names):  # one worker per assignment
        a = load_assignment(name)
        group = [p for p, n in zip(paths, names) if n == name]
        reports.extend(_grade_group(a, group, visible_only, timeout))
    order = {id(r): paths.index(r.folder) for r in reports}
    reports.sort(key=lambda r: order[id(r)])
    if json_path is not None:
        if not single:
            raise ValueError("grade: json_path needs a single folder")
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(reports[0].to_gradescope(), indent=2) + "\n", "utf-8")
    return reports[0] if single else reports


def _grade_group(a: Assignment, folders: list[Path], visible_only: bool, timeout: float | None) -> list[Report]:
    tests = [t for t in a.tests if t.visible or not visible_only]
    t0 = time.perf_counter()
    reports = [Report(a, f) for f in folders]
    results: dict[tuple[int, str], TestResult] = {}
    pending = [(k, t) for k in range(len(folders)) for t in tests]
    with tempfile.TemporaryDirectory(prefix="minilm-grade-") as tmp:
        attempt = 0
        while pending:
            attempt += 1
            events_path = Path(tmp) / f"events{attempt}.jsonl"
            done, files = _run_worker(a, folders, pending, events_path, Path(tmp), timeout)
            for k, f in files.items():
                reports[k].files.update(f)
            for (k, tname), (passed, output, seconds) in done.items():
                t = next(t for t in tests if t.name == tname)
                results[(k, tname)] = _result(t, passed, output, seconds)
            pending = [(k, t) for k, t in pending if (k, t.name) not in results]
    for k, r in enumerate(reports):
        r.tests = [results[(k, t.name)] for t in tests]
        r.seconds = (time.perf_counter() - t0) / len(folders)
    return reports


def _result(t: Test, passed: bool, output: str, seconds: float) -> TestResult:
    return TestResult(t.name, t.hole, t.property, t.points if passed else 0.0, t.points, output,
                      t.visibility, seconds)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _run_worker(a: Assignment, folders: list[Path], pending: list[tuple[int, Test]], events_path: Path,
                tmp: Path, timeout: float | None) -> tuple[dict, dict]:
    """Run one worker on ``pending``; returns ({(job, test): (passed, output, s)}, {job: files}).

    Whatever happens, at least one pending test gets a result (so the caller's loop ends).
    """
    jobs: dict[int, list[str]] = {}
    for k, t in pending:
        jobs.setdefault(k, []).append(t.name)
    plan = {"assignment": a.name, "import_timeout": IMPORT_TIMEOUT_S,
            "jobs": [{"key": k, "folder": str(folders[k]), "tests": names, "timeout": timeout}
                     for k, names in jobs.items()]}
    plan_path = tmp / f"plan-{events_path.stem}.json"
    plan_path.write_text(json.dumps(plan), "utf-8")
    events_path.touch()
    env = {**os.environ, **a.env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    log = open(tmp / f"{events_path.stem}.log", "w+b")
    proc = subprocess.Popen([sys.executable, "-m", "minilm.classroom.worker", str(plan_path), str(events_path)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    timeouts = {t.name: (timeout or t.timeout) for _, t in pending}
    done: dict[tuple[int, str], tuple[bool, str, float]] = {}
    files: dict[int, dict[str, str]] = {}
    current: tuple[str, int, str] | None = None  # ("start" | "import", job, test), since
    since = time.monotonic()
    started = False
    offset = 0
    try:
        while True:
            with open(events_path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            offset += len(complete)
            for line in complete.decode("utf-8", "replace").splitlines():
                e = json.loads(line)
                started = True
                if e["event"] == "import":
                    current, since = ("import", e["job"], ""), time.monotonic()
                elif e["event"] == "files":
                    files[e["job"]] = e["files"]
                    current = None
                elif e["event"] == "start":
                    current, since = ("start", e["job"], e["test"]), time.monotonic()
                elif e["event"] == "result":
                    done[(e["job"], e["test"])] = (bool(e["passed"]), e["output"], float(e["seconds"]))
                    current = None
            finished = proc.poll() is not None
            if finished and not complete:
                break
            elapsed = time.monotonic() - since
            if current is None:
                limit = START_TIMEOUT_S if not started else GRACE_S + 60
            elif current[0] == "import":
                limit = IMPORT_TIMEOUT_S + GRACE_S
            else:
                limit = timeouts[current[2]] + GRACE_S
            if not finished and current is not None and elapsed > limit:
                _kill(proc)
                break
            if not finished and current is None and elapsed > limit:
                _kill(proc)
                break
            if not finished:
                time.sleep(0.02)
    finally:
        if proc.poll() is None:
            _kill(proc)
    if all((k, t.name) in done for k, t in pending):
        log.close()
        return done, files
    # the worker stopped early: charge the test it was running (or the job it was importing)
    log.seek(0)
    tail = log.read().decode("utf-8", "replace").strip()[-800:]
    log.close()
    why = (f"exit code {proc.returncode}" if proc.returncode not in (None, -signal.SIGKILL)
           else "killed by the watchdog")
    if current is not None and current[0] == "start":
        k, tname = current[1], current[2]
        msg = (f"timed out: did not finish within {timeouts[tname]:g} s, and could not be interrupted"
               if why.startswith("killed") else f"the grading process died while running this test ({why})")
        done[(k, tname)] = (False, msg + (f"\n--- worker output ---\n{tail}" if tail else ""), 0.0)
    else:
        # died or hung outside a test (importing a folder, or starting up): that job's tests
        k = current[1] if current is not None else next(k for k, t in pending if (k, t.name) not in done)
        msg = ("importing the files did not finish" if current is not None
               else "the grading process failed before running the tests")
        for kk, t in pending:
            if kk == k and (kk, t.name) not in done:
                done[(kk, t.name)] = (False, f"{msg} ({why})" + (f"\n--- worker output ---\n{tail}" if tail else ""), 0.0)
    return done, files
