"""Writing an assignment's folders: the student's, the key, and Gradescope's autograder zip.

The student's folder holds copies of the library files with the holes cut out
(``minilm.classroom.holes``), a README saying what to implement, in which order and how to
test locally, the visible tests as a pytest file, and ``.assignment.json`` naming the
assignment. The files import the rest of minilm from the installed package, so the folder
works anywhere minilm is installed. The key (``solution=True``) holds the same files, complete.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

import minilm
from minilm.classroom.manifest import MARKER_FILE, Assignment
from minilm.classroom.holes import cut

__all__ = ["source_path", "student_source", "make_folder", "gradescope_zip"]


def source_path(module: str) -> Path:
    """The file of library module ``module`` ("minilm.numpy.functional"), without importing it."""
    package, _, leaf = module.rpartition(".")
    spec = importlib.util.find_spec(package)  # imports the parents only (minilm), not the package
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"cannot find the package {package!r} of {module!r}")
    path = Path(list(spec.submodule_search_locations)[0]) / f"{leaf}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{module}: no file {path}")
    return path


def _absolute_imports(source: str, module: str) -> str:
    """Relative imports (``from .x import y``) made absolute, so the copy runs outside minilm."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    package = module.rpartition(".")[0].split(".")
    for node in sorted((n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level),
                       key=lambda n: -n.lineno):
        base = package[: len(package) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
        new = ast.ImportFrom(module=target, names=node.names, level=0)
        indent = " " * node.col_offset
        lines[node.lineno - 1: node.end_lineno] = [indent + ast.unparse(new) + "\n"]
    return "".join(lines)


def student_source(a: Assignment, fname: str, solution: bool = False) -> str:
    """The text of the student's file ``fname`` (the key's with ``solution``)."""
    module = a.files[fname]
    source = _absolute_imports(source_path(module).read_text("utf-8"), module)
    holes = [h for h in a.holes if h.file == fname]
    if not solution:
        for i, h in enumerate(holes, 1):
            source = cut(source, h.name, h.kind, f"{h.name}: {h.todo}")
    what = "the complete key" if solution else "fill in the functions that raise NotImplementedError"
    header = (f"# minilm assignment {a.name!r} (tutorial chapter {a.chapter}): your copy of {module}\n"
              f"# ({what}: {', '.join(h.name for h in holes)}).\n"
              f"# Grade it with: minilm assignment grade .   (see README.md)\n")
    return header + source


def make_folder(a: Assignment, out: Path, solution: bool = False, force: bool = False) -> Path:
    """Write the folder for ``a`` at ``out`` (which must be empty or new, unless ``force``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"{out} is not empty; choose a new folder (or pass force=True)")
    texts = {fname: student_source(a, fname, solution) for fname in a.files}  # all or nothing
    out.mkdir(parents=True, exist_ok=True)
    for fname, text in texts.items():
        (out / fname).write_text(text, "utf-8")
    (out / "README.md").write_text(readme(a, solution), "utf-8")
    (out / "test_visible.py").write_text(visible_tests(a), "utf-8")
    marker = {"assignment": a.name, "chapter": a.chapter, "minilm_version": minilm.__version__,
              "files": list(a.files), "solution": solution}
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", "utf-8")
    return out


def readme(a: Assignment, solution: bool = False) -> str:
    lines = [f"# {a.title}", "",
             f"minilm assignment `{a.name}`, tutorial chapter {a.chapter}. {a.summary}", ""]
    if solution:
        lines += ["**This is the key**: the files are complete. Do not hand it out.", ""]
    lines += ["## What to implement, in this order", ""]
    for i, h in enumerate(a.holes, 1):
        tests = [t for t in a.tests if t.hole == h.name]
        pts = sum(t.points for t in tests)
        vis = sum(t.points for t in tests if t.visible)
        props = ", ".join(dict.fromkeys(t.property for t in tests))
        lines.append(f"{i}. `{h.name}` in `{h.file}` ({pts:g} points, {vis:g} of them visible; "
                     f"graded on: {props}): {h.todo}")
    lines += ["",
              "Each function keeps its signature, docstring and the comments of the original; its body",
              "raises `NotImplementedError` until you write it. Keep the signatures as they are.",
              "Everything else in the files already works, and the rest of minilm comes from the",
              "installed package. Do not import minilm's own copy of a function you are asked to",
              "write: the grader switches those off, and a test that reaches one scores 0.",
              "",
              "## Testing locally", "",
              "```",
              "minilm assignment grade . --visible      # the visible tests, as a table",
              "python -m pytest -q test_visible.py      # the same tests through pytest",
              "```", "",
              f"The grade ({a.points:g} points) also counts hidden tests of the same kinds: other shapes,",
              "masks, huge inputs. Each test compares your code with an independent implementation",
              "(PyTorch, finite differences) and has a timeout; a test of one function uses the",
              "reference for the other functions of this assignment, so each function is graded on",
              "its own.", "",
              "## Visible tests", ""]
    for t in a.tests:
        if t.visible:
            lines.append(f"- {t.name} ({t.points:g} points)")
    return "\n".join(lines) + "\n"


def visible_tests(a: Assignment) -> str:
    names = [t.name for t in a.tests if t.visible]
    return f'''"""The visible tests of minilm assignment {a.name!r}: python -m pytest -q test_visible.py

Each test runs in the grader's worker process, on the files of this folder.
"""

from pathlib import Path

import pytest

from minilm.classroom import grade

HERE = Path(__file__).resolve().parent
NAMES = {json.dumps(names, indent=4)}


@pytest.fixture(scope="module")
def report():
    return grade(HERE, visible_only=True)


@pytest.mark.parametrize("name", NAMES)
def test_visible(report, name):
    t = report.test(name)
    assert t.passed, t.output
'''


def _minilm_tree(dest: Path) -> None:
    """Copy the installed minilm (with minilm.kernels) to ``dest/minilm`` + a pyproject.toml."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    root = Path(minilm.__file__).parent
    shutil.copytree(root, dest / "minilm", ignore=ignore)
    spec = importlib.util.find_spec("minilm.kernels")
    if spec is not None and spec.submodule_search_locations:
        kdir = Path(list(spec.submodule_search_locations)[0])
        if not (dest / "minilm" / "kernels").exists():
            shutil.copytree(kdir, dest / "minilm" / "kernels", ignore=ignore)
    (dest / "pyproject.toml").write_text(f'''[build-system]
requires = ["setuptools>=68", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "minilm"
version = "{minilm.__version__}"
requires-python = ">=3.10"
dependencies = ["numpy>=1.24", "tqdm>=4.60", "safetensors>=0.4"]

[project.optional-dependencies]
torch = ["torch>=2.3"]
triton = ["torch>=2.3", "triton>=3.3; sys_platform == 'linux'"]

[project.scripts]
minilm = "minilm.cli:main"

[tool.setuptools.packages.find]
include = ["minilm*"]

[tool.setuptools.package-data]
"*" = ["*.json", "*.txt.gz"]
''', "utf-8")


def gradescope_zip(a: Assignment, out: Path) -> Path:
    """Gradescope's autograder zip: setup.sh, run_autograder, the student's folder, minilm.

    Gradescope unpacks the zip into /autograder/source, runs setup.sh once when it builds the
    image, then run_autograder for each submission (in /autograder/submission), which must
    write /autograder/results/results.json.
    """
    out = Path(out)
    if out.suffix != ".zip":
        raise ValueError(f"{out}: the Gradescope autograder must be a .zip file")
    with tempfile.TemporaryDirectory(prefix="minilm-gradescope-") as tmp:
        root = Path(tmp)
        make_folder(a, root / "assignment")
        _minilm_tree(root / "minilm_src")
        extras = ",".join(dict.fromkeys(("torch",) + a.extras))
        (root / "setup.sh").write_text(f"""#!/usr/bin/env bash
# Gradescope runs this once, when it builds the autograder image: install minilm (the copy in
# this zip) with what the grader of '{a.name}' needs (CPU wheels of PyTorch).
set -euo pipefail
cd /autograder/source
if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update && apt-get install -y python3 python3-pip
fi
python3 -m pip install --upgrade pip
python3 -m pip install --extra-index-url https://download.pytorch.org/whl/cpu "./minilm_src[{extras}]"
""", "utf-8")
        files = " ".join(a.files)
        (root / "run_autograder").write_text(f"""#!/usr/bin/env bash
# Gradescope runs this for every submission: put the submitted files into a fresh copy of the
# assignment folder, grade it, and write /autograder/results/results.json.
# (AUTOGRADER_ROOT and PYTHON may be set to try it outside Gradescope.)
set -uo pipefail
root=${{AUTOGRADER_ROOT:-/autograder}}
python=${{PYTHON:-python3}}
work="$root/work"
rm -rf "$work" && cp -r "$root/source/assignment" "$work"
for f in {files}; do
    src=$(find "$root/submission" -type f -name "$f" | head -n 1)
    if [ -n "$src" ]; then
        cp "$src" "$work/$f"
    else
        echo "the submission has no $f: its functions are graded as not implemented"
    fi
done
mkdir -p "$root/results"
cd "$work"
"$python" -m minilm assignment grade "$work" --json "$root/results/results.json"
""", "utf-8")
        for script in ("setup.sh", "run_autograder"):
            p = root / script
            p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    info = zipfile.ZipInfo.from_file(p, p.relative_to(root).as_posix())
                    info.compress_type = zipfile.ZIP_DEFLATED
                    z.writestr(info, p.read_bytes())
    return out
