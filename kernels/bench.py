"""Kept for old imports: the attention benchmark is ``minilm.attention_bench`` (CPU and GPU).

``minilm bench attention`` and ``benchmarks/bench_attention.py`` run it; on a CUDA GPU it
times this package's Triton kernel against every SDPA backend (and flash-attn's package when
installed). ``bash benchmarks/gpu.sh OUTDIR`` is the one-command GPU run.
"""

from minilm.attention_bench import attention_flops, main

__all__ = ["main", "attention_flops"]
