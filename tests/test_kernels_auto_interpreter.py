"""minilm.kernels on a machine without CUDA and without TRITON_INTERPRET: it chooses the Triton
interpreter by itself, for its own kernels only, says so once, and leaves os.environ alone.

Each case runs in a fresh interpreter (the choice is made once, at import), with CUDA hidden
(``CUDA_VISIBLE_DEVICES=""``) and ``TRITON_INTERPRET`` removed from the environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

pytestmark = pytest.mark.slow  # each case starts a fresh interpreter with torch and triton (~5-10 s)

SCRIPT = textwrap.dedent(
    """
    import os, sys
    before = dict(os.environ)
    import torch
    assert not torch.cuda.is_available()
    {pre}
    import minilm.kernels as K
    print("AUTO", K.AUTO_INTERPRET)
    print("ENV_SAME", dict(os.environ) == before)
    import importlib
    fa = importlib.import_module("minilm.kernels.flash_attention")
    print("INTERPRET", fa.INTERPRET)
    if fa.INTERPRET:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 2, 19, 16, generator=g, requires_grad=True) for _ in range(3))
        for _ in range(2):  # two calls: still one message
            out = K.flash_attention(q, k, v, is_causal=True)
            out.sum().backward()
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        print("MAXERR", float((out - ref).abs().max().detach()))
        import minilm.kernels  # again: no second message
    import triton
    @triton.jit
    def user_kernel(x_ptr):
        pass
    print("USER_KERNEL", type(user_kernel).__name__)
    print("ENV_SAME_END", dict(os.environ) == before)
    """
)


def _run(tmp_path, pre: str = "", **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(CUDA_VISIBLE_DEVICES="", **env_extra)
    script = tmp_path / "script.py"  # a file: @triton.jit reads its function's source
    script.write_text(SCRIPT.format(pre=pre), encoding="utf-8")
    return subprocess.run([sys.executable, "-W", "default", str(script)], env=env,
                          capture_output=True, text=True, timeout=300)


def _lines(proc) -> dict[str, str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


def test_without_cuda_the_interpreter_is_chosen_once_and_scoped(tmp_path):
    proc = _run(tmp_path)
    out = _lines(proc)
    assert out["AUTO"] == "True" and out["INTERPRET"] == "True"
    assert out["ENV_SAME"] == "True" and out["ENV_SAME_END"] == "True"
    assert float(out["MAXERR"]) < 1e-5
    # the user's own kernel, decorated afterwards, is an ordinary (compiled) JITFunction
    assert out["USER_KERNEL"] == "JITFunction"
    assert proc.stderr.count("InterpreterWarning") == 1, proc.stderr
    assert "Triton interpreter" in proc.stderr


def test_an_explicit_choice_is_respected_silently(tmp_path):
    proc = _run(tmp_path, TRITON_INTERPRET="1")
    out = _lines(proc)
    assert out["AUTO"] == "False" and out["INTERPRET"] == "True" and out["USER_KERNEL"] == "InterpretedFunction"
    assert "InterpreterWarning" not in proc.stderr


def test_triton_imported_first_cannot_be_switched_and_says_why(tmp_path):
    proc = _run(tmp_path, pre="import triton")
    out = _lines(proc)
    assert out["AUTO"] == "False" and out["INTERPRET"] == "False" and out["ENV_SAME"] == "True"
    assert proc.stderr.count("InterpreterWarning") == 1 and "imported before" in proc.stderr, proc.stderr
