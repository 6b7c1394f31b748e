"""The Triton flash-attention kernel (``minilm.kernels``) and the conformance suite.

On a machine without a CUDA GPU everything here runs under the Triton interpreter
(``TRITON_INTERPRET=1``, set by conftest.py before ``minilm.kernels`` is imported).

- The conformance suite (``minilm.conformance``) passes for our kernel in float32, float16
  and bfloat16, and FAILS for deliberately broken kernels (wrong scale, missing causal mask,
  float32 computed in bfloat16, accumulation in bfloat16, zero-padded keys let into the
  softmax, a broken backward): the suite can fail.
- Regression: dq stays finite and right when a row's logsumexp is very negative and S leaves
  a key tail (padded keys once got p = exp(-lse) = inf).
- lse agrees with the NumPy reference ``minilm.numpy.flash_attention`` (float64).
- GQA: dk, dv are the sums over each group of query heads (torch float64 autograd with
  repeat_interleave as the independent check); the gradient through lse is right too.
- Strided (transposed, sliced) inputs give bit-identical results; two backward runs are
  bit-identical; every ValueError path names what is wrong; a second derivative raises.
- The autotune key buckets L and S by powers of two (no re-tuning at every new length).
- The compile check (``minilm.kernels.compile``) builds the GPU kernels for sm_80/sm_90
  without a GPU and reports registers and spills, both the general build and the one Triton
  specialises for a GROUP = 1, multiple-of-16 launch (each kernel), also through
  ``python -m minilm bench compile`` (whose default compiles the two).
"""

from __future__ import annotations

import importlib
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

# the module (``minilm.kernels.flash_attention`` the attribute is the function it exports)
fa = importlib.import_module("minilm.kernels.flash_attention")
from minilm.conformance import (  # noqa: E402
    DEFAULT_CASES,
    QUICK_CASES,
    AttentionCase,
    _torch_sdpa,
    attention_conformance,
    reference_attention,
)
from minilm.kernels import flash_attention  # noqa: E402
from minilm.testing import assert_close  # noqa: E402

pytestmark = pytest.mark.triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _inputs(B, H, Hkv, L, S, D, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, D, generator=gen)  # (B, H, L, D)
    k = torch.randn(B, Hkv, S, D, generator=gen)  # (B, Hkv, S, D)
    v = torch.randn(B, Hkv, S, D, generator=gen)  # (B, Hkv, S, D)
    dout = torch.randn(B, H, L, D, generator=gen)  # (B, H, L, D)
    return [t.to(device=DEVICE, dtype=dtype) for t in (q, k, v, dout)]


def _run(q, k, v, dout, is_causal=False, scale=None):
    """out, lse, dq, dk, dv of our kernel (fresh leaves, so inputs may be views)."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out, lse = flash_attention(q, k, v, is_causal=is_causal, scale=scale, return_lse=True)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad_outputs=dout)
    return out, lse, dq, dk, dv


# ---------------------------------------------------------------------------------------
# Conformance: ours passes, broken kernels fail
# ---------------------------------------------------------------------------------------


def test_conformance_quick_all_dtypes():
    report = attention_conformance(flash_attention, cases=QUICK_CASES, device=DEVICE)
    print(report)
    report.raise_if_failed()
    assert report.passed and len(report.results) == 3 * len(QUICK_CASES)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_conformance_default_cases(dtype):
    report = attention_conformance(flash_attention, dtypes=(DTYPES[dtype],), device=DEVICE)
    print(report)
    report.raise_if_failed()
    assert len(report.results) == len(DEFAULT_CASES)


@pytest.mark.parametrize(
    "blocks",
    [
        {"fwd": (16, 16), "dkdv": (16, 16), "dq": (16, 16)},
        # the GPU's uneven shapes: BLOCK_M = 2 * BLOCK_N forward, 4x the other way backward
        {"fwd": (64, 32), "dkdv": (16, 64), "dq": (64, 16)},
    ],
    ids=["16x16", "gpu-like-ratios"],
)
def test_conformance_other_tilings(monkeypatch, blocks):
    """The tile bookkeeping (causal diagonal split, tails) holds for other block shapes."""
    if not fa.INTERPRET:
        pytest.skip("block shapes are picked by the autotuner on a GPU")
    monkeypatch.setattr(fa, "INTERPRETER_CONFIGS", blocks)
    cases = QUICK_CASES + (AttentionCase("one past 64, GQA", 1, 4, 2, 65, 65, 32, is_causal=True),)
    report = attention_conformance(flash_attention, dtypes=(torch.float32,), cases=cases, device=DEVICE)
    report.raise_if_failed()


def _wrong_scale(q, k, v, is_causal=False, scale=None):
    return flash_attention(q, k, v, is_causal=is_causal, scale=1.0 / q.shape[-1])  # 1/D, not 1/sqrt(D)


def _no_causal_mask(q, k, v, is_causal=False, scale=None):
    return flash_attention(q, k, v, is_causal=False, scale=scale)  # forgets the mask


def _fp32_in_bf16(q, k, v, is_causal=False, scale=None):
    # right maths, wrong precision: float32 inputs computed in bfloat16
    out = flash_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=is_causal, scale=scale)
    return out.to(q.dtype)


def _accumulate_in_input_dtype(q, k, v, is_causal=False, scale=None):
    """The online softmax of minilm.numpy.flash_attention, one key at a time, written in torch
    (autograd backward) with the running m_i, l_i, acc and the scores held in the input
    dtype: every step rounds to bfloat16 where a kernel should accumulate in float32."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # (B, H, S, D)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    m_i = torch.full(q.shape[:3], float("-inf"), dtype=q.dtype, device=q.device)  # (B, H, L)
    l_i = torch.zeros(q.shape[:3], dtype=q.dtype, device=q.device)  # (B, H, L)
    acc = torch.zeros_like(q)  # (B, H, L, D)
    rows = torch.arange(q.shape[2], device=q.device)  # (L,)
    for j in range(k.shape[2]):
        s = scale * (q @ k[:, :, j, :, None])[..., 0]  # (B, H, L)
        if is_causal:
            s = s.masked_fill(rows < j, float("-inf"))
        m_new = torch.maximum(m_i, s)
        p, alpha = torch.exp(s - m_new), torch.exp(m_i - m_new)  # (B, H, L)
        l_i = alpha * l_i + p
        acc = alpha[..., None] * acc + p[..., None] * v[:, :, j, None, :]  # (B, H, L, D)
        m_i = m_new
    return acc / l_i[..., None]


def _keys_padded_to_block(q, k, v, is_causal=False, scale=None):
    """Forgets the key-tail mask: pads k and v with zero rows up to a multiple of 16 and
    attends to them too (each padded key scores 0, not -inf). Causal inputs are passed on
    as they are (the causal mask would hide the padded keys anyway)."""
    pad = -k.shape[2] % 16
    if is_causal or pad == 0:
        return flash_attention(q, k, v, is_causal=is_causal, scale=scale)
    k_pad = torch.nn.functional.pad(k, (0, 0, 0, pad))  # (B, Hkv, S + pad, D), zero rows
    v_pad = torch.nn.functional.pad(v, (0, 0, 0, pad))  # (B, Hkv, S + pad, D)
    return flash_attention(q, k_pad, v_pad, scale=scale)


class _BadBackward(torch.autograd.Function):
    """Forward right; backward forgets to sum dk, dv over the query heads of a group."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale):
        ctx.save_for_backward(q, k, v)
        ctx.args = (is_causal, scale)
        return flash_attention(q, k, v, is_causal=is_causal, scale=scale)

    @staticmethod
    def backward(ctx, dout):
        q, k, v = ctx.saved_tensors
        with torch.enable_grad():
            group = q.shape[1] // k.shape[1]
            k_rep = k.detach().repeat_interleave(group, dim=1).requires_grad_()  # (B, H, S, D)
            v_rep = v.detach().repeat_interleave(group, dim=1).requires_grad_()  # (B, H, S, D)
            qq = q.detach().requires_grad_()
            out = flash_attention(qq, k_rep, v_rep, *ctx.args)
            dq, dk, dv = torch.autograd.grad(out, (qq, k_rep, v_rep), dout)
        return dq, dk[:, ::group], dv[:, ::group], None, None  # first head of each group only


def _bad_backward(q, k, v, is_causal=False, scale=None):
    return _BadBackward.apply(q, k, v, is_causal, scale)


@pytest.mark.parametrize(
    "broken, dtypes, must_fail, must_pass",
    [
        # every case fails: the scores are scaled wrongly everywhere except at length 1
        (_wrong_scale, ("fp32", "bf16"), lambda c: c.L > 1 or c.S > 1, lambda c: c.L == c.S == 1),
        # exactly the causal cases with more than one key fail
        (_no_causal_mask, ("fp32", "bf16"), lambda c: c.is_causal and c.S > 1, lambda c: not c.is_causal),
        # bfloat16 accuracy is not float32 accuracy
        (_fp32_in_bf16, ("fp32",), lambda c: True, lambda c: False),
        # GQA/MQA cases fail on dk, dv
        (_bad_backward, ("fp32",), lambda c: c.H != c.Hkv, lambda c: c.H == c.Hkv),
        # attending to zero-padded keys: every non-causal case whose S is not a multiple of 16
        (_keys_padded_to_block, ("fp32", "bf16"), lambda c: not c.is_causal and c.S % 16, lambda c: c.is_causal),
    ],
    ids=["wrong-scale", "no-causal-mask", "fp32-in-bf16", "no-gqa-sum", "padded-keys"],
)
def test_broken_kernels_fail_conformance(broken, dtypes, must_fail, must_pass):
    report = attention_conformance(
        broken, dtypes=[DTYPES[d] for d in dtypes], cases=QUICK_CASES, device=DEVICE
    )
    print(report)
    assert not report.passed
    with pytest.raises(AssertionError, match="FAIL"):
        report.raise_if_failed()
    for r in report.results:
        if must_fail(r.case):
            assert not r.passed, f"{r.case.describe()} [{r.dtype}] should fail"
        if must_pass(r.case):
            assert r.passed, f"{r.case.describe()} [{r.dtype}] should pass: {r.problem}"


def test_accumulating_in_bf16_fails_conformance():
    """A kernel that accumulates in bfloat16 is 5-10x less accurate than PyTorch (which
    accumulates in float32), and fails. It passed while the floor of the bound was 4 ulps of
    the dtype (4 * 2**16 float32 ulps, about 0.03 near 1): the floor now is float32 ulps."""
    cases = [c for c in DEFAULT_CASES + QUICK_CASES if c.name in ("L != S, S one past a block", "L != S, MQA, D=80")]
    assert len(cases) == 2
    report = attention_conformance(_accumulate_in_input_dtype, dtypes=(torch.bfloat16,), cases=cases, device=DEVICE)
    print(report)
    assert len(report.failures) == 2, report
    old_floor = attention_conformance(_accumulate_in_input_dtype, dtypes=(torch.bfloat16,), cases=cases,
                                      device=DEVICE, floor_ulps=4 * 2**16)
    assert old_floor.passed, old_floor


def test_torch_sdpa_passes_conformance_and_report_prints():
    """PyTorch's own attention (GQA via repeat_interleave) is within the bound by construction
    (factor >= 1); the report is a readable table."""

    def sdpa(q, k, v, is_causal=False, scale=None):
        g = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # (B, H, S, D)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)

    report = attention_conformance(sdpa, dtypes=(torch.float32,), cases=QUICK_CASES[:2], device=DEVICE)
    report.raise_if_failed()
    text = str(report)
    assert "2/2 passed" in text and "dq err (torch)" in text and QUICK_CASES[0].describe() in text


def test_conformance_reports_exceptions_and_bad_dtype():
    def raises(q, k, v, is_causal=False, scale=None):
        raise RuntimeError("boom")

    def wrong_dtype(q, k, v, is_causal=False, scale=None):
        return reference_attention(q.double(), k.double(), v.double(), is_causal, scale)

    r1 = attention_conformance(raises, dtypes=(torch.float32,), cases=QUICK_CASES[:1], backward=False)
    assert not r1.passed and "RuntimeError: boom" in r1.results[0].problem
    r2 = attention_conformance(wrong_dtype, dtypes=(torch.float32,), cases=QUICK_CASES[:1], backward=False)
    assert not r2.passed and "dtype torch.float64" in r2.results[0].problem
    with pytest.raises(ValueError, match="tolerance_factor"):
        attention_conformance(flash_attention, tolerance_factor=0.5)
    with pytest.raises(ValueError, match="float64"):
        attention_conformance(flash_attention, dtypes=(torch.float64,))


# ---------------------------------------------------------------------------------------
# Against independent references
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_lse_and_out_match_numpy_flash_attention(is_causal):
    """lse (natural log) and out against minilm.numpy.flash_attention in float64."""
    np_flash = importlib.import_module("minilm.numpy.flash_attention").flash_attention
    B, H, Hkv, L, D = 2, 4, 2, 45, 40
    S = L if is_causal else 23
    q, k, v, _ = _inputs(B, H, Hkv, L, S, D, seed=3)
    out, lse = flash_attention(q, k, v, is_causal=is_causal, return_lse=True)
    assert lse.dtype == torch.float32 and lse.shape == (B, H, L)
    assert out.dtype == torch.float32 and out.shape == (B, H, L, D)
    k_rep = k.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)
    v_rep = v.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)
    as64 = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
    out_ref, lse_ref = np_flash(as64(q), as64(k_rep), as64(v_rep), is_causal=is_causal, block_q=16, block_k=16)
    assert_close(lse, lse_ref, atol=2e-6, rtol=2e-6, name="lse")
    assert_close(out, out_ref, atol=2e-6, rtol=1e-5, name="out")


@pytest.mark.parametrize("Hkv", [2, 1], ids=["GQA", "MQA"])
def test_gqa_grads_are_sums_over_the_group(Hkv):
    """dk, dv of kv head j = the sum of the gradients of the H/Hkv repeated copies that the
    query heads j*G .. j*G+G-1 read, computed by torch float64 autograd on explicit copies."""
    B, H, L, S, D = 1, 4, 21, 21, 24
    q, k, v, dout = _inputs(B, H, Hkv, L, S, D, seed=5)
    _, _, dq, dk, dv = _run(q, k, v, dout, is_causal=True)
    G = H // Hkv
    q64 = q.double().requires_grad_()
    k_rep = k.double().repeat_interleave(G, dim=1).requires_grad_()  # (B, H, S, D) leaves
    v_rep = v.double().repeat_interleave(G, dim=1).requires_grad_()  # (B, H, S, D) leaves
    out64 = torch.nn.functional.scaled_dot_product_attention(q64, k_rep, v_rep, is_causal=True)
    dq64, dk_rep, dv_rep = torch.autograd.grad(out64, (q64, k_rep, v_rep), dout.double())
    dk64 = dk_rep.reshape(B, Hkv, G, S, D).sum(2)  # (B, Hkv, S, D): sum over the group
    dv64 = dv_rep.reshape(B, Hkv, G, S, D).sum(2)  # (B, Hkv, S, D)
    assert_close(dq, dq64, atol=2e-5, rtol=1e-4, name="dq")
    assert_close(dk, dk64, atol=2e-5, rtol=1e-4, name="dk")
    assert_close(dv, dv64, atol=2e-5, rtol=1e-4, name="dv")
    # and the group sum matters: a single copy's gradient is not the answer
    assert (dk - dk_rep[:, ::G].float()).abs().max() > 1e-2


def test_gradient_through_lse():
    """lse is differentiable: d lse_i / d s_ij = p_ij (checked against torch.logsumexp, float64)."""
    B, H, L, D = 1, 2, 19, 16
    q, k, v, dout = _inputs(B, H, H, L, L, D, seed=7)
    dlse = torch.randn(B, H, L, generator=torch.Generator().manual_seed(8)).to(DEVICE)
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    out, lse = flash_attention(qs, ks, vs, is_causal=True, return_lse=True)
    grads = torch.autograd.grad((out * dout).sum() + (lse * dlse).sum(), (qs, ks, vs))
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    s = (q64 @ k64.transpose(-1, -2)) / math.sqrt(D)  # (B, H, L, S)
    s = s.masked_fill(torch.ones(L, L, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    loss = ((torch.softmax(s, -1) @ v64) * dout.double()).sum() + (torch.logsumexp(s, -1) * dlse.double()).sum()
    refs = torch.autograd.grad(loss, (q64, k64, v64))
    for name, g, r in zip("qkv", grads, refs):
        assert_close(g, r, atol=2e-5, rtol=1e-4, name=f"d{name}")


@pytest.mark.parametrize("scale", [0.0, -0.3], ids=["zero", "negative"])
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_zero_and_negative_scales_match_plain_attention(scale, is_causal):
    """Any finite scale is taken, as by torch's sdpa and minilm's twins. scale = 0 makes every
    weight 1/(number of visible keys), so out is a running mean of v; a negative scale
    prefers the keys least like the query. Checked against the float64 formula."""
    B, H, L, D = 1, 2, 21, 16
    q, k, v, dout = _inputs(B, H, H, L, L, D, seed=11)
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    out = flash_attention(qs, ks, vs, is_causal=is_causal, scale=scale)
    grads = torch.autograd.grad((out * dout).sum(), (qs, ks, vs))
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    s = (q64 @ k64.transpose(-1, -2)) * scale  # (B, H, L, S)
    if is_causal:
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    ref = torch.softmax(s, -1) @ v64  # (B, H, L, D)
    refs = torch.autograd.grad((ref * dout.double()).sum(), (q64, k64, v64))
    assert_close(out, ref, atol=2e-5, rtol=1e-4, name="out")
    for name, g, r in zip("qkv", grads, refs):
        assert_close(g, r, atol=2e-5, rtol=1e-4, name=f"d{name}")


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_very_negative_lse_with_a_key_tail_keeps_dq_finite(dtype):
    """Regression: q ~ +5, k ~ -5, D = 16 gives scores ~ -(1/4) * 16 * 25 = -100 and lse ~ -97.
    With S = 17 the last key tile is mostly padding; the dq kernel once ran it unmasked, so
    each padded key (k = 0, s = 0) got p = exp(0 - lse) = exp(97) = inf and dq went NaN
    (S = 16, no tail, was fine). Checked against float64 with the conformance suite's rule
    (at most 6x the error of torch's sdpa in the same dtype, plus 4 float32 ulps)."""
    B, H, L, S, D = 1, 1, 4, 17, 16
    gen = torch.Generator().manual_seed(0)
    q = 5.0 + 0.01 * torch.randn(B, H, L, D, generator=gen)  # (B, H, L, D)
    k = -5.0 + 0.01 * torch.randn(B, H, S, D, generator=gen)  # (B, H, S, D)
    v = torch.randn(B, H, S, D, generator=gen)  # (B, H, S, D)
    dout = torch.randn(B, H, L, D, generator=gen)  # (B, H, L, D)
    q, k, v, dout = (t.to(device=DEVICE, dtype=DTYPES[dtype]) for t in (q, k, v, dout))
    out, lse, dq, dk, dv = _run(q, k, v, dout)
    assert lse.max() < -90, lse  # the regime of the bug: exp(-lse) overflows float32
    x64 = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    out64 = reference_attention(*x64)
    refs = (out64, *torch.autograd.grad(out64, x64, dout.cpu().double()))
    xs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out_t = _torch_sdpa(*xs)
    torch_results = (out_t, *torch.autograd.grad(out_t, xs, dout))
    for name, got, ref, base in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), refs, torch_results):
        assert torch.isfinite(got).all(), f"{name} has NaN or inf"
        err = (got.cpu().double() - ref).abs().max().item()
        torch_err = (base.cpu().double() - ref).abs().max().item()
        assert err <= 6 * torch_err + 4 * torch.finfo(torch.float32).eps, (name, err, torch_err)


def test_strided_inputs_give_identical_results():
    """Transposed views (B, L, H, D).transpose(1, 2) and a stride-2 head dim read the same
    numbers through other strides: results are bit-identical to contiguous inputs."""
    B, H, Hkv, L, S, D = 2, 4, 2, 27, 27, 32
    q, k, v, dout = _inputs(B, H, Hkv, L, S, D, seed=9)
    want = _run(q, k, v, dout, is_causal=True)
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, L, D) view of (B, L, H, D)
    k_t = k.transpose(1, 2).contiguous().transpose(1, 2)  # (B, Hkv, S, D) view
    v_wide = torch.zeros(B, Hkv, S, 2 * D, device=DEVICE)
    v_wide[..., ::2] = v
    v_s = v_wide[..., ::2]  # (B, Hkv, S, D), stride 2 along D
    dout_t = dout.transpose(1, 2).contiguous().transpose(1, 2)
    assert not (q_t.is_contiguous() or k_t.is_contiguous() or v_s.is_contiguous() or dout_t.is_contiguous())
    got = _run(q_t, k_t, v_s, dout_t, is_causal=True)
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        assert torch.equal(g, w), name


def test_backward_is_deterministic():
    """No atomics: two runs give bit-identical gradients (GQA, causal, tails)."""
    q, k, v, dout = _inputs(1, 4, 1, 37, 37, 48, dtype=torch.bfloat16, seed=11)
    a = _run(q, k, v, dout, is_causal=True)
    b = _run(q, k, v, dout, is_causal=True)
    for name, x, y in zip(("out", "lse", "dq", "dk", "dv"), a, b):
        assert torch.equal(x, y), name


def test_second_derivative_raises():
    """The backward kernels are not differentiable: with create_graph=True and an incoming
    gradient that itself depends on parameters (attention followed by more layers, here a
    weight w), the second backward raises (once_differentiable) instead of silently
    dropping that path. Without the marker dq would come back with no grad_fn at all."""
    q, k, v, _ = _inputs(1, 2, 2, 5, 5, 16, seed=17)
    q = q.requires_grad_()
    w = torch.randn(16, generator=torch.Generator().manual_seed(18)).to(DEVICE).requires_grad_()  # (D,)
    loss = (flash_attention(q, k, v) * w).sum()  # dout = w, broadcast over (B, H, L)
    (dq,) = torch.autograd.grad(loss, q, create_graph=True)
    assert dq.requires_grad
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dq.sum().backward()


def test_autotune_key_buckets_lengths(monkeypatch):
    """The autotuner times the configs once per key; the key holds L and S rounded up to
    powers of two, so lengths 17..32 (say, decoding with a KV cache, S growing by one each
    step) share one entry and 33 opens the next. Run through triton.autotune itself under the
    interpreter, with one config per key so that nothing needs timing."""
    monkeypatch.setattr(fa, "_device_arch", lambda device: 80)  # sm_80's config table
    tuned = fa._autotuned(fa._attn_fwd, "fwd", fa.AUTOTUNE_KEY)
    monkeypatch.setattr(fa, "_fwd_kernel", tuned)
    fixed = fa._launch_config
    monkeypatch.setattr(fa, "_launch_config", lambda kernel: {} if kernel == "fwd" else fixed(kernel))
    gen = torch.Generator().manual_seed(19)
    q = torch.randn(1, 2, 1, 16, generator=gen).to(DEVICE)  # (B, H, 1, D): one new token
    for S in (17, 24, 32, 33):
        k, v = (torch.randn(1, 2, S, 16, generator=gen).to(DEVICE) for _ in range(2))  # (B, Hkv, S, D)
        assert_close(flash_attention(q, k, v), reference_attention(q, k, v), atol=1e-5, rtol=1e-5, name=f"S={S}")
    assert sorted(key[:2] for key in tuned.cache) == [(1, 32), (1, 64)]


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_output_dtypes_and_shapes(dtype):
    q, k, v, dout = _inputs(2, 3, 1, 5, 9, 20, dtype=DTYPES[dtype], seed=13)
    out, lse, dq, dk, dv = _run(q, k, v, dout)
    assert out.dtype == dq.dtype == dk.dtype == dv.dtype == DTYPES[dtype]
    assert lse.dtype == torch.float32
    assert out.shape == dq.shape == q.shape and dk.shape == dv.shape == k.shape and lse.shape == (2, 3, 5)
    assert flash_attention(q, k, v).shape == q.shape  # return_lse=False gives out alone


# ---------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------


def _t(*shape, dtype=torch.float32, device=DEVICE):
    return torch.zeros(*shape, dtype=dtype, device=device)


BAD_INPUTS = [
    ("rank", lambda: (_t(2, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 16)), {}, r"rank 4.*q\.shape=\(2, 8, 16\)"),
    ("not a tensor", lambda: (np.zeros((1, 2, 8, 16)), _t(1, 2, 8, 16), _t(1, 2, 8, 16)), {}, "q must be a torch.Tensor"),
    ("batch", lambda: (_t(1, 2, 8, 16), _t(2, 2, 8, 16), _t(2, 2, 8, 16)), {}, "batch sizes differ"),
    ("head dim", lambda: (_t(1, 2, 8, 16), _t(1, 2, 8, 32), _t(1, 2, 8, 32)), {}, "head dims differ"),
    ("k vs v", lambda: (_t(1, 2, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 9, 16)), {}, "k and v must have the same shape"),
    ("groups", lambda: (_t(1, 3, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 16)), {}, "H=3 must be a multiple of.*Hkv=2"),
    ("D too small", lambda: (_t(1, 2, 8, 4), _t(1, 2, 8, 4), _t(1, 2, 8, 4)), {}, r"D=4 is out of range \[8, 128\]"),
    ("D too large", lambda: (_t(1, 1, 8, 160), _t(1, 1, 8, 160), _t(1, 1, 8, 160)), {}, "D=160 is out of range"),
    ("float64", lambda: (_t(1, 1, 8, 16, dtype=torch.float64),) * 3, {}, "float64 is not supported"),
    ("int", lambda: (_t(1, 1, 8, 16, dtype=torch.int32),) * 3, {}, "int32 is not supported"),
    ("mixed dtypes", lambda: (_t(1, 1, 8, 16), _t(1, 1, 8, 16, dtype=torch.float16), _t(1, 1, 8, 16)), {},
     "must share a dtype"),
    ("devices", lambda: (_t(1, 1, 8, 16), _t(1, 1, 8, 16, device="meta"), _t(1, 1, 8, 16)), {}, "one device"),
    ("causal L != S", lambda: (_t(1, 1, 8, 16), _t(1, 1, 9, 16), _t(1, 1, 9, 16)), {"is_causal": True},
     "is_causal=True needs L == S.*L=8, S=9"),
    ("empty", lambda: (_t(1, 1, 0, 16), _t(1, 1, 8, 16), _t(1, 1, 8, 16)), {}, "empty input"),
    ("nan scale", lambda: (_t(1, 1, 8, 16),) * 3, {"scale": float("nan")}, "scale must be a finite"),
    ("inf scale", lambda: (_t(1, 1, 8, 16),) * 3, {"scale": float("inf")}, "scale must be a finite"),
]


@pytest.mark.parametrize("make, kwargs, match", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise_value_error(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        flash_attention(*make(), **kwargs)


def test_cpu_tensors_without_the_interpreter_say_what_to_do(monkeypatch):
    monkeypatch.setattr(fa, "INTERPRET", False)
    x = torch.zeros(1, 1, 8, 16)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        flash_attention(x, x, x)


# ---------------------------------------------------------------------------------------
# Compile check (GPU code generation without a GPU)
# ---------------------------------------------------------------------------------------


def _compile_module():
    compile_mod = importlib.import_module("minilm.kernels.compile")
    reason = compile_mod.toolchain_problem()
    if reason:
        pytest.skip(f"no GPU compile toolchain: {reason}")
    return compile_mod


def _table(out: str) -> list[dict[str, str]]:
    """The rows of the compile check's table as {column: cell} (the columns read from its header)."""
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("arch "))
    # columns are joined by two or more spaces; cells may hold one ("48 KiB"): cut at the
    # header's column starts
    starts = [0] + [m.end() for m in re.finditer(r"  +", header)]
    bounds = list(zip(starts, starts[1:] + [None]))
    names = [header[a:b].strip().split()[0] for a, b in bounds]  # "config M/N/w/s" -> "config"
    return [{n: line[a:b].strip() for n, (a, b) in zip(names, bounds)} for line in lines if line.startswith("sm_")]


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, expected",
    [
        # 16-bit, causal, a non-power-of-two D (48 -> BLOCK_D 64), all four kernels' default
        # configs on Ampere and Hopper
        (["--arch", "80,90", "--head-dims", "48", "--dtypes", "bf16", "--kernels", "fwd,preprocess,dkdv,dq",
          "--causal", "true", "--ints", "general"],
         {(a, k, "bf16", "48", c, "general") for a in ("sm_80", "sm_90")
          for k, c in (("_attn_fwd", "yes"), ("_attn_bwd_preprocess", "no"), ("_attn_bwd_dkdv", "yes"),
                       ("_attn_bwd_dq", "yes"))}),
        # float32 (IEEE dots), non-causal, both ends of the head-dim range, the specialisation
        # a GROUP = 1, multiple-of-16 launch gets
        (["--arch", "80", "--head-dims", "8,128", "--dtypes", "fp32", "--kernels", "fwd,dq", "--causal", "false",
          "--ints", "aligned"],
         {("sm_80", k, "fp32", d, "no", "aligned") for k in ("_attn_fwd", "_attn_bwd_dq") for d in ("8", "128")}),
        # every kernel as a typical 16-bit training launch specialises it, on Ampere at D = 80
        # (BLOCK_D 128), causal: the forward's first config once spilled here (128/64/8/3)
        # while its general build did not
        (["--arch", "80", "--head-dims", "80", "--dtypes", "fp16", "--kernels", "fwd,preprocess,dkdv,dq",
          "--causal", "true", "--ints", "aligned"],
         {("sm_80", k, "fp16", "80", c, "aligned")
          for k, c in (("_attn_fwd", "yes"), ("_attn_bwd_preprocess", "no"), ("_attn_bwd_dkdv", "yes"),
                       ("_attn_bwd_dq", "yes"))}),
    ],
    ids=["bf16-causal-D48-all-kernels", "fp32-full-D8-D128-aligned", "fp16-causal-D80-all-kernels-aligned"],
)
def test_compile_check_passes_without_spills(capsys, argv, expected):
    """The first autotune config of each kernel compiles for the GPU without spills (and the
    Hopper forward uses wgmma in 16 bits): a kernel that only works in the interpreter, or
    only for some head dims or dtypes, fails here."""
    compile_mod = _compile_module()
    rc = compile_mod.main(argv + ["--quick", "--jobs", "2"])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0, out
    rows = _table(out)
    assert {(r["arch"], r["kernel"], r["dtype"], r["D"], r["causal"], r["ints"]) for r in rows} == expected
    assert all(r["status"] == "ok" and r["spills"] == "0" and int(r["regs"]) > 0 for r in rows), out
    hopper_fwd = [r for r in rows if r["arch"] == "sm_90" and r["kernel"] == "_attn_fwd"]
    assert all(r["wgmma"] == "yes" for r in hopper_fwd), "no wgmma on Hopper"


@pytest.mark.slow
def test_minilm_bench_compile_cli(tmp_path):
    """The real command, in a fresh process: ``python -m minilm bench compile ...`` prints the
    table and exits 0, by default with both the general and the aligned build of a config;
    ``--help`` works too."""
    _compile_module()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "minilm", "bench", "compile"]
    proc = subprocess.run(cmd + ["--arch", "90", "--head-dims", "80", "--dtypes", "fp16", "--kernels", "dkdv",
                                 "--causal", "false", "--quick", "--jobs", "1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _table(proc.stdout)
    assert [(r["arch"], r["kernel"], r["D"], r["ints"], r["status"]) for r in rows] == [
        ("sm_90", "_attn_bwd_dkdv", "80", ints, "ok") for ints in ("general", "aligned")]
    assert "2/2 ok" in proc.stdout
    proc = subprocess.run(cmd + ["--help"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "--head-dims" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
def test_compile_check_fails_on_spills(capsys):
    """A config far too big for the register file is reported as spilling, with rc != 0."""
    compile_mod = _compile_module()
    rc = compile_mod.main(["--arch", "80", "--head-dims", "128", "--dtypes", "fp16", "--kernels", "fwd",
                           "--causal", "false", "--config", "256,128,4,1", "--jobs", "1"])
    out = capsys.readouterr().out
    print(out)
    assert rc != 0 and "SPILL" in out, out


def test_compile_check_rejects_bad_arguments(capsys):
    compile_mod = importlib.import_module("minilm.kernels.compile")
    assert compile_mod.main(["--arch", "70", "--head-dims", "200", "--dtypes", "fp64"]) == 2
    err = capsys.readouterr().err
    assert "arch 70" in err and "head dim 200" in err and "dtype 'fp64'" in err


def test_compile_check_help_names_the_calling_command(capsys):
    compile_mod = importlib.import_module("minilm.kernels.compile")
    with pytest.raises(SystemExit) as exc:
        compile_mod.main(["--help"], prog="minilm bench compile")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: minilm bench compile") and "--ints" in out
