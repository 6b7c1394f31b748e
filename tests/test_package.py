"""The package itself: what importing costs, seeding, and what a wheel installs."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import minilm

ROOT = Path(__file__).resolve().parents[1]


def test_import_minilm_needs_only_the_standard_library():
    code = "import sys, minilm, minilm.config; assert 'torch' not in sys.modules and 'triton' not in sys.modules, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton'))"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_numpy_side_never_imports_torch():
    code = (
        "import sys, minilm.numpy as mn, minilm.data, minilm.testing\n"
        "for name in mn.__all__:\n"
        "    try:\n"
        "        getattr(mn, name)\n"
        "    except (ImportError, AttributeError) as e:\n"
        "        if 'torch' in str(e): raise\n"
        "assert 'torch' not in sys.modules, 'minilm.numpy imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_seed_everything_makes_global_generators_repeat():
    import random

    import numpy as np

    minilm.seed_everything(7)
    a = (random.random(), np.random.rand())
    minilm.seed_everything(7)
    assert (random.random(), np.random.rand()) == a
    with pytest.raises(ValueError, match="seed"):
        minilm.seed_everything(-1)


def test_seed_everything_seeds_torch():
    torch = pytest.importorskip("torch")
    minilm.seed_everything(3)
    a = torch.rand(3)
    minilm.seed_everything(3)
    assert torch.equal(a, torch.rand(3))


@pytest.mark.slow
def test_wheel_ships_kernels_inside_minilm_and_no_top_level_kernels(tmp_path):
    """Build the wheel and read its file list: kernels/ must land as minilm/kernels/."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("minilm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "minilm/kernels/__init__.py" in names
    assert "minilm/numpy/__init__.py" in names and "minilm/torch/__init__.py" in names
    top_level = {n.split("/")[0] for n in names}
    assert "kernels" not in top_level, top_level
    assert not any(n.startswith("tests/") for n in names)


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
