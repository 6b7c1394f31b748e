"""Scaled dot-product attention: NumPy reference (forward + hand-written backward), its PyTorch
twin, and split/merge heads.

The independent reference is ``torch.nn.functional.scaled_dot_product_attention`` in float64,
forward and autograd gradients (it refuses ``attn_mask`` together with ``is_causal``, so for
that combination the reference gets the causal mask folded into ``attn_mask`` by hand). The
hand-written backward is also checked by finite differences, and the torch twin against the
NumPy reference, forward and autograd gradients. Hypothesis explores shapes, masks, scales and
huge logits; fully masked rows must give zero output and zero gradient, never NaN.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from minilm.numpy import attention as na  # noqa: E402
from minilm.testing import assert_close, check_grad  # noqa: E402
from minilm.torch import attention as ta  # noqa: E402

TOL = dict(atol=1e-12, rtol=1e-10)  # float64 against float64


# ----------------------------------------------------------------------------- helpers


def make_qkv(rng, batch_q, batch_kv, L, S, D, Dv):
    q = rng.standard_normal((*batch_q, L, D))
    k = rng.standard_normal((*batch_kv, S, D))
    v = rng.standard_normal((*batch_kv, S, Dv))
    return q, k, v


def make_mask(rng, kind, shape):
    """None, a random bool mask (True = may attend), or an additive float mask with some -inf."""
    if kind is None:
        return None
    if kind == "bool":
        return rng.random(shape) < 0.7
    m = rng.standard_normal(shape)
    m[rng.random(shape) < 0.2] = -np.inf
    return m


def causal_bool(L, S):
    # top-left aligned: query i sees keys j <= i
    return np.tril(np.ones((L, S), dtype=bool))


def torch_reference(q, k, v, dout, attn_mask=None, is_causal=False, scale=None):
    """(out, dq, dk, dv) by F.scaled_dot_product_attention in float64 and its autograd.

    q/k/v leading dims are expanded to their broadcast shape first (autograd sums the grads
    back); mask + causal is folded into one mask because torch refuses the pair.
    """
    L, S = q.shape[-2], k.shape[-2]
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    eq = tq.expand(*batch, L, q.shape[-1])
    ek = tk.expand(*batch, S, k.shape[-1])
    ev = tv.expand(*batch, S, v.shape[-1])
    mask = attn_mask
    if is_causal and attn_mask is not None:
        if attn_mask.dtype == bool:
            mask = attn_mask & causal_bool(L, S)
        else:
            mask = np.where(causal_bool(L, S), attn_mask, -np.inf)
        is_causal = False
    tmask = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask))
    # torch's own maths, not its fused CPU kernel: with is_causal and 4-d inputs that one
    # returns NaN for any scale <= 0 (torch 2.13), which the math backend gets right
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(eq, ek, ev, attn_mask=tmask, is_causal=is_causal, scale=scale)
    out.backward(torch.from_numpy(dout))
    return out.detach().numpy(), tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()


def twin_forward_and_grads(q, k, v, dout, attn_mask=None, is_causal=False, scale=None):
    """(out, dq, dk, dv) by the torch twin and autograd."""
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    tmask = None if attn_mask is None else torch.from_numpy(np.asarray(attn_mask))
    out = ta.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask, is_causal=is_causal, scale=scale)
    out.backward(torch.from_numpy(dout))
    return out.detach().numpy(), tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()


# (batch_q, batch_kv, L, S, D, Dv, mask kind, mask shape (None: (L, S)), is_causal, scale)
CASES = [
    pytest.param((2, 3), (2, 3), 5, 5, 4, 4, None, None, False, None, id="no-mask"),
    pytest.param((2, 3), (2, 3), 5, 7, 4, 4, "bool", None, False, None, id="bool-mask"),
    pytest.param((2, 3), (2, 3), 6, 5, 4, 4, "float", None, False, None, id="additive-mask"),
    pytest.param((2, 3), (2, 3), 6, 6, 4, 4, None, None, True, None, id="causal"),
    pytest.param((2, 3), (2, 3), 6, 6, 4, 4, "bool", (2, 3, 6, 6), True, None, id="causal+bool-full-shape"),
    pytest.param((2, 3), (2, 3), 6, 6, 4, 4, "float", (3, 1, 6), True, None, id="causal+additive-key-mask"),
    pytest.param((2,), (2,), 4, 9, 5, 5, None, None, True, None, id="L<S-causal-topleft"),
    pytest.param((2,), (2,), 9, 4, 5, 5, None, None, True, None, id="L>S-causal-topleft"),
    pytest.param((2,), (2,), 7, 11, 5, 5, "bool", (1, 7, 11), False, None, id="L!=S-bool"),
    pytest.param((3,), (3,), 1, 8, 4, 4, None, None, False, None, id="L=1"),
    pytest.param((3,), (3,), 1, 8, 4, 4, "float", None, True, None, id="L=1-causal+mask"),
    pytest.param((3,), (3,), 8, 1, 4, 4, None, None, False, None, id="S=1"),
    pytest.param((3,), (3,), 8, 1, 4, 4, None, None, True, None, id="S=1-causal"),
    pytest.param((2,), (2,), 13, 11, 7, 7, "bool", None, True, None, id="primes"),
    pytest.param((2, 2), (2, 2), 5, 6, 4, 3, None, None, False, None, id="Dv!=D"),
    pytest.param((2, 2), (2, 2), 5, 6, 4, 9, "float", None, True, None, id="Dv>D-causal+mask"),
    pytest.param((2, 2, 3), (2, 2, 3), 4, 5, 3, 3, "bool", (2, 1, 3, 4, 5), False, None, id="extra-batch-dims"),
    pytest.param((), (), 5, 6, 4, 4, "bool", None, True, None, id="no-batch-dims"),
    pytest.param((2, 4), (2, 1), 5, 5, 4, 4, None, None, True, None, id="kv-head-broadcast"),
    pytest.param((2, 3), (2, 3), 5, 6, 4, 4, None, None, False, 0.3, id="custom-scale"),
    pytest.param((2, 3), (2, 3), 5, 5, 4, 4, "float", None, True, 2.5, id="custom-scale-causal+mask"),
    # torch takes any scale: a negative one puts the weight on the keys least like the query
    pytest.param((2, 3), (2, 3), 5, 7, 4, 4, None, None, False, -1.5, id="negative-scale"),
    pytest.param((2, 3), (2, 3), 6, 6, 4, 4, "float", None, True, -0.7, id="negative-scale-causal+mask"),
    pytest.param((2,), (2,), 5, 6, 4, 4, "bool", None, False, 0.0, id="zero-scale-uniform"),
]


@pytest.mark.parametrize("batch_q,batch_kv,L,S,D,Dv,mask_kind,mask_shape,is_causal,scale", CASES)
def test_forward_and_grads_match_torch(rng, batch_q, batch_kv, L, S, D, Dv, mask_kind, mask_shape, is_causal, scale):
    q, k, v = make_qkv(rng, batch_q, batch_kv, L, S, D, Dv)
    mask = make_mask(rng, mask_kind, (L, S) if mask_shape is None else mask_shape)
    kw = dict(attn_mask=mask, is_causal=is_causal, scale=scale)
    batch = np.broadcast_shapes(batch_q, batch_kv)
    dout = rng.standard_normal((*batch, L, Dv))
    ref_out, ref_dq, ref_dk, ref_dv = torch_reference(q, k, v, dout, **kw)

    out = na.scaled_dot_product_attention(q, k, v, **kw)
    assert out.shape == (*batch, L, Dv)
    assert_close(out, ref_out, **TOL, name="numpy out")
    dq, dk, dv = na.scaled_dot_product_attention_backward(dout, q, k, v, **kw)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
    assert_close(dq, ref_dq, **TOL, name="numpy dq")
    assert_close(dk, ref_dk, **TOL, name="numpy dk")
    assert_close(dv, ref_dv, **TOL, name="numpy dv")

    t_out, t_dq, t_dk, t_dv = twin_forward_and_grads(q, k, v, dout, **kw)
    assert_close(t_out, out, **TOL, name="torch twin out")
    assert_close(t_dq, dq, **TOL, name="torch twin dq")
    assert_close(t_dk, dk, **TOL, name="torch twin dk")
    assert_close(t_dv, dv, **TOL, name="torch twin dv")


@pytest.mark.parametrize(
    "batch_q,batch_kv,L,S,D,Dv,mask_kind,is_causal,scale",
    [
        ((2,), (2,), 3, 4, 3, 2, None, False, None),
        ((2,), (2,), 4, 4, 3, 2, "bool", True, None),
        ((1, 2), (1, 1), 3, 5, 2, 3, "float", False, 0.7),
        ((2,), (2,), 5, 3, 2, 2, None, True, 1.3),
        ((2,), (2,), 4, 5, 3, 2, "float", False, -0.9),
    ],
)
def test_backward_matches_finite_differences(rng, batch_q, batch_kv, L, S, D, Dv, mask_kind, is_causal, scale):
    q, k, v = make_qkv(rng, batch_q, batch_kv, L, S, D, Dv)
    mask = make_mask(rng, mask_kind, (L, S))
    kw = dict(attn_mask=mask, is_causal=is_causal, scale=scale)
    batch = np.broadcast_shapes(batch_q, batch_kv)
    w = rng.standard_normal((*batch, L, Dv))  # loss = sum(w * out), so dout = w
    dq, dk, dv = na.scaled_dot_product_attention_backward(w, q, k, v, **kw)

    def loss(_):
        return float((na.scaled_dot_product_attention(q, k, v, **kw) * w).sum())

    check_grad(loss, q, dq, name="dq")
    check_grad(loss, k, dk, name="dk")
    check_grad(loss, v, dv, name="dv")


def test_known_answers(rng):
    """S = 1: the one key gets weight 1, so out = v repeated over L (whatever q, k, scale).
    Causal: query 0 sees only key 0, so out[..., 0, :] = v[..., 0, :].
    Equal keys: uniform weights, so out = the mean of v over S.
    """
    q, k, v = make_qkv(rng, (2,), (2,), 4, 1, 3, 5)
    assert_close(na.scaled_dot_product_attention(q, k, v, scale=7.0), np.broadcast_to(v, (2, 4, 5)), **TOL)
    q, k, v = make_qkv(rng, (2,), (2,), 4, 6, 3, 5)
    assert_close(na.scaled_dot_product_attention(q, k, v, is_causal=True)[:, 0], v[:, 0], **TOL)
    k = np.broadcast_to(k[:, :1], k.shape).copy()
    assert_close(na.scaled_dot_product_attention(q, k, v), np.broadcast_to(v.mean(1, keepdims=True), (2, 4, 5)), **TOL)


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_float32_computes_in_float32(rng, impl):
    q, k, v = make_qkv(rng, (2, 2), (2, 2), 6, 7, 8, 8)
    mask = rng.random((6, 7)) < 0.8
    ref = na.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)
    q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
    if impl == "numpy":
        out = na.scaled_dot_product_attention(q32, k32, v32, attn_mask=mask.astype(np.float64) * 0.0, is_causal=True)
        out_b = na.scaled_dot_product_attention(q32, k32, v32, attn_mask=mask, is_causal=True)
        grads = na.scaled_dot_product_attention_backward(np.ones_like(out_b), q32, k32, v32, attn_mask=mask, is_causal=True)
        assert out.dtype == out_b.dtype == np.float32
        assert all(g.dtype == np.float32 for g in grads)
    else:
        tq, tk, tv = (torch.from_numpy(x) for x in (q32, k32, v32))
        out_b = ta.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.from_numpy(mask), is_causal=True)
        assert out_b.dtype == torch.float32
    assert_close(out_b, ref, atol=1e-5, rtol=1e-4, name="float32 vs float64")


# ----------------------------------------------------------------------------- fully masked rows


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_fully_masked_rows_give_zero_output_and_zero_grads(rng, mask_kind):
    """Rows 1 and 3 may attend to nothing: zeros out, zero dq, no NaN anywhere, and the other
    rows are unaffected (they equal attention computed without the empty rows)."""
    q, k, v = make_qkv(rng, (2, 2), (2, 2), 5, 6, 4, 3)
    allowed = rng.random((5, 6)) < 0.7
    allowed[:, 0] = True
    allowed[[1, 3]] = False
    mask = allowed if mask_kind == "bool" else np.where(allowed, rng.standard_normal((5, 6)), -np.inf)
    dout = rng.standard_normal((2, 2, 5, 3))
    out = na.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    dq, dk, dv = na.scaled_dot_product_attention_backward(dout, q, k, v, attn_mask=mask)
    t_out, t_dq, t_dk, t_dv = twin_forward_and_grads(q, k, v, dout, attn_mask=mask)
    for name, x in [("out", out), ("dq", dq), ("dk", dk), ("dv", dv),
                    ("torch out", t_out), ("torch dq", t_dq), ("torch dk", t_dk), ("torch dv", t_dv)]:
        assert np.isfinite(x).all(), f"{name} has non-finite entries"
    for x in (out, dq, t_out, t_dq):
        assert (x[..., [1, 3], :] == 0).all()
    keep = [0, 2, 4]
    sub = na.scaled_dot_product_attention(q[..., keep, :], k, v, attn_mask=mask[keep])
    assert_close(out[..., keep, :], sub, **TOL)
    assert_close(t_dk, dk, **TOL)
    assert_close(t_dv, dv, **TOL)


# ----------------------------------------------------------------------------- properties


@st.composite
def attention_problems(draw):
    n_batch = draw(st.integers(0, 2))
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=n_batch, max_size=n_batch)))
    L, S = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    D, Dv = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    # the mask's shape: (L, S), (1, S) (a key mask) or the full (..., L, S)
    mask_shape = draw(st.sampled_from([(L, S), (1, S), (*batch, L, S)]))
    is_causal = draw(st.booleans())
    scale = draw(st.one_of(st.none(), st.floats(-1e2, 1e2)))  # any finite scale, as torch
    magnitude = draw(st.sampled_from([1.0, 30.0, 100.0]))  # 100 with scale 1: scores ~ +-1e4
    seed = draw(st.integers(0, 2**32 - 1))
    return batch, L, S, D, Dv, mask_kind, mask_shape, is_causal, scale, magnitude, seed


@given(attention_problems())
def test_property_numpy_torch_twin_and_torch_agree(problem):
    batch, L, S, D, Dv, mask_kind, mask_shape, is_causal, scale, magnitude, seed = problem
    rng = np.random.default_rng(seed)
    q, k, v = make_qkv(rng, batch, batch, L, S, D, Dv)
    q, k = q * magnitude, k * magnitude
    mask = None
    if mask_kind == "bool":
        mask = rng.random(mask_shape) < 0.6  # often leaves whole rows empty
    elif mask_kind == "float":
        mask = np.where(rng.random(mask_shape) < 0.6, rng.standard_normal(mask_shape) * magnitude, -np.inf)
    kw = dict(attn_mask=mask, is_causal=is_causal, scale=scale)
    dout = rng.standard_normal((*batch, L, Dv))

    out = na.scaled_dot_product_attention(q, k, v, **kw)
    dq, dk, dv = na.scaled_dot_product_attention_backward(dout, q, k, v, **kw)
    t_out, t_dq, t_dk, t_dv = twin_forward_and_grads(q, k, v, dout, **kw)
    for x in (out, dq, dk, dv, t_out, t_dq, t_dk, t_dv):
        assert np.isfinite(x).all()

    # which rows may attend to nothing: zero output and zero dq there, in both twins
    allowed = np.ones((L, S), dtype=bool) if mask is None else (np.asarray(mask) != -np.inf) & (np.asarray(mask) != False)  # noqa: E712
    if is_causal:
        allowed = allowed & causal_bool(L, S)
    empty = ~np.broadcast_to(allowed, (*batch, L, S)).any(-1)  # (..., L)
    for x in (out, dq, t_out, t_dq):
        assert (x[empty] == 0).all()

    # against torch itself; scores of 1e4 make the softmax nearly one-hot, and the
    # gradients scale with the scores, so the tolerance is relative to their size
    ref_out, ref_dq, ref_dk, ref_dv = torch_reference(q, k, v, dout, **kw)
    big = magnitude**2 * (1.0 if scale is None else max(abs(scale), 1.0))
    assert_close(out, ref_out, atol=1e-9, rtol=1e-7, name="out")
    assert_close(t_out, out, atol=1e-9, rtol=1e-7, name="twin out")
    for name, a, b, ref in (("dq", dq, t_dq, ref_dq), ("dk", dk, t_dk, ref_dk), ("dv", dv, t_dv, ref_dv)):
        assert_close(a, ref, atol=1e-9 * big, rtol=1e-7, name=name)
        assert_close(b, a, atol=1e-9 * big, rtol=1e-7, name="twin " + name)


@given(st.integers(1, 6), st.integers(1, 6), st.sampled_from([1e3, 1e4]), st.integers(0, 2**32 - 1))
def test_property_huge_logits_stay_finite(L, S, logit, seed):
    """Scores of exactly +-1e4 (and 1e3): exp(1e4) overflows, only the max trick keeps them finite.

    q k^T is built to be a +-1 matrix times ``logit``; with every row's max unique the
    softmax is one-hot at the argmax, so out = v[argmax]."""
    rng = np.random.default_rng(seed)
    scores = rng.permuted(np.tile(np.arange(S, dtype=np.float64), (L, 1)), axis=1)  # distinct per row
    scores = (2 * scores / max(S - 1, 1) - 1) * logit  # in [-logit, logit]
    q = scores  # (L, S) as the queries, with keys = identity so q k^T = scores
    k = np.eye(S)
    v = rng.standard_normal((S, 3))
    expected = v[np.argmax(scores, axis=1)]  # the max beats the runner-up by >= 2e3/(S-1): one-hot
    for out in (na.scaled_dot_product_attention(q, k, v, scale=1.0),
                ta.scaled_dot_product_attention(*(torch.from_numpy(x) for x in (q, k, v)), scale=1.0).numpy()):
        assert np.isfinite(out).all()
        assert_close(out, expected, atol=1e-12, rtol=1e-12)
    grads = na.scaled_dot_product_attention_backward(np.ones((L, 3)), q, k, v, scale=1.0)
    assert all(np.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------- split / merge heads


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_split_merge_heads_shapes_layout_and_round_trip(rng, impl):
    B, T, C, H = 2, 5, 12, 3
    x = rng.standard_normal((B, T, C))
    mod, conv = (na, lambda a: a) if impl == "numpy" else (ta, torch.from_numpy)
    h = mod.split_heads(conv(x), H)
    assert tuple(h.shape) == (B, H, T, C // H)
    D = C // H
    # head h owns channels h*D .. h*D + D - 1 (the nanoGPT / torch MultiheadAttention layout)
    for hh in range(H):
        assert_close(h[:, hh], x[:, :, hh * D:(hh + 1) * D], atol=0, rtol=0)
    back = mod.merge_heads(h)
    assert tuple(back.shape) == (B, T, C)
    assert_close(back, x, atol=0, rtol=0)
    y = rng.standard_normal((B, H, T, 4))
    assert_close(mod.split_heads(mod.merge_heads(conv(y)), H), y, atol=0, rtol=0)


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_split_merge_heads_bad_input(rng, impl):
    mod, conv = (na, lambda a: a) if impl == "numpy" else (ta, torch.from_numpy)
    with pytest.raises(ValueError, match=r"n_head=5.*C=12.*\(2, 5, 12\)"):
        mod.split_heads(conv(rng.standard_normal((2, 5, 12))), 5)
    with pytest.raises(ValueError, match="n_head=0"):
        mod.split_heads(conv(rng.standard_normal((2, 5, 12))), 0)
    with pytest.raises(ValueError, match=r"\(12,\)"):
        mod.split_heads(conv(rng.standard_normal(12)), 3)
    with pytest.raises(ValueError, match=r"\(5, 12\)"):
        mod.merge_heads(conv(rng.standard_normal((5, 12))))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("impl", ["numpy", "numpy-backward", "torch"])
def test_bad_input_raises_value_error_naming_shapes(rng, impl):
    if impl == "torch":
        conv = torch.from_numpy

        def sdpa(q, k, v, **kw):
            return ta.scaled_dot_product_attention(conv(q), conv(k), conv(v), **{
                n: (conv(x) if isinstance(x, np.ndarray) else x) for n, x in kw.items()})
    elif impl == "numpy":
        sdpa = na.scaled_dot_product_attention
    else:
        def sdpa(q, k, v, **kw):
            # the input checks come before the check of dout's shape
            dout = np.zeros((*q.shape[:-1], v.shape[-1]))
            return na.scaled_dot_product_attention_backward(dout, q, k, v, **kw)

    q, k, v = make_qkv(rng, (2, 3), (2, 3), 5, 6, 4, 4)
    with pytest.raises(ValueError, match=r"head dim.*q \(2, 3, 5, 4\), k \(2, 3, 6, 3\)"):
        sdpa(q, k[..., :3], v)
    with pytest.raises(ValueError, match=r"same length S.*k \(2, 3, 6, 4\), v \(2, 3, 5, 4\)"):
        sdpa(q, k, v[..., :5, :])
    with pytest.raises(ValueError, match=r"at least 2 dims.*q \(4,\)"):
        sdpa(q[0, 0, 0], k, v)
    with pytest.raises(ValueError, match=r"do not broadcast.*q \(2, 3, 5, 4\), k \(4, 3, 6, 4\)"):
        sdpa(q, np.concatenate([k, k]), np.concatenate([v, v]))
    with pytest.raises(ValueError, match=r"attn_mask shape \(5, 5\) does not broadcast to .*\(2, 3, 5, 6\)"):
        sdpa(q, k, v, attn_mask=np.ones((5, 5), dtype=bool))
    with pytest.raises(ValueError, match=r"attn_mask shape \(4, 2, 3, 5, 6\)"):
        sdpa(q, k, v, attn_mask=np.ones((4, 2, 3, 5, 6), dtype=bool))
    with pytest.raises(ValueError, match="bool.*or float.*int64"):
        sdpa(q, k, v, attn_mask=np.ones((5, 6), dtype=np.int64))
    for bad_scale in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError, match=r"scale must be a finite number, got (-?inf|nan)"):
            sdpa(q, k, v, scale=bad_scale)
    with pytest.raises(ValueError, match="same dtype"):
        sdpa(q.astype(np.float32), k, v)
    with pytest.raises(ValueError, match="float.*int64"):
        sdpa(q.astype(np.int64), k, v)
    if impl == "numpy-backward":
        with pytest.raises(ValueError, match=r"dout shape \(2, 3, 5, 3\).*\(2, 3, 5, 4\)"):
            na.scaled_dot_product_attention_backward(np.zeros((2, 3, 5, 3)), q, k, v)
