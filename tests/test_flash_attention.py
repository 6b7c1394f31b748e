"""Flash attention: NumPy reference (forward + hand-written backward) and its PyTorch twin.

The independent reference is ``torch.nn.functional.scaled_dot_product_attention`` in float64
(and ``torch.logsumexp`` of the masked, scaled scores for ``lse``); gradients are checked
against torch autograd of that reference and against finite differences. The twins are
checked against each other, the ``trace`` against a direct recomputation of the running
max and sum, and the memory claim (no ``(L, S)`` matrix) with ``tracemalloc``.
"""

from __future__ import annotations

import math
import tracemalloc
import warnings
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from minilm.numpy.flash_attention import flash_attention, flash_attention_backward  # noqa: E402
from minilm.testing import assert_close, check_grad  # noqa: E402
from minilm.torch.flash_attention import flash_attention as torch_flash_attention  # noqa: E402

TOL = dict(atol=1e-12, rtol=1e-10)  # float64 against float64


# ----------------------------------------------------------------------------- helpers


def make_qkv(rng, batch, L, S, D, Dv=None, batch_k=None):
    """Random float64 q (*batch, L, D), k (*batch_k, S, D), v (*batch_k, S, Dv)."""
    Dv = D if Dv is None else Dv
    batch_k = batch if batch_k is None else batch_k
    q = rng.standard_normal((*batch, L, D))
    k = rng.standard_normal((*batch_k, S, D))
    v = rng.standard_normal((*batch_k, S, Dv))
    return q, k, v


def reference(q, k, v, is_causal=False, scale=None):
    """(out, lse) by torch's own attention in float64, lse by torch.logsumexp of the scores."""
    tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(x)) for x in (q, k, v))
    L, S, D = q.shape[-2], k.shape[-2], q.shape[-1]
    # torch's own maths, not its fused CPU kernel: with is_causal and 4-d inputs that one
    # returns NaN for any scale <= 0 (torch 2.13), which the math backend gets right
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=is_causal, scale=scale)
    s = (tq @ tk.transpose(-1, -2)) * (1 / math.sqrt(D) if scale is None else scale)
    if is_causal:
        # top-left aligned: query i sees keys j <= i, as F.scaled_dot_product_attention
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), -math.inf)
    return out.numpy(), torch.logsumexp(s, dim=-1).numpy()


def reference_grads(q, k, v, dout, is_causal=False, scale=None):
    """(dq, dk, dv) by torch autograd of F.scaled_dot_product_attention in float64."""
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    with sdpa_kernel(SDPBackend.MATH):  # as in reference()
        out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=is_causal, scale=scale)
    out.backward(torch.from_numpy(dout))
    return tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()


# (batch, L, S, D, Dv, is_causal, block_q, block_k, scale): the awkward shapes
CASES = [
    pytest.param((2,), 65, 65, 16, 16, True, 64, 64, None, id="one-past-block-causal"),
    pytest.param((2,), 65, 65, 16, 16, False, 64, 64, None, id="one-past-block"),
    pytest.param((1,), 64, 64, 8, 8, True, 64, 64, None, id="exactly-one-block"),
    pytest.param((3,), 1, 1, 4, 4, True, 64, 64, None, id="L=S=1-causal"),
    pytest.param((3,), 1, 9, 4, 4, False, 64, 64, None, id="L=1"),
    pytest.param((3,), 9, 1, 4, 4, False, 2, 2, None, id="S=1"),
    pytest.param((2,), 13, 13, 5, 5, True, 4, 3, None, id="primes-causal"),
    pytest.param((2,), 7, 11, 5, 5, False, 3, 4, None, id="L<S"),
    pytest.param((2,), 11, 7, 5, 5, False, 4, 3, None, id="L>S"),
    pytest.param((2,), 11, 7, 5, 5, True, 4, 3, None, id="L>S-causal-topleft"),
    pytest.param((2,), 5, 17, 6, 6, True, 2, 5, None, id="L<S-causal-topleft"),
    pytest.param((1,), 17, 19, 8, 8, True, 128, 128, None, id="blocks-larger-than-seq"),
    pytest.param((1,), 9, 9, 3, 3, True, 1, 1, None, id="blocks-of-1"),
    pytest.param((2, 3, 2), 10, 12, 6, 6, False, 4, 5, None, id="extra-batch-dims"),
    pytest.param((2, 3), 10, 10, 6, 6, True, 3, 4, 0.37, id="custom-scale"),
    pytest.param((2,), 10, 10, 6, 6, True, 3, 4, -1.5, id="negative-scale"),
    pytest.param((2,), 10, 12, 6, 6, False, 3, 4, 0.0, id="zero-scale-uniform"),
    pytest.param((2,), 20, 20, 6, 6, True, 8, 4, 80.0, id="huge-logits"),
    pytest.param((2,), 12, 14, 6, 3, True, 5, 4, None, id="Dv!=D"),
    pytest.param((), 10, 12, 6, 6, False, 4, 5, None, id="no-batch-dims"),
]


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("batch,L,S,D,Dv,is_causal,block_q,block_k,scale", CASES)
def test_forward_matches_torch_sdpa(rng, batch, L, S, D, Dv, is_causal, block_q, block_k, scale):
    q, k, v = make_qkv(rng, batch, L, S, D, Dv)
    out, lse = flash_attention(q, k, v, is_causal=is_causal, scale=scale,
                               block_q=block_q, block_k=block_k)
    ref_out, ref_lse = reference(q, k, v, is_causal, scale)
    assert out.shape == (*batch, L, Dv) and lse.shape == (*batch, L)
    assert out.dtype == np.float64 and lse.dtype == np.float64
    assert_close(out, ref_out, **TOL, name="out")
    # huge logits: lse ~ 1e3, so compare relatively
    assert_close(lse, ref_lse, atol=1e-12, rtol=1e-12, name="lse")


@pytest.mark.parametrize("block", [1, 2, 7, 16, 31, 32, 33, 64, 65, 200])
@pytest.mark.parametrize("is_causal", [False, True])
def test_every_block_size_gives_the_same_answer(rng, block, is_causal):
    """L = S = 33: every block size below, at, one off and above the lengths."""
    q, k, v = make_qkv(rng, (2,), 33, 33, 8)
    ref_out, ref_lse = reference(q, k, v, is_causal)
    for block_q, block_k in [(block, block), (block, 8), (5, block)]:
        out, lse = flash_attention(q, k, v, is_causal=is_causal, block_q=block_q, block_k=block_k)
        assert_close(out, ref_out, **TOL, name=f"out bq={block_q} bk={block_k}")
        assert_close(lse, ref_lse, **TOL, name=f"lse bq={block_q} bk={block_k}")


def test_broadcast_batch_dims_grouped_query(rng):
    """k, v with a head dim of 1 broadcast over q's heads, as grouped-query attention would."""
    q, k, v = make_qkv(rng, (2, 4), 9, 11, 5, batch_k=(2, 1))
    out, lse = flash_attention(q, k, v, block_q=4, block_k=3)
    ref_out, ref_lse = reference(q, np.broadcast_to(k, (2, 4, 11, 5)), np.broadcast_to(v, (2, 4, 11, 5)))
    assert_close(out, ref_out, **TOL, name="out")
    assert_close(lse, ref_lse, **TOL, name="lse")


def test_float32_inputs_compute_in_float32(rng):
    q, k, v = (x.astype(np.float32) for x in make_qkv(rng, (2,), 33, 40, 8))
    out, lse = flash_attention(q, k, v, is_causal=True, block_q=16, block_k=16)
    assert out.dtype == np.float32 and lse.dtype == np.float32
    ref_out, ref_lse = reference(*(x.astype(np.float64) for x in (q, k, v)), is_causal=True)
    assert_close(out, ref_out, atol=1e-5, rtol=1e-4, name="out float32")
    assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5, name="lse float32")


def test_rows_with_nothing_to_attend_give_zeros_and_minus_inf_without_nan(rng):
    """S = 0: every query row attends to nothing -> out 0, lse -inf, zero grads, no warnings."""
    q = rng.standard_normal((2, 5, 4))
    k = np.zeros((2, 0, 4))
    v = np.zeros((2, 0, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0/0 or log(0) RuntimeWarning would fail here
        out, lse = flash_attention(q, k, v, block_q=2)
        dq, dk, dv = flash_attention_backward(np.ones_like(out), q, k, v, out, lse, block_q=2)
    assert out.shape == (2, 5, 3) and np.all(out == 0)
    assert np.all(lse == -np.inf)
    assert np.all(dq == 0) and dk.shape == k.shape and dv.shape == v.shape

    tout, tlse = torch_flash_attention(*(torch.from_numpy(x) for x in (q, k, v)), block_q=2)
    assert tuple(tout.shape) == (2, 5, 3) and torch.all(tout == 0)
    assert torch.all(tlse == -math.inf)


def test_empty_query_length_gives_empty_outputs_and_zero_key_grads(rng):
    q, k, v = make_qkv(rng, (2,), 0, 3, 4, 5)
    out, lse = flash_attention(q, k, v, is_causal=True)
    assert out.shape == (2, 0, 5) and lse.shape == (2, 0)
    dq, dk, dv = flash_attention_backward(out, q, k, v, out, lse, is_causal=True)
    assert dq.shape == (2, 0, 4) and np.all(dk == 0) and np.all(dv == 0) and dv.shape == (2, 3, 5)


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_masked_rows_inside_the_online_update_are_safe(impl):
    """A row whose first key tile is entirely -inf must not turn NaN (exp(-inf - -inf)).

    Causal top-left masking never empties a whole tile for a row (key 0 is always seen
    first), so this drives the same update with a first key tile that scores -inf instead:
    L = D = 1, scale 1, keys [-inf, 2], values [5, 7], block_k = 1. Only the second key
    counts, so out = 7 and lse = log(exp(2)) = 2.
    """
    q = np.array([[[1.0]]])
    k = np.array([[[-np.inf], [2.0]]])
    v = np.array([[[5.0], [7.0]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if impl == "numpy":
            out, lse = flash_attention(q, k, v, scale=1.0, block_k=1)
        else:
            out, lse = torch_flash_attention(*(torch.from_numpy(x) for x in (q, k, v)),
                                             scale=1.0, block_k=1)
    assert_close(out, np.array([[[7.0]]]), name="out")
    assert_close(lse, np.array([[2.0]]), name="lse")


# ----------------------------------------------------------------------------- backward


@pytest.mark.parametrize("batch,L,S,D,Dv,is_causal,block_q,block_k,scale", CASES)
def test_backward_matches_torch_autograd(rng, batch, L, S, D, Dv, is_causal, block_q, block_k, scale):
    q, k, v = make_qkv(rng, batch, L, S, D, Dv)
    out, lse = flash_attention(q, k, v, is_causal=is_causal, scale=scale,
                               block_q=block_q, block_k=block_k)
    dout = rng.standard_normal(out.shape)
    # the backward's tiles need not be the forward's
    dq, dk, dv = flash_attention_backward(dout, q, k, v, out, lse, is_causal=is_causal,
                                          scale=scale, block_q=block_k, block_k=block_q)
    ref = reference_grads(q, k, v, dout, is_causal, scale)
    # huge logits make one-hot softmaxes whose gradients cancel to ~1e-13 absolute
    for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), ref):
        assert got.shape == want.shape
        assert_close(got, want, atol=1e-11, rtol=1e-9, name=name)


@pytest.mark.parametrize("batch_q,batch_k", [((2, 4), (2, 1)), ((1, 4), (2, 4)), ((4,), (2, 1, 1))])
def test_backward_broadcast_batch_dims_sums_gradients(rng, batch_q, batch_k):
    """Gradients of broadcast batch dims are summed back to each input's own shape."""
    q, k, v = make_qkv(rng, batch_q, 9, 11, 5, batch_k=batch_k)
    out, lse = flash_attention(q, k, v, is_causal=True, block_q=4, block_k=3)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = flash_attention_backward(dout, q, k, v, out, lse, is_causal=True,
                                          block_q=4, block_k=3)
    ref = reference_grads(q, k, v, dout, is_causal=True)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    torch_flash_attention(tq, tk, tv, is_causal=True, block_q=4, block_k=3)[0].backward(
        torch.from_numpy(dout))
    for name, got, want, twin in zip(("dq", "dk", "dv"), (dq, dk, dv), ref,
                                     (tq.grad, tk.grad, tv.grad)):
        assert got.shape == want.shape
        assert_close(got, want, **TOL, name=name)
        assert_close(twin, want, **TOL, name=f"{name} torch twin")


@pytest.mark.parametrize("is_causal,L,S", [(False, 4, 5), (True, 5, 5), (True, 5, 3)])
def test_backward_matches_finite_differences(rng, is_causal, L, S):
    """Gradient of sum(out * w) + sum(lse * u), through out and lse, by central differences."""
    q, k, v = make_qkv(rng, (2,), L, S, 3, 2)
    w = rng.standard_normal((2, L, 2))
    u = rng.standard_normal((2, L))
    kw = dict(is_causal=is_causal, scale=0.8, block_q=2, block_k=2)

    def loss(_):
        out, lse = flash_attention(q, k, v, **kw)
        return float((out * w).sum() + (lse * u).sum())

    out, lse = flash_attention(q, k, v, **kw)
    dq, dk, dv = flash_attention_backward(w, q, k, v, out, lse, **kw, dlse=u)
    check_grad(loss, q, dq, atol=1e-7, rtol=1e-6, name="dq")
    check_grad(loss, k, dk, atol=1e-7, rtol=1e-6, name="dk")
    check_grad(loss, v, dv, atol=1e-7, rtol=1e-6, name="dv")


# ----------------------------------------------------------------------------- torch twin


@pytest.mark.parametrize("batch,L,S,D,Dv,is_causal,block_q,block_k,scale", CASES)
def test_torch_twin_matches_numpy_forward_and_grads(rng, batch, L, S, D, Dv, is_causal,
                                                    block_q, block_k, scale):
    q, k, v = make_qkv(rng, batch, L, S, D, Dv)
    kw = dict(is_causal=is_causal, scale=scale, block_q=block_q, block_k=block_k)
    out, lse = flash_attention(q, k, v, **kw)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    tout, tlse = torch_flash_attention(tq, tk, tv, **kw)
    assert tout.dtype == torch.float64 and tuple(tout.shape) == out.shape
    assert_close(tout, out, **TOL, name="out")
    assert_close(tlse, lse, atol=1e-12, rtol=1e-12, name="lse")

    # gradients through both outputs: torch autograd of the twin vs the NumPy backward
    dout = rng.standard_normal(out.shape)
    dlse = rng.standard_normal(lse.shape)
    ((tout * torch.from_numpy(dout)).sum() + (tlse * torch.from_numpy(dlse)).sum()).backward()
    grads = flash_attention_backward(dout, q, k, v, out, lse, **kw, dlse=dlse)
    for name, got, want in zip(("dq", "dk", "dv"), (tq.grad, tk.grad, tv.grad), grads):
        assert_close(got, want, atol=1e-11, rtol=1e-9, name=name)


def test_torch_twin_float32_and_broadcast(rng):
    q, k, v = make_qkv(rng, (2, 4), 17, 13, 8, batch_k=(1, 4))
    tq, tk, tv = (torch.tensor(x, dtype=torch.float32) for x in (q, k, v))
    tout, tlse = torch_flash_attention(tq, tk, tv, is_causal=True, block_q=8, block_k=4)
    assert tout.dtype == torch.float32 and tuple(tout.shape) == (2, 4, 17, 8)
    ref_out, ref_lse = reference(q, np.broadcast_to(k, (2, 4, 13, 8)),
                                 np.broadcast_to(v, (2, 4, 13, 8)), is_causal=True)
    assert_close(tout, ref_out, atol=1e-5, rtol=1e-4, name="out")
    assert_close(tlse, ref_lse, atol=1e-5, rtol=1e-5, name="lse")


# ----------------------------------------------------------------------------- trace


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_trace_records_every_step_and_the_running_max_and_sum(rng, is_causal, impl):
    """Each step's m_i / l_i / acc equal the max / sum of exp / weighted sum over the keys seen.

    Expected values are recomputed directly from the full score matrix of the keys seen so
    far (keys 0 .. end_n-1, causally masked); the step count is the number of key tiles up to
    the diagonal (causal) or all of them, for each query tile.
    """
    L, S, D, block_q, block_k = 23, 23, 4, 8, 5
    q, k, v = make_qkv(rng, (2,), L, S, D)
    trace = []
    if impl == "numpy":
        out, lse = flash_attention(q, k, v, is_causal=is_causal, block_q=block_q,
                                   block_k=block_k, trace=trace)
    else:
        tout, tlse = torch_flash_attention(*(torch.from_numpy(x) for x in (q, k, v)),
                                           is_causal=is_causal, block_q=block_q,
                                           block_k=block_k, trace=trace)
        out, lse = tout.numpy(), tlse.numpy()

    starts_m = range(0, L, block_q)
    expected_steps = sum(
        math.ceil((min(S, sm + block_q) if is_causal else S) / block_k) for sm in starts_m
    )
    assert len(trace) == expected_steps
    if is_causal:
        assert expected_steps < len(starts_m) * math.ceil(S / block_k)  # tiles were skipped

    s_full = q @ k.swapaxes(-1, -2) / math.sqrt(D)  # (2, L, S), for checking only
    if is_causal:
        s_full = np.where(np.tril(np.ones((L, S), dtype=bool)), s_full, -np.inf)
    for step in trace:
        sm, em, en = step["start_m"], step["end_m"], step["end_n"]
        assert step["query_tile"] == sm // block_q and step["key_tile"] == step["start_n"] // block_k
        seen = s_full[:, sm:em, :en]  # scores of the keys seen so far
        m = seen.max(axis=-1)
        assert_close(step["m_i"], m, **TOL, name="m_i")
        assert_close(step["l_i"], np.exp(seen - m[..., None]).sum(-1), **TOL, name="l_i")
        assert_close(step["acc"], np.exp(seen - m[..., None]) @ v[:, :en], **TOL, name="acc")
        assert np.asarray(step["p"]).shape == (2, em - sm, en - step["start_n"])
        assert np.all(np.asarray(step["alpha"]) <= 1.0)

    # the last step of each query tile holds the final running max and sum: lse = m_i + log l_i
    for sm in starts_m:
        last = [st_ for st_ in trace if st_["start_m"] == sm][-1]
        em = last["end_m"]
        assert_close(np.asarray(last["m_i"]) + np.log(np.asarray(last["l_i"])), lse[:, sm:em],
                     **TOL, name="lse from trace")
        assert_close(np.asarray(last["acc"]) / np.asarray(last["l_i"])[..., None], out[:, sm:em],
                     **TOL, name="out from trace")


# ----------------------------------------------------------------------------- memory


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_score_matrix_is_never_materialised():
    """L = S = 2048, D = 16, blocks of 64: a full (L, S) float64 matrix would be 32 MiB.

    tracemalloc sees NumPy's allocations (checked first on the plain q @ k^T, which must show
    the 32 MiB), so a peak far below that shows only tiles were formed: what remains is q, the
    (L, D) output (256 KiB) and a few (64, 64) tiles (32 KiB each).
    """
    L = S = 2048
    rng = np.random.default_rng(0)
    q, k, v = make_qkv(rng, (1,), L, S, 16)
    full = L * S * 8
    assert _peak_bytes(lambda: q @ k.swapaxes(-1, -2)) >= full  # the instrument works
    peak = _peak_bytes(lambda: flash_attention(q, k, v, block_q=64, block_k=64))
    assert peak < full / 16, f"forward peak {peak / 2**20:.2f} MiB"
    peak = _peak_bytes(lambda: flash_attention(q, k, v, is_causal=True, block_q=64, block_k=64))
    assert peak < full / 16, f"causal forward peak {peak / 2**20:.2f} MiB"


def test_forward_peak_memory_grows_with_L_not_with_S():
    """Fixed L = 256, S from 512 to 2048 (4x): the forward's peak stays put; L 4x: it grows
    by the output and lse rows it adds, (3 * 256) * (Dv + 1) * 8 bytes = 102 KiB, not by
    L * S (a (256, 2048) float64 score matrix alone would be 4 MiB)."""
    rng = np.random.default_rng(0)
    D = Dv = 16

    def peak(L, S, is_causal):
        q, k, v = make_qkv(rng, (1,), L, S, D)
        return _peak_bytes(lambda: flash_attention(q, k, v, is_causal=is_causal))

    for is_causal in (False, True):
        small, large = peak(256, 512, is_causal), peak(256, 2048, is_causal)
        assert large <= small * 1.1, f"S 512 -> 2048: peak {small} -> {large} bytes"
        rows = peak(1024, 512, is_causal) - small
        added = (1024 - 256) * (Dv + 1) * 8  # the new rows of out (L, Dv) and lse (L,)
        assert 0.9 * added <= rows <= 2 * added, f"L 256 -> 1024: peak grew by {rows} bytes"


class _LiveTensorBytes(torch.overrides.TorchFunctionMode):
    """Peak bytes of the tensors that torch calls return while this mode is on, alive at once.

    torch's CPU allocations are invisible to tracemalloc, so this counts tensors instead:
    each storage a torch function or tensor method returns (other than the given inputs') is
    added when first seen and taken off when the last Python tensor on it is freed. It cannot
    see scratch memory inside one op, nor tensors that only C++ holds (autograd's saved
    tensors), so it is used under no_grad, where the Python tensors are all there is.
    """

    def __init__(self, *inputs):
        super().__init__()
        self.inputs = {x.untyped_storage().data_ptr() for x in inputs}
        self.live = {}  # storage address -> [bytes, number of live tensors on it]
        self.now = self.peak = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return result

    def _track(self, t):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.inputs or storage.nbytes() == 0:
            return
        if key not in self.live:
            self.live[key] = [storage.nbytes(), 0]
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
        self.live[key][1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key):
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key]
            self.now -= entry[0]


def test_torch_twin_forward_without_grad_holds_tiles_not_the_score_matrix():
    """The torch twin under no_grad, counted by _LiveTensorBytes: flat in S, far below L * S.

    The instrument is checked first: the plain q @ k^T must show its (L, S) matrix, and
    everything must be released once the results are dropped.
    """
    g = torch.Generator().manual_seed(0)
    L, D = 256, 16

    def peak(S, is_causal):
        q, k, v = (torch.randn(1, n, D, generator=g, dtype=torch.float64) for n in (L, S, S))
        with torch.no_grad(), _LiveTensorBytes(q, k, v) as counter:
            out, lse = torch_flash_attention(q, k, v, is_causal=is_causal)
            del out, lse
        assert counter.now == 0, counter.live
        return counter.peak

    q, k = torch.zeros(1, L, D, dtype=torch.float64), torch.zeros(1, 2048, D, dtype=torch.float64)
    with torch.no_grad(), _LiveTensorBytes(q, k) as counter:
        scores = q @ k.transpose(-1, -2)
        del scores
    assert counter.peak >= L * 2048 * 8 and counter.now == 0  # the instrument works
    for is_causal in (False, True):
        small, large = peak(512, is_causal), peak(2048, is_causal)
        assert large <= small * 1.1, f"S 512 -> 2048: peak {small} -> {large} bytes"
        assert large < L * 2048 * 8 / 16, f"peak {large} bytes"


def test_backward_never_materialises_the_score_matrix():
    L = S = 1024  # a full (L, S) float64 matrix: 8 MiB
    rng = np.random.default_rng(0)
    q, k, v = make_qkv(rng, (1,), L, S, 16)
    out, lse = flash_attention(q, k, v, is_causal=True)
    dout = rng.standard_normal(out.shape)
    peak = _peak_bytes(lambda: flash_attention_backward(dout, q, k, v, out, lse, is_causal=True))
    assert peak < L * S * 8 / 8, f"backward peak {peak / 2**20:.2f} MiB"


# ----------------------------------------------------------------------------- properties


@st.composite
def attention_problems(draw):
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    L = draw(st.integers(1, 40))
    S = draw(st.integers(1, 40))
    D = draw(st.integers(1, 9))
    Dv = draw(st.integers(1, 9))
    is_causal = draw(st.booleans())
    scale = draw(st.one_of(st.none(), st.floats(-3.0, 3.0)))
    block_q = draw(st.integers(1, 48))
    block_k = draw(st.integers(1, 48))
    # q and k are multiplied by this: with 100 the scores reach 1e4 and beyond, where exp
    # overflows float64 unless the running max is subtracted first
    magnitude = draw(st.sampled_from([1.0, 30.0, 100.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    return batch, L, S, D, Dv, is_causal, scale, block_q, block_k, magnitude, seed


def _problem_inputs(problem):
    """q, k, v of a drawn problem (q and k scaled by its magnitude), its rng, and the size of
    its scores, to which rounding errors are proportional: magnitude^2 * max(|scale|, 1)."""
    batch, L, S, D, Dv, is_causal, scale, block_q, block_k, magnitude, seed = problem
    rng = np.random.default_rng(seed)
    q, k, v = make_qkv(rng, batch, L, S, D, Dv)
    q, k = q * magnitude, k * magnitude
    big = magnitude**2 * (1.0 if scale is None else max(abs(scale), 1.0))
    return q, k, v, rng, big


@given(attention_problems())
def test_property_flash_equals_plain_attention(problem):
    batch, L, S, D, Dv, is_causal, scale, block_q, block_k, magnitude, seed = problem
    q, k, v, _, big = _problem_inputs(problem)
    out, lse = flash_attention(q, k, v, is_causal=is_causal, scale=scale,
                               block_q=block_q, block_k=block_k)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    ref_out, ref_lse = reference(q, k, v, is_causal, scale)
    # scores of 1e4 carry rounding errors of ~1e-12 absolute, and so does p = exp(s - lse)
    assert_close(out, ref_out, atol=1e-12 * big, rtol=1e-10, name="out")
    assert_close(lse, ref_lse, atol=1e-12 * big, rtol=1e-12, name="lse")


@settings(max_examples=20)
@given(attention_problems())
def test_property_backward_equals_autograd(problem):
    batch, L, S, D, Dv, is_causal, scale, block_q, block_k, magnitude, seed = problem
    q, k, v, rng, big = _problem_inputs(problem)
    out, lse = flash_attention(q, k, v, is_causal=is_causal, scale=scale)
    dout = rng.standard_normal(out.shape)
    grads = flash_attention_backward(dout, q, k, v, out, lse, is_causal=is_causal, scale=scale,
                                     block_q=block_q, block_k=block_k)
    for name, got, want in zip(("dq", "dk", "dv"), grads,
                               reference_grads(q, k, v, dout, is_causal, scale)):
        assert np.isfinite(got).all(), name
        # the gradients grow with the scores (dq = scale * dS k), and so do their errors
        assert_close(got, want, atol=1e-11 * big, rtol=1e-9, name=name)


# ----------------------------------------------------------------------------- other implementations


def test_agrees_with_numpy_scaled_dot_product_attention(rng):
    """Cross-check against engineer A's plain NumPy attention, forward and backward."""
    import minilm.numpy.attention as attention  # our own module: a broken import fails
    q, k, v = make_qkv(rng, (2, 2), 19, 19, 8)
    out, lse = flash_attention(q, k, v, is_causal=True, block_q=8, block_k=4)
    assert_close(out, attention.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL,
                 name="out")
    dout = rng.standard_normal(out.shape)
    grads = flash_attention_backward(dout, q, k, v, out, lse, is_causal=True, block_q=8, block_k=4)
    ref = attention.scaled_dot_product_attention_backward(dout, q, k, v, is_causal=True)
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref):
        assert_close(got, want, **TOL, name=name)


def test_package_exports_resolve_to_the_functions_although_the_submodules_came_first(rng):
    """``minilm.numpy.flash_attention`` is the function, not the module of the same name.

    This file imported the submodules ``minilm.{numpy,torch}.flash_attention`` at the top,
    which sets the package attribute of that name to the module unless the package has
    already bound the function; so here, in this process, the attribute must be the function
    and callable. (tests/test_package.py checks both import orders in fresh interpreters.)
    """
    import minilm.numpy
    import minilm.torch

    assert minilm.numpy.flash_attention is flash_attention
    assert minilm.numpy.flash_attention_backward is flash_attention_backward
    assert minilm.torch.flash_attention is torch_flash_attention
    q, k, v = make_qkv(rng, (1,), 5, 5, 4)
    out, lse = minilm.numpy.flash_attention(q, k, v, block_q=2, block_k=2)
    tout, tlse = minilm.torch.flash_attention(*(torch.from_numpy(x) for x in (q, k, v)),
                                              block_q=2, block_k=2)
    assert_close(tout, out, **TOL, name="out")
    assert_close(tlse, lse, **TOL, name="lse")


# ----------------------------------------------------------------------------- bad input


def _bad_inputs():
    z = np.zeros
    ok = (z((2, 4, 8)), z((2, 5, 8)), z((2, 5, 8)))
    return [
        pytest.param((z(8), ok[1], ok[2]), {}, r"q must have at least 2 dims.*\(8,\)", id="q-rank-1"),
        pytest.param((ok[0], z((2, 5, 7)), ok[2]), {}, r"head dim D.*\(2, 4, 8\).*\(2, 5, 7\)", id="D-mismatch"),
        pytest.param((ok[0], ok[1], z((2, 6, 8))), {}, r"same length S.*\(2, 5, 8\).*\(2, 6, 8\)", id="S-mismatch"),
        pytest.param((ok[0], z((3, 5, 8)), z((3, 5, 8))), {}, r"batch dims of q \(2, 4, 8\), k \(3, 5, 8\).*do not broadcast", id="batch-mismatch"),
        pytest.param(ok, {"block_q": 0}, r"block_q must be an int >= 1, got 0", id="block_q-0"),
        pytest.param(ok, {"block_k": -3}, r"block_k must be an int >= 1, got -3", id="block_k-negative"),
        pytest.param(ok, {"block_k": 2.5}, r"block_k must be an int >= 1, got 2.5", id="block_k-float"),
        pytest.param(ok, {"block_q": True}, r"block_q must be an int >= 1, got True", id="block_q-bool"),
        pytest.param(ok, {"scale": float("nan")}, r"scale must be finite", id="scale-nan"),
        pytest.param((ok[0].astype(np.int64), ok[1], ok[2]), {}, r"q must be a floating-point.*int64", id="int-dtype"),
    ]


@pytest.mark.parametrize("args,kwargs,match", _bad_inputs())
def test_bad_input_raises_value_error_naming_it(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        flash_attention(*args, **kwargs)
    dout = np.zeros((2, 4, 8))
    with pytest.raises(ValueError, match=match):
        flash_attention_backward(dout, *args[:3], dout, np.zeros((2, 4)), **kwargs)
    targs = [torch.from_numpy(np.asarray(a)) for a in args]
    with pytest.raises(ValueError, match=match):
        torch_flash_attention(*targs, **kwargs)


def test_backward_rejects_mismatched_saved_tensors():
    q, k, v = np.zeros((2, 4, 8)), np.zeros((2, 5, 8)), np.zeros((2, 5, 3))
    out, lse = np.zeros((2, 4, 3)), np.zeros((2, 4))
    with pytest.raises(ValueError, match=r"dout must have shape \(2, 4, 3\).*got \(2, 4, 8\)"):
        flash_attention_backward(np.zeros((2, 4, 8)), q, k, v, out, lse)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 4, 3\).*got \(4, 3\)"):
        flash_attention_backward(out, q, k, v, np.zeros((4, 3)), lse)
    with pytest.raises(ValueError, match=r"lse must have shape \(2, 4\).*got \(2, 5\)"):
        flash_attention_backward(out, q, k, v, out, np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"dlse must have the shape of lse \(2, 4\), got \(4,\)"):
        flash_attention_backward(out, q, k, v, out, lse, dlse=np.zeros(4))


def test_torch_twin_rejects_mixed_dtypes():
    q = torch.zeros(2, 4, 8)
    with pytest.raises(ValueError, match="share one dtype.*float32.*float64"):
        torch_flash_attention(q, q.double(), q.double())


# ----------------------------------------------------------------------------- torch backward
# The torch twin's hand-written FlashAttention-2 backward (FlashAttentionFunction), checked
# against autograd of the plain torch twin (minilm.torch.attention) and against the NumPy
# twin's flash_attention_backward, in float64, on awkward shapes.

BACKWARD_CASES = [
    # batch, batch_k, L, S, D, is_causal, block_q, block_k, scale
    ((2, 3), (2, 3), 13, 17, 5, False, 4, 8, None),      # L, S prime, not multiples of a block
    ((1, 2), (1, 2), 65, 65, 8, True, 64, 64, None),     # one past a block, causal
    ((2, 4), (2, 1), 11, 11, 4, True, 3, 5, None),       # grouped-query: k, v broadcast over heads
    ((3,), (3,), 7, 19, 6, True, 2, 4, None),            # causal with L < S
    ((3,), (3,), 19, 7, 6, True, 4, 2, None),            # causal with L > S
    ((2,), (2,), 9, 10, 3, False, 4, 4, 0.0),            # scale 0: uniform weights
    ((2,), (2,), 9, 10, 3, True, 4, 4, -0.7),            # negative scale
    ((1,), (1,), 1, 1, 1, False, 64, 64, None),          # the smallest problem
]


@pytest.mark.parametrize("batch,batch_k,L,S,D,is_causal,block_q,block_k,scale", BACKWARD_CASES)
def test_torch_backward_matches_autograd_of_plain_twin_and_numpy(rng, batch, batch_k, L, S, D,
                                                                  is_causal, block_q, block_k, scale):
    from minilm.torch.attention import scaled_dot_product_attention as plain_attention

    q, k, v = make_qkv(rng, batch, L, S, D, batch_k=batch_k)
    dout = rng.standard_normal((*batch, L, D))
    kw = dict(is_causal=is_causal, scale=scale)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    tout, tlse = torch_flash_attention(tq, tk, tv, **kw, block_q=block_q, block_k=block_k)
    assert type(tout.grad_fn).__name__ == "FlashAttentionFunctionBackward"
    tout.backward(torch.from_numpy(dout))
    got = (tq.grad, tk.grad, tv.grad)

    # autograd of the plain twin (materialises p), k and v broadcast explicitly
    pq, pk, pv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    full = (*batch, S, D)
    pout = plain_attention(pq, pk.expand(full), pv.expand(full), **kw)
    pout.backward(torch.from_numpy(dout))
    assert_close(tout, pout, **TOL, name="out vs plain twin")
    for name, g, want in zip(("dq", "dk", "dv"), got, (pq.grad, pk.grad, pv.grad)):
        assert tuple(g.shape) == tuple(want.shape)
        assert_close(g, want, atol=1e-11, rtol=1e-9, name=f"{name} vs autograd of the plain twin")

    # the NumPy twin's hand-written backward, with other block sizes (only the sum order changes)
    out, lse = flash_attention(q, k, v, **kw)
    want = flash_attention_backward(dout, q, k, v, out, lse, **kw, block_q=5, block_k=3)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert_close(g, w, atol=1e-11, rtol=1e-9, name=f"{name} vs NumPy flash_attention_backward")


def test_torch_backward_of_rows_with_nothing_to_attend_is_zero_not_nan(rng):
    """S = 0: every row attends to nothing; out = 0, lse = -inf, and all gradients are 0."""
    tq = torch.tensor(rng.standard_normal((2, 5, 3)), requires_grad=True)
    tk = torch.zeros(2, 0, 3, dtype=torch.float64, requires_grad=True)
    tv = torch.zeros(2, 0, 3, dtype=torch.float64, requires_grad=True)
    out, lse = torch_flash_attention(tq, tk, tv, block_q=2)
    (out.sum() + lse.masked_fill(lse == -math.inf, 0).sum()).backward()
    assert torch.all(tq.grad == 0) and tk.grad.shape == (2, 0, 3) and tv.grad.shape == (2, 0, 3)


def test_torch_backward_through_lse_only(rng):
    """Only lse is used: d lse_i / d s_ij = P_ij, so dq = scale * P k, dk = scale * P^T q, dv = 0."""
    q, k, v = make_qkv(rng, (2,), 6, 9, 4)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    _, lse = torch_flash_attention(tq, tk, tv, block_q=4, block_k=4)
    lse.sum().backward()
    s = (torch.from_numpy(q) @ torch.from_numpy(k).transpose(-1, -2)) / 2.0  # scale 1/sqrt(4)
    p = torch.softmax(s, dim=-1)  # (2, 6, 9)
    assert_close(tq.grad, 0.5 * p @ torch.from_numpy(k), **TOL, name="dq")
    assert_close(tk.grad, 0.5 * p.transpose(-1, -2) @ torch.from_numpy(q), **TOL, name="dk")
    assert torch.all(tv.grad == 0)


def test_torch_backward_saves_only_inputs_out_and_lse(rng):
    """Between forward and backward only q, k, v, out and lse are kept (nothing (L, S))."""
    q, k, v = make_qkv(rng, (1,), 256, 256, 8)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        torch_flash_attention(tq, tk, tv, is_causal=True, block_q=32, block_k=32)
    # q, k, v, out: 256 * 8 each, lse: 256 (autograd through the loop would keep every tile)
    assert sum(t.numel() for t in saved) == 4 * 256 * 8 + 256
