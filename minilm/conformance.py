"""A conformance suite for attention functions: ``attention_conformance(fn)``.

Any function with the ``minilm.kernels.flash_attention`` signature,
``fn(q, k, v, is_causal=..., scale=...) -> out`` with q (B, H, L, D), k and v (B, Hkv, S, D),
can be run through it: our Triton kernel, a student's kernel, PyTorch's
``scaled_dot_product_attention`` wrapped. For every case (shape, causal or not, scale) and
dtype it draws fresh inputs from a seeded ``torch.Generator`` and checks the output and the
gradients dq, dk, dv.

The rule, per case and per quantity (out, dq, dk, dv):

    err_fn    = max |fn(x) - ref64(x)|      x: the inputs in the dtype; ref64: plain attention
                                             in float64 on those inputs cast to float64
    err_torch = max |sdpa(x) - ref64(x)|     sdpa: torch.nn.functional.scaled_dot_product_attention
                                             in the same dtype on the same device (GQA by
                                             repeat_interleave of k and v)
    pass if   err_fn <= tolerance_factor * err_torch + floor
              floor = floor_ulps * eps(float32) * size
              size  = max(1, max |ref64|, size of the terms the quantity sums)
                      dq: |scale| * max |dp| * max |k|,  dk: |scale| * max |dp| * max |q|
                      (dp = dout v^T in float64), out: max |v|, dv: max |dout|

so the bound follows the dtype: float32 must be about float32-accurate, bfloat16 only
bfloat16-accurate. The floor is a few float32 ulps, whatever the dtype: it is there for
the cases where PyTorch happens to be exact (L = S = 1, where softmax is 1 and dq, dk are 0),
in which a kernel that accumulates in float32, as it must, still makes a float32 ulp or
so of error. That error is an ulp of the terms that cancel (dk = sum p (dp - delta) q is 0
only in exact arithmetic, while each dp is the size of dout . v), not of the result, hence
``size``. In float16
and bfloat16 it is hundreds of times smaller than PyTorch's own error, so it cannot hide an
error many times PyTorch's. Output dtype and shape must match the input's, and nothing may
be NaN.

Besides lengths, head dims, GQA and causal, the cases include inputs shifted so that every
score is very negative (``qk_offset``: q + offset, k - offset): the logsumexp of each row is
far below -88, where a kernel that lets padded keys (k = 0, score 0) into the softmax
backward gets exp(0 - lse) = inf.

Deliberately left out: attention masks other than causal, dropout, timing (see
``minilm bench attention``).

>>> from minilm.conformance import attention_conformance, QUICK_CASES  # doctest: +SKIP
>>> report = attention_conformance(my_attention, cases=QUICK_CASES)   # doctest: +SKIP
>>> print(report); report.raise_if_failed()                           # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "AttentionCase",
    "CaseResult",
    "ConformanceReport",
    "DEFAULT_CASES",
    "QUICK_CASES",
    "attention_conformance",
    "reference_attention",
]


@dataclass(frozen=True)
class AttentionCase:
    """One input shape: q (B, H, L, D), k and v (B, Hkv, S, D)."""

    name: str  # what the case is about, e.g. "prime length"
    B: int  # batch
    H: int  # query heads
    Hkv: int  # key/value heads (H % Hkv == 0)
    L: int  # query length
    S: int  # key length
    D: int  # head dim
    is_causal: bool = False  # query i sees keys j <= i (needs L == S)
    scale: float | None = None  # None: 1/sqrt(D)
    qk_offset: float = 0.0  # inputs q + qk_offset, k - qk_offset: scores near -scale * D * offset^2

    def describe(self) -> str:
        causal = "causal" if self.is_causal else "full"
        scale = "" if self.scale is None else f" scale={self.scale:g}"
        offset = "" if not self.qk_offset else f" q+{self.qk_offset:g}/k-{self.qk_offset:g}"
        heads = f"H={self.H}" if self.H == self.Hkv else f"H={self.H}/Hkv={self.Hkv}"
        return f"{self.name}: B={self.B} {heads} L={self.L} S={self.S} D={self.D} {causal}{scale}{offset}"


# Kept small enough that the Triton interpreter on a CPU runs all of it, in three dtypes,
# forward and backward, in a few minutes.
DEFAULT_CASES: tuple[AttentionCase, ...] = (
    AttentionCase("length 1", 1, 2, 2, 1, 1, 16),
    AttentionCase("length 1, D=8, causal", 1, 1, 1, 1, 1, 8, is_causal=True),
    AttentionCase("prime length", 2, 2, 2, 37, 37, 64, is_causal=True),
    AttentionCase("L != S", 1, 2, 2, 17, 29, 32),
    AttentionCase("L != S, S one past a block", 1, 2, 1, 31, 65, 16),
    AttentionCase("one past a block, GQA", 1, 4, 2, 65, 65, 64, is_causal=True),
    AttentionCase("one past 128, MQA", 1, 2, 1, 129, 129, 64, is_causal=True),
    AttentionCase("L one past 128, S one past 64", 1, 2, 2, 129, 65, 32),
    AttentionCase("D=48, MQA", 1, 4, 1, 33, 33, 48),
    AttentionCase("D=80", 1, 2, 2, 23, 23, 80, is_causal=True),
    AttentionCase("D=96, L != S", 1, 2, 2, 40, 50, 96),
    AttentionCase("D=128, large logits", 1, 2, 2, 31, 31, 128, is_causal=True, scale=0.5),
    AttentionCase("D=128, explicit scale", 1, 2, 1, 19, 24, 128, scale=0.05),
    # scores ~ -scale * D * 25 = -141 (lse < -88): padded keys must be masked in the backward
    AttentionCase("very negative lse, key tail, GQA", 1, 4, 2, 20, 37, 32, qk_offset=5.0),
)

# A few seconds under the interpreter: every feature once.
QUICK_CASES: tuple[AttentionCase, ...] = (
    AttentionCase("length 1, D=8, causal", 1, 1, 1, 1, 1, 8, is_causal=True),
    AttentionCase("one past a block, GQA, D=48", 1, 4, 2, 33, 33, 48, is_causal=True),
    AttentionCase("L != S, MQA, D=80", 1, 2, 1, 17, 40, 80, scale=0.3),
    # scores ~ -(1/4) * 16 * 36 = -144, so lse < -88; S = 17 leaves a key tail in any tiling
    AttentionCase("very negative lse, S one past 16", 1, 1, 1, 4, 17, 16, qk_offset=6.0),
)

_QUANTITIES = ("out", "dq", "dk", "dv")
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Plain attention, written out (no fused kernel): the float64 reference of the suite.

    q (B, H, L, D), k and v (B, Hkv, S, D) -> out (B, H, L, D); differentiable by autograd.
    """
    H, Hkv = q.shape[1], k.shape[1]
    k = k.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D): query head h reads kv head h // (H/Hkv)
    v = v.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    # s = scale * q k^T
    s = scale * (q @ k.transpose(-1, -2))  # (B, H, L, S)
    if is_causal:
        L, S = s.shape[-2:]
        future = torch.ones(L, S, dtype=torch.bool, device=s.device).triu(1)  # (L, S) True where j > i
        s = s.masked_fill(future, float("-inf"))
    return torch.softmax(s, dim=-1) @ v  # (B, H, L, D)


def _torch_sdpa(q, k, v, is_causal=False, scale=None):
    """PyTorch's own attention in the inputs' dtype, GQA by repeat_interleave."""
    H, Hkv = q.shape[1], k.shape[1]
    k = k.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)
    v = v.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)
    try:
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)
    except RuntimeError:  # pragma: no cover - a dtype this build's sdpa lacks on this device
        return reference_attention(q, k, v, is_causal=is_causal, scale=scale)


@dataclass
class CaseResult:
    """The outcome of one case in one dtype."""

    case: AttentionCase
    dtype: torch.dtype
    passed: bool
    # quantity -> (fn error, torch error, bound); all max-abs against float64
    errors: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    problem: str = ""  # why it failed, in words (exception, dtype, shape, which bound)
    seconds: float = 0.0

    def row(self) -> list[str]:
        cells = [self.case.describe(), _DTYPE_NAMES.get(self.dtype, str(self.dtype))]
        for name in _QUANTITIES:
            if name in self.errors:
                err, ref, bound = self.errors[name]
                mark = "" if err <= bound else " !"
                cells.append(f"{err:.1e} ({ref:.1e}){mark}")
            else:
                cells.append("-")
        cells.append("pass" if self.passed else "FAIL")
        return cells


@dataclass
class ConformanceReport:
    """Case-by-case results; ``print(report)`` shows the table, ``report.passed`` the verdict."""

    fn_name: str
    results: list[CaseResult]
    tolerance_factor: float
    device: str

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    def __str__(self) -> str:
        header = ["case", "dtype"] + [f"{q} err (torch)" for q in _QUANTITIES] + ["result"]
        rows = [header] + [r.row() for r in self.results]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            f"attention conformance of {self.fn_name} on {self.device}: "
            f"max-abs error vs float64, bound = {self.tolerance_factor:g} x torch's error + float32 floor",
        ]
        for i, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        for r in self.failures:
            lines.append(f"FAIL {r.case.describe()} [{_DTYPE_NAMES.get(r.dtype, r.dtype)}]: {r.problem}")
        n_pass = sum(r.passed for r in self.results)
        lines.append(f"{n_pass}/{len(self.results)} passed")
        return "\n".join(lines)

    __repr__ = __str__

    def raise_if_failed(self) -> None:
        """Raise AssertionError with the whole table if any case failed."""
        if not self.passed:
            raise AssertionError(str(self))


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    d = (a.detach().to(torch.float64).cpu() - b.detach().to(torch.float64).cpu()).abs()
    if d.numel() == 0:
        return 0.0
    return float("inf") if torch.isnan(d).any() else float(d.max())


def _run_case(fn, case: AttentionCase, dtype: torch.dtype, device: str, seed: int, index: int,
              tolerance_factor: float, floor_ulps: float, backward: bool) -> CaseResult:
    # fresh inputs for each (case, dtype), independent of which other cases run
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index * 101 + list(_DTYPE_NAMES).index(dtype))
    q = torch.randn(case.B, case.H, case.L, case.D, generator=gen)  # (B, H, L, D)
    k = torch.randn(case.B, case.Hkv, case.S, case.D, generator=gen)  # (B, Hkv, S, D)
    v = torch.randn(case.B, case.Hkv, case.S, case.D, generator=gen)  # (B, Hkv, S, D)
    dout = torch.randn(case.B, case.H, case.L, case.D, generator=gen)  # (B, H, L, D)
    q, k = q + case.qk_offset, k - case.qk_offset  # s = scale * (q.k - D * offset^2 + ...)
    q, k, v, dout = (t.to(dtype) for t in (q, k, v, dout))  # "the inputs": rounded to the dtype

    def run(f, dt, dev):
        xs = [t.to(device=dev, dtype=dt).requires_grad_(backward) for t in (q, k, v)]
        out = f(*xs, is_causal=case.is_causal, scale=case.scale)
        if isinstance(out, tuple):  # a function returning (out, lse)
            out = out[0]
        grads = ()
        if backward:
            grads = torch.autograd.grad(out, xs, grad_outputs=dout.to(device=dev, dtype=out.dtype))
        return (out, *grads)

    ref = run(reference_attention, torch.float64, "cpu")
    base = run(_torch_sdpa, dtype, device)
    result = CaseResult(case, dtype, passed=True)
    t0 = time.perf_counter()
    try:
        got = run(fn, dtype, device)
    except Exception as exc:  # noqa: BLE001 - the report names it
        result.passed = False
        result.problem = f"raised {type(exc).__name__}: {exc}".splitlines()[0] + "\n" + traceback.format_exc(limit=-2)
        return result
    finally:
        result.seconds = time.perf_counter() - t0
    eps32 = torch.finfo(torch.float32).eps  # the floor is in float32 ulps, the accumulation precision
    sizes = _term_sizes(q, k, v, dout, case)
    problems = []
    for name, g, r, b in zip(_QUANTITIES, got, ref, base):
        if g is None or tuple(g.shape) != tuple(r.shape):
            problems.append(f"{name} has shape {None if g is None else tuple(g.shape)}, expected {tuple(r.shape)}")
            continue
        if g.dtype != dtype:
            problems.append(f"{name} has dtype {g.dtype}, expected {dtype}")
        err, torch_err = _max_abs(g, r), _max_abs(b, r)
        floor = floor_ulps * eps32 * max(1.0, float(r.detach().abs().max()), sizes[name])
        bound = tolerance_factor * torch_err + floor
        result.errors[name] = (err, torch_err, bound)
        if not err <= bound:
            problems.append(f"{name} error {err:.3e} > bound {bound:.3e} "
                            f"({tolerance_factor:g} x torch's {torch_err:.3e} + floor {floor:.1e})")
    if problems:
        result.passed = False
        result.problem = "; ".join(problems)
    return result


def _term_sizes(q, k, v, dout, case: AttentionCase) -> dict[str, float]:
    """The size of the terms each quantity sums (see the module docstring), in float64."""
    q, k, v, dout = (t.detach().double() for t in (q, k, v, dout))
    rep = case.H // case.Hkv
    scale = 1.0 / math.sqrt(case.D) if case.scale is None else case.scale
    # dp = dout v^T: the term that dS = P (dp - delta) cancels against delta
    dp = dout @ v.repeat_interleave(rep, dim=1).transpose(-1, -2)  # (B, H, L, S)
    dp_max = float(dp.abs().max()) if dp.numel() else 0.0
    return {"out": float(v.abs().max()) if v.numel() else 0.0,
            "dq": abs(scale) * dp_max * (float(k.abs().max()) if k.numel() else 0.0),
            "dk": abs(scale) * dp_max * (float(q.abs().max()) if q.numel() else 0.0),
            "dv": float(dout.abs().max()) if dout.numel() else 0.0}


def attention_conformance(
    fn: Callable[..., torch.Tensor],
    *,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float16, torch.bfloat16),
    device: str | torch.device | None = None,
    cases: Sequence[AttentionCase] | None = None,
    seed: int = 0,
    tolerance_factor: float = 6.0,
    floor_ulps: float = 4.0,
    backward: bool = True,
    verbose: bool = False,
) -> ConformanceReport:
    """Run ``fn`` through the conformance cases in each dtype; return a ``ConformanceReport``.

    fn: ``fn(q, k, v, is_causal=bool, scale=float | None) -> out`` (or ``(out, lse)``) with
    q (B, H, L, D), k and v (B, Hkv, S, D), out (B, H, L, D) in q's dtype.
    device: where fn and PyTorch's baseline run; default cuda if available, else cpu.
    cases: ``DEFAULT_CASES`` if None (``QUICK_CASES`` for a fast check).
    tolerance_factor: fn's error may be this many times PyTorch's, plus ``floor_ulps``
    float32 ulps of the largest reference value (at least 1). backward: also check dq, dk, dv.
    verbose: print each case's row as it finishes.
    """
    if not callable(fn):
        raise ValueError(f"attention_conformance: fn must be callable, got {type(fn).__name__}")
    if tolerance_factor < 1:
        raise ValueError(f"attention_conformance: tolerance_factor must be >= 1, got {tolerance_factor}")
    for dt in dtypes:
        if dt not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"attention_conformance: dtype {dt} is not one of float32, float16, bfloat16")
    cases = DEFAULT_CASES if cases is None else tuple(cases)
    if not cases:
        raise ValueError("attention_conformance: cases is empty")
    for c in cases:
        if c.H % c.Hkv or (c.is_causal and c.L != c.S) or min(c.B, c.H, c.Hkv, c.L, c.S, c.D) < 1:
            raise ValueError(f"attention_conformance: bad case {c}")
    device = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    results = []
    for dt in dtypes:
        for i, case in enumerate(cases):
            r = _run_case(fn, case, dt, device, seed, i, tolerance_factor, floor_ulps, backward)
            results.append(r)
            if verbose:
                print("  ".join(r.row()) + f"  [{r.seconds:.1f}s]", flush=True)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return ConformanceReport(fn_name=name, results=results, tolerance_factor=tolerance_factor, device=device)
