"""minilm.kernels: Triton kernels (the repo's top-level ``kernels/`` folder, installed as
``minilm.kernels``; no top-level ``kernels`` module is ever installed).

Needs the ``triton`` extra (Linux only): ``pip install 'minilm[triton]'``. On a machine without
a CUDA GPU the kernels run under the Triton interpreter: set ``TRITON_INTERPRET=1`` before
importing this package.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
    import triton  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised on machines without triton
    raise ImportError(
        f"minilm.kernels needs torch and triton, and {exc.name!r} is not installed: "
        "install the extra with `pip install 'minilm[triton]'` (Triton is Linux-only)"
    ) from exc

from minilm.kernels.flash_attention import flash_attention  # noqa: E402

__all__ = ["flash_attention"]
