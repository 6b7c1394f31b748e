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
# # 4. Attention
#
# **Learning goals**
#
# - read attention, $\mathrm{softmax}(QK^\top/\sqrt{d})\,V$, as a soft dictionary lookup;
# - see why the scores are divided by $\sqrt{d}$: measure how, without it, the scores' variance
#   grows with $d$, the softmax saturates and the gradient through it vanishes;
# - use causal and padding masks;
# - split a model's width into heads, and share key/value heads between query heads
#   (grouped-query attention), checked against PyTorch.
#
# Attention is how a token at position $t$ gathers information from the tokens before it:
# it is the only place in a Transformer where positions talk to each other.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

import minilm.numpy as mn
from minilm.numpy.functional import softmax_backward
from minilm.tutorials import show

# %% [markdown]
# ## Attention as a soft lookup
#
# Each of the $L$ queries $q_i \in \mathbb{R}^d$ is compared with each of the $S$ keys
# $k_j \in \mathbb{R}^d$ by a dot product; a softmax over $j$ turns the scores into weights
# that sum to 1, and the output is the weighted average of the values $v_j$:
#
# $$s_{ij} = \frac{q_i \cdot k_j}{\sqrt{d}}, \qquad
#   p_{ij} = \frac{e^{s_{ij}}}{\sum_{j'} e^{s_{ij'}}}, \qquad
#   o_i = \sum_j p_{ij} v_j, \qquad\text{that is}\qquad
#   O = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d}}\right) V.$$
#
# A dictionary lookup would return the value of the one key equal to the query; attention
# returns a blend, weighted by how well each key matches. minilm's reference works on arrays
# `(..., L, D)` and takes the same arguments as `torch.nn.functional.scaled_dot_product_attention`:

# %%
show(mn.scaled_dot_product_attention)

rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((2, 4, 10, 16)) for _ in range(3))  # (B, H, T, D)
ours = mn.scaled_dot_product_attention(q, k, v, is_causal=True)
theirs = torch.nn.functional.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), is_causal=True)
print(f"max |minilm - torch| = {np.abs(ours - theirs.numpy()).max():.1e}")
assert np.abs(ours - theirs.numpy()).max() < 1e-12

# %% [markdown]
# ## Why divide by $\sqrt{d}$
#
# Suppose the entries of $q$ and $k$ are independent with mean 0 and variance 1 (roughly
# what a well-initialised layer produces). Then $q \cdot k = \sum_{m=1}^{d} q_m k_m$ is a sum
# of $d$ independent terms of variance 1:
#
# $$\mathrm{Var}(q \cdot k) = d, \qquad \mathrm{Var}\!\left(\frac{q \cdot k}{\sqrt d}\right) = 1.$$
#
# Unscaled, the scores spread out like $\sqrt d$, and a softmax of widely spread scores puts
# almost all its weight on the largest one: it **saturates**. A saturated softmax passes
# almost no gradient: its Jacobian is $\partial p_i / \partial s_j = p_i(\delta_{ij} - p_j)$,
# which is 0 when $p$ is one-hot. Backpropagation multiplies the upstream gradient $g$ by it
# (chapter 3, `softmax_backward`):
#
# $$\frac{\partial \ell}{\partial s} = p \odot (g - \langle g, p \rangle).$$
#
# We measure all three, for head dims from 4 to 1024: 16 random sequences of 64 queries and
# 64 keys with standard normal entries, scores with and without $1/\sqrt d$; the attention
# entropy $-\sum_j p_{ij}\log p_{ij}$ of each row (at most $\ln 64 = 4.16$ nats, 0 when
# saturated), and the norm of the gradient that reaches the scores for a standard normal
# upstream gradient $g$ (the median over rows: the typical row).

# %%
dims = np.array([4, 8, 16, 32, 64, 128, 256, 512, 1024])
B, L = 16, 64
stats = {name: {"variance": [], "entropy": [], "grad": [], "saturated": []} for name in ("scaled", "unscaled")}
for d in dims:
    q = rng.standard_normal((B, L, d))
    k = rng.standard_normal((B, L, d))
    g = rng.standard_normal((B, L, L))  # an upstream gradient dl/dp
    for name, scale in (("scaled", 1 / math.sqrt(d)), ("unscaled", 1.0)):
        s = (q @ k.swapaxes(-1, -2)) * scale  # (B, L, L)
        p = mn.softmax(s)  # (B, L, L)
        entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)  # (B, L)
        ds = softmax_backward(g, p)  # (B, L, L): dl/ds
        stats[name]["variance"].append(s.var())
        stats[name]["entropy"].append(entropy.mean())
        stats[name]["grad"].append(np.median(np.linalg.norm(ds, axis=-1)))
        stats[name]["saturated"].append((p.max(axis=-1) > 0.99).mean())
stats = {name: {key: np.array(val) for key, val in s.items()} for name, s in stats.items()}
for i, d in enumerate(dims):
    print(f"d = {d:4d}: " + "   ".join(
        f"{name}: var {s['variance'][i]:7.1f}, entropy {s['entropy'][i]:.2f}, grad {s['grad'][i]:.1e}, "
        f"saturated rows {s['saturated'][i]:4.0%}" for name, s in stats.items()))

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
for name, s in stats.items():
    axes[0].loglog(dims, s["variance"], "o-", base=2, label=name)
    axes[1].semilogx(dims, s["entropy"], "o-", base=2, label=name)
    axes[2].loglog(dims, s["grad"], "o-", base=2, label=name)
axes[0].set_ylabel("variance of the scores")
axes[1].axhline(math.log(L), color="gray", ls=":", label="uniform: ln 64")
axes[1].set_ylabel("attention entropy (nats)")
axes[2].set_ylabel("median |dl/ds| per row")
for ax in axes:
    ax.set_xlabel("head dim d")
    ax.legend(fontsize=8)
fig.suptitle("without 1/sqrt(d) the scores spread, the softmax saturates and its gradient vanishes")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Measured:** with $1/\sqrt d$ the scores' variance stays within 5% of 1 and the mean
# attention entropy within 0.05 nats of the same value (about 3.68) for every $d$ from 4 to
# 1024. Without it the variance grows like $d$ (within 10%), the entropy falls at every
# step, to below 0.15 nats at $d = 1024$, where a fraction above 0.65 of the rows put more
# than 0.99 of their weight on one key, and the typical gradient reaching the scores is over
# 100 times smaller than with the scale.

# %%
sc, un = stats["scaled"], stats["unscaled"]
assert np.all(np.abs(sc["variance"] - 1) < 0.05) and np.ptp(sc["entropy"]) < 0.05
assert np.all(np.abs(un["variance"] / dims - 1) < 0.1)
assert np.all(np.diff(un["entropy"]) < 0) and un["entropy"][-1] < 0.15 and un["saturated"][-1] > 0.65
assert sc["grad"][-1] > 100 * un["grad"][-1]

# %% [markdown]
# This is why the Transformer paper scales the scores (its footnote 4 gives the variance
# argument above). At initialisation an unscaled model with $d = 64$ would already have
# about a fifth of its attention rows saturated (21% here), and their queries and keys would
# barely learn.

# %%
assert 0.15 < un["saturated"][dims == 64][0] < 0.3

# %% [markdown]
# ## Masks: causal and padding
#
# A language model predicting $w_{t+1}$ must not look at $w_{t+1}$ or anything after it:
# query $i$ may only see keys $j \le i$. Masked scores are set to $-\infty$ before the
# softmax, so their weight is exactly $e^{-\infty} = 0$. A padding mask (chapter 2) removes
# the pads' keys in the same way. Below, the weights of one head for a sequence of 12 tokens
# whose last 3 are padding:

# %%
T, D = 12, 16
x = rng.standard_normal((1, 1, T, D))
real = np.arange(T) < 9  # (T,): the last three are padding
weights = {
    "no mask": mn.softmax(x @ x.swapaxes(-1, -2) / math.sqrt(D))[0, 0],
    "causal": mn.softmax(np.where(np.tril(np.ones((T, T), bool)), x @ x.swapaxes(-1, -2) / math.sqrt(D), -np.inf))[0, 0],
    "causal + padding": mn.softmax(np.where(np.tril(np.ones((T, T), bool)) & real[None, :],
                                            x @ x.swapaxes(-1, -2) / math.sqrt(D), -np.inf))[0, 0],
}
fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
for ax, (name, w) in zip(axes, weights.items()):
    ax.imshow(w, cmap="magma", vmin=0, vmax=1)
    ax.set_title(name)
    ax.set_xlabel("key j")
axes[0].set_ylabel("query i")
plt.show()

# the library takes the same masks as arguments
out_masked = mn.scaled_dot_product_attention(x, x, x, attn_mask=real[None, None, None, :], is_causal=True)
assert np.allclose(out_masked[0, 0], weights["causal + padding"] @ x[0, 0])
assert np.all(np.triu(weights["causal"], 1) == 0) and np.all(weights["causal + padding"][:, ~real] == 0)

# %% [markdown]
# ## Heads
#
# One attention over the model's full width $C$ computes one set of weights per token.
# Multi-head attention splits the width into $H$ heads of $D = C/H$ channels, lets each head
# compute its own weights, and concatenates the results: the same number of multiply-adds,
# but $H$ different patterns of attention. Splitting and merging are reshapes:

# %%
show(mn.split_heads, mn.merge_heads)

Bt, T, C, H = 2, 10, 64, 8
xq, xk, xv = (rng.standard_normal((Bt, T, C)) for _ in range(3))  # (B, T, C)
multi = mn.merge_heads(mn.scaled_dot_product_attention(
    mn.split_heads(xq, H), mn.split_heads(xk, H), mn.split_heads(xv, H), is_causal=True))  # (B, T, C)
D = C // H
one_by_one = np.concatenate([mn.scaled_dot_product_attention(
    xq[..., h * D:(h + 1) * D], xk[..., h * D:(h + 1) * D], xv[..., h * D:(h + 1) * D], is_causal=True)
    for h in range(H)], axis=-1)  # (B, T, C)
print(f"heads at once vs one head at a time: max difference {np.abs(multi - one_by_one).max():.1e}")
assert np.abs(multi - one_by_one).max() < 1e-12
assert np.array_equal(mn.merge_heads(mn.split_heads(xq, H)), xq)

# %% [markdown]
# ## Grouped-query attention
#
# During generation every layer keeps the keys and values of all past tokens (the KV cache,
# chapter 13), and for long contexts that cache, not the weights, fills the memory.
# Grouped-query attention (Ainslie et al., 2023; Llama 2 70B, Mistral) keeps $H$ query heads
# but only $H_{kv}$ key/value heads, each shared by a group of $H / H_{kv}$ query heads; the
# cache shrinks by the factor $H / H_{kv}$ ($H_{kv} = 1$ is multi-query attention). In NumPy
# the sharing is just broadcasting: view the query heads as $(H_{kv}, H/H_{kv})$ and give the
# keys and values a group axis of size 1.

# %%
Bt, H, Hkv, T, D = 2, 8, 2, 12, 16
q = rng.standard_normal((Bt, H, T, D))
k, v = rng.standard_normal((2, Bt, Hkv, T, D))
G = H // Hkv
gqa = mn.scaled_dot_product_attention(
    q.reshape(Bt, Hkv, G, T, D), k[:, :, None], v[:, :, None], is_causal=True,  # (B, Hkv, G, T, D) vs (B, Hkv, 1, T, D)
).reshape(Bt, H, T, D)
repeated = mn.scaled_dot_product_attention(q, np.repeat(k, G, axis=1), np.repeat(v, G, axis=1), is_causal=True)
torch_gqa = torch.nn.functional.scaled_dot_product_attention(
    *map(torch.from_numpy, (q, k, v)), is_causal=True, enable_gqa=True).numpy()
err_repeat, err_torch = np.abs(gqa - repeated).max(), np.abs(gqa - torch_gqa).max()
print(f"broadcast vs repeated heads: {err_repeat:.1e}; vs torch enable_gqa: {err_torch:.1e}")
print(f"KV cache per token: {2 * H * D} numbers with {H} key/value heads, {2 * Hkv * D} with {Hkv}")

# %% [markdown]
# **Measured:** grouped-query attention by broadcasting agrees with repeating the key/value
# heads and with PyTorch's `enable_gqa=True` to within 1e-12, with a KV cache 4 times
# smaller ($H = 8$ query heads, $H_{kv} = 2$).

# %%
assert err_repeat < 1e-12 and err_torch < 1e-12 and (2 * H * D) / (2 * Hkv * D) == 4

# %% [markdown]
# ## Exercises
#
# Graded by the classroom assignment **attention**: `minilm assignment make attention --out hw/`
# asks for `scaled_dot_product_attention` (masks, the fully masked row included), `split_heads`
# and `merge_heads`; `minilm assignment grade hw/` checks them against PyTorch.
#
# 1. Show that $\mathrm{Var}(q\cdot k) = d$ when the entries are independent with mean 0 and
#    variance 1. What scale would you use if they had variance $\sigma^2$?
# 2. A query row whose every key is masked: what does the textbook formula give, and what
#    should attention return? Check minilm's choice.
# 3. Redo the saturation experiment with 1024 keys instead of 64. Which curves move?
# 4. Count the multiply-adds of multi-head attention for $B, H, T, D$ and check that they do
#    not depend on how $C = HD$ is split into heads.
