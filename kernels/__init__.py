"""minilm.kernels: Triton kernels (the repo's top-level ``kernels/`` folder, installed as
``minilm.kernels``; no top-level ``kernels`` module is ever installed).

Needs the ``triton`` extra (Linux only): ``pip install 'minilm[triton]'``. On a machine without
a CUDA GPU the kernels run under the Triton interpreter: set ``TRITON_INTERPRET=1`` before
importing this package.

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
