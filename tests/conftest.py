"""Shared test set-up.

- The Triton kernels run under the interpreter unless a CUDA GPU is present. The interpreter
  is chosen when each ``@triton.jit`` decorator runs, so ``TRITON_INTERPRET`` is set here,
  before any test module imports ``minilm.kernels``.
- Hypothesis: no deadlines (these machines are noisy), a bounded number of examples.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

try:
    import torch
except ImportError:  # pragma: no cover - torch is in the dev environment
    torch = None

if torch is None or not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover
    pass
else:
    settings.register_profile(
        "minilm",
        deadline=None,
        max_examples=int(os.environ.get("MINILM_HYPOTHESIS_EXAMPLES", "40")),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    settings.load_profile("minilm")


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded NumPy generator for each test."""
    return np.random.default_rng(1234)
