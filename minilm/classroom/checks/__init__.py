"""The tests of the assignments: one module per assignment, one function per test.

A check takes ``s``, a namespace holding the student's modules by file stem
(``s.functional``, ``s.attention``, ...), and raises ``AssertionError`` with a message a
student can act on when the code is wrong; it returns None or a short note when it is right.
Every check compares with an independent implementation: PyTorch (``torch.nn.functional``,
autograd) in float64, finite differences (``minilm.testing.numerical_grad``), the conformance
suite of ``minilm.conformance``, or a short plain-Python reference written here. None of them
calls the library's copy of a function that is a hole (the worker switches those off).

The helpers below turn a wrong type or shape into a clear message instead of a traceback.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minilm.testing import max_errors

__all__ = ["array", "close", "torch64", "grads_of", "check", "rng"]


def check(cond: Any, message: str) -> None:
    """AssertionError(message) unless ``cond``."""
    if not cond:
        raise AssertionError(message)


def array(x: Any, shape: tuple[int, ...] | None, name: str, dtype: Any = None) -> np.ndarray:
    """``x`` as an ndarray, after checking that it is one, with ``shape`` (and ``dtype``)."""
    if isinstance(x, tuple) and len(x) and shape is not None and len(shape) and not isinstance(x[0], (int, float)):
        raise AssertionError(f"{name}: expected one NumPy array of shape {shape}, got a tuple of {len(x)} "
                             f"items (return the array itself)")
    if not isinstance(x, (np.ndarray, np.generic)):
        raise AssertionError(f"{name}: expected a NumPy array{'' if shape is None else f' of shape {shape}'}, "
                             f"got {type(x).__name__}")
    x = np.asarray(x)
    if shape is not None and x.shape != tuple(shape):
        raise AssertionError(f"{name}: expected shape {tuple(shape)}, got {x.shape}")
    if dtype is not None and x.dtype != np.dtype(dtype):
        raise AssertionError(f"{name}: expected dtype {np.dtype(dtype)}, got {x.dtype}")
    return x


def close(actual: Any, expected: Any, name: str, atol: float = 1e-8, rtol: float = 1e-6) -> str:
    """Check ``actual`` against ``expected`` elementwise; returns a note with the worst error."""
    expected = np.asarray(expected.detach().numpy() if hasattr(expected, "detach") else expected)
    actual = array(actual, expected.shape, name)
    if not np.issubdtype(actual.dtype, np.number) and actual.dtype != np.bool_:
        raise AssertionError(f"{name}: expected numbers, got dtype {actual.dtype}")
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    if np.isnan(a).any() and not np.isnan(e).any():
        i = tuple(int(j) for j in np.argwhere(np.isnan(a))[0])
        raise AssertionError(f"{name}: NaN at index {i} where the reference is {float(e[i])!r} "
                             f"({int(np.isnan(a).sum())} NaN in all)")
    ok = np.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    if not ok.all():
        err = max_errors(a, e)
        i = tuple(int(j) for j in np.argwhere(~ok)[0])
        raise AssertionError(f"{name}: {int((~ok).sum())} of {ok.size} values differ from the reference "
                             f"(first at index {i}: yours {float(a[i])!r}, reference {float(e[i])!r}; "
                             f"largest abs. error {err.get('max_abs', '?')})")
    return f"{name}: max abs error {max_errors(a, e)['max_abs']:.1e}"


def torch64(*xs: np.ndarray, grad: bool = False):
    """float64 torch tensors of ``xs`` (leaf tensors that require grad with ``grad``)."""
    import torch

    out = [torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=grad) for x in xs]
    return out[0] if len(out) == 1 else out


def grads_of(loss, *tensors):
    """Autograd gradients of the scalar ``loss`` with respect to ``tensors`` (None -> zeros)."""
    import torch

    gs = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [np.zeros(t.shape) if g is None else g.detach().numpy() for g, t in zip(gs, tensors)]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
