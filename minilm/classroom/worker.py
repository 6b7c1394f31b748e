"""The grading worker: runs an assignment's tests on student folders, in a process of its own.

``python -m minilm.classroom.worker PLAN.json EVENTS.jsonl`` (started by
``minilm.classroom.grader``; not meant to be run by hand). The plan names one assignment, the
folders to grade and the tests to run in each; every event is appended to EVENTS.jsonl as one
JSON line and flushed at once, so that the parent, which watches the file, knows which test is
running if this process hangs or dies:

    {"event": "import", "job": 0}                       importing a folder's files
    {"event": "start", "job": 0, "test": NAME}          a test begins
    {"event": "result", "job": 0, "test": NAME, "passed": bool, "output": TEXT, "seconds": s}
    {"event": "files", "job": 0, "files": {stem: path}}  the files the tests ran, once per job

Each test runs under ``signal.setitimer`` (an alarm raising ``TestTimeout``, a BaseException
that student code catching ``Exception`` does not swallow); the parent kills the process if
even that does not stop it (a loop inside a C call) and starts a new worker on the tests left.

While a test of hole X runs, the other holes of the same file are the library's code compiled
into the student's module (their globals are the student's), so a mistake in one hole costs
points only on that hole's tests. The library's own copies of the holes are replaced by
tripwires before the student's files are imported: a student file that imports or calls
minilm's copy of a function it should write fails that hole's tests, with a message saying so.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
import signal
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any, Callable

from minilm.classroom.manifest import Assignment, load_assignment

_MAX_OUTPUT = 2000  # characters of a test's message kept in the results


class TestTimeout(BaseException):
    """Raised by the alarm when a test runs past its timeout."""


class LibraryCopyCalled(RuntimeError):
    """The student's code called minilm's own copy of a function it is asked to write."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise TestTimeout()


@contextlib.contextmanager
def _alarm(seconds: float):
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _resolve(obj: Any, qualname: str) -> tuple[Any, str]:
    """(owner, attribute name) of ``qualname`` ("f" or "Class.method") inside ``obj``."""
    parts = qualname.split(".")
    for p in parts[:-1]:
        obj = getattr(obj, p)
    return obj, parts[-1]


def _raw(owner: Any, name: str) -> Any:
    return owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)


def _tripwire(module: str, qualname: str) -> Callable[..., Any]:
    def tripwire(*args: Any, **kwargs: Any) -> Any:
        raise LibraryCopyCalled(f"this called minilm's own copy of {qualname} ({module}); the grade "
                                f"must come from your code, so write it in your file instead")
    tripwire.__name__ = qualname.split(".")[-1]
    return tripwire


def _short_traceback(exc: BaseException, folder: Path) -> str:
    """The exception, plus the last line of the student's files it went through."""
    where = ""
    for fs in traceback.extract_tb(exc.__traceback__):
        try:
            if Path(fs.filename).resolve().is_relative_to(folder):
                where = f" (in {Path(fs.filename).name}, line {fs.lineno}: {(fs.line or '').strip()})"
        except (OSError, ValueError):
            pass
    msg = str(exc) if not isinstance(exc, SyntaxError) else f"{exc.msg} at line {exc.lineno}: {(exc.text or '').strip()}"
    return f"{type(exc).__name__}: {msg}{where}"


class Worker:
    def __init__(self, plan: dict[str, Any], events: io.TextIOBase) -> None:
        self.plan = plan
        self.events = events
        self.a: Assignment = load_assignment(plan["assignment"])
        self.checks = importlib.import_module(self.a.checks)
        # what the checks import lazily is imported now, outside any test's timeout: an alarm
        # inside `import torch` would leave a half-initialised module for every later test
        for name in ("torch", "torch.nn.functional", *self.a.preload):
            try:
                importlib.import_module(name)
            except ImportError:
                pass
        # the library's modules and the real hole functions, captured before the tripwires go in
        self.lib_modules = {f: importlib.import_module(m) for f, m in self.a.files.items()}
        self.reference: dict[str, Any] = {}
        for h in self.a.holes:
            owner, attr = _resolve(self.lib_modules[h.file], h.name)
            self.reference[h.name] = _raw(owner, attr)
        for h in self.a.holes:
            owner, attr = _resolve(self.lib_modules[h.file], h.name)
            setattr(owner, attr, _tripwire(self.a.files[h.file], h.name))

    def emit(self, **event: Any) -> None:
        self.events.write(json.dumps(event) + "\n")
        self.events.flush()

    # ---- one folder -----------------------------------------------------------------------
    def load(self, key: int, folder: Path) -> tuple[dict[str, types.ModuleType], dict[str, str]]:
        """Import the student's files; returns (modules by stem, error message by file)."""
        modules: dict[str, types.ModuleType] = {}
        errors: dict[str, str] = {}
        for fname in self.a.files:
            path = folder / fname
            stem = Path(fname).stem
            if not path.is_file():
                errors[fname] = f"{fname} is missing from the folder"
                continue
            name = f"minilm_student_{self.a.name.replace('-', '_')}_{key}_{stem}"
            try:
                source = path.read_text("utf-8")
                compile(source, str(path), "exec")  # a syntax error is reported before running anything
                spec = importlib.util.spec_from_file_location(name, path)
                mod = importlib.util.module_from_spec(spec)
                sys.modules[name] = mod
                with _alarm(float(self.plan.get("import_timeout", 30))), _captured():
                    spec.loader.exec_module(mod)
                modules[stem] = mod
            except TestTimeout:
                errors[fname] = f"importing {fname} did not finish within {self.plan.get('import_timeout', 30)} s"
            except BaseException as exc:  # noqa: BLE001 - anything a student file does at import
                errors[fname] = f"{fname} cannot be imported: {_short_traceback(exc, folder)}"
        return modules, errors

    @contextlib.contextmanager
    def isolated(self, modules: dict[str, types.ModuleType], hole: str):
        """The other holes of the assignment run the library's code in the student's module."""
        saved = []
        for h in self.a.holes:
            stem = Path(h.file).stem
            if h.name == hole or stem not in modules:
                continue
            ref = self.reference[h.name]
            if not isinstance(ref, types.FunctionType) or ref.__closure__:
                continue  # a Triton kernel, a closure: leave the student's
            mod = modules[stem]
            try:
                owner, attr = _resolve(mod, h.name)
            except AttributeError:
                continue
            fn = types.FunctionType(ref.__code__, mod.__dict__, ref.__name__, ref.__defaults__, None)
            fn.__kwdefaults__ = ref.__kwdefaults__
            fn.__qualname__ = ref.__qualname__
            saved.append((owner, attr, owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr)))
            setattr(owner, attr, fn)
        try:
            yield
        finally:
            for owner, attr, old in reversed(saved):
                setattr(owner, attr, old)

    def run_job(self, job: dict[str, Any]) -> None:
        key, folder = job["key"], Path(job["folder"]).resolve()
        self.emit(event="import", job=key)
        modules, errors = self.load(key, folder)
        self.emit(event="files", job=key, files={s: getattr(m, "__file__", "") for s, m in modules.items()})
        tests = {t.name: t for t in self.a.tests}
        for tname in job["tests"]:
            t = tests[tname]
            hole = self.a.hole(t.hole)
            self.emit(event="start", job=key, test=tname)
            t0 = time.perf_counter()
            if hole.file in errors:
                passed, output = False, errors[hole.file]
            else:
                passed, output = self.run_test(t, modules, folder, job.get("timeout") or t.timeout)
            self.emit(event="result", job=key, test=tname, passed=passed, output=output[:_MAX_OUTPUT],
                      seconds=round(time.perf_counter() - t0, 3))

    def run_test(self, t: Any, modules: dict[str, types.ModuleType], folder: Path,
                 timeout: float) -> tuple[bool, str]:
        check = getattr(self.checks, t.check)
        ns = types.SimpleNamespace(**modules, folder=folder)
        buf = io.StringIO()
        try:
            with self.isolated(modules, t.hole), _alarm(timeout), _captured(buf):
                note = check(ns)
            return True, (note or "passed") + _printed(buf)
        except TestTimeout:
            return False, f"timed out: did not finish within {timeout:g} s (an infinite loop?)" + _printed(buf)
        except NotImplementedError as exc:
            return False, f"not implemented yet: {exc}" + _printed(buf)
        except AssertionError as exc:
            return False, f"wrong result: {exc}" + _printed(buf)
        except LibraryCopyCalled as exc:
            return False, str(exc)
        except BaseException as exc:  # noqa: BLE001 - the grader never crashes on student code
            return False, f"error: {_short_traceback(exc, folder)}" + _printed(buf)


@contextlib.contextmanager
def _captured(buf: io.StringIO | None = None):
    """What the student's code prints goes into ``buf`` (not into the grader's output)."""
    buf = buf if buf is not None else io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield buf


def _printed(buf: io.StringIO) -> str:
    text = buf.getvalue().strip()
    if not text:
        return ""
    return "\n--- printed ---\n" + (text if len(text) < 600 else text[:600] + " ...")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plan = json.loads(Path(argv[0]).read_text("utf-8"))
    sys.dont_write_bytecode = True
    with open(argv[1], "a", encoding="utf-8") as events:
        w = Worker(plan, events)
        for job in plan["jobs"]:
            w.run_job(job)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
