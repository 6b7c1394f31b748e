"""Compile check: build the flash-attention kernels for real GPUs without one.

For each architecture (sm_80 Ampere, sm_90 Hopper), kernel (forward, backward preprocess,
backward dk/dv, backward dq), dtype, head dim, causal or not, and each launch config the
autotuner may pick on that GPU (``GPU_CONFIGS`` and ``GPU_CONFIGS_SM90`` in
``minilm.kernels.flash_attention``), this
compiles the kernel to a cubin with Triton's own toolchain (``triton.compile`` on an
``ASTSource``, then ptxas) and prints one row:

    arch  kernel  dtype  D  causal  ints  config (BLOCK_M/BLOCK_N/warps/stages)  registers  spills  smem  wgmma

The exit status is non-zero if any config fails to compile or spills registers to local
memory. Registers and spills come from the ``ptxas -v`` log (spills = bytes of spill stores
plus loads); for a kernel Triton takes from its cache, where ptxas does not run, from
``cuobjdump --dump-resource-usage`` on the cubin (any stack frame counts as a spill).

What is compiled, against what a real launch compiles. Pointers and strides are as a
contiguous launch specialises them (unit head-dim stride, 16-byte aligned pointers, strides
divisible by 16); the head dim is a constexpr, so every D is a kernel of its own. The
integer arguments H, GROUP, L, S (and the autotune-key buckets of L and S) are another
matter: at run time Triton specialises an int argument equal to 1 into a constant and
marks one divisible by 16 as such, so one kernel source becomes several compiled variants.
The ``ints`` column (``--ints``) says which is built:

    general   H, GROUP, L, S plain 32-bit ints: the kernel for any lengths and GQA groups
              (e.g. L = S = 37, GROUP = 2), the one with every tail and loop bound dynamic
    aligned   GROUP = 1 (a constant: plain multi-head attention) and L, S divisible by 16:
              the kernel a typical training launch gets (L = S = 1024, no GQA)

The default, ``--ints both``, compiles the two: ptxas allocates registers for each build
anew, and a config clean in one may spill in the other (the aligned build has spilled where
the general one did not). A full default run is 1056 compiles, about 9 minutes on 2 CPU
cores with an empty Triton cache and seconds once it is filled; ``--ints general`` or
``--ints aligned`` halves it. Other variants a launch may get (H = 1, L = 1, S divisible by
16 but not L, ...) are not compiled here.

    python -m minilm.kernels.compile --arch 80,90 --head-dims 64,128 --dtypes fp16 --quick
    python benchmarks/compile_kernels.py            # all defaults
    minilm bench compile --ints aligned             # the same main(argv)

Under ``TRITON_INTERPRET=1`` the kernels are interpreter objects that cannot be compiled, so
``main`` re-runs itself in a subprocess with the variable unset.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

__all__ = ["main", "toolchain_problem", "compile_one", "CompileResult"]

KERNELS = ("fwd", "preprocess", "dkdv", "dq")
KERNEL_FN = {"fwd": "_attn_fwd", "preprocess": "_attn_bwd_preprocess", "dkdv": "_attn_bwd_dkdv", "dq": "_attn_bwd_dq"}
DTYPES = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32"}
# every BLOCK_D (16, 32, 64, 128) and both ends of the supported range; 8 pads to 16 (the
# smallest tl.dot K), 48, 80 and 96 are the non-powers of two padded and masked
DEFAULT_HEAD_DIMS = (8, 16, 32, 48, 64, 80, 96, 128)
INT_VARIANTS = ("general", "aligned")


@dataclass
class CompileResult:
    arch: int
    kernel: str
    dtype: str
    head_dim: int
    causal: bool
    config: tuple[int, int, int, int]  # BLOCK_M, BLOCK_N (0 for preprocess), num_warps, num_stages
    ints: str = "general"  # how H, GROUP, L, S are specialised: one of INT_VARIANTS
    ok: bool = False
    registers: int | None = None
    spill_bytes: int | None = None  # spill stores + spill loads
    stack_bytes: int | None = None
    shared_bytes: int | None = None
    wgmma: bool = False
    error: str = ""


def _nvidia_bin_dir() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def toolchain_problem() -> str:
    """'' if Triton can compile for NVIDIA GPUs here (nvidia backend and ptxas), else why not."""
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401

        importlib.import_module("triton.backends.nvidia.compiler")
    except Exception as exc:  # noqa: BLE001
        return f"triton's NVIDIA backend is not importable ({type(exc).__name__}: {exc})"
    if os.environ.get("TRITON_PTXAS_PATH") or shutil.which("ptxas"):
        return ""
    if any(os.path.exists(os.path.join(_nvidia_bin_dir(), name)) for name in ("ptxas", "ptxas-blackwell")):
        return ""
    return "ptxas not found (neither in triton/backends/nvidia/bin, on PATH, nor TRITON_PTXAS_PATH)"


def _signature(fn, dtype: str, head_dim: int, block_d: int, causal: bool, block_m: int, block_n: int,
               ints: str = "general"):
    """signature, constexprs and attrs of a contiguous launch, in the ASTSource format of
    Triton >= 3.3 (constexpr parameters listed with type "constexpr"). ints: "general" (H,
    GROUP, L, S plain i32) or "aligned" (GROUP = 1 a constant, L, S divisible by 16)."""
    elem = f"*{dtype}"
    fp32_ptrs = {"LSE", "DELTA"}
    floats = {"qk_scale", "sm_scale"}
    values = {
        "IS_CAUSAL": causal,
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "HEAD_DIM": head_dim,
        "BLOCK_D": block_d,
        "UPCAST": False,
        "DOT_PRECISION": "ieee" if dtype == "fp32" else "tf32",
    }
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in values:
            signature[name], constexprs[name] = "constexpr", values[name]
        elif name.startswith("stride") and name.endswith("d"):
            signature[name], constexprs[name] = "constexpr", 1  # unit stride along D, as specialised
        elif name.startswith("stride"):
            signature[name] = "i32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in floats:
            signature[name] = "fp32"
        elif name in fp32_ptrs:
            signature[name] = "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("Q", "K", "V", "O", "DO", "DK", "DV", "DQ"):  # tensors of the input dtype
            signature[name] = elem
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif ints == "aligned" and name == "GROUP":
            signature[name], constexprs[name] = "constexpr", 1  # Triton turns an int == 1 into a constant
        else:  # H, GROUP, L, S, l_bucket, s_bucket
            signature[name] = "i32"
            if ints == "aligned" and name in ("L", "S", "l_bucket", "s_bucket"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_CUOBJDUMP = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def compile_one(arch: int, kernel: str, dtype: str, head_dim: int, causal: bool,
                config: tuple[int, int, int, int], ints: str = "general") -> CompileResult:
    """Compile one kernel for one target and config; never raises (errors go in the result)."""
    result = CompileResult(arch, kernel, dtype, head_dim, causal, config, ints)
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        fa = importlib.import_module("minilm.kernels.flash_attention")
        fn = getattr(fa, KERNEL_FN[kernel])
        block_m, block_n, warps, stages = config
        signature, constexprs, attrs = _signature(fn, dtype, head_dim, fa.block_d_for(head_dim), causal,
                                                  block_m, block_n, ints)
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints ptxas -v here
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                      options={"num_warps": warps, "num_stages": stages})
    except Exception as exc:  # noqa: BLE001 - reported in the table
        result.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return result
    text = log.getvalue()
    regs, spill = _PTXAS_REGS.search(text), _PTXAS_SPILL.search(text)
    if regs and spill:
        result.registers = int(regs.group(1))
        result.stack_bytes = int(spill.group(1))
        result.spill_bytes = int(spill.group(2)) + int(spill.group(3))
    else:  # no ptxas log on this Triton version: read the cubin's resource usage instead
        usage = _cubin_usage(compiled.asm.get("cubin", b""))
        if usage is None:
            result.error = "could not read registers/spills (no ptxas log, cuobjdump failed)"
            return result
        result.registers, result.stack_bytes, local = usage
        result.spill_bytes = result.stack_bytes + local  # a spill needs a stack frame
    result.shared_bytes = int(getattr(compiled.metadata, "shared", 0) or 0)
    result.wgmma = "wgmma" in compiled.asm.get("ptx", "")
    result.ok = True
    return result


def _cubin_usage(cubin: bytes):
    tool = shutil.which("cuobjdump") or os.path.join(_nvidia_bin_dir(), "cuobjdump")
    if not cubin or not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = _CUOBJDUMP.search(out)
    return None if m is None else (int(m.group(1)), int(m.group(2)), int(m.group(4)))


def _compile_star(args):
    return compile_one(*args)


def _worker_init():
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _parse_list(text: str, cast=str):
    return [cast(x.strip()) for x in text.split(",") if x.strip()]


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "python -m minilm.kernels.compile",
        description="Compile the flash-attention kernels for sm_80/sm_90 (no GPU needed); "
                    "report registers, spills, shared memory, wgmma; exit 1 on a failure or a spill.",
    )
    p.add_argument("--arch", default="80,90", help="compute capabilities, e.g. 80,90 (default: %(default)s)")
    p.add_argument("--head-dims", default=",".join(map(str, DEFAULT_HEAD_DIMS)),
                   help="head dims D (8..128), e.g. 64,128 (default: %(default)s)")
    p.add_argument("--dtypes", default="fp16,bf16,fp32", help="fp16,bf16,fp32 (default: %(default)s)")
    p.add_argument("--kernels", default=",".join(KERNELS), help=f"subset of {','.join(KERNELS)} (default: all)")
    p.add_argument("--causal", default="both", choices=("both", "true", "false"), help="(default: %(default)s)")
    p.add_argument("--ints", default="both", choices=(*INT_VARIANTS, "both"),
                   help="how H, GROUP, L, S are compiled: general (plain ints, any lengths and GQA), "
                        "aligned (GROUP = 1, L and S divisible by 16, as Triton specialises a typical "
                        "launch) or both, as a config may spill in one and not the other "
                        "(default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="only the first autotune config of each kernel")
    p.add_argument("--config", default=None,
                   help="compile this BLOCK_M,BLOCK_N,warps,stages instead of the autotune configs")
    p.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="parallel compiles (default: %(default)s)")
    return p


def _jobs(args, fa) -> tuple[list[tuple], list[tuple[int, str, str, int, bool]]]:
    """(distinct compile jobs, table rows as (arch, kernel, dtype, D, causal) -> job keys)."""
    import torch

    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    jobs, rows = [], []
    seen = set()
    causals = {"both": (False, True), "true": (True,), "false": (False,)}[args.causal]
    variants = INT_VARIANTS if args.ints == "both" else (args.ints,)
    explicit = tuple(_parse_list(args.config, int)) if args.config else None
    for arch in args.archs:
        for kernel in args.kernel_list:
            for dtype in args.dtype_list:
                for d in args.head_dim_list:
                    for causal in (causals if kernel != "preprocess" else (False,)):
                        if explicit:
                            configs = [explicit]
                        elif kernel == "preprocess":
                            configs = [(fa.PREPROCESS_BLOCK_M, 0, 4, 1)]
                        else:
                            configs = fa.gpu_configs(kernel, torch_dtype[dtype], d, arch)
                            configs = configs[:1] if args.quick else configs
                        for config in configs:
                            for ints in variants:
                                key = (arch, kernel, dtype, d, causal, tuple(config), ints)
                                rows.append((d, key))
                                if key not in seen:
                                    seen.add(key)
                                    jobs.append(key)
    return jobs, rows


def _format_table(rows, results) -> tuple[str, int]:
    header = ["arch", "kernel", "dtype", "D", "causal", "ints", "config M/N/w/s", "regs", "spills", "smem", "wgmma",
              "status"]
    table = [header]
    n_bad = 0
    for d, key in rows:
        r = results[key]
        arch, kernel, dtype, d, causal, config, ints = key
        m, n, w, s = config
        cfg = f"{m}/{n}/{w}/{s}" if kernel != "preprocess" else f"{m}/-/{w}/{s}"
        if not r.ok:
            status = f"FAIL {r.error}"
        elif r.spill_bytes:
            status = f"SPILL ({r.spill_bytes} B)"
        else:
            status = "ok"
        n_bad += status.split()[0] != "ok"
        table.append([
            f"sm_{arch}", KERNEL_FN[kernel], dtype, str(d), "yes" if causal else "no", ints, cfg,
            "-" if r.registers is None else str(r.registers),
            "-" if r.spill_bytes is None else str(r.spill_bytes),
            "-" if r.shared_bytes is None else f"{r.shared_bytes // 1024} KiB",
            ("yes" if r.wgmma else "no") if arch >= 90 else "-",
            status,
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = []
    for i, row in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1])
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines), n_bad


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Compile, print the table, return 0 if every config compiled without spills, else 1
    (2 for bad arguments or a missing toolchain). prog: the command name ``--help`` and
    usage errors show (default ``python -m minilm.kernels.compile``)."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    try:
        args.archs = _parse_list(args.arch, int)
        args.head_dim_list = _parse_list(args.head_dims, int)
        args.dtype_list = _parse_list(args.dtypes)
        args.kernel_list = _parse_list(args.kernels)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bad = ([f"arch {a} (use 80 or above)" for a in args.archs if a < 80]
           + [f"head dim {d} (use 8..128)" for d in args.head_dim_list if not 8 <= d <= 128]
           + [f"dtype {t!r} (use fp16, bf16, fp32)" for t in args.dtype_list if t not in DTYPES]
           + [f"kernel {k!r} (use {', '.join(KERNELS)})" for k in args.kernel_list if k not in KERNELS])
    if args.config and len(_parse_list(args.config)) != 4:
        bad.append(f"--config {args.config!r} (want BLOCK_M,BLOCK_N,warps,stages)")
    if bad:
        print("error: bad " + "; bad ".join(bad), file=sys.stderr)
        return 2
    problem = toolchain_problem()
    if problem:
        print(f"error: cannot compile for NVIDIA GPUs: {problem}", file=sys.stderr)
        return 2

    fa = importlib.import_module("minilm.kernels.flash_attention")
    if fa.INTERPRET or os.environ.get("TRITON_DUMP_PTXAS_LOG") != "1":
        # interpreter objects cannot be compiled, and the ptxas log knob is read from the
        # environment: run again in a clean subprocess
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["TRITON_INTERPRET"] = "0"  # not unset: minilm.kernels would choose the interpreter on a CPU
        env["TRITON_DUMP_PTXAS_LOG"] = "1"
        env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        argv = sys.argv[1:] if argv is None else list(argv)
        proc = subprocess.run([sys.executable, "-m", "minilm.kernels.compile", *argv], env=env,
                              capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr[-4000:] if proc.returncode else "")
        return proc.returncode

    jobs, rows = _jobs(args, fa)
    print(f"compiling {len(jobs)} kernels ({len(rows)} table rows) with {args.jobs} jobs...", flush=True)
    if args.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs, initializer=_worker_init) as pool:
            done = list(pool.map(_compile_star, jobs))
    else:
        _worker_init()
        done = [_compile_star(j) for j in jobs]
    results = dict(zip(jobs, done))
    text, n_bad = _format_table(rows, results)
    print(text)
    print(f"{len(rows) - n_bad}/{len(rows)} ok" + ("" if n_bad == 0 else f"; {n_bad} failed or spilled"))
    print("ints: general = H, GROUP, L, S as plain ints (any lengths, GQA); aligned = GROUP = 1, L and S "
          "divisible by 16, as Triton specialises a typical launch")
    return 0 if n_bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
