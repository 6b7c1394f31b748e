"""minilm.kernels: Triton kernels (the repo's top-level ``kernels/`` folder, installed as
``minilm.kernels``; no top-level ``kernels`` module is ever installed).

Needs the ``triton`` extra (Linux only): ``pip install 'minilm[triton]'``.

CPU or GPU. Triton decides, when each ``@triton.jit`` decorator runs, whether a kernel is
compiled for a GPU or run by its interpreter on the CPU (``TRITON_INTERPRET=1``). So this
package decides once, when it is first imported:

- ``TRITON_INTERPRET`` set (to anything but the empty string): as it says; ``0`` forces
  compiled kernels even without a GPU (``python -m minilm.kernels.compile`` needs that);
- unset, and ``torch.cuda.is_available()``: compiled GPU kernels;
- unset, and no CUDA GPU: minilm's kernels are decorated under the interpreter, and it says
  so once (an ``InterpreterWarning``). ``TRITON_INTERPRET=1`` is set only while triton and
  minilm's kernel modules are imported, then removed again: ``os.environ`` is as it was, and
  the user's own ``@triton.jit`` kernels, decorated later, are compiled as before (Triton's
  own library helpers, such as ``tl.zeros``, were decorated during the import and are
  interpreter objects, which also lets the user's kernels run under ``TRITON_INTERPRET=1``).
  This needs triton not to be imported yet; if it was, the kernels stay compiled, a warning
  says why, and a call on CPU tensors names the fix (``TRITON_INTERPRET=1`` first).

- ``flash_attention(q, k, v, is_causal=False, scale=None, return_lse=False)``: the Triton
  flash-attention kernels, forward and backward (module ``minilm.kernels.flash_attention``;
  since the package attribute of that name is the function, reach the module itself with
  ``importlib.import_module("minilm.kernels.flash_attention")``).
- ``python -m minilm.kernels.compile``: compile the kernels for sm_80/sm_90 without a GPU and
  report registers, spills, shared memory and wgmma use.
- ``minilm.kernels.bench.main``: TFLOP/s against ``torch.nn.functional.scaled_dot_product_attention``
  on a CUDA GPU.
"""

from __future__ import annotations

import os
import sys
import warnings

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised on machines without torch
    raise ImportError(
        "minilm.kernels needs torch and triton, and 'torch' is not installed: "
        "install the extra with `pip install 'minilm[triton]'` (Triton is Linux-only)"
    ) from exc


class InterpreterWarning(UserWarning):
    """minilm.kernels chose the Triton interpreter by itself (no CUDA GPU, TRITON_INTERPRET unset)."""


# Decided once, here: interpret minilm's kernels when nobody said otherwise and there is no GPU.
# The interpreter must also be on when triton.language is first imported (its own helpers,
# tl.zeros and friends, are @triton.jit functions decorated at that moment), so this works
# only if triton is not imported yet; otherwise the kernels stay compiled and a CPU call says
# to set TRITON_INTERPRET=1 before importing triton.
_WANT_INTERPRETER = not os.environ.get("TRITON_INTERPRET") and not torch.cuda.is_available()
AUTO_INTERPRET = _WANT_INTERPRETER and "triton" not in sys.modules


def _import_kernels():
    try:
        import triton  # noqa: F401
        import triton.experimental.gluon  # noqa: F401  (imported by triton at the first launch, and
        # it asserts the interpreter mode then: import it now, inside the window)

        from minilm.kernels.flash_attention import flash_attention
    except ImportError as exc:  # pragma: no cover - exercised on machines without triton
        if exc.name not in ("triton",) and not (exc.name or "").startswith("triton."):
            raise
        raise ImportError(
            f"minilm.kernels needs torch and triton, and {exc.name!r} is not installed: "
            "install the extra with `pip install 'minilm[triton]'` (Triton is Linux-only)"
        ) from exc
    return flash_attention


if AUTO_INTERPRET:
    _before = os.environ.get("TRITON_INTERPRET")  # None, or "" (which means unset)
    os.environ["TRITON_INTERPRET"] = "1"  # read by each @triton.jit below, at decoration
    try:
        flash_attention = _import_kernels()
    finally:
        if _before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _before
    warnings.warn(
        "minilm.kernels: no CUDA GPU, so minilm's Triton kernels run under the Triton interpreter "
        "on the CPU (slow, but correct). Set TRITON_INTERPRET=1 yourself to silence this.",
        InterpreterWarning,
        stacklevel=2,
    )
else:
    flash_attention = _import_kernels()
    if _WANT_INTERPRETER:
        warnings.warn(
            "minilm.kernels: no CUDA GPU, but triton was imported before minilm.kernels without "
            "TRITON_INTERPRET=1, so the Triton interpreter cannot be chosen any more: set "
            "TRITON_INTERPRET=1 before importing triton to run the kernels on the CPU.",
            InterpreterWarning,
            stacklevel=2,
        )

__all__ = ["flash_attention", "InterpreterWarning", "AUTO_INTERPRET"]
