"""softmax, log_softmax, cross_entropy: NumPy reference, its hand-written backward helpers,
and the PyTorch twin.

Independent references: ``torch.softmax``, ``torch.log_softmax`` and
``torch.nn.functional.cross_entropy`` in float64 (which put the class axis at dim 1, so the
tests move ours there), torch autograd for the gradients, and central finite differences
(``minilm.testing.check_grad``) for the hand-written NumPy backward helpers. Hypothesis
draws logits anywhere in [-1e4, 1e4] over random shapes and axes: everything stays finite.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from minilm.numpy import functional as nf  # noqa: E402
from minilm.testing import assert_close, check_grad  # noqa: E402
from minilm.torch import functional as tf  # noqa: E402

TOL = dict(atol=1e-12, rtol=1e-10)  # float64 against float64

SHAPES = [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 6), (1, 1)]


def torch_ce(logits, targets, ignore_index=-100):
    """F.cross_entropy with our (..., V) layout: flatten the leading dims to N."""
    V = logits.shape[-1]
    return F.cross_entropy(torch.from_numpy(logits).reshape(-1, V), torch.from_numpy(targets).reshape(-1),
                           ignore_index=ignore_index)


def make_targets(rng, shape, V, ignore_frac=0.0, ignore_index=-100):
    t = rng.integers(0, V, size=shape)
    t[rng.random(shape) < ignore_frac] = ignore_index
    return t


# ----------------------------------------------------------------------------- forward vs torch


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_and_log_softmax_match_torch(rng, shape, axis):
    x = rng.standard_normal(shape) * 3
    tx = torch.from_numpy(x)
    assert_close(nf.softmax(x, axis=axis), torch.softmax(tx, dim=axis), **TOL, name="softmax")
    assert_close(nf.log_softmax(x, axis=axis), torch.log_softmax(tx, dim=axis), **TOL, name="log_softmax")
    assert_close(tf.softmax(tx, axis=axis), torch.softmax(tx, dim=axis), **TOL, name="torch twin softmax")
    assert_close(tf.log_softmax(tx, axis=axis), torch.log_softmax(tx, dim=axis), **TOL, name="torch twin log_softmax")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_stay_finite_and_exact(rng, dtype):
    """Logits of +-1e4: exp(1e4) overflows even float64, so only the max trick keeps these finite.

    Expected values: [1e4, 1e4, -1e4] has two equal maxima, so the softmax is [1/2, 1/2, 0]
    and the log-softmax [-ln 2, -ln 2, -2e4 - ln 2] (exp(-2e4) vanishes next to 2).
    """
    x = np.array([[1e4, 1e4, -1e4], [-1e4, -1e4, -1e4]], dtype=dtype)
    expected_p = np.array([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    expected_lp = np.array([[-math.log(2), -math.log(2), -2e4 - math.log(2)], [-math.log(3)] * 3])
    tol = dict(atol=1e-6, rtol=1e-6) if dtype == np.float32 else TOL
    for softmax, log_softmax, conv in ((nf.softmax, nf.log_softmax, lambda a: a),
                                       (tf.softmax, tf.log_softmax, torch.from_numpy)):
        p, lp = softmax(conv(x)), log_softmax(conv(x))
        assert np.isfinite(np.asarray(p)).all() and np.isfinite(np.asarray(lp)).all()
        assert np.asarray(p).dtype == dtype and np.asarray(lp).dtype == dtype
        assert_close(p, expected_p, **tol, name="softmax")
        assert_close(lp, expected_lp, **tol, name="log_softmax")
    big = rng.uniform(-1e4, 1e4, size=(4, 9))
    assert_close(nf.log_softmax(big), torch.log_softmax(torch.from_numpy(big), -1), **TOL)
    t = rng.integers(0, 9, size=4)
    loss = nf.cross_entropy(big, t)
    assert np.isfinite(loss)
    assert_close(loss, torch_ce(big, t), **TOL)


@pytest.mark.parametrize("shape", [(5,), (4, 7), (2, 3, 5), (2, 2, 3, 4)])
@pytest.mark.parametrize("ignore_frac", [0.0, 0.4])
def test_cross_entropy_matches_torch(rng, shape, ignore_frac):
    *lead, V = shape
    logits = rng.standard_normal(shape) * 2
    targets = make_targets(rng, tuple(lead), V, ignore_frac)
    expected = torch_ce(logits, targets)
    got = nf.cross_entropy(logits, targets)
    assert isinstance(got, np.float64)
    assert_close(got, expected, **TOL, name="numpy")
    assert_close(tf.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets)), expected, **TOL, name="torch twin")


def test_cross_entropy_custom_ignore_index_inside_the_vocab(rng):
    """ignore_index may be a real class id (a padding token 0): those positions are skipped."""
    logits = rng.standard_normal((3, 6, 5))
    targets = rng.integers(0, 5, size=(3, 6))
    targets[0, :3] = 0
    expected = torch_ce(logits, targets, ignore_index=0)
    assert_close(nf.cross_entropy(logits, targets, ignore_index=0), expected, **TOL)
    assert_close(tf.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), ignore_index=0), expected, **TOL)
    # and it is a different number from not ignoring them
    assert abs(float(nf.cross_entropy(logits, targets)) - float(expected)) > 1e-6


def test_cross_entropy_known_answer():
    """Uniform logits over V = 4: p = 1/4 for every target, so the loss is ln 4 whatever t is.

    A confident right answer (logit 100 on the target, 0 elsewhere) costs ln(1 + 3 e^-100).
    """
    assert_close(nf.cross_entropy(np.zeros((3, 4)), np.array([0, 3, 1])), math.log(4), **TOL)
    assert_close(nf.cross_entropy(np.array([[100.0, 0, 0, 0]]), np.array([0])), math.log1p(3 * math.exp(-100)), **TOL)


def test_all_targets_ignored_gives_nan_and_zero_grad_like_torch(rng):
    """Every target ignored: torch returns nan (a mean over nothing) and zero gradients."""
    logits = rng.standard_normal((2, 3, 4))
    targets = np.full((2, 3), -100)
    expected = torch_ce(logits, targets)
    assert math.isnan(float(expected))
    assert math.isnan(float(nf.cross_entropy(logits, targets)))
    tl = torch.tensor(logits, requires_grad=True)
    loss = tf.cross_entropy(tl, torch.from_numpy(targets))
    assert math.isnan(loss.item())
    loss.backward()
    assert_close(tl.grad, np.zeros_like(logits), atol=0, rtol=0)
    assert_close(nf.cross_entropy_backward(logits, targets), np.zeros_like(logits), atol=0, rtol=0)


def test_float32_stays_float32(rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    t = rng.integers(0, 5, size=3)
    assert nf.softmax(x).dtype == np.float32
    assert nf.log_softmax(x).dtype == np.float32
    assert nf.cross_entropy(x, t).dtype == np.float32
    assert nf.cross_entropy_backward(x, t).dtype == np.float32
    assert tf.cross_entropy(torch.from_numpy(x), torch.from_numpy(t)).dtype == torch.float32
    assert_close(nf.cross_entropy(x, t), torch_ce(x.astype(np.float64), t), atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- backward helpers


@pytest.mark.parametrize("shape,axis", [((6,), -1), ((3, 5), -1), ((3, 5), 0), ((2, 3, 4), 1)])
def test_softmax_backward_vs_finite_differences_and_autograd(rng, shape, axis):
    x = rng.standard_normal(shape)
    w = rng.standard_normal(shape)  # a random projection: loss = sum(w * softmax(x))
    dx = nf.softmax_backward(w, nf.softmax(x, axis), axis)
    check_grad(lambda x: float((nf.softmax(x, axis) * w).sum()), x, dx, name="softmax_backward")
    tx = torch.tensor(x, requires_grad=True)
    (torch.softmax(tx, axis) * torch.from_numpy(w)).sum().backward()
    assert_close(dx, tx.grad, **TOL, name="softmax_backward vs autograd")


@pytest.mark.parametrize("shape,axis", [((6,), -1), ((3, 5), -1), ((3, 5), 0), ((2, 3, 4), 1)])
def test_log_softmax_backward_vs_finite_differences_and_autograd(rng, shape, axis):
    x = rng.standard_normal(shape)
    w = rng.standard_normal(shape)
    dx = nf.log_softmax_backward(w, nf.log_softmax(x, axis), axis)
    check_grad(lambda x: float((nf.log_softmax(x, axis) * w).sum()), x, dx, name="log_softmax_backward")
    tx = torch.tensor(x, requires_grad=True)
    (torch.log_softmax(tx, axis) * torch.from_numpy(w)).sum().backward()
    assert_close(dx, tx.grad, **TOL, name="log_softmax_backward vs autograd")


@pytest.mark.parametrize("shape", [(5,), (4, 7), (2, 3, 5)])
@pytest.mark.parametrize("ignore_frac", [0.0, 0.5])
def test_cross_entropy_backward_vs_finite_differences_and_autograd(rng, shape, ignore_frac):
    *lead, V = shape
    logits = rng.standard_normal(shape)
    targets = make_targets(rng, tuple(lead), V, ignore_frac)
    if (targets == -100).all():  # keep at least one counted target (all ignored is tested above)
        targets.flat[0] = 1
    dlogits = nf.cross_entropy_backward(logits, targets)
    check_grad(lambda x: float(nf.cross_entropy(x, targets)), logits, dlogits, name="cross_entropy_backward")
    tl = torch.tensor(logits, requires_grad=True)
    torch_ce_loss = F.cross_entropy(tl.reshape(-1, V), torch.from_numpy(targets).reshape(-1))
    torch_ce_loss.backward()
    assert_close(dlogits, tl.grad, **TOL, name="cross_entropy_backward vs autograd")
    # the torch twin's autograd gives the same gradient
    tl2 = torch.tensor(logits, requires_grad=True)
    tf.cross_entropy(tl2, torch.from_numpy(targets)).backward()
    assert_close(tl2.grad, dlogits, **TOL, name="torch twin autograd")
    # ignored positions get exactly zero
    ignored = targets == -100
    assert (dlogits[ignored] == 0).all()


def test_torch_twin_autograd_on_huge_logits_is_finite(rng):
    x = torch.tensor(rng.uniform(-1e4, 1e4, size=(3, 8)), requires_grad=True)
    tf.log_softmax(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    ref = torch.tensor(x.detach().numpy(), requires_grad=True)
    torch.log_softmax(ref, -1).sum().backward()
    assert_close(x.grad, ref.grad, **TOL)


# ----------------------------------------------------------------------------- properties

# float64 logits anywhere in [-1e4, 1e4], any shape of 1 to 4 dims: hypothesis likes the
# bounds themselves and arrays of one repeated value, so ties at +-1e4 come up too
LOGITS = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6),
                    elements=st.floats(-1e4, 1e4))


@st.composite
def logits_and_axis(draw):
    x = draw(LOGITS)
    return x, draw(st.integers(-x.ndim, x.ndim - 1))


@given(logits_and_axis())
def test_property_softmax_and_log_softmax_finite_and_equal_to_torch(problem):
    x, axis = problem
    tx = torch.from_numpy(x)
    want_p, want_lp = torch.softmax(tx, dim=axis), torch.log_softmax(tx, dim=axis)
    for name, p, lp in (("numpy", nf.softmax(x, axis), nf.log_softmax(x, axis)),
                        ("torch twin", tf.softmax(tx, axis), tf.log_softmax(tx, axis))):
        p, lp = np.asarray(p), np.asarray(lp)
        assert np.isfinite(p).all() and np.isfinite(lp).all(), name
        assert_close(p.sum(axis=axis), np.ones(np.delete(x.shape, axis % x.ndim)), **TOL,
                     name=f"{name} softmax sums to 1")
        assert_close(p, want_p, **TOL, name=f"{name} softmax")
        # log-probabilities reach -2e4, where one rounding of x - m is ~4e-12
        assert_close(lp, want_lp, atol=1e-10, rtol=1e-12, name=f"{name} log_softmax")


@given(LOGITS, st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_property_cross_entropy_finite_and_equal_to_torch(logits, ignore_frac, seed):
    """Loss and gradient of both twins against F.cross_entropy and its autograd."""
    rng = np.random.default_rng(seed)
    V = logits.shape[-1]
    targets = make_targets(rng, logits.shape[:-1], V, ignore_frac)
    tl = torch.tensor(logits, requires_grad=True)
    want = F.cross_entropy(tl.reshape(-1, V), torch.from_numpy(targets).reshape(-1))
    want.backward()
    tl_twin = torch.tensor(logits, requires_grad=True)
    got_twin = tf.cross_entropy(tl_twin, torch.from_numpy(targets))
    got_twin.backward()
    got = nf.cross_entropy(logits, targets)
    dlogits = nf.cross_entropy_backward(logits, targets)
    if (targets == -100).all():  # a mean over nothing: nan, as torch (tested above)
        assert math.isnan(want.item()) and math.isnan(float(got)) and math.isnan(got_twin.item())
        return
    assert np.isfinite(got) and math.isfinite(got_twin.item())
    assert np.isfinite(dlogits).all() and torch.isfinite(tl_twin.grad).all()
    # the loss reaches 2e4 (a target at -1e4 next to a +1e4 logit)
    assert_close(got, want, atol=1e-10, rtol=1e-12, name="numpy loss")
    assert_close(got_twin, want, atol=1e-10, rtol=1e-12, name="torch twin loss")
    assert_close(dlogits, tl.grad, **TOL, name="numpy cross_entropy_backward")
    assert_close(tl_twin.grad, tl.grad, **TOL, name="torch twin autograd")


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_bad_targets_raise_value_error_naming_the_problem(rng, impl):
    conv = (lambda a: a) if impl == "numpy" else torch.from_numpy
    ce = nf.cross_entropy if impl == "numpy" else tf.cross_entropy
    logits = conv(rng.standard_normal((2, 3, 5)))
    with pytest.raises(ValueError, match=r"targets shape \(3, 2\).*\(2, 3\)"):
        ce(logits, conv(np.zeros((3, 2), dtype=np.int64)))
    with pytest.raises(ValueError, match=r"targets shape \(2, 3, 5\)"):
        ce(logits, conv(np.zeros((2, 3, 5), dtype=np.int64)))
    with pytest.raises(ValueError, match="integers.*float"):
        ce(logits, conv(np.zeros((2, 3))))
    with pytest.raises(ValueError, match="integers.*bool"):
        ce(logits, conv(np.zeros((2, 3), dtype=bool)))
    bad = np.zeros((2, 3), dtype=np.int64)
    bad[1, 2] = 5
    with pytest.raises(ValueError, match=r"target 5 at index \(1, 2\) is outside \[0, 5\)"):
        ce(logits, conv(bad))
    bad[1, 2] = -1
    with pytest.raises(ValueError, match=r"target -1 at index \(1, 2\).*ignore_index=-100"):
        ce(logits, conv(bad))
    # -1 is fine once it is the ignore_index
    ce(logits, conv(bad), ignore_index=-1)
    if impl == "numpy":
        with pytest.raises(ValueError, match="target 7"):
            nf.cross_entropy_backward(rng.standard_normal((2, 5)), np.array([7, 0]))
