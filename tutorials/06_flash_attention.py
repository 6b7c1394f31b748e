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
# # 6. Flash attention
#
# **Learning goals**
#
# - derive the online softmax: a softmax-weighted sum computed in one pass over the keys,
#   with a running maximum, a running sum and a rescaled accumulator;
# - read the tiled algorithm (FlashAttention, Dao et al. 2022) in minilm's NumPy reference,
#   and trace its three running quantities tile by tile;
# - measure what tiling buys: peak memory against sequence length, quadratic for plain
#   attention and linear for the tiled one;
# - see the backward recompute the probabilities from one saved number per row.
#
# Chapter 5 ended with a problem: plain attention builds the $L \times S$ matrix of
# probabilities. At $L = S = 32\,768$ that is 4 GiB per head in float32. Flash attention
# computes exactly the same output without ever holding it.

# %%
import math
import tracemalloc

import matplotlib.pyplot as plt
import numpy as np

import minilm.numpy as mn
from minilm.tutorials import show

# %% [markdown]
# ## The online softmax
#
# For one query, with scores $s_1, \dots, s_S$ (already scaled) and values $v_j$, we want
# $o = \sum_j e^{s_j} v_j / \sum_j e^{s_j}$, computed stably with the maximum subtracted
# (chapter 3). Suppose we have seen the keys up to some point and kept
#
# $$m = \max_{j \le n} s_j, \qquad \ell = \sum_{j \le n} e^{s_j - m}, \qquad a = \sum_{j \le n} e^{s_j - m} v_j .$$
#
# A new block of keys arrives, with scores $s_j$ for $j \in \mathcal{B}$. The new maximum is
# $m' = \max(m, \max_{j\in\mathcal{B}} s_j)$. What was summed so far was relative to $m$;
# relative to $m'$ each old term is multiplied by $e^{m - m'}$, one number for the whole
# sum. So with $\alpha = e^{m - m'} \le 1$,
#
# $$\ell' = \alpha\,\ell + \sum_{j \in \mathcal{B}} e^{s_j - m'}, \qquad
#   a' = \alpha\,a + \sum_{j \in \mathcal{B}} e^{s_j - m'} v_j .$$
#
# At every step $a / \ell$ is the exact softmax-weighted average of the values seen so far,
# and after the last block it is $o$. The log-sum-exp $m + \log \ell$ is a by-product: the one
# number per row the backward pass will need.
#
# ## Tiling
#
# Flash attention applies this to a tile of $B_M$ queries at a time against tiles of $B_N$
# keys: the scores of one tile pair, a $B_M \times B_N$ matrix, are all that exists at any
# moment. On a GPU a tile pair fits in on-chip memory, and the $L \times S$ matrix never
# touches the slow main memory. minilm's NumPy reference is written in the loop structure and
# the variable names (`m_i`, `l_i`, `acc`) of the Triton kernel of chapter 7:

# %%
show(mn.flash_attention)

# %% [markdown]
# ## Tracing the running max, sum and accumulator
#
# `flash_attention` takes a `trace` list and appends, after every (query tile, key tile)
# step, copies of `m_i`, `l_i`, `acc` and `alpha`. We run it on 256 queries and keys in
# tiles of 32 (8 key tiles per query tile) and follow the first query tile. To make the
# running maximum move, the keys' norms grow along the sequence.

# %%
rng = np.random.default_rng(0)
L = S = 256
D, BLOCK = 16, 32
q = rng.standard_normal((L, D))
k = rng.standard_normal((S, D)) * np.linspace(0.5, 2.0, S)[:, None]  # later keys score higher
v = rng.standard_normal((S, D))
trace = []
out, lse = mn.flash_attention(q, k, v, block_q=BLOCK, block_k=BLOCK, trace=trace)
first = [t for t in trace if t["query_tile"] == 0]  # the 8 steps of query tile 0

scores = q @ k.T / math.sqrt(D)  # (L, S): only to check the trace, flash never builds it
invariant_err, max_err = 0.0, 0.0
for t in first:
    seen = slice(0, t["end_n"])  # the keys streamed so far
    p_seen = mn.softmax(scores[:BLOCK, seen])
    invariant_err = max(invariant_err, np.abs(t["acc"] / t["l_i"][:, None] - p_seen @ v[seen]).max())
    max_err = max(max_err, np.abs(t["m_i"] - scores[:BLOCK, seen].max(axis=1)).max())
plain = mn.scaled_dot_product_attention(q, k, v)
lse_plain = np.log(np.exp(scores).sum(axis=1))
err_out, err_lse = np.abs(out - plain).max(), np.abs(lse - lse_plain).max()
print(f"{len(trace)} tile steps; after each, acc / l_i vs softmax over the keys seen: {invariant_err:.1e}, "
      f"m_i vs their max: {max_err:.1e}")
print(f"final output vs plain attention: {err_out:.1e}; lse vs log-sum-exp: {err_lse:.1e}")

# %%
rows = [0, 5, 17, 30]
steps = np.arange(1, len(first) + 1)
fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
for r in rows:
    axes[0].plot(steps, [t["m_i"][r] for t in first], "o-", label=f"query {r}")
    axes[1].semilogy(steps, [t["l_i"][r] for t in first], "o-")
    axes[2].plot(steps, [t["alpha"][r] for t in first], "o-")
    axes[3].plot(steps, [t["acc"][r, 0] / t["l_i"][r] for t in first], "o-")
    axes[3].axhline(plain[r, 0], color=axes[3].lines[-1].get_color(), ls=":", lw=0.8)
axes[0].set_title("running max m_i")
axes[1].set_title("running sum l_i")
axes[2].set_title("rescale alpha = exp(m_old - m_new)")
axes[3].set_title("acc[:, 0] / l_i -> out (dotted)")
axes[0].legend(fontsize=7)
for ax in axes:
    ax.set_xlabel("key tiles seen")
fig.suptitle("flash attention, query tile 0, traced tile by tile")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Measured:** after every tile step, `acc / l_i` is the exact softmax average over the keys
# seen so far and `m_i` their exact maximum (both within 1e-12); the final output and
# log-sum-exp match plain attention to within 1e-12; `m_i` never decreases and
# $\alpha$ never exceeds 1.

# %%
assert invariant_err < 1e-12 and max_err < 1e-12 and err_out < 1e-12 and err_lse < 1e-12
assert all(np.all(b["m_i"] >= a["m_i"]) for a, b in zip(first, first[1:]))
assert all(np.all(t["alpha"] <= 1) for t in trace)

# %% [markdown]
# With a causal mask, a key tile wholly above the diagonal is never visited: with $T$ tiles
# per side only $T(T+1)/2$ of the $T^2$ tile pairs are computed, about half the work.

# %%
causal_trace = []
out_c, _ = mn.flash_attention(q, k, v, is_causal=True, block_q=BLOCK, block_k=BLOCK, trace=causal_trace)
n_tiles = L // BLOCK
print(f"causal: {len(causal_trace)} of {n_tiles**2} tile pairs computed; "
      f"error vs plain causal attention {np.abs(out_c - mn.scaled_dot_product_attention(q, k, v, is_causal=True)).max():.1e}")
assert len(causal_trace) == n_tiles * (n_tiles + 1) // 2
assert np.abs(out_c - mn.scaled_dot_product_attention(q, k, v, is_causal=True)).max() < 1e-12

# %% [markdown]
# ## Peak memory against sequence length
#
# Now the point of it all. We measure the peak memory each version allocates (NumPy reports
# its allocations to Python's `tracemalloc`) for one head of width 64 in float32, causal, at
# $L = S$ from 256 to 4096, with tiles of 64.

# %%
lengths = np.array([256, 512, 1024, 2048, 4096])
peak = {"plain": [], "flash": []}
output_bytes = []
tracemalloc.start()
for n in lengths:
    qn, kn, vn = (rng.standard_normal((1, 1, n, 64)).astype(np.float32) for _ in range(3))  # (B, H, L, D)
    for name, fn in (("plain", lambda: mn.scaled_dot_product_attention(qn, kn, vn, is_causal=True)),
                     ("flash", lambda: mn.flash_attention(qn, kn, vn, is_causal=True, block_q=64, block_k=64))):
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak[name].append(tracemalloc.get_traced_memory()[1] - before)
        del result
    output_bytes.append(n * 64 * 4 + n * 4)  # out (L, D) and lse (L,) in float32
tracemalloc.stop()
peak = {name: np.array(p) for name, p in peak.items()}
output_bytes = np.array(output_bytes)
for i, n in enumerate(lengths):
    print(f"L = {n:5d}: plain {peak['plain'][i] / 2**20:8.2f} MiB   flash {peak['flash'][i] / 2**20:6.2f} MiB   "
          f"(score matrix L*S*4 bytes = {n * n * 4 / 2**20:6.1f} MiB)")
slope = {name: np.log(p[-1] / p[-2]) / np.log(lengths[-1] / lengths[-2]) for name, p in peak.items()}

fig, ax = plt.subplots(figsize=(6, 4))
for name, p in peak.items():
    ax.loglog(lengths, p / 2**20, "o-", base=2, label=f"{name} (slope {slope[name]:.2f})")
ax.loglog(lengths, lengths.astype(float) ** 2 * 4 / 2**20, "k:", base=2, lw=0.8, label="L^2 float32 scores")
ax.set_xlabel("sequence length L = S")
ax.set_ylabel("peak memory allocated (MiB)")
ax.set_title("attention memory: quadratic vs linear")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Measured:** plain attention's peak memory holds the whole score matrix (at least
# $4LS$ bytes at every length) and grows with slope at least 1.9 on the log-log plot, while
# flash attention's never exceeds its own output by more than 0.5 MiB (a few tiles), with
# slope at most 1.1. At $L = 4096$ plain attention needs over 50 times the memory of the
# tiled version.

# %%
assert np.all(peak["plain"] >= lengths**2 * 4) and slope["plain"] >= 1.9
assert np.all(peak["flash"] - output_bytes < 0.5 * 2**20) and slope["flash"] <= 1.1
assert peak["plain"][-1] > 50 * peak["flash"][-1]

# %% [markdown]
# ## The backward pass recomputes
#
# Flash attention's backward (FlashAttention-2) saves only $O$ and the log-sum-exp
# $\mathrm{lse}_i = m_i + \log \ell_i$ per row. Any probability can be rebuilt from it,
# $P_{ij} = e^{s_{ij} - \mathrm{lse}_i}$, one tile at a time, and the row sum of chapter 5
# becomes $\delta_i = \langle dO_i, O_i\rangle$. The gradients are then the same formulas as
# chapter 5, tile by tile:
#
# $$dV \mathrel{+}= P^\top dO, \quad dP = dO\,V^\top, \quad dS = P \odot (dP - \delta), \quad
#   dQ \mathrel{+}= c\,dS\,K, \quad dK \mathrel{+}= c\,dS^\top Q.$$
#
# Recomputing the scores costs extra arithmetic but saves reading an $L \times S$ matrix from
# memory, which on a GPU is the slower of the two.

# %%
dout = rng.standard_normal((L, D))
flash_grads = mn.flash_attention_backward(dout, q, k, v, out_c, mn.flash_attention(q, k, v, is_causal=True)[1],
                                          is_causal=True, block_q=BLOCK, block_k=BLOCK)
plain_grads = mn.scaled_dot_product_attention_backward(dout, q, k, v, is_causal=True)
err_grad = max(np.abs(a - b).max() for a, b in zip(flash_grads, plain_grads))
print(f"flash backward vs plain backward: max difference {err_grad:.1e}")
assert err_grad < 1e-12

# %% [markdown]
# ## Exercises
#
# Graded by the classroom assignment **flash-attention**:
# `minilm assignment make flash-attention --out hw/` asks for the tiled forward (the online
# softmax) and the recomputing backward; `minilm assignment grade hw/` checks them against
# plain attention for lengths that are not multiples of the tile sizes.
#
# 1. Prove by induction on the number of tiles that $a/\ell$ is the softmax average of the
#    values seen so far.
# 2. What does a row of $-\infty$ scores (a query that may see nothing) do to $m$, $\alpha$
#    and $\ell$? Find how minilm's code avoids `nan`.
# 3. Count the floating-point operations of the tiled forward and of plain attention. Which
#    extra work does tiling add, and how much?
# 4. Measure the peak memory of `flash_attention_backward` against `scaled_dot_product_attention_backward`
#    as in the plot above.
