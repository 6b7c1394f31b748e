"""The package itself: what importing costs, seeding, and what a wheel installs."""

import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import minilm

ROOT = Path(__file__).resolve().parents[1]


def run_python(code, cwd=None, env=None, timeout=300):
    """Run ``code`` in a fresh interpreter; return its stdout (a failure shows its stderr)."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_import_minilm_needs_only_the_standard_library():
    """API.md: `import minilm` imports neither numpy nor torch nor triton."""
    out = run_python("import sys, minilm\n"
                     "print(sorted(m for m in sys.modules\n"
                     "             if m.split('.')[0] in ('numpy', 'torch', 'triton')))")
    assert out.strip() == "[]", out


@pytest.mark.parametrize("module", ["minilm.numpy", "minilm.config", "minilm.data"])
def test_numpy_side_imports_no_torch_triton_matplotlib_or_tqdm(module):
    """minilm.numpy, minilm.config and minilm.data need numpy at most (tqdm is imported only
    inside the training loop, matplotlib only by the tutorials)."""
    out = run_python(f"import sys, {module}\n"
                     "print(sorted(m for m in sys.modules if m.split('.')[0]\n"
                     "             in ('torch', 'triton', 'matplotlib', 'tqdm')))")
    assert out.strip() == "[]", out


def test_numpy_side_never_imports_torch():
    """Resolving every public name of minilm.numpy (each loads its module) imports no torch."""
    code = (
        "import sys, minilm.numpy as mn, minilm.data, minilm.testing\n"
        "for name in mn.__all__:\n"
        "    getattr(mn, name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0]\n"
        "             in ('torch', 'triton', 'matplotlib', 'tqdm')))\n"
    )
    assert run_python(code).strip() == "[]"


# ----------------------------------------------------------------------------- public names vs submodules

# A public function named like its own module: importing the submodule sets the package
# attribute of that name to the module, which must never hide the function.
CLASHES = {"minilm.numpy": ["flash_attention", "generate"],
           "minilm.torch": ["flash_attention", "generate"]}


@pytest.mark.parametrize("package", sorted(CLASHES))
def test_the_names_that_clash_with_submodules_are_the_ones_listed(package):
    """Every public name of both packages checked against every submodule name."""
    if package == "minilm.torch":
        pytest.importorskip("torch")
    pkg = importlib.import_module(package)
    submodules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    assert sorted(set(pkg.__all__) & submodules) == CLASHES[package]


@pytest.mark.parametrize("order", ["submodule-first", "function-first"])
@pytest.mark.parametrize("package,name", [(p, n) for p in sorted(CLASHES) for n in CLASHES[p]])
def test_public_function_wins_over_its_submodule_in_every_import_order(package, name, order):
    """In a fresh interpreter: `import pkg.name` before or after `pkg.name`, the package
    attribute stays the function (a module there would raise TypeError when called)."""
    if package == "minilm.torch":
        pytest.importorskip("torch")
    sub = f"{package}.{name}"
    steps = {
        "submodule-first": f"import {sub}\nimport {package} as pkg\nf = pkg.{name}\n",
        "function-first": f"from {package} import {name} as f\nimport {sub}\nimport {package} as pkg\n",
    }[order]
    code = (
        "import sys, types\n" + steps +
        f"m = sys.modules[{sub!r}]\n"
        "assert isinstance(m, types.ModuleType)\n"
        f"assert f is m.{name} and pkg.{name} is m.{name}, pkg.{name}\n"
        f"from {package} import {name} as g\n"
        "assert g is f and callable(g)\n"
    )
    run_python(code)


@pytest.mark.parametrize("package", sorted(CLASHES))
def test_every_public_name_is_its_function_after_every_submodule_is_imported(package):
    """Import every submodule first (as the CLI and the training code do), then every name of
    ``__all__`` must still be the object its module defines, never a module."""
    if package == "minilm.torch":
        pytest.importorskip("torch")
    code = (
        "import importlib, pkgutil, sys, types\n"
        f"import {package} as pkg\n"
        "for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):\n"
        "    importlib.import_module(pkg.__name__ + '.' + m.name)\n"
        "for name in pkg.__all__:\n"
        "    value = getattr(pkg, name)\n"
        "    assert not isinstance(value, types.ModuleType), name\n"
        "    assert value is getattr(sys.modules[pkg.__name__ + '.' + pkg._EXPORTS[name]], name), name\n"
    )
    run_python(code)


# ----------------------------------------------------------------------------- seeding


def test_seed_everything_makes_global_generators_repeat():
    import random

    import numpy as np

    minilm.seed_everything(7)
    a = (random.random(), np.random.rand())
    minilm.seed_everything(7)
    assert (random.random(), np.random.rand()) == a
    with pytest.raises(ValueError, match="seed"):
        minilm.seed_everything(-1)


def test_seed_everything_takes_numpy_integers_and_rejects_bools_floats_negatives():
    """Any integer works as torch.manual_seed takes it: np.int64(7) seeds as 7 does."""
    import random

    import numpy as np

    minilm.seed_everything(7)
    a = (random.random(), np.random.rand())
    minilm.seed_everything(np.int64(7))
    assert (random.random(), np.random.rand()) == a
    minilm.seed_everything(np.uint32(2**32 - 1))
    for bad in (True, np.bool_(False), 1.0, np.float64(2.0), -1, np.int64(-1), 2**32, "3", None):
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*32\)"):
            minilm.seed_everything(bad)


def test_seed_everything_seeds_torch():
    torch = pytest.importorskip("torch")
    minilm.seed_everything(3)
    a = torch.rand(3)
    minilm.seed_everything(3)
    assert torch.equal(a, torch.rand(3))


# ----------------------------------------------------------------------------- installing

# A tiny kernel call, checked against torch's own attention (float32, under the interpreter).
KERNEL_SMOKE = """
import torch
import minilm.kernels
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 2, 16, 16, generator=g) for _ in range(3))
out = minilm.kernels.flash_attention(q, k, v, is_causal=True)
ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
err = (out - ref).abs().max().item()
assert err < 1e-5, err
"""


@pytest.mark.slow
def test_wheel_installs_kernels_as_minilm_kernels_and_no_top_level_kernels(tmp_path):
    """Build a wheel from a copy of the tree, unpack it and import minilm.kernels from it.

    The copy keeps the build (its build/ folder) out of the checkout; the import runs in a
    fresh interpreter whose cwd is elsewhere, with the repo not on sys.path, and checks that
    minilm and minilm.kernels both come from the unpacked wheel.
    """
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("minilm", "kernels"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(dist), str(src)],
        check=True, cwd=tmp_path, timeout=300,
    )
    (wheel,) = dist.glob("minilm-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert zf.read(top_level).decode().split() == ["minilm"]
        site = tmp_path / "site"
        zf.extractall(site)
    assert "minilm/kernels/__init__.py" in names and "minilm/kernels/flash_attention.py" in names
    assert "minilm/numpy/__init__.py" in names and "minilm/torch/__init__.py" in names
    top = {n.split("/")[0] for n in names}
    assert "kernels" not in top and not any(n.startswith("tests/") for n in names), top

    work = tmp_path / "elsewhere"
    work.mkdir()
    code = (
        "import os, sys\n"
        f"root, site = {str(ROOT)!r}, {str(site)!r}\n"
        "sys.path.insert(0, site)\n"
        "assert not any(os.path.realpath(p or os.getcwd()) == root for p in sys.path), sys.path\n"
        + KERNEL_SMOKE +
        "import minilm, importlib.util\n"
        "assert minilm.__file__.startswith(site), minilm.__file__\n"
        "assert minilm.kernels.__file__.startswith(os.path.join(site, 'minilm', 'kernels')), minilm.kernels.__file__\n"
        "assert importlib.util.find_spec('kernels') is None\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("PYTHONPATH", None)
    run_python(code, cwd=work, env=env)


def test_editable_install_maps_minilm_kernels_to_the_repo_kernels_folder(tmp_path):
    """An editable install (pip install -e .) finds minilm.kernels in the repo's kernels/,
    and no top-level `kernels` is importable from anywhere but the repo itself."""
    code = (
        "import importlib.util as u\n"
        "print(u.find_spec('minilm').origin)\n"
        "print(u.find_spec('minilm.kernels').origin)\n"
        "print(u.find_spec('kernels'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    minilm_origin, kernels_origin, top_kernels = run_python(code, cwd=tmp_path, env=env).split("\n")[:3]
    if not Path(minilm_origin).resolve().is_relative_to(ROOT):
        pytest.skip(f"minilm is not installed in editable mode from this checkout ({minilm_origin})")
    assert Path(kernels_origin).resolve() == ROOT / "kernels" / "__init__.py"
    assert top_kernels == "None"


def test_kernels_without_triton_name_the_missing_extra():
    """Simulate a Mac without Triton: `import triton` fails, minilm.kernels says what to install."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import minilm.numpy, minilm.config\n"
        "try:\n"
        "    import minilm.kernels\n"
        "except ImportError as e:\n"
        "    print(e)\n"
        "else:\n"
        "    raise SystemExit('minilm.kernels imported without triton')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "minilm[triton]" in out.stdout and "'triton'" in out.stdout, out.stdout


# ----------------------------------------------------------------------------- licence, scripts


def test_license_file_is_mit_as_pyproject_says():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the minilm authors" in text
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()


FAKE_PYTHON = """#!/usr/bin/env bash
# A stand-in venv python: logs every pip install, says torch imports.
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "pip $*" >> "$PIP_LOG"; fi
exit 0
"""


def test_run_and_test_scripts_share_one_environment_installed_once(tmp_path):
    """scripts/run.sh and scripts/test.sh source env.sh the same way, so the second, and any
    alternation, installs nothing; the one install brings every extra ('all')."""
    for script in ("run.sh", "test.sh"):
        lines = [x.strip() for x in (ROOT / "scripts" / script).read_text().splitlines()
                 if "env.sh" in x and x.strip().startswith("source")]
        assert lines and all(x.split()[:2] == ["source", '"$root/scripts/env.sh"'] and
                             x.split()[2:] in ([], ["||", "exit", "1"]) for x in lines), lines
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(FAKE_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    log = tmp_path / "pip.log"
    env = {**os.environ, "MINILM_VENV": str(venv), "PIP_LOG": str(log)}
    env.pop("MINILM_EXTRAS", None)
    for _ in range(3):  # run.sh, test.sh, run.sh again: what they source
        subprocess.run(["bash", "-c", f"source {ROOT / 'scripts' / 'env.sh'}"], env=env, check=True,
                       timeout=60)
    installs = log.read_text().splitlines()
    editable = [x for x in installs if " -e " in x]
    assert len(editable) == 1 and editable[0].endswith(f"{ROOT}[all]"), installs
    assert (venv / ".minilm-installed").read_text().split()[-1] == "all"
