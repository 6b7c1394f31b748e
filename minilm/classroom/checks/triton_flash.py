"""Checks of assignment 'triton-flash' (chapter 7): the Triton flash-attention forward kernel's
inner loop, run under the Triton interpreter (TRITON_INTERPRET=1, set by the manifest) through
minilm.conformance.attention_conformance on tiny shapes: every output and gradient is compared
with float64 attention, within a multiple of PyTorch's own error in the same dtype."""

from __future__ import annotations

import re

from minilm.classroom.checks import check

_NAMES = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}


def _run(s, cases, dtypes=("fp32",), backward=False):
    import torch

    from minilm.conformance import AttentionCase, attention_conformance

    check(callable(getattr(s.flash_attention, "flash_attention", None)), "flash_attention.py has no flash_attention function")
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    cases = [AttentionCase(*c[:7], **c[7]) if len(c) > 7 else AttentionCase(*c) for c in cases]
    report = attention_conformance(s.flash_attention.flash_attention, dtypes=[dt[d] for d in dtypes],
                                   cases=cases, device="cpu", backward=backward)
    if not report.passed:
        first = report.failures[0]
        why = first.problem.strip().splitlines()[-1] if first.problem.strip() else "error above the bound"
        hole = re.search(r"NotImplementedError\('(.*?)'\)", first.problem)
        if hole:  # the kernel raised (under the interpreter, wrapped in an InterpreterError)
            raise NotImplementedError(hole.group(1))
        lines = [f"{len(report.failures)} of {len(report.results)} conformance cases failed; "
                 f"{first.case.describe()} {_NAMES.get(str(first.dtype), first.dtype)}: {why}",
                 "case  dtype  out  dq  dk  dv  (error (torch's error), ! = above the bound)"]
        for r in report.failures[:4]:
            lines.append("  " + "  ".join(r.row()))
        raise AssertionError("\n".join(lines))
    return f"{len(report.results)} conformance cases passed"


def forward(s):
    return _run(s, [("full attention", 1, 2, 2, 16, 16, 16)])


def causal(s):
    return _run(s, [("causal", 1, 1, 1, 32, 32, 16, {"is_causal": True})])


def key_tail(s):
    return _run(s, [("L != S, a key tail past the last full tile", 1, 1, 1, 5, 21, 8),
                    ("causal, length one past a tile", 1, 1, 1, 17, 17, 16, {"is_causal": True})])


def gqa_and_scale(s):
    return _run(s, [("GQA, D=24, explicit scale", 1, 4, 2, 9, 12, 24, {"scale": 0.6})])


def very_negative(s):
    return _run(s, [("very negative lse, S one past 16", 1, 1, 1, 4, 17, 16, {"qk_offset": 6.0})])


def half_precision(s):
    return _run(s, [("fp16 and bf16", 1, 1, 1, 8, 8, 16, {"is_causal": True})], dtypes=("fp16", "bf16"))


def backward(s):
    return _run(s, [("gradients through the given backward kernels", 1, 1, 1, 8, 12, 8)], backward=True)
