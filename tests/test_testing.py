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
    assert "worst abs error 5.000e-01 at (1, 2)" in msg
    # expected 0 there: the relative error is infinite, and it is at the same element
    assert "worst rel error inf at (1, 2)" in msg


def test_assert_close_reports_worst_abs_and_worst_rel_where_each_happens():
    """The worst absolute and the worst relative error can sit at different elements.

    Worked out by hand: at (0, 1) actual 101 vs 100 is off by 1 (relative 1e-2); at (1, 0)
    2e-3 vs 1e-3 is off by only 1e-3 but relative 1.0. So the worst absolute error, 1, is
    at (0, 1) and the worst relative error, 1, is at (1, 0).
    """
    expected = np.array([[1.0, 100.0], [1e-3, 5.0]])
    actual = np.array([[1.0, 101.0], [2e-3, 5.0]])
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, atol=1e-6, rtol=1e-6, name="w")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("w: 2 of 4 elements differ"), lines[0]
    abs_line, rel_line = lines[1], lines[2]
    assert abs_line.strip().startswith("worst abs error 1.000e+00 at (0, 1):"), abs_line
    assert "101.0" in abs_line and "100.0" in abs_line
    assert rel_line.strip().startswith("worst rel error 1.000e+00 at (1, 0):"), rel_line
    assert "0.002" in rel_line and "0.001" in rel_line


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
