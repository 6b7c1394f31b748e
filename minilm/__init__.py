"""minilm: language models and their kernels, from scratch, three times over.

Every idea exists as a readable NumPy reference (``minilm.numpy``), a PyTorch twin with the
same names and the same weights (``minilm.torch``) and, for attention, a Triton kernel
(``minilm.kernels``). Importing ``minilm`` itself needs only the standard library: torch and
triton are imported by the sub-packages that use them.

Legend used in every docstring: B batch, H heads, Hkv key/value heads, T (or L) query length,
S key length, D head dim, C model width, V vocab size.
"""

from __future__ import annotations

import operator
import os
import random
import sys

__version__ = "0.1.0"
__all__ = ["__version__", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed every global random number generator minilm may touch.

    That is Python's ``random``, NumPy's legacy global generator and, if they are already
    imported, torch (CPU and CUDA). minilm's own code takes explicit generators; this is for
    the user code around it. ``PYTHONHASHSEED`` is set for child processes.

    ``seed`` may be any integer in [0, 2**32), a NumPy integer such as ``np.int64(7)``
    included (as torch accepts); bools, floats and negative numbers raise ValueError.
    """
    try:
        if isinstance(seed, bool):  # True is an int to Python, but never meant as a seed
            raise TypeError
        seed = operator.index(seed)  # int, np.int64, ...: anything that is an integer
    except TypeError:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}") from None
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed)
    else:
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy is a hard dependency
            pass
        else:
            np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)  # seeds CUDA too when it is present
