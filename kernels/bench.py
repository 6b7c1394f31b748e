"""Benchmark: our Triton flash attention against PyTorch's scaled_dot_product_attention.

Forward and forward+backward throughput in TFLOP/s on a CUDA GPU, over query/key length L
(= S) from 512 to 16k, head dims 64 and 128, causal and not, float16 and bfloat16. The batch
is sized so that every length times about the same number of tokens (B * L = 16k) with a
model width of 2048 (H = 2048 / D). FLOPs are counted, not measured:

    forward          4 * B * H * L * S * D     (two matmuls, q k^T and p v, 2 FLOPs per MAC)
    causal           half of that              (only the lower triangle is needed)
    forward+backward forward * (1 + 2.5)        (backward: five matmuls against the forward's two)

Before timing a shape, both implementations are run on the same inputs and their outputs and
gradients compared (relative to the largest value). Times are ``triton.testing.do_bench``
medians after warm-up. Prints a table, saves a PNG plot (needs matplotlib, checked before
anything runs; ``--plot ''`` for none). Bad arguments end in one clear line and exit 2.

    python benchmarks/bench_attention_gpu.py --lengths 1024,4096 --head-dims 128 --plot out.png
    minilm bench attention ...                  # the same main(argv)

On a machine without a CUDA GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "attention_flops"]

MODES = ("fwd", "fwd+bwd")
DTYPES = ("fp16", "bf16")


def attention_flops(B: int, H: int, L: int, S: int, D: int, is_causal: bool, mode: str) -> float:
    """FLOPs of attention: forward 4*B*H*L*S*D (half when causal); backward 2.5x forward."""
    fwd = 4.0 * B * H * L * S * D
    if is_causal:
        fwd *= 0.5
    return fwd if mode == "fwd" else fwd * (1.0 + 2.5)


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or "bench_attention_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="512,1024,2048,4096,8192,16384", help="L = S values (default: %(default)s)")
    p.add_argument("--head-dims", default="64,128", help="(default: %(default)s)")
    p.add_argument("--dtypes", default="fp16,bf16", help="(default: %(default)s)")
    p.add_argument("--causal", default="both", choices=("both", "true", "false"))
    p.add_argument("--modes", default=",".join(MODES), help="fwd and/or fwd+bwd (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=16384, help="B * L per shape (default: %(default)s)")
    p.add_argument("--width", type=int, default=2048, help="H * D (default: %(default)s)")
    p.add_argument("--plot", default="bench_attention_gpu.png", help="PNG path ('' for none; default: %(default)s)")
    p.add_argument("--rep", type=int, default=100, help="do_bench rep in ms (default: %(default)s)")
    return p


def _check_match(ours, theirs, q, k, v, dout, is_causal, tol):
    """Outputs and gradients of both implementations agree (relative to the largest value)."""
    import torch

    results = []
    for fn in (ours, theirs):
        xs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = fn(*xs, is_causal)
        grads = torch.autograd.grad(out, xs, dout)
        results.append((out, *grads))
    for name, a, b in zip(("out", "dq", "dk", "dv"), *results):
        err = (a.float() - b.float()).abs().max().item()
        ref = b.float().abs().max().item()
        if not err <= tol * max(ref, 1e-3):
            raise AssertionError(f"{name}: ours and torch differ by {err:.3e} (max |torch| {ref:.3e}, tol {tol})")


def _parse_args(args) -> str:
    """Turn the comma lists of ``args`` into lists in place; '' if all is well, else what is wrong."""
    bad = []
    lists = {"lengths": int, "head_dims": int, "dtypes": str, "modes": str}
    for name, cast in lists.items():
        text = getattr(args, name)
        try:
            values = [cast(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            bad.append(f"--{name.replace('_', '-')} {text!r} (want comma-separated integers)")
            values = []
        else:
            if not values:
                bad.append(f"--{name.replace('_', '-')} is empty")
        setattr(args, name + "_list", values)
    bad += [f"length {n} (use >= 1)" for n in args.lengths_list if n < 1]
    bad += [f"head dim {d} (use 8..128)" for d in args.head_dims_list if not 8 <= d <= 128]
    bad += [f"dtype {t!r} (use {', '.join(DTYPES)})" for t in args.dtypes_list if t not in DTYPES]
    bad += [f"mode {m!r} (use {', '.join(MODES)})" for m in args.modes_list if m not in MODES]
    bad += [f"--{name} {getattr(args, name)} (use >= 1)" for name in ("tokens", "width", "rep") if getattr(args, name) < 1]
    return "; ".join(bad)


def _plot_problem(path: str) -> str:
    """'' if the plot can be made (or none is wanted), else why not: checked before the GPU runs."""
    if not path:
        return ""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (f"--plot {path!r} needs the 'matplotlib' package, which is not installed: "
                "pip install matplotlib, or pass --plot '' for no plot")
    return ""


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Benchmark (see the module docstring); 0 when done or without a GPU, 2 for bad arguments.
    prog: the command name ``--help`` and usage errors show."""
    args = _parser(prog).parse_args(argv)
    problem = _parse_args(args)
    if problem:
        print(f"error: bad {problem}", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("bench_attention_gpu: this benchmark needs a CUDA GPU and none is available here; "
              "nothing was timed (on a CPU, check correctness with the tests instead).")
        return 0
    problem = _plot_problem(args.plot)  # before the GPU run, not after it
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import triton
    import torch.nn.functional as F

    from minilm.kernels import flash_attention

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    lengths, head_dims, dtype_names, modes = args.lengths_list, args.head_dims_list, args.dtypes_list, args.modes_list
    causals = {"both": (False, True), "true": (True,), "false": (False,)}[args.causal]

    def ours(q, k, v, is_causal):
        return flash_attention(q, k, v, is_causal=is_causal)

    def theirs(q, k, v, is_causal):
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)

    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}, triton {triton.__version__}")
    header = f"{'mode':8s} {'dtype':5s} {'D':>4s} {'causal':6s} {'L':>6s} {'B':>3s} {'H':>3s} " \
             f"{'ours TFLOP/s':>13s} {'torch TFLOP/s':>14s} {'ours/torch':>10s}"
    print(header)
    print("-" * len(header))
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for dname in dtype_names:
        dtype = dtypes[dname]
        for D in head_dims:
            H = max(1, args.width // D)
            for is_causal in causals:
                for L in lengths:
                    B = max(1, args.tokens // L)
                    q = torch.randn(B, H, L, D, device=device, dtype=dtype, generator=gen)  # (B, H, L, D)
                    k = torch.randn(B, H, L, D, device=device, dtype=dtype, generator=gen)  # (B, H, S, D)
                    v = torch.randn(B, H, L, D, device=device, dtype=dtype, generator=gen)  # (B, H, S, D)
                    dout = torch.randn(B, H, L, D, device=device, dtype=dtype, generator=gen)  # (B, H, L, D)
                    _check_match(ours, theirs, q, k, v, dout, is_causal, tol=2e-2 if dname == "fp16" else 5e-2)
                    for mode in modes:
                        flops = attention_flops(B, H, L, L, D, is_causal, mode)
                        tflops = []
                        for fn in (ours, theirs):
                            xs = [t.detach().clone().requires_grad_(mode != "fwd") for t in (q, k, v)]
                            if mode == "fwd":
                                run = lambda fn=fn, xs=xs: fn(*xs, is_causal)  # noqa: E731
                            else:
                                run = lambda fn=fn, xs=xs: fn(*xs, is_causal).backward(dout)  # noqa: E731
                            ms = triton.testing.do_bench(run, warmup=25, rep=args.rep, grad_to_none=xs,
                                                         return_mode="median")
                            tflops.append(flops / (ms * 1e-3) / 1e12)
                        rows.append((mode, dname, D, is_causal, L, B, H, tflops[0], tflops[1]))
                        print(f"{mode:8s} {dname:5s} {D:4d} {str(is_causal):6s} {L:6d} {B:3d} {H:3d} "
                              f"{tflops[0]:13.1f} {tflops[1]:14.1f} {tflops[0] / tflops[1]:10.2f}", flush=True)
                    del q, k, v, dout
    if args.plot:
        _plot(rows, args.plot, torch.cuda.get_device_name(device))
        print(f"plot saved to {args.plot}")
    return 0


def _plot(rows, path: str, device_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r[0] for r in rows}, key=MODES.index)
    dims = sorted({r[2] for r in rows})
    fig, axes = plt.subplots(len(modes), len(dims), figsize=(5 * len(dims), 4 * len(modes)), squeeze=False)
    for i, mode in enumerate(modes):
        for j, D in enumerate(dims):
            ax = axes[i][j]
            for dname in sorted({r[1] for r in rows}):
                for causal in sorted({r[3] for r in rows}):
                    sel = [r for r in rows if r[0] == mode and r[2] == D and r[1] == dname and r[3] == causal]
                    if not sel:
                        continue
                    label = f"{dname} {'causal' if causal else 'full'}"
                    xs = [r[4] for r in sel]
                    (line,) = ax.plot(xs, [r[7] for r in sel], marker="o", label=f"ours {label}")
                    ax.plot(xs, [r[8] for r in sel], marker="x", linestyle="--", color=line.get_color(),
                            label=f"torch {label}")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{mode}, D={D}")
            ax.set_xlabel("L = S")
            ax.set_ylabel("TFLOP/s")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"flash attention: minilm Triton vs torch sdpa ({device_name})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
