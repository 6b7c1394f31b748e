"""Testing helpers shared by minilm's tests, tutorials and assignments.

- ``assert_close(actual, expected, atol, rtol)``: like ``numpy.testing.assert_allclose`` but
  the failure message names the worst absolute and relative error and the index where each
  happened, for NumPy arrays and torch tensors alike.
- ``numerical_grad(f, x)`` and ``check_grad(f, x, grad)``: central finite differences, the
  independent check of every hand-written backward pass.

- ``attention_conformance(fn)``: the conformance suite any attention function with the
  ``minilm.kernels.flash_attention`` signature can be run through (defined in
  ``minilm.conformance``; imported on first use because it needs torch).

Only NumPy is imported here; torch tensors are converted if torch is present.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = [
    "as_numpy",
    "assert_close",
    "max_errors",
    "numerical_grad",
    "check_grad",
    "attention_conformance",
]


def __getattr__(name: str):
    # attention_conformance needs torch, so it is imported lazily (PEP 562).
    if name == "attention_conformance":
        from minilm.conformance import attention_conformance

        return attention_conformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def as_numpy(x: Any) -> np.ndarray:
    """A float64 (or bool/int) NumPy copy of an array, tensor or number."""
    if hasattr(x, "detach"):  # a torch.Tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()
        x = x.numpy()
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x


def max_errors(actual: Any, expected: Any) -> dict[str, Any]:
    """Worst absolute and relative error of ``actual`` against ``expected`` and where.

    Relative error is ``|a - e| / |e|`` where ``e != 0``. NaN/inf positions must agree;
    a mismatch there counts as an infinite error.
    """
    a, e = as_numpy(actual), as_numpy(expected)
    if a.shape != e.shape:
        raise AssertionError(f"shape mismatch: actual {a.shape} vs expected {e.shape}")
    if a.size == 0:
        return {"max_abs": 0.0, "abs_index": (), "max_rel": 0.0, "rel_index": ()}
    a = a.astype(np.float64)
    e = e.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - e)
    same_nonfinite = (~np.isfinite(a)) & (~np.isfinite(e)) & ((a == e) | (np.isnan(a) & np.isnan(e)))
    diff = np.where(same_nonfinite, 0.0, diff)
    diff = np.where(np.isnan(diff), np.inf, diff)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(e != 0, diff / np.abs(e), np.where(diff == 0, 0.0, np.inf))
    rel = np.where(np.isnan(rel), np.inf, rel)
    ia = np.unravel_index(int(np.argmax(diff)), diff.shape)
    ir = np.unravel_index(int(np.argmax(rel)), rel.shape)
    return {
        "max_abs": float(diff[ia]),
        "abs_index": tuple(int(i) for i in ia),
        "max_rel": float(rel[ir]),
        "rel_index": tuple(int(i) for i in ir),
        "_diff": diff,
        "_a": a,
        "_e": e,
    }


def assert_close(
    actual: Any,
    expected: Any,
    atol: float = 1e-8,
    rtol: float = 1e-6,
    name: str = "",
) -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` element by element.

    On failure the message reports the number of mismatched elements, the worst absolute
    error and the worst relative error, each with its index and the two values there.

    >>> assert_close(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-12]))
    """
    err = max_errors(actual, expected)
    if not err.get("_diff", np.zeros(0)).size:
        return
    diff, a, e = err["_diff"], err["_a"], err["_e"]
    bad = ~(diff <= atol + rtol * np.abs(np.where(np.isfinite(e), e, 0.0)))
    if not bad.any():
        return
    ia, ir = err["abs_index"], err["rel_index"]
    label = f"{name}: " if name else ""
    raise AssertionError(
        f"{label}{int(bad.sum())} of {bad.size} elements differ (atol={atol:g}, rtol={rtol:g}); "
        f"shape {a.shape}\n"
        f"  worst abs error {err['max_abs']:.3e} at {ia}: actual {a[ia]!r} vs expected {e[ia]!r}\n"
        f"  worst rel error {err['max_rel']:.3e} at {ir}: actual {a[ir]!r} vs expected {e[ir]!r}"
    )


def numerical_grad(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite-difference gradient of the scalar function ``f`` at ``x``.

    df/dx_i ~ (f(x + eps e_i) - f(x - eps e_i)) / (2 eps). ``x`` is perturbed in place and
    restored, so ``f`` may close over it; use float64.

    >>> g = numerical_grad(lambda x: float((x ** 2).sum()), np.array([1.0, -2.0]))
    >>> np.allclose(g, [2.0, -4.0])
    True
    """
    if x.dtype != np.float64:
        raise ValueError(f"numerical_grad needs a float64 array, got {x.dtype}")
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("numerical_grad needs a contiguous array it can perturb in place")
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f(x)
        flat[i] = old - eps
        fm = f(x)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


def check_grad(
    f: Callable[[np.ndarray], float],
    x: np.ndarray,
    grad: np.ndarray,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    name: str = "grad",
) -> None:
    """Assert that ``grad`` is the gradient of the scalar ``f`` at ``x`` (finite differences).

    A typical use checks a backward pass through a random projection of its output:
    ``f = lambda x: float((forward(x) * w).sum())`` has gradient ``backward(w, x)``.
    """
    assert_close(grad, numerical_grad(f, x, eps), atol=atol, rtol=rtol, name=name)
