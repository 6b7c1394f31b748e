# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 16. Kernel benchmarks
#
# **Learning goals**
#
# - run minilm's attention benchmark harness from Python and read its table: median time,
#   spread, FLOP/s from *counted* FLOPs, the share of a *measured* GEMM limit, peak memory;
# - place attention on a roofline: this machine's measured matmul FLOP/s and copy bandwidth,
#   and the arithmetic intensity of attention computed from its FLOP and byte counts;
# - plug your own attention function into the harness, and see that a wrong one is reported,
#   never timed;
# - read benchmark numbers on a noisy machine: compare ratios and structure, not absolute times.
#
# Chapters 6 and 7 built flash attention (tiled, in NumPy and in Triton). This chapter measures
# attention implementations against each other with the harness behind
# `minilm bench attention`. Everything here runs on a CPU in under a minute; on a CUDA GPU the
# same function also times the Triton kernel (`bash benchmarks/gpu.sh OUT` runs the full GPU
# sweep, see `benchmarks/README.md`).
#
# A warning that shapes the whole chapter: this book is executed on a shared machine whose load
# changes from second to second, so a time measured here can be off by a factor of two. Every
# claim below is therefore a ratio between measurements taken side by side, or a structural fact
# (which rows exist, which were timed), never an absolute time.

# %%
import math
import sys
import types

import matplotlib.pyplot as plt
import numpy as np
import torch

from minilm import attention_bench
from minilm.attention_bench import attention_flops, format_table, run_benchmark
from minilm.conformance import QUICK_CASES, attention_conformance
from minilm.tutorials import show

# %% [markdown]
# ## What the harness counts
#
# For queries, keys and values of shape $(B, H, L, D)$ (here $S = L$ keys), attention computes
# $S = QK^\top/\sqrt{D}$, $P = \mathrm{softmax}(S)$ and $O = PV$. The two matrix products
# dominate the work: each is $B H L S D$ multiply-adds, i.e. $2BHLSD$ floating-point
# operations, so
#
# $$\mathrm{FLOPs}_\text{fwd} = 4 B H L S D, \qquad
#   \mathrm{FLOPs}_\text{causal} = \tfrac12 \mathrm{FLOPs}_\text{fwd}, \qquad
#   \mathrm{FLOPs}_\text{fwd+bwd} = 3.5\, \mathrm{FLOPs}_\text{fwd}$$
#
# (the backward has five matrix products of the same size: $dV = P^\top dO$, $dP = dO V^\top$,
# $dQ = dS K$, $dK = dS^\top Q$ plus recomputing $S$). The softmax's exponentials are not
# counted: they are $O(BHLS)$, a factor $D$ fewer. FLOP/s is always *counted FLOPs divided by
# measured time*: an implementation that does more work than necessary (recomputation, a
# wasteful formula) is not credited for it.

# %%
show(attention_flops)

# %% [markdown]
# ## Two plug-ins of our own
#
# The harness times any function with the signature of `minilm.kernels.flash_attention`,
# `fn(q, k, v, is_causal=False, scale=None) -> out`, with q of shape $(B, H, L, D)$ and k, v of
# shape $(B, H_{kv}, S, D)$ (grouped-query heads when $H_{kv} < H$). On the command line it is
# named `MODULE:FUNCTION` (`minilm bench attention --impl mypkg.attn:my_attention`); from Python
# the same string is passed in `plugins=`. We write two here, and register them as a module so
# the harness can import them by name:
#
# - `broadcast_attention` is correct but deliberately wasteful: it forms every product
#   $q_{id} k_{jd}$ in an $(L, S, D)$ tensor and sums over $d$, instead of calling a matrix
#   multiply. It does the same $2LSD$ FLOPs as $QK^\top$, but writes and reads $L S D$ floats
#   of memory per head to do so.
# - `unscaled_attention` forgets the $1/\sqrt{D}$ (chapter 4's mistake). It runs, and fast.

# %%
def _expand_kv(q, k, v):
    """Grouped-query heads: query head h reads key/value head h // (H / Hkv)."""
    H, Hkv = q.shape[1], k.shape[1]
    return k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)


def _causal_fill(s):
    L, S = s.shape[-2:]
    return s.masked_fill(torch.ones(L, S, dtype=torch.bool, device=s.device).triu(1), float("-inf"))


def broadcast_attention(q, k, v, is_causal=False, scale=None):
    """Correct, slow: the scores summed from an (L, S, D) tensor of products."""
    k, v = _expand_kv(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q[..., :, None, :] * k[..., None, :, :]).sum(-1) * scale  # (B, H, L, S, D) -> (B, H, L, S)
    if is_causal:
        s = _causal_fill(s)
    return torch.softmax(s, dim=-1) @ v  # (B, H, L, D)


def unscaled_attention(q, k, v, is_causal=False, scale=None):
    """Wrong: softmax(q k^T) v, the 1/sqrt(D) (or the scale asked for) forgotten."""
    k, v = _expand_kv(q, k, v)
    s = q @ k.transpose(-1, -2)  # (B, H, L, S)
    if is_causal:
        s = _causal_fill(s)
    return torch.softmax(s, dim=-1) @ v  # (B, H, L, D)


my_attention = types.ModuleType("my_attention")
my_attention.broadcast_attention = broadcast_attention
my_attention.unscaled_attention = unscaled_attention
sys.modules["my_attention"] = my_attention  # importable as "my_attention:broadcast_attention"

# %% [markdown]
# Before a plug-in is timed, the harness runs it through `attention_conformance` (chapter 7's
# suite: outputs *and* gradients of a few awkward shapes, against float64 attention, with a
# tolerance scaled by PyTorch's own error in the same dtype). One that fails gets a status
# saying why and is never timed: a fast wrong answer is not a result.

# %%
show(attention_bench._plugin_impl)

# %% [markdown]
# ## A sweep
#
# Four built-in implementations (the NumPy reference and NumPy flash of chapters 4 and 6,
# minilm's PyTorch twin, and PyTorch's fused CPU kernel `sdpa-flash`) and our two plug-ins, on
# the forward pass at $L \in \{64, 128, 256\}$, $D = 64$, $B = 1$, $H = 4$, float32, one
# thread. `quick=True` measures the machine's limits with small matrices and times each row
# for about 50 ms; we ask for 5 repeats per row so that the spread means something.

# %%
result = run_benchmark(lengths=[64, 128, 256], head_dims=[64], modes=["fwd"], causal=[False],
                       only=["numpy-reference", "numpy-flash", "torch-naive", "sdpa-flash"],
                       plugins=["my_attention:broadcast_attention", "my_attention:unscaled_attention"],
                       threads=1, repeats=5, quick=True, progress=False)
rows = result["rows"]
print(format_table(rows))

# %% [markdown]
# How to read it. Each row is one implementation at one shape. `median ms` and `IQR ms` are
# the median and inter-quartile range of the repeats (after a warm-up); an IQR that is a large
# fraction of the median says the machine was busy, and that row's time should not be trusted
# beyond a factor of two. `GFLOP/s` is the counted FLOPs over the median. `%GEMM` divides that by
# what a plain matrix multiply reaches on this machine at the same thread count (measured at
# start-up, below). `peak MB` is the memory one call allocated beyond what was there before
# (tracemalloc for NumPy, the process's resident-set high-water mark for torch on a CPU).
#
# The `implementations` list says, for each one, whether it was timed and, if not, why:

# %%
status = {i["name"]: i for i in result["implementations"]}
for name, info in status.items():
    print(f"{name:<35} timed={info['timed']!s:<5} {info['status'][:160]}")
timed_names = {r["impl"] for r in rows}
n_rows = {name: sum(r["impl"] == name for r in rows) for name in status}
print("rows per implementation:", n_rows)

# %% [markdown]
# **Measured:** the wrong plug-in failed `attention_conformance` (its output error is millions
# of times PyTorch's own) and has 0 rows: it was reported, not timed. Every other
# implementation, the slow plug-in included, was checked against float64 attention at every
# shape and timed: 3 rows each, all with status `ok`.

# %%
assert not status["my_attention:unscaled_attention"]["timed"]
assert status["my_attention:unscaled_attention"]["status"].startswith("failed attention_conformance, not timed")
assert "my_attention:unscaled_attention" not in timed_names
assert all(n_rows[name] == 3 for name in status if name != "my_attention:unscaled_attention"), n_rows
assert all(r["status"] == "ok" for r in rows)

# %% [markdown]
# The same check, by hand: `attention_conformance` on the wrong function says which case and
# which quantity failed, and by how much.

# %%
report = attention_conformance(unscaled_attention, dtypes=[torch.float32], cases=QUICK_CASES[:2])
print(report)
assert not report.passed

# %% [markdown]
# ## Throughput against length, and the slow plug-in
#
# The harness writes two plots (`write_plots`: throughput against $L$, and peak memory against
# $L$, log-log) into files, switching matplotlib to its file-only backend as it does; in a
# notebook we draw them from the rows ourselves, with the inter-quartile range as error bars.

# %%
impls = [n for n in status if status[n]["timed"]]
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for name in impls:
    line = sorted((r for r in rows if r["impl"] == name), key=lambda r: r["L"])
    Ls = [r["L"] for r in line]
    gflops = np.array([r["flops_per_s"] / 1e9 for r in line])
    # error bars: the counted FLOPs over the first and third quartile of the times
    lo = np.array([r["flops"] / (r["median_s"] + r["iqr_s"] / 2) / 1e9 for r in line])
    hi = np.array([r["flops"] / max(r["median_s"] - r["iqr_s"] / 2, r["median_s"] / 10) / 1e9 for r in line])
    axes[0].errorbar(Ls, gflops, yerr=[gflops - lo, hi - gflops], marker="o", capsize=3, label=name)
    mem = [(r["L"], r["peak_bytes"] / 2**20) for r in line if r["peak_bytes"]]  # 0: nothing new was allocated
    axes[1].plot([m[0] for m in mem], [m[1] for m in mem], marker="o", label=name)
axes[0].set_yscale("log")
axes[0].set_ylabel("GFLOP/s (counted FLOPs / median time)")
axes[1].set_yscale("log")
axes[1].set_ylabel("peak memory of one call (MiB; zeros left out)")
for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("L = S (B=1, H=4, D=64, float32, forward)")
    ax.grid(True, alpha=0.3)
axes[0].legend(fontsize=7)
axes[0].set_title("throughput")
axes[1].set_title("memory")
plt.show()

# %% [markdown]
# The broadcast plug-in stands out in both panels. Its memory is predictable: the product
# tensor holds $B H L S D$ float32 numbers, $4 \cdot 1 \cdot 4 \cdot 256^2 \cdot 64$ bytes
# $= 64$ MiB at $L = 256$.

# %%
def row(name, L):
    return next(r for r in rows if r["impl"] == name and r["L"] == L)


L_max = 256
slow, fast = row("my_attention:broadcast_attention", L_max), row("sdpa-flash", L_max)
slowdown = slow["median_s"] / fast["median_s"]
predicted_mib = 4 * 1 * 4 * L_max * L_max * 64 / 2**20
print(f"L={L_max}: broadcast {slow['median_s'] * 1e3:.1f} ms vs sdpa-flash {fast['median_s'] * 1e3:.2f} ms: "
      f"{slowdown:.0f}x slower")
print(f"broadcast peak memory {slow['peak_bytes'] / 2**20:.1f} MiB; predicted {predicted_mib:.0f} MiB")

# %% [markdown]
# **Measured:** at $L = 256$ the broadcast plug-in is more than 5 times slower than PyTorch's
# fused kernel (tens of times in our runs; the exact factor moves with the machine's load),
# and its peak memory is within 25 % of the predicted 64 MiB, where `sdpa-flash` needs almost
# none.

# %%
assert slowdown > 5, slowdown
assert abs(slow["peak_bytes"] / 2**20 - predicted_mib) < 0.25 * predicted_mib, slow["peak_bytes"]
assert (fast["peak_bytes"] or 0) < 0.25 * slow["peak_bytes"]

# %% [markdown]
# ## The roofline
#
# Why is the broadcast version slow when it does no more arithmetic? Largely because of where
# its data lives. A processor has two limits: $P$, the FLOP/s its arithmetic units reach (on a CPU,
# what a large matrix multiply attains), and $\beta$, the bytes per second memory can deliver.
# A computation that does $F$ FLOPs while moving $M$ bytes to and from memory has
# **arithmetic intensity** $I = F / M$ (FLOP per byte) and can run at most at
#
# $$\text{attainable FLOP/s} = \min(P,\; \beta \cdot I).$$
#
# Below the **ridge point** $I^\ast = P / \beta$ a kernel is *memory-bound* (more FLOPs per
# byte would help); above it, *compute-bound*. The harness measured both limits at start-up:
# $P$ from the best of several timed $n \times n$ matrix products ($2n^3$ FLOPs each), $\beta$
# from copying a 32 MiB array (larger than the last-level cache; a copy reads and writes each
# byte, so $2 \times 32$ MiB move).

# %%
show(attention_bench._limits)

# %%
limits = result["limits"]
P = max(limits["gemm_flops"].values())  # the best matmul here: NumPy's BLAS or torch's
beta = max(limits["copy_bytes_per_s"].values())
ridge = P / beta
print(f"GEMM limit P = {P / 1e9:.1f} GFLOP/s  ({', '.join(f'{k} {v / 1e9:.1f}' for k, v in limits['gemm_flops'].items())})")
print(f"copy bandwidth beta = {beta / 1e9:.1f} GB/s  ({', '.join(f'{k} {v / 1e9:.1f}' for k, v in limits['copy_bytes_per_s'].items())})")
print(f"ridge point I* = P / beta = {ridge:.1f} FLOP/byte")

# %% [markdown]
# Now the arithmetic intensity of attention, from its FLOP count and the bytes each way of
# computing it must move, with $b = 4$ bytes per float32 number and one head ($B = H = 1$;
# both counts scale with $BH$, so $I$ does not change):
#
# - **flash attention** (chapter 6) reads $Q, K, V$ once and writes $O$: $M = 4 L D b$ bytes for
#   $F = 4 L^2 D$, so $I_\text{flash} = L / b = L/4$, growing with $L$;
# - **plain attention** also writes the $L \times L$ scores $S$, reads them back for the
#   softmax, writes $P$ and reads it for $PV$: $M = 4LDb + 4L^2 b$, so
#   $I_\text{plain} = \dfrac{LD}{b\,(D + L)} \to D/b = 16$ as $L \to \infty$: bounded, however long
#   the sequence;
# - **the broadcast plug-in** writes and reads the $L \times L \times D$ products on top:
#   $M \approx 2 L^2 D b$, so $I_\text{broadcast} \approx 4L^2D / (2L^2Db) = 1/2$ FLOP/byte:
#   at or below the ridge point of any machine: memory-bound by construction.
#
# These are the bytes a kernel moves if nothing stays in a cache between steps (at $L = 256$
# an $L \times L$ float32 matrix is 256 KiB and does stay in this CPU's cache, which is why the
# plain implementations are not as slow as the roofline warns they could be).

# %%
def intensity(kind, L, D=64, b=4):
    """FLOPs per byte moved, for one head of forward attention at L = S."""
    F = attention_flops(1, 1, L, L, D, False, "fwd")  # 4 L^2 D
    M = {"flash": 4 * L * D * b,
         "plain": 4 * L * D * b + 4 * L * L * b,
         "broadcast": 4 * L * D * b + 4 * L * L * b + 2 * L * L * D * b}[kind]
    return F / M


for kind in ("flash", "plain", "broadcast"):
    print(f"{kind:<10} I at L = 64, 256, 4096: " + ", ".join(f"{intensity(kind, L):.2f}" for L in (64, 256, 4096)))
bound_broadcast = beta * intensity("broadcast", L_max)
print(f"roofline bound for broadcast at L={L_max}: {bound_broadcast / 1e9:.1f} GFLOP/s; "
      f"measured {slow['flops_per_s'] / 1e9:.2f} GFLOP/s")

# %%
I = np.logspace(-1.5, 3, 200)
fig, ax = plt.subplots(figsize=(7, 4.5))
ax.loglog(I, np.minimum(P, beta * I) / 1e9, "k-", lw=2, label="roofline min(P, beta I)")
ax.axvline(ridge, color="grey", ls=":", label=f"ridge I* = {ridge:.1f} FLOP/byte")
marks = {"sdpa-flash": ("flash", "C0"), "numpy-flash": ("flash", "C1"), "numpy-reference": ("plain", "C2"),
         "torch-naive": ("plain", "C3"), "my_attention:broadcast_attention": ("broadcast", "C4")}
for name, (kind, color) in marks.items():
    line = sorted((r for r in rows if r["impl"] == name), key=lambda r: r["L"])
    ax.loglog([intensity(kind, r["L"]) for r in line], [r["flops_per_s"] / 1e9 for r in line], "o-",
              color=color, label=f"{name} ({kind} bytes)")
ax.set_xlabel("arithmetic intensity I (FLOP / byte)")
ax.set_ylabel("GFLOP/s")
ax.set_title("attention on the roofline of this CPU (1 thread, float32)")
ax.legend(fontsize=7, loc="lower right")
ax.grid(True, which="both", alpha=0.2)
plt.show()

# %% [markdown]
# **Measured:** one core of this machine streams memory so fast relative to its arithmetic that
# the ridge point is low, a few FLOP/byte (always between 0.1 and 64 in our runs). Flash
# attention's intensity at $L = 256$ is 64 FLOP/byte, right of the ridge: compute-bound, so a
# perfect kernel would run at the GEMM limit. Plain attention's is 12.8 and approaches 16, never
# more. The broadcast plug-in, at about 0.5 FLOP/byte, sits at or left
# of the ridge, and its measured FLOP/s stays below its roofline bound $\beta \cdot I$ (far below:
# the bound assumes the bytes stream at copy speed, and a strided sum over the last axis does not).

# %%
assert 0.1 < ridge < 64 == intensity("flash", 256), ridge
assert intensity("flash", 256) == 64 and abs(intensity("plain", 256) - 12.8) < 1e-9
assert abs(intensity("broadcast", 256) - 0.5) < 0.05 and intensity("plain", 10**6) < 16
assert slow["flops_per_s"] < bound_broadcast

# %% [markdown]
# The gap between the flash rows and the roofline is where a kernel engineer works: on a CPU
# the softmax's exponentials and the small matrix products of one head keep attention far from
# the GEMM limit; on a GPU, the Triton kernel of chapter 7 closes most of it (the targets are in
# `benchmarks/README.md`). On a busy machine (like the one this book is tested on) a row's `%GEMM`
# can even pass 100: the GEMM limit and the attention row were timed at different moments, under
# different loads. That is what the IQR column warns of, and why a serious measurement is made on
# an idle machine, with more repeats (`quick=False`), and judged by ratios of rows timed side by
# side.
#
# ## Comparing two runs
#
# `minilm bench attention --json a.json` writes the result we have been reading (environment,
# limits, implementations, rows); `minilm bench compare a.json b.json` matches the rows of two
# files on (implementation, mode, dtype, causal, shape) and prints b's median over a's. That is
# how a change to a kernel, a new machine or a new library version is judged: by ratios of the
# same rows. From Python it is `attention_bench.compare(a, b)`:

# %%
show(attention_bench.compare)

# %% [markdown]
# To see what a ratio of 1 looks like on this machine, we time two of the implementations again,
# with nothing changed, and compare the second run with the first.

# %%
again = run_benchmark(lengths=[64, 128, 256], head_dims=[64], modes=["fwd"], causal=[False],
                      only=["numpy-reference", "sdpa-flash"], threads=1, repeats=5, quick=True,
                      progress=False, log=lambda s: None)
pairs = attention_bench.compare(result, again)
for p in pairs:
    print(f"{p['impl']:<16} L={p['L']:<4} first {p['a_s'] * 1e3:7.3f} ms, again {p['b_s'] * 1e3:7.3f} ms, "
          f"ratio {p['time_ratio']:.2f}")
geo = math.exp(np.mean([math.log(p["time_ratio"]) for p in pairs]))
print(f"geometric mean of the ratios: {geo:.2f}")

# %% [markdown]
# **Measured:** `compare` matches the 6 rows timed in both runs (2 implementations at 3 lengths);
# the rows of the other implementations, absent from the second run, are left out. Nothing
# changed between the two runs, so every ratio departing from 1 is the machine's noise: on an
# idle machine a few percent, on the shared one this book is tested on up to a factor of 2 or 3,
# which is why a speed-up is only claimed when it is well outside the spread of repeated runs.

# %%
assert len(pairs) == 6 and {p["impl"] for p in pairs} == {"numpy-reference", "sdpa-flash"}
assert all(p["time_ratio"] > 0 for p in pairs)

# %% [markdown]
# ## Exercises
#
# Graded by the classroom assignment **flash-attention**: `minilm assignment make flash-attention --out hw/`
# asks for the tiled forward and the recomputing backward of chapter 6; `minilm assignment grade hw/`
# checks them. Then benchmark your own solution with this chapter's harness. (The GPU version of the
# same work is the **triton-flash** assignment.)
#
# 1. Wrap your NumPy flash forward from the assignment as a torch plug-in (convert to NumPy and
#    back) and run it through `run_benchmark(plugins=[...])`. Does it pass conformance? Why must
#    the gradients then come from somewhere, and what does the harness report if they cannot?
# 2. Run `run_benchmark(..., modes=["fwd", "fwd+bwd"])` and check the counted FLOP ratio of 3.5
#    against the ratio of the measured times for `sdpa-flash`. Which is larger, and why?
# 3. Write a plug-in that is right for $L \le 128$ but wrong beyond (e.g. a tile size that drops
#    the last tile). Does `attention_conformance`'s quick suite catch it? Does the harness's
#    per-shape check against float64 attention? Which row says so?
# 4. Redo the roofline with `threads=2`: which of $P$ and $\beta$ grows, and where does the ridge
#    point move?
# 5. Run `minilm bench attention --quick --json a.json` twice and `minilm bench compare a.json b.json`:
#    how far from 1 are the ratios of two identical runs on your machine? That spread is the
#    smallest speed-up you can claim.
