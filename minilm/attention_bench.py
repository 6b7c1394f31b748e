"""``minilm bench attention``: every attention implementation timed side by side, CPU or GPU.

Implementations (``--only`` picks some by name; ``--impl MODULE:FUNCTION`` adds plug-ins):

| name | what | where |
| --- | --- | --- |
| ``numpy-reference`` | ``minilm.numpy.attention`` (+ its hand-written backward) | CPU |
| ``numpy-flash`` | ``minilm.numpy.flash_attention`` (+ ``flash_attention_backward``) | CPU |
| ``torch-naive`` | ``minilm.torch.attention`` (autograd backward) | CPU |
| ``torch-flash`` | ``minilm.torch.flash_attention`` (FlashAttention-2 backward) | CPU |
| ``sdpa-<backend>`` | ``F.scaled_dot_product_attention`` in ``sdpa_kernel(backend)``, for every backend torch offers on the device (CPU: ``math`` and ``flash``, its fused CPU kernel; CUDA: also ``efficient``, ``cudnn``) | both |
| ``triton`` | ``minilm.kernels.flash_attention``: timed on CUDA; without a GPU it is only checked under the Triton interpreter, never timed | both |
| ``flash-attn`` | ``flash_attn.flash_attn_func`` when that package is installed | CUDA |
| plug-ins | ``fn(q, k, v, is_causal=False, scale=None) -> out``, torch ``(B, H, L, D)``; first run through ``minilm.testing.attention_conformance`` (quick cases): one that fails is reported and not timed | both |

For every shape of the sweep (L = S, head dim D, causal or not, dtype; forward ``fwd`` and
forward+backward ``fwd+bwd``) all implementations get the same inputs, and their outputs
(and gradients, for ``fwd+bwd``) are first compared against float64 attention (against the
default SDPA in the same dtype where a float64 (L, S) matrix would not fit): a wrong one gets
a ``wrong: ...`` row and is not timed. Then per implementation:

- time: median and inter-quartile range over ``--repeats`` measurements after a warm-up,
  by ``torch.utils.benchmark.Timer`` on a CPU and ``triton.testing.do_bench`` on a GPU;
- FLOP/s from counted FLOPs (never measured)::

      forward          4 * B * H * L * S * D     (q k^T and p v, 2 FLOPs per multiply-add)
      causal           half of that
      forward+backward 3.5 * forward              (the backward's five matmuls: 2.5x forward)

- ``pct_gemm``: that FLOP/s as a percentage of what a plain matmul reaches on this machine
  at the same thread count and dtype (NumPy's for NumPy implementations, torch's otherwise;
  measured at start-up, like the copy bandwidth, in ``limits``); on a known GPU also
  ``pct_peak`` against its datasheet dense fp16/bf16 peak;
- peak memory of one call: ``tracemalloc`` for NumPy, the allocator's peak on a GPU, the
  process's resident-set (RSS) high-water mark minus its RSS before, for torch on a CPU
  (Linux; reset through ``/proc/self/clear_refs``).

Threads are set once (``--threads``, default 1 on a CPU) for NumPy's BLAS (``threadpoolctl``)
and torch, and reported. Output: a table, a JSON file (``--json``; ``environment``,
``limits``, ``implementations``, ``rows``) and two PNG plots (throughput against L; peak
memory against L, log-log). ``minilm bench compare A.json B.json`` prints row-by-row ratios.

From Python (the tutorials do this)::

    from minilm.attention_bench import run_benchmark, load_rows
    result = run_benchmark(lengths=[128, 256], head_dims=[64], quick=True)   # dict, as the JSON
    rows = load_rows("bench_attention.json")                                  # list of dicts
    [(r["impl"], r["L"], r["flops_per_s"]) for r in rows if r["status"] == "ok"]

Deliberately left out: masks other than causal, L != S sweeps, dropout, multi-GPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["main", "compare_main", "run_benchmark", "load_rows", "compare", "attention_flops",
           "SCHEMA"]

SCHEMA = "minilm.bench.attention/1"
MODES = ("fwd", "fwd+bwd")
TORCH_DTYPES = ("float32", "float64", "float16", "bfloat16")
NUMPY_DTYPES = ("float32", "float64")
# dense fp16/bf16 tensor-core peaks from the datasheets, FLOP/s (matched against the device name)
GPU_PEAKS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L4": 121e12,
             "L40S": 362e12, "A10": 125e12}
# relative tolerance (max |err| / max(1, max |ref|)) per dtype when outputs are compared
TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 4e-2}
CPU_LENGTHS, GPU_LENGTHS, QUICK_LENGTHS = "128,256,512,1024,2048", "512,1024,2048,4096,8192,16384", "64,128,256"
MAX_REFERENCE_ELEMENTS = 2**27  # B*H*L*S above this: compare against SDPA in the dtype instead


def attention_flops(B: int, H: int, L: int, S: int, D: int, is_causal: bool, mode: str) -> float:
    """FLOPs of attention: forward 4*B*H*L*S*D (half when causal); backward 2.5x forward."""
    fwd = 4.0 * B * H * L * S * D
    if is_causal:
        fwd *= 0.5
    return fwd if mode == "fwd" else fwd * (1.0 + 2.5)


def load_rows(path: str) -> list[dict[str, Any]]:
    """The rows of a JSON file written by ``minilm bench attention --json``: one dict per
    (impl, mode, dtype, causal, L, D) with ``status`` ("ok" when timed), ``median_s``,
    ``iqr_s``, ``flops_per_s``, ``pct_gemm``, ``peak_bytes`` and the shape (B, H, L, S, D)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a 'minilm bench attention' JSON file (schema {SCHEMA!r})")
    return data["rows"]


# ---------------------------------------------------------------------------------------------
# Implementations


@dataclass
class Impl:
    """One attention implementation: ``make(q, k, v, dout, is_causal, mode)`` -> a callable
    that runs it once, and ``outputs(...)`` -> (out, dq, dk, dv) as float64 torch tensors."""

    name: str
    framework: str  # "numpy" or "torch"
    fn: Callable  # torch-style fn(q, k, v, is_causal=..., scale=None) -> out, or a NumPy pair
    dtypes: tuple[str, ...] = TORCH_DTYPES
    context: Callable | None = None  # a context manager factory around every call (sdpa_kernel)
    status: str = "ok"  # or why it is not timed
    timed: bool = True
    numpy_backward: Callable | None = None

    def _ctx(self):
        import contextlib

        return self.context() if self.context is not None else contextlib.nullcontext()

    def runner(self, x: dict, is_causal: bool, mode: str) -> Callable[[], Any]:
        """A no-argument callable running this implementation once on the inputs ``x``."""
        if self.framework == "numpy":
            q, k, v, dout = x["np"]
            fwd, bwd = self.fn, self.numpy_backward
            if mode == "fwd":
                return lambda: fwd(q, k, v, is_causal)
            return lambda: bwd(dout, q, k, v, is_causal, fwd(q, k, v, is_causal))
        q, k, v, dout = x["torch"]
        if mode == "fwd":
            def run():
                with self._ctx():
                    return self.fn(q, k, v, is_causal=is_causal)
            return run
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]

        def run_bwd():
            for t in leaves:
                t.grad = None
            with self._ctx():
                self.fn(*leaves, is_causal=is_causal).backward(dout)
        run_bwd.leaves = leaves  # type: ignore[attr-defined]
        return run_bwd

    def outputs(self, x: dict, is_causal: bool, mode: str) -> list:
        """(out,) or (out, dq, dk, dv) as float64 torch tensors on the CPU."""
        import torch

        if self.framework == "numpy":
            q, k, v, dout = x["np"]
            out = self.fn(q, k, v, is_causal)
            res = [out[0] if isinstance(out, tuple) else out]
            if mode != "fwd":
                res += list(self.numpy_backward(dout, q, k, v, is_causal, out))
            return [torch.from_numpy(np.asarray(r, dtype=np.float64)) for r in res]
        q, k, v, dout = x["torch"]
        leaves = [t.detach().clone().requires_grad_(mode != "fwd") for t in (q, k, v)]
        with self._ctx():
            out = self.fn(*leaves, is_causal=is_causal)
            if mode != "fwd":
                out.backward(dout)
        res = [out] + ([t.grad for t in leaves] if mode != "fwd" else [])
        return [r.detach().double().cpu() for r in res]


def _numpy_impls() -> list[Impl]:
    from minilm.numpy.attention import scaled_dot_product_attention, scaled_dot_product_attention_backward
    from minilm.numpy.flash_attention import flash_attention, flash_attention_backward

    def ref_fwd(q, k, v, is_causal):
        return scaled_dot_product_attention(q, k, v, is_causal=is_causal)

    def ref_bwd(dout, q, k, v, is_causal, out):
        # the reference backward recomputes p from q and k (it takes no saved state)
        return scaled_dot_product_attention_backward(dout, q, k, v, is_causal=is_causal)

    def flash_fwd(q, k, v, is_causal):
        return flash_attention(q, k, v, is_causal=is_causal)  # (out, lse)

    def flash_bwd(dout, q, k, v, is_causal, out_lse):
        out, lse = out_lse
        return flash_attention_backward(dout, q, k, v, out, lse, is_causal=is_causal)

    return [Impl("numpy-reference", "numpy", ref_fwd, NUMPY_DTYPES, numpy_backward=ref_bwd),
            Impl("numpy-flash", "numpy", flash_fwd, NUMPY_DTYPES, numpy_backward=flash_bwd)]


def _torch_twin_impls() -> list[Impl]:
    from minilm.torch.attention import scaled_dot_product_attention

    twin = importlib.import_module("minilm.torch.flash_attention").flash_attention

    def flash(q, k, v, is_causal=False, scale=None):
        return twin(q, k, v, is_causal=is_causal, scale=scale)[0]

    return [Impl("torch-naive", "torch", scaled_dot_product_attention),
            Impl("torch-flash", "torch", flash)]


def _sdpa_impls(device: str, dtypes: list[str]) -> list[Impl]:
    """One Impl per SDPA backend that runs forward and backward here in every dtype asked."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    impls = []
    for name, backend in names.items():
        ok = []
        for dt in dtypes:
            try:
                q = torch.randn(1, 2, 16, 64, device=device, dtype=getattr(torch, dt), requires_grad=True)
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
                ok.append(dt)
            except RuntimeError:
                pass
        if ok:
            impls.append(Impl(f"sdpa-{name}", "torch", F.scaled_dot_product_attention, tuple(ok),
                              context=lambda b=backend: sdpa_kernel(b)))
    return impls


def _triton_impl(device: str, dtypes: list[str]) -> Impl:
    """The Triton kernel: timed on CUDA; on a CPU checked under the interpreter, never timed."""
    if not device.startswith("cuda") and "minilm.kernels" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first import
    try:
        from minilm.kernels import flash_attention
    except Exception as exc:  # ImportError, or triton failing to set itself up
        return Impl("triton", "torch", None, status=f"unavailable: {type(exc).__name__}: {exc}",
                    timed=False)
    kernel_dtypes = tuple(d for d in ("float32", "float16", "bfloat16") if d in dtypes) or ("float32",)
    impl = Impl("triton", "torch", flash_attention, kernel_dtypes)
    if not device.startswith("cuda"):
        impl.timed = False
        impl.status = "checked under the Triton interpreter, not timed: " + _check_small(impl, device)
    return impl


def _flash_attn_impl() -> Impl | None:
    """flash-attn's ``flash_attn_func`` (layout (B, L, H, D)) when that package is installed."""
    try:
        from flash_attn import flash_attn_func
    except Exception:
        return None

    def fn(q, k, v, is_causal=False, scale=None):
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                              softmax_scale=scale, causal=is_causal)  # (B, L, H, D)
        return out.transpose(1, 2)  # (B, H, L, D)

    return Impl("flash-attn", "torch", fn, ("float16", "bfloat16"))


def load_plugin(spec: str) -> Callable:
    """The callable named by ``MODULE:FUNCTION`` (ValueError / ImportError if it is not there)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--impl {spec!r}: want MODULE:FUNCTION, e.g. mypkg.attn:my_attention")
    module = importlib.import_module(module_name)
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ValueError(f"--impl {spec!r}: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ValueError(f"--impl {spec!r}: {attr!r} is not callable")
    return fn


def _plugin_impl(spec: str, device: str, dtypes: list[str]) -> Impl:
    """A plug-in, run through attention_conformance first: one that fails is not timed."""
    import torch

    from minilm.conformance import QUICK_CASES, attention_conformance

    fn = load_plugin(spec)
    conf_dtypes = [getattr(torch, d) for d in dtypes if d in ("float32", "float16", "bfloat16")]
    try:
        report = attention_conformance(fn, dtypes=conf_dtypes or [torch.float32], device=device,
                                       cases=QUICK_CASES)
        passed = report.passed
        why = "" if passed else "; ".join(f"{r.case.describe()} {r.dtype}: {r.problem}"
                                          for r in report.failures)[:300]
    except Exception as exc:  # a plug-in that raises fails conformance like a wrong one
        passed, why = False, f"{type(exc).__name__}: {exc}"[:300]
    impl = Impl(spec, "torch", fn)
    if not passed:
        impl.timed = False
        impl.status = f"failed attention_conformance, not timed: {why}"
    return impl


def _check_small(impl: Impl, device: str) -> str:
    """Compare ``impl`` with float64 attention on one small causal case, fwd+bwd."""
    x = _inputs(1, 2, 48, 32, "float32", device, seed=1)
    ref = _reference(x, True, "fwd+bwd")
    try:
        err = _max_rel_err(impl.outputs(x, True, "fwd+bwd"), ref)
    except Exception as exc:
        return f"FAILED ({type(exc).__name__}: {exc})"
    return f"{'ok' if err <= 1e-3 else 'WRONG'} (max rel err {err:.1e} at L=48, D=32, float32, causal)"


# ---------------------------------------------------------------------------------------------
# Inputs, reference, measurement


def _inputs(B: int, H: int, L: int, D: int, dtype: str, device: str, seed: int) -> dict:
    """The same q, k, v, dout for every implementation: torch (device, dtype) and NumPy."""
    import torch

    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(B, H, L, D, generator=g) for _ in range(4)]  # q, k, v, dout (B, H, L, D)
    tens = [t.to(device=device, dtype=getattr(torch, dtype)) for t in base]
    x = {"torch": tens, "np": None, "shape": (B, H, L, D), "dtype": dtype}
    if dtype in NUMPY_DTYPES:
        x["np"] = [t.cpu().numpy() for t in tens]
    return x


def _reference(x: dict, is_causal: bool, mode: str) -> list:
    """Float64 attention (and gradients) of the inputs, computed on their device, returned on
    the CPU: the truth the rows are compared with."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    leaves = [t.detach().double().requires_grad_(mode != "fwd") for t in x["torch"][:3]]
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(*leaves, is_causal=is_causal)
    if mode == "fwd":
        return [out.detach().cpu()]
    out.backward(x["torch"][3].double())
    return [out.detach().cpu()] + [t.grad.cpu() for t in leaves]


def _max_rel_err(got: list, want: list) -> float:
    """max over outputs of max |got - want| / max(1, max |want|)."""
    worst = 0.0
    for a, b in zip(got, want):
        if tuple(a.shape) != tuple(b.shape):
            return math.inf
        err = (a - b).abs().max().item() if a.numel() else 0.0
        worst = max(worst, err / max(1.0, b.abs().max().item() if b.numel() else 1.0))
    return worst if math.isfinite(worst) else math.inf


def _time_cpu(run: Callable, repeats: int, min_time: float, threads: int) -> list[float]:
    """Per-call seconds, one per repeat, by torch.utils.benchmark.Timer (after a warm-up)."""
    from torch.utils.benchmark import Timer

    t0 = time.perf_counter()
    run()  # warm-up, and a first estimate of the cost of a call
    once = max(time.perf_counter() - t0, 1e-7)
    number = max(1, int(min_time / repeats / once))
    timer = Timer(stmt="run()", globals={"run": run}, num_threads=threads)
    return [timer.timeit(number).median for _ in range(repeats)]


def _time_gpu(run: Callable, rep_ms: int) -> list[float]:
    """Per-call seconds by triton.testing.do_bench (L2 flushed, warm-up, CUDA events)."""
    import triton

    ms = triton.testing.do_bench(run, warmup=25, rep=rep_ms, grad_to_none=getattr(run, "leaves", None),
                                 return_mode="all")
    return [m * 1e-3 for m in ms]


def _rss_bytes(field_name: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field_name} in /proc/self/status")


def _peak_memory(impl: Impl, run: Callable, device: str) -> tuple[int | None, str]:
    """Peak bytes of one call above what was in use before, and how it was measured."""
    if impl.framework == "numpy":
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            run()
            return tracemalloc.get_traced_memory()[1] - before, "tracemalloc"
        finally:
            tracemalloc.stop()
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, "cuda allocator peak"
    try:
        before = _rss_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM, the peak RSS, to the current RSS
        run()
        return max(0, _rss_bytes("VmHWM") - before), "process RSS peak delta"
    except OSError:
        return None, "unavailable (needs Linux /proc)"


def _set_threads(threads: int | None, device: str) -> dict:
    """Set NumPy's BLAS and torch to ``threads`` once; report what each now uses."""
    import torch

    info: dict[str, Any] = {}
    if threads is None:
        threads = 1 if device == "cpu" else torch.get_num_threads()
    torch.set_num_threads(threads)
    info["torch"] = torch.get_num_threads()
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(limits=threads, user_api="blas")  # stays set
        pools = threadpoolctl.threadpool_info()
        info["numpy_blas"] = {p.get("internal_api", "?"): p.get("num_threads") for p in pools
                              if p.get("user_api") == "blas"}
    except ImportError:
        info["numpy_blas"] = ("unchanged: threadpoolctl is not installed (pip install threadpoolctl, "
                              "or set OMP_NUM_THREADS / OPENBLAS_NUM_THREADS before starting)")
    info["requested"] = threads
    return info


def _limits(device: str, dtypes: list[str], threads: int, quick: bool) -> dict:
    """This machine's measured matmul FLOP/s (NumPy and torch, per dtype) and copy bandwidth:
    the best of several measurements (what is attainable here), not their median."""
    import torch

    limits: dict[str, Any] = {"gemm_flops": {}, "copy_bytes_per_s": {}}
    n, min_time = (256, 0.05) if quick else (1024, 0.3)
    if device == "cpu":
        for dt in dtypes:
            if dt in NUMPY_DTYPES:
                a = np.random.default_rng(0).standard_normal((n, n)).astype(dt)
                t = min(_time_cpu(lambda a=a: a @ a, 5, min_time, threads))
                limits["gemm_flops"][f"numpy/{dt}"] = 2.0 * n**3 / t
            a = torch.randn(n, n, dtype=getattr(torch, dt))
            t = min(_time_cpu(lambda a=a: a @ a, 5, min_time, threads))
            limits["gemm_flops"][f"torch/{dt}"] = 2.0 * n**3 / t
        src = np.ones(2**23, np.float32)  # 32 MiB, more than a last-level cache
        dst = np.empty_like(src)
        t = min(_time_cpu(lambda: np.copyto(dst, src), 5, min_time, threads))
        limits["copy_bytes_per_s"]["numpy"] = 2.0 * src.nbytes / t  # read + write
        tsrc, tdst = torch.from_numpy(src), torch.from_numpy(dst)
        t = min(_time_cpu(lambda: tdst.copy_(tsrc), 5, min_time, threads))
        limits["copy_bytes_per_s"]["torch"] = 2.0 * src.nbytes / t
    else:
        n = 8192
        for dt in dtypes:
            a = torch.randn(n, n, device=device, dtype=getattr(torch, dt))
            t = min(_time_gpu(lambda a=a: a @ a, 100))
            limits["gemm_flops"][f"torch/{dt}"] = 2.0 * n**3 / t
        src = torch.ones(2**28, device=device, dtype=torch.uint8)  # 256 MiB
        dst = torch.empty_like(src)
        t = min(_time_gpu(lambda: dst.copy_(src), 100))
        limits["copy_bytes_per_s"]["torch"] = 2.0 * src.numel() / t
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAKS.items():
            if key in name:
                limits["datasheet_peak_flops"] = {"name": key, "fp16/bf16 dense": peak}
                break
    return limits


def _environment(device: str, threads: dict) -> dict:
    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(),
           "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "threads": threads,
           "numpy": np.__version__, "torch": torch.__version__, "device": device,
           "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:  # the version without importing triton (which must see TRITON_INTERPRET first)
        from importlib.metadata import version

        env["triton"] = version("triton")
    except Exception:
        env["triton"] = None
    env["triton_interpret"] = os.environ.get("TRITON_INTERPRET")
    return env


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------
# The run


def run_benchmark(
    *,
    lengths: list[int] | None = None,
    head_dims: list[int] | None = None,
    dtypes: list[str] | None = None,
    modes: list[str] | None = None,
    causal: list[bool] | None = None,
    batch: int | None = None,
    heads: int | None = None,
    plugins: list[str] = (),
    only: list[str] | None = None,
    skip: list[str] = (),
    device: str | None = None,
    threads: int | None = None,
    repeats: int | None = None,
    quick: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the sweep; return ``{"schema", "environment", "limits", "implementations", "rows"}``
    (what ``--json`` writes). Arguments as the command's flags; None picks the device's default."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    if not gpu and "minilm.kernels" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernel can only be checked here
    lengths = lengths or [int(n) for n in (QUICK_LENGTHS if quick else GPU_LENGTHS if gpu else CPU_LENGTHS).split(",")]
    head_dims = head_dims or ([64] if quick else [64, 128])
    dtypes = dtypes or (["float16", "bfloat16"] if gpu else ["float32"])
    modes = modes or list(MODES)
    causal = causal if causal is not None else [False, True]
    repeats = repeats or (3 if quick else 7)
    min_time = 0.05 if quick else 0.5
    for d in dtypes:
        if d not in TORCH_DTYPES:
            raise ValueError(f"dtype {d!r}: use one of {', '.join(TORCH_DTYPES)}")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"mode {m!r}: use one of {', '.join(MODES)}")
    if any(n < 1 for n in lengths) or any(not 1 <= d <= 256 for d in head_dims):
        raise ValueError(f"lengths must be >= 1 and head dims in 1..256, got {lengths} and {head_dims}")

    thread_info = _set_threads(threads, device)
    env = _environment(device, thread_info)
    log(f"device: {env['gpu'] or env['cpu']} ({device}); threads: torch {thread_info['torch']}, "
        f"NumPy BLAS {thread_info['numpy_blas']}; numpy {env['numpy']}, torch {env['torch']}, "
        f"triton {env['triton']}")
    limits = _limits(device, dtypes, thread_info["requested"], quick)
    log("limits: " + ", ".join(f"GEMM {k} {v / 1e9:.1f} GFLOP/s" for k, v in limits["gemm_flops"].items())
        + "; " + ", ".join(f"copy {k} {v / 1e9:.1f} GB/s" for k, v in limits["copy_bytes_per_s"].items()))

    impls: list[Impl] = []
    if not gpu:
        impls += _numpy_impls() + _torch_twin_impls()
    impls += _sdpa_impls(device, dtypes)
    if not only or "triton" in only:  # (the check under the interpreter takes a few seconds)
        impls.append(_triton_impl(device, dtypes))
    if gpu:
        fa = _flash_attn_impl()
        if fa is not None:
            impls.append(fa)
    if only:
        unknown = sorted(set(only) - {i.name for i in impls} - {"triton"})
        if unknown:
            raise ValueError(f"--only {','.join(unknown)}: not available here; available: "
                             f"{', '.join(i.name for i in impls)}")
        impls = [i for i in impls if i.name in only]
    impls = [i for i in impls if i.name not in skip]
    impls += [_plugin_impl(spec, device, dtypes) for spec in plugins]
    for impl in impls:
        if impl.status != "ok":
            log(f"  {impl.name}: {impl.status}")
    timed = [i for i in impls if i.timed]

    shapes = [(dt, D, c, L) for dt in dtypes for D in head_dims for c in causal for L in lengths]
    total = sum(1 for dt, *_ in shapes for i in timed if dt in i.dtypes) * len(modes)
    bar = _progress(total, progress)
    rows = []
    seed = 0
    for dt, D, is_causal, L in shapes:
        B = batch or (max(1, 16384 // L) if gpu else 1)
        H = heads or (max(1, 2048 // D) if gpu else 4)
        seed += 1
        x = _inputs(B, H, L, D, dt, device, seed)
        for mode in modes:
            flops = attention_flops(B, H, L, L, D, is_causal, mode)
            small = B * H * L * L <= MAX_REFERENCE_ELEMENTS
            ref = _reference(x, is_causal, mode) if small else None
            baseline = "float64 attention" if small else "sdpa (default backend) in the same dtype"
            if ref is None:
                import torch.nn.functional as F

                ref = Impl("sdpa", "torch", F.scaled_dot_product_attention).outputs(x, is_causal, mode)
            for impl in timed:
                if dt not in impl.dtypes:
                    continue
                row = dict(impl=impl.name, framework=impl.framework, device=device, mode=mode,
                           dtype=dt, causal=is_causal, B=B, H=H, L=L, S=L, D=D, flops=flops,
                           status="ok", max_rel_err=None, median_s=None, iqr_s=None, times_s=None,
                           flops_per_s=None, pct_gemm=None, pct_peak=None, peak_bytes=None,
                           memory_method=None)
                try:
                    err = _max_rel_err(impl.outputs(x, is_causal, mode), ref)
                except Exception as exc:
                    err, row["status"] = math.inf, f"error: {type(exc).__name__}: {exc}"[:200]
                row["max_rel_err"] = err if math.isfinite(err) else None
                tol = TOLERANCE[dt] * (1 if small else 2)
                if row["status"] == "ok" and not err <= tol:
                    row["status"] = f"wrong: max rel err {err:.2e} > {tol:g} against {baseline}"
                if row["status"] == "ok":
                    run = impl.runner(x, is_causal, mode)
                    times = (_time_gpu(run, 25 if quick else 100) if gpu
                             else _time_cpu(run, repeats, min_time, thread_info["requested"]))
                    q1, med, q3 = np.percentile(times, [25, 50, 75])
                    row.update(median_s=float(med), iqr_s=float(q3 - q1), times_s=[float(t) for t in times],
                               flops_per_s=flops / med)
                    gemm = limits["gemm_flops"].get(f"{impl.framework}/{dt}") or limits["gemm_flops"].get(f"torch/{dt}")
                    row["pct_gemm"] = 100.0 * row["flops_per_s"] / gemm if gemm else None
                    peak = limits.get("datasheet_peak_flops")
                    if peak and dt in ("float16", "bfloat16"):
                        row["pct_peak"] = 100.0 * row["flops_per_s"] / peak["fp16/bf16 dense"]
                    row["peak_bytes"], row["memory_method"] = _peak_memory(impl, run, device)
                rows.append(row)
                bar.update(1)
        del x
    bar.close()
    return {"schema": SCHEMA, "environment": env, "limits": limits,
            "implementations": [{"name": i.name, "framework": i.framework, "dtypes": list(i.dtypes),
                                 "timed": i.timed, "status": i.status} for i in impls],
            "rows": rows}


def _progress(total: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        class _Null:
            def update(self, n=1):
                pass

            def close(self):
                pass
        return _Null()
    return tqdm(total=total, desc="bench attention", unit="row", leave=False)


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table (what the command prints)."""
    head = (f"{'impl':<16} {'mode':<7} {'dtype':<8} {'causal':<6} {'L':>6} {'D':>4} {'median ms':>10} "
            f"{'IQR ms':>8} {'GFLOP/s':>9} {'%GEMM':>6} {'peak MB':>9}  status")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["status"] == "ok":
            mem = "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:9.1f}"
            pct = "" if r["pct_gemm"] is None else f"{r['pct_gemm']:6.1f}"
            lines.append(f"{r['impl']:<16} {r['mode']:<7} {r['dtype']:<8} {str(r['causal']):<6} {r['L']:6d} "
                         f"{r['D']:4d} {r['median_s'] * 1e3:10.3f} {r['iqr_s'] * 1e3:8.3f} "
                         f"{r['flops_per_s'] / 1e9:9.2f} {pct:>6} {mem:>9}  ok")
        else:
            lines.append(f"{r['impl']:<16} {r['mode']:<7} {r['dtype']:<8} {str(r['causal']):<6} {r['L']:6d} "
                         f"{r['D']:4d} {'':>10} {'':>8} {'':>9} {'':>6} {'':>9}  {r['status']}")
    return "\n".join(lines)


def write_plots(result: dict, prefix: str) -> list[str]:
    """``PREFIX_throughput.png`` (GFLOP/s against L) and ``PREFIX_memory.png`` (peak memory
    against L, log-log); returns the paths written."""
    # the object-oriented API: no pyplot state and no global backend switched
    import matplotlib
    from matplotlib.figure import Figure

    rows = [r for r in result["rows"] if r["status"] == "ok"]
    device = result["environment"].get("gpu") or result["environment"].get("cpu")
    paths = []
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)] or ["fwd"]
    dims = sorted({r["D"] for r in rows}) or [0]
    impls = sorted({r["impl"] for r in rows})
    dtypes = sorted({r["dtype"] for r in rows})
    # one colour per implementation (the same in every panel); dashed = causal; marker = dtype
    colour = {name: matplotlib.colormaps["tab10" if len(impls) <= 10 else "tab20"](i) for i, name in enumerate(impls)}
    marker = {dt: m for dt, m in zip(dtypes, "osv^Dx")}
    for what in ("throughput", "memory"):
        fig = Figure(figsize=(6 * len(dims), 4.5 * len(modes)))
        axes = fig.subplots(len(modes), len(dims), squeeze=False)
        for i, mode in enumerate(modes):
            for j, D in enumerate(dims):
                ax = axes[i][j]
                sel = [r for r in rows if r["mode"] == mode and r["D"] == D]
                for key in sorted({(r["impl"], r["dtype"], r["causal"]) for r in sel}):
                    line = sorted((r for r in sel if (r["impl"], r["dtype"], r["causal"]) == key),
                                  key=lambda r: r["L"])
                    # (a peak of 0 bytes, e.g. torch reusing freed memory, cannot go on a log axis)
                    ys = ([r["flops_per_s"] / 1e9 for r in line] if what == "throughput"
                          else [r["peak_bytes"] / 2**20 if r["peak_bytes"] else math.nan for r in line])
                    ax.plot([r["L"] for r in line], ys, marker=marker[key[1]], color=colour[key[0]],
                            linestyle="--" if key[2] else "-",
                            label=f"{key[0]} {key[1]}{' causal' if key[2] else ''}")
                ax.set_xscale("log", base=2)
                if what == "memory" and any(r["peak_bytes"] for r in sel):
                    ax.set_yscale("log")
                ax.set_xlabel("L = S")
                ax.set_ylabel("GFLOP/s" if what == "throughput" else "peak memory (MiB)")
                ax.set_title(f"{mode}, D={D}")
                ax.grid(True, alpha=0.3)
                ax.legend(fontsize=6)
        fig.suptitle(f"attention {what}: {device}")
        fig.tight_layout()
        path = f"{prefix}_{what}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Command line


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated integers, got {text!r}") from None


def _strs(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit 2), as in ``minilm``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


def _parser(prog: str | None) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Time every attention implementation side by side (CPU or CUDA GPU): median "
                    "time, FLOP/s, %% of a measured GEMM, peak memory; outputs checked first.",
        epilog="examples:\n"
               "  minilm bench attention --quick\n"
               "  minilm bench attention --lengths 256,1024 --head-dims 64 --json cpu.json\n"
               "  minilm bench attention --impl mypkg.attn:my_attention --quick\n"
               "  minilm bench compare before.json after.json")
    p.add_argument("--quick", action="store_true", help="a small sweep, under a minute on a CPU")
    p.add_argument("--impl", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="a plug-in fn(q, k, v, is_causal=False, scale=None) -> out (repeatable)")
    p.add_argument("--only", type=_strs, metavar="NAMES", help="built-in implementations to run (comma list)")
    p.add_argument("--skip", type=_strs, default=[], metavar="NAMES",
                   help="built-in implementations not to run, where present (comma list)")
    p.add_argument("--json", default="bench_attention.json", metavar="FILE",
                   help="write environment and rows here ('' for none; default: %(default)s)")
    p.add_argument("--plots", default=None, metavar="PREFIX",
                   help="write PREFIX_throughput.png and PREFIX_memory.png ('' for none; "
                        "default: the JSON path without .json)")
    p.add_argument("--lengths", type=_ints, help=f"L = S values (default: CPU {CPU_LENGTHS}; GPU {GPU_LENGTHS})")
    p.add_argument("--head-dims", type=_ints, help="D values (default: 64,128; --quick 64)")
    p.add_argument("--dtypes", type=_strs, help="of float32, float64, float16, bfloat16 "
                                                "(default: CPU float32; GPU float16,bfloat16)")
    p.add_argument("--modes", type=_strs, help="fwd and/or fwd+bwd (default: both)")
    p.add_argument("--causal", choices=("both", "true", "false"), default="both")
    p.add_argument("--batch", type=int, help="B (default: CPU 1; GPU 16384 // L)")
    p.add_argument("--heads", type=int, help="H (default: CPU 4; GPU 2048 // D)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="threads for NumPy's BLAS and torch (default: 1 on a CPU)")
    p.add_argument("--repeats", type=int, help="timed measurements per row (default 7; --quick 3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``minilm bench attention``: 0 when done, 2 for bad arguments, 1 when a row is wrong."""
    p = _parser(prog)
    ns = p.parse_args(argv)
    for name in ("batch", "heads", "threads", "repeats"):
        if getattr(ns, name) is not None and getattr(ns, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(ns, name)}")
    plots = ns.plots if ns.plots is not None else (ns.json[:-5] if ns.json.endswith(".json") else ns.json)
    if plots:
        try:
            import matplotlib  # noqa: F401  (checked before anything runs)
        except ImportError:
            p.error("plots need the 'matplotlib' package: pip install matplotlib, or pass --plots ''")
    causal = {"both": [False, True], "true": [True], "false": [False]}[ns.causal]
    try:
        for spec in ns.impl:  # a misspelt plug-in fails now, not after the limits are measured
            load_plugin(spec)
        result = run_benchmark(lengths=ns.lengths, head_dims=ns.head_dims, dtypes=ns.dtypes,
                               modes=ns.modes, causal=causal, batch=ns.batch, heads=ns.heads,
                               plugins=ns.impl, only=ns.only, skip=ns.skip, device=ns.device, threads=ns.threads,
                               repeats=ns.repeats, quick=ns.quick, progress=not ns.no_progress)
    except ValueError as e:
        p.error(str(e))
    print(format_table(result["rows"]))
    if ns.json:
        with open(ns.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        print(f"JSON: {ns.json}")
    if plots:
        print("plots: " + ", ".join(write_plots(result, plots)))
    wrong = [r for r in result["rows"] if r["status"].startswith(("wrong", "error"))]
    return 1 if wrong else 0


def compare(a: dict | list, b: dict | list) -> list[dict]:
    """Row-by-row ratios of two results (dicts as ``run_benchmark`` returns, or their rows):
    one dict per row timed in both, with ``time_ratio`` = b's median / a's median (< 1: b is
    faster), matched on (impl, mode, dtype, causal, B, H, L, D)."""
    rows_a = a["rows"] if isinstance(a, dict) else a
    rows_b = b["rows"] if isinstance(b, dict) else b

    def key(r):
        return (r["impl"], r["mode"], r["dtype"], r["causal"], r["B"], r["H"], r["L"], r["D"])

    index_b = {key(r): r for r in rows_b if r["status"] == "ok"}
    out = []
    for r in rows_a:
        other = index_b.get(key(r))
        if r["status"] == "ok" and other is not None:
            out.append(dict(zip(("impl", "mode", "dtype", "causal", "B", "H", "L", "D"), key(r)),
                            a_s=r["median_s"], b_s=other["median_s"],
                            time_ratio=other["median_s"] / r["median_s"]))
    return out


def compare_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``minilm bench compare A.json B.json``: b's time / a's time, row by row."""
    p = _Parser(prog=prog, description="Row-by-row ratios of two 'minilm bench "
                                "attention' JSON files: B's median time over A's (< 1: B is faster).")
    p.add_argument("a", metavar="A.json")
    p.add_argument("b", metavar="B.json")
    ns = p.parse_args(argv)
    data = []
    for path in (ns.a, ns.b):
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not JSON ({e})") from None
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ValueError(f"{path}: not a 'minilm bench attention' JSON file (schema {SCHEMA!r})")
        data.append(d)
    for tag, path, d in (("A", ns.a, data[0]), ("B", ns.b, data[1])):
        env = d["environment"]
        print(f"{tag}: {path}: {env.get('gpu') or env.get('cpu')}, torch {env.get('torch')}, "
              f"{env.get('time_utc')}")
    pairs = compare(data[0], data[1])
    head = (f"{'impl':<16} {'mode':<7} {'dtype':<8} {'causal':<6} {'L':>6} {'D':>4} "
            f"{'A ms':>10} {'B ms':>10} {'B/A':>7}")
    print(head)
    print("-" * len(head))
    for r in pairs:
        print(f"{r['impl']:<16} {r['mode']:<7} {r['dtype']:<8} {str(r['causal']):<6} {r['L']:6d} "
              f"{r['D']:4d} {r['a_s'] * 1e3:10.3f} {r['b_s'] * 1e3:10.3f} {r['time_ratio']:7.3f}")
    if pairs:
        geo = math.exp(statistics.fmean(math.log(r["time_ratio"]) for r in pairs))
        print(f"{len(pairs)} rows in both; geometric mean B/A = {geo:.3f}")
    else:
        print("no row was timed in both files")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
