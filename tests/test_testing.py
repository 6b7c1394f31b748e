"""minilm.testing: the error report and the finite-difference checker themselves."""

import numpy as np
import pytest

from minilm.testing import assert_close, check_grad, numerical_grad


def test_assert_close_reports_worst_errors_and_where():
    expected = np.zeros((2, 3))
    actual = expected.copy()
    actual[1, 2] = 0.5
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, atol=1e-3, rtol=0)
    msg = str(info.value)
    assert "1 of 6 elements differ" in msg
    assert "(1, 2)" in msg and "5.000e-01" in msg


def test_assert_close_passes_within_tolerance_and_on_matching_infinities():
    a = np.array([1.0, np.inf, -np.inf, 3.0])
    assert_close(a + np.array([1e-9, 0, 0, 0]), a, atol=1e-8, rtol=0)
    with pytest.raises(AssertionError):
        assert_close(np.array([np.nan]), np.array([0.0]))
    with pytest.raises(AssertionError, match="shape mismatch"):
        assert_close(np.zeros(2), np.zeros(3))


def test_assert_close_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    assert_close(torch.ones(3, dtype=torch.float32), np.ones(3))
    with pytest.raises(AssertionError):
        assert_close(torch.ones(3), np.zeros(3))


def test_numerical_grad_of_a_known_function():
    """d/dx sum(sin(x) * x) = cos(x) * x + sin(x), worked out by hand."""
    x = np.linspace(-2, 2, 7)
    g = numerical_grad(lambda v: float((np.sin(v) * v).sum()), x)
    assert_close(g, np.cos(x) * x + np.sin(x), atol=1e-8, rtol=1e-7)


def test_check_grad_catches_a_wrong_gradient():
    x = np.array([0.3, -1.2, 2.0])
    check_grad(lambda v: float((v ** 3).sum()), x, 3 * x ** 2)
    with pytest.raises(AssertionError):
        check_grad(lambda v: float((v ** 3).sum()), x, 2 * x ** 2)
    with pytest.raises(ValueError, match="float64"):
        numerical_grad(lambda v: float(v.sum()), x.astype(np.float32))
