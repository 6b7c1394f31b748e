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
# # 7. The Triton kernel
#
# **Learning goals**
#
# - read a Triton kernel: programs and their ids, blocks of indices, masked loads and stores;
# - map it line by line onto the NumPy flash attention of chapter 6;
# - run it on a CPU under the Triton interpreter and check it against NumPy;
# - run the conformance suite any attention kernel must pass, and see it catch a broken one;
# - read the compile report: registers, spills, shared memory and tensor-core instructions
#   for Ampere (sm_80) and Hopper (sm_90) GPUs, without owning one.
#
# Triton (Tillet et al., 2019) is a Python dialect for GPU kernels in which a program works on
# blocks of data rather than single threads. minilm's flash attention is written in it, in
# the loop structure and variable names of the NumPy reference.

# %%
import importlib
import io
import os
import re
from contextlib import redirect_stdout

import torch

if not torch.cuda.is_available():
    # No GPU: run the kernels in Triton's interpreter (NumPy under the hood). It must be chosen
    # before the kernels are defined, i.e. before minilm.kernels is first imported.
    os.environ["TRITON_INTERPRET"] = "1"

import matplotlib.pyplot as plt
import numpy as np

import minilm.numpy as mn
from minilm.conformance import QUICK_CASES, attention_conformance
from minilm.kernels import flash_attention
from minilm.kernels.compile import main as compile_report
from minilm.kernels.compile import toolchain_problem
from minilm.tutorials import show

fa = importlib.import_module("minilm.kernels.flash_attention")  # the module (its name is also the function's)
device = "cuda" if torch.cuda.is_available() else "cpu"
print("device:", device, "| interpreted:", fa.INTERPRET)

# %% [markdown]
# ## Programs, blocks, masks
#
# A Triton kernel is launched on a **grid** of programs. Each program runs the kernel's body
# once, knows its coordinates through `tl.program_id(axis)`, and computes on whole blocks:
# `tl.arange(0, BLOCK_M)` is a vector of `BLOCK_M` indices, `tl.load(pointers, mask=...)`
# reads a block of memory (positions where the mask is false read `other` instead of
# out-of-bounds memory), `tl.dot` multiplies two blocks on the tensor cores. The compiler
# decides how the block is spread over the GPU's threads, registers and shared memory.
#
# The forward kernel's grid is $(\lceil L / B_M\rceil, H, B)$: one program per query tile of
# one head of one sequence, the outer loop `for start_m in range(0, L, block_q)` of the NumPy
# version turned into parallel programs. Here is the program:

# %%
show(fa._attn_fwd)

# %% [markdown]
# and the loop over key tiles it calls twice, once for the tiles that need no mask and once
# for the causal diagonal and the key tail:

# %%
show(fa._attn_fwd_inner)

# %% [markdown]
# ## Side by side with the NumPy version
#
# | NumPy (`minilm.numpy.flash_attention`) | Triton (`minilm.kernels`) |
# | --- | --- |
# | `for start_m in range(0, L, block_q):` | `start_m = tl.program_id(0)`: one program per query tile |
# | batch dims vectorised by `@` | `h = tl.program_id(1)`, `b = tl.program_id(2)`; pointers offset by `b * stride_qb + h * stride_qh` |
# | `q[..., start_m:end_m, :]` (a slice stops at $L$) | `offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)`; `tl.load(q_ptrs, mask=offs_m < L, other=0.0)` |
# | `for start_n in range(0, hi, block_k):` | `for start_n in range(lo, hi, BLOCK_N):` inside the program |
# | `s = (q_tile @ k_tile.T) * scale` | `s = tl.dot(q_tile, tl.trans(k_tile)) * qk_scale`, with `qk_scale = scale * log2(e)` |
# | `np.where(causal_mask, s, -inf)` on tiles that cross the diagonal | `tl.where(valid, s, float("-inf"))` only when `MASK` (a compile-time constant) |
# | `np.exp(s - m_new)` | `tl.math.exp2(s - m_new)`: base 2, the GPU's native exponential |
# | `m_i`, `l_i`, `acc` in the input dtype | `m_i`, `l_i`, `acc` in float32 registers, whatever the input dtype |
# | `out[..., start_m:end_m, :] = acc / l_i` | `tl.store(o_ptrs, acc / l_i[:, None], mask=q_mask)` |
#
# Grouped-query attention is one integer division: query head `h` reads key/value head
# `h // GROUP`. Head dims that are not a power of two are padded to `BLOCK_D` and masked.
#
# ## Running it under the interpreter
#
# With `TRITON_INTERPRET=1` every program of the grid runs one after the other, in NumPy, on
# the CPU: slow, but the same code, and `print` and breakpoints work inside the kernel. The
# interpreter uses small fixed tiles:

# %%
print("interpreter tiles (BLOCK_M, BLOCK_N):", fa.INTERPRETER_CONFIGS)
rng = np.random.default_rng(0)
B, H, Hkv, L, D = 2, 4, 2, 37, 32  # 37: a prime, so every tile loop ends in a partial tile
q = rng.standard_normal((B, H, L, D))
k, v = rng.standard_normal((2, B, Hkv, L, D))
out, lse = flash_attention(*(torch.tensor(a, dtype=torch.float32, device=device) for a in (q, k, v)),
                           is_causal=True, return_lse=True)
G = H // Hkv
ref_out, ref_lse = mn.flash_attention(q.reshape(B, Hkv, G, L, D), k[:, :, None], v[:, :, None], is_causal=True)
err_out = np.abs(out.cpu().numpy() - ref_out.reshape(B, H, L, D)).max()
err_lse = np.abs(lse.cpu().numpy() - ref_lse.reshape(B, H, L)).max()
print(f"Triton (float32) vs NumPy flash attention (float64): out {err_out:.1e}, lse {err_lse:.1e}")

# %% [markdown]
# **Measured:** on 2 sequences of 37 tokens, 4 query heads sharing 2 key/value heads, causal,
# the kernel's float32 output and log-sum-exp agree with the NumPy reference in float64 to
# within 1e-5.

# %%
assert err_out < 1e-5 and err_lse < 1e-5

# %% [markdown]
# ## The conformance suite
#
# A kernel is correct when it computes attention as accurately as its dtype allows, for
# every shape it accepts, forward and backward. `attention_conformance` runs any function
# with the signature `fn(q, k, v, is_causal=False, scale=None) -> out` through a list of
# awkward cases (length 1, lengths one past a block, $L \ne S$, grouped heads, head dims
# that are not powers of two, scores so negative that the log-sum-exp is below $-88$) in
# float32, float16 and bfloat16. Its rule ties the bound to the dtype: the kernel's error
# against a float64 reference may be at most 6 times the error PyTorch's own attention
# makes in the same dtype, plus a few float32 ulps. `QUICK_CASES` runs every feature once.

# %%
report = attention_conformance(flash_attention, cases=QUICK_CASES, device=device)
print(report)

# %%
ours, torchs, dtype_of = [], [], []
for r in report.results:
    for name, (err, torch_err, bound) in r.errors.items():
        if torch_err > 0:
            ours.append(err)
            torchs.append(torch_err)
            dtype_of.append(str(r.dtype).replace("torch.", ""))
ours, torchs, dtype_of = np.array(ours), np.array(torchs), np.array(dtype_of)
fig, ax = plt.subplots(figsize=(5.5, 4.5))
for dt in ("float32", "float16", "bfloat16"):
    sel = dtype_of == dt
    ax.loglog(torchs[sel], ours[sel], "o", label=dt)
lims = np.array([torchs.min() / 2, torchs.max() * 2])
ax.loglog(lims, lims, "k-", lw=0.8, label="same error as PyTorch")
ax.loglog(lims, 6 * lims, "k:", lw=0.8, label="bound: 6 x PyTorch's")
ax.set_xlabel("PyTorch sdpa's error vs float64")
ax.set_ylabel("Triton kernel's error vs float64")
ax.set_title("out, dq, dk, dv over the quick conformance cases")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Measured:** all 12 case-dtype pairs pass (out, dq, dk and dv each). Where PyTorch makes
# any error at all, the kernel's is never more than 3 times PyTorch's (the rule allows 6), and
# the median ratio is below 1.0: the kernel is as accurate as the dtype allows.

# %%
ratio = ours / torchs
print(f"kernel error / PyTorch error: median {np.median(ratio):.2f}, worst {ratio.max():.2f}")
assert report.passed and len(report.results) == 12
assert ratio.max() <= 3 and np.median(ratio) < 1.0

# %% [markdown]
# A suite that passes everything proves nothing until it has failed something. Here is a
# plausible bug, a wrapper that drops the causal flag, run through two of the cases: the
# length-1 case cannot tell (one query sees one key either way), the causal GQA case can.

# %%
def forgets_causal(q, k, v, is_causal=False, scale=None):
    return flash_attention(q, k, v, is_causal=False, scale=scale)


broken = attention_conformance(forgets_causal, cases=QUICK_CASES[:2], dtypes=(torch.float32,), device=device)
print(broken)
assert [r.passed for r in broken.results] == [True, False]

# %% [markdown]
# ## The compile report: sm_80 and sm_90 without a GPU
#
# Triton compiles a kernel to PTX and then, with NVIDIA's `ptxas` (shipped with Triton), to
# machine code for one GPU architecture. That needs no GPU, so we can compile for an A100
# (sm_80, Ampere) and an H100 (sm_90, Hopper) here and read what the compiler decided:
#
# - **registers** per thread: each SM has 65 536 32-bit registers, at most 255 per thread; a
#   program of 8 warps (256 threads) using 154 registers takes 39 424 of them, so only one
#   such program fits per SM at a time. Fewer registers, more programs in flight to hide
#   memory latency (occupancy);
# - **spills**: when a thread needs more registers than it may have, the compiler spills
#   values to local memory (slow, off-chip); a flash-attention kernel that spills has lost
#   its point. minilm's compile check fails on any spill;
# - **shared memory** per program: the on-chip memory that stages the K and V tiles
#   (`num_stages` copies of them, loaded ahead asynchronously); A100 offers up to 163 KiB
#   per program, H100 up to 227 KiB;
# - **wgmma**: Hopper's warpgroup matrix-multiply instructions, which `tl.dot` should become
#   on sm_90.
#
# `minilm bench compile` compiles every kernel, dtype, head dim and autotune config (about
# a thousand compiles, minutes). Here we compile one: the forward kernel in float16 with
# $D = 64$, not causal, its first autotune config, with integer arguments as a typical
# training launch specialises them.

# %%
problem = toolchain_problem()
assert problem == "", f"cannot compile for NVIDIA GPUs here: {problem}"
buffer = io.StringIO()
with redirect_stdout(buffer):
    status = compile_report(["--arch", "80,90", "--kernels", "fwd", "--dtypes", "fp16", "--head-dims", "64",
                             "--causal", "false", "--ints", "aligned", "--quick", "--jobs", "1"])
text = buffer.getvalue()
print(text)
rows = {}
for line in text.splitlines():
    m = re.match(r"sm_(\d+)\s+_attn_fwd\s+fp16\s+64\s+no\s+aligned\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+) KiB\s+(\S+)\s+(\S+)", line)
    if m:
        arch, config, regs, spills, smem, wgmma, verdict = m.groups()
        rows[int(arch)] = dict(config=config, regs=int(regs), spills=int(spills), smem_kib=int(smem),
                               wgmma=wgmma, verdict=verdict)
for arch, r in rows.items():
    print(f"sm_{arch}: config {r['config']}, {r['regs']} registers/thread, {r['spills']} B spilled, "
          f"{r['smem_kib']} KiB shared memory, wgmma: {r['wgmma']}")

# %% [markdown]
# **Measured:** the forward kernel compiles for both sm_80 and sm_90 with 0 bytes of spills,
# at most 255 registers per thread, shared memory within each GPU's limit (163 and 227 KiB),
# and on sm_90 `tl.dot` becomes wgmma instructions.

# %%
assert status == 0 and set(rows) == {80, 90}, text
assert all(r["spills"] == 0 and r["regs"] <= 255 and r["verdict"] == "ok" for r in rows.values())
assert rows[80]["smem_kib"] <= 163 and rows[90]["smem_kib"] <= 227
assert rows[90]["wgmma"] == "yes"

# %% [markdown]
# Compare the two rows: the same source compiled for Hopper uses wgmma, which reads its
# operands from shared memory rather than registers, and typically needs fewer registers
# per thread than Ampere's `mma` for the same tile, and more shared memory to feed it.

# %% [markdown]
# ## Exercises
#
# Graded by the classroom assignment **triton-flash**: `minilm assignment make triton-flash --out hw/`
# gives you the forward kernel with the online-softmax update removed; `minilm assignment grade hw/`
# runs your kernel (under the interpreter on a CPU) through the conformance suite.
#
# 1. Under the interpreter, put `print(start_m, start_n)` in `_attn_fwd_inner` for a causal
#    call with $L = 40$. Which (query tile, key tile) pairs run, and which with `MASK=True`?
# 2. Why must keys past $S$ be masked to $-\infty$ even though they were loaded as zeros?
#    Which conformance case fails if the mask is removed?
# 3. Run `minilm bench compile --arch 80 --kernels fwd --dtypes fp16 --head-dims 128 --causal false --ints aligned`
#    and explain how registers and shared memory change from $D = 64$ to $D = 128$.
# 4. Write a wrapper that computes attention in float16 with PyTorch's `softmax` but without
#    the max trick, and run it through `attention_conformance`. Which cases catch it?
