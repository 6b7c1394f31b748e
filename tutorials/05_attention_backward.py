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
# # 5. Backpropagation through attention by hand
#
# **Learning goals**
#
# - derive $dQ$, $dK$ and $dV$ of $O = \mathrm{softmax}(QK^\top/\sqrt d)\,V$ with the chain
#   rule, one matrix product at a time;
# - use the softmax Jacobian identity $J^\top g = p \odot (g - \langle g, p\rangle)$ instead
#   of building the Jacobian, and the shortcut $\langle dP_i, P_i\rangle = \langle dO_i, O_i\rangle$
#   that flash attention relies on;
# - check a hand-written gradient two independent ways: central finite differences (and
#   how to choose their step) and PyTorch's autograd.
#
# The NumPy models in this book train with gradients written by hand, never with autograd.
# Attention's is the one with the most structure; this chapter derives it.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import minilm.numpy as mn
from minilm.numpy.functional import softmax_backward
from minilm.testing import numerical_grad
from minilm.tutorials import show

# %% [markdown]
# ## The forward pass as four steps
#
# For one sequence (batch and head dims ride along), with $Q \in \mathbb{R}^{L\times d}$,
# $K \in \mathbb{R}^{S\times d}$, $V \in \mathbb{R}^{S\times d_v}$ and $c = 1/\sqrt d$:
#
# $$S = c\,QK^\top \quad (L\times S), \qquad P = \mathrm{softmax}_{\text{rows}}(S), \qquad O = PV \quad (L\times d_v).$$
#
# Backpropagation receives $dO = \partial \ell/\partial O$ and walks the steps backwards. Two
# rules do all the work: for $Y = AB$, $dA = dY\,B^\top$ and $dB = A^\top dY$ (each gradient
# has the shape of its variable, which fixes where the transposes go).
#
# ## Step by step
#
# 1. $O = PV$: $\quad dV = P^\top dO, \qquad dP = dO\,V^\top$.
# 2. $P = \mathrm{softmax}(S)$ row by row. For one row, $\partial p_i/\partial s_j = p_i(\delta_{ij} - p_j)$,
#    that is $J = \mathrm{diag}(p) - pp^\top$ (symmetric), so
#    $$ds = J^\top dp = p \odot dp - p\,(p^\top dp) = p \odot \bigl(dp - \langle dp, p\rangle\bigr).$$
#    Building $J$ would cost an $S \times S$ matrix per row; the identity costs a dot product.
# 3. $S = c\,QK^\top$: $\quad dQ = c\,dS\,K, \qquad dK = c\,dS^\top Q$.
#
# One more identity, used by flash attention (chapter 6): the row sums in step 2 need $P$,
# but
# $$\langle dP_i, P_i\rangle = \sum_j (dO_i \cdot v_j)\,p_{ij} = dO_i \cdot \sum_j p_{ij} v_j = \langle dO_i, O_i\rangle,$$
# a dot product of two vectors of length $d_v$ instead of $S$.
#
# First the Jacobian identity, on one row, against the Jacobian measured by finite
# differences:

# %%
rng = np.random.default_rng(0)
s_row = rng.standard_normal(6)
p_row = mn.softmax(s_row)
J = np.diag(p_row) - np.outer(p_row, p_row)  # (S, S)
J_numeric = np.stack([numerical_grad(lambda s: float(mn.softmax(s)[i]), s_row.copy()) for i in range(6)])  # row i: dp_i/ds
g = rng.standard_normal(6)
err_J = np.abs(J - J_numeric).max()
err_identity = np.abs(J.T @ g - softmax_backward(g, p_row)).max()
print(f"|J - finite differences| = {err_J:.1e};  |J^T g - p*(g - <g,p>)| = {err_identity:.1e}")
assert err_J < 1e-9 and err_identity < 1e-15

# %% [markdown]
# ## minilm's backward
#
# The library writes the three steps in the same order, recomputing $P$ from $Q$ and $K$ (it
# keeps nothing between the forward and backward calls):

# %%
show(mn.scaled_dot_product_attention_backward)

# %% [markdown]
# ## Checking it: finite differences
#
# For a scalar loss $\ell$, the central difference
# $\bigl(\ell(x + \varepsilon e_i) - \ell(x - \varepsilon e_i)\bigr)/2\varepsilon$ approximates
# $\partial\ell/\partial x_i$ with a truncation error of order $\varepsilon^2$, but subtracting two
# nearly equal numbers loses about $u/\varepsilon$ of precision to rounding ($u \approx 10^{-16}$
# in float64). The total error is smallest in between. We take the loss
# $\ell = \sum O \odot W$ for a fixed random $W$ (so $dO = W$), with a causal mask, and
# compare every entry of $dQ$, $dK$ and $dV$ for steps from $10^{-1}$ down to $10^{-11}$.

# %%
B, H, L, D = 1, 2, 7, 5
q, k, v = (rng.standard_normal((B, H, L, D)) for _ in range(3))
W = rng.standard_normal((B, H, L, D))  # dl/dO


def loss(q, k, v):
    return float((mn.scaled_dot_product_attention(q, k, v, is_causal=True) * W).sum())


dq, dk, dv = mn.scaled_dot_product_attention_backward(W, q, k, v, is_causal=True)
eps_values = 10.0 ** -np.arange(1, 12)
fd_error = []
for eps in eps_values:
    fd = [numerical_grad(lambda x: loss(x, k, v), q.copy(), eps),
          numerical_grad(lambda x: loss(q, x, v), k.copy(), eps),
          numerical_grad(lambda x: loss(q, k, x), v.copy(), eps)]
    fd_error.append(max(np.abs(ours - num).max() for ours, num in zip((dq, dk, dv), fd)))
fd_error = np.array(fd_error)
best = eps_values[fd_error.argmin()]
for eps, e in zip(eps_values, fd_error):
    print(f"eps = {eps:.0e}: max |hand-written - finite difference| = {e:.1e}")

fig, ax = plt.subplots(figsize=(6, 3.6))
ax.loglog(eps_values, fd_error, "o-", label="measured")
ax.loglog(eps_values, 0.1 * eps_values**2, "k--", lw=0.8, label="~ eps^2 (truncation)")
ax.loglog(eps_values, 1e-15 / eps_values, "k:", lw=0.8, label="~ 1 / eps (rounding)")
ax.set_xlabel("finite-difference step eps")
ax.set_ylabel("max error in dQ, dK, dV")
ax.set_title("central differences: truncation vs rounding")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Measured:** the hand-written gradients agree with central differences to within 1e-9 at
# the best step, which lies between 1e-6 and 1e-3; the error grows like $\varepsilon^2$ above
# it and like $1/\varepsilon$ below it (more than 100 times worse at $\varepsilon = 10^{-11}$).

# %%
assert fd_error.min() < 1e-9 and 1e-6 <= best <= 1e-3
assert fd_error[0] > 100 * fd_error.min() and fd_error[-1] > 100 * fd_error.min()

# %% [markdown]
# ## Checking it: autograd
#
# The second, independent check: PyTorch differentiates its own attention, and the two must
# agree to rounding. We include a padding mask, grouped key/value heads given by
# broadcasting, and a query row that may see nothing (its gradient must be 0, not NaN).

# %%
B, H, L, S, D = 2, 4, 9, 11, 8
q = rng.standard_normal((B, H, L, D))
k, v = rng.standard_normal((2, B, 1, S, D))  # one key/value head shared by all 4 query heads
mask = rng.random((B, 1, L, S)) > 0.3
mask[0, 0, 3, :] = False  # query 3 of batch 0 may see nothing
dout = rng.standard_normal((B, H, L, D))

dq, dk, dv = mn.scaled_dot_product_attention_backward(dout, q, k, v, attn_mask=mask)
tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
out = torch.nn.functional.scaled_dot_product_attention(
    tq, tk.expand(B, H, S, D), tv.expand(B, H, S, D), attn_mask=torch.from_numpy(mask))
# torch returns NaN for a row with no allowed key; minilm returns 0 (and zero gradient).
out = torch.nan_to_num(out)
out.backward(torch.from_numpy(dout))
errors = {name: np.abs(ours - t.grad.numpy()).max() for name, ours, t in (("dQ", dq, tq), ("dK", dk, tk), ("dV", dv, tv))}
print({name: f"{e:.1e}" for name, e in errors.items()}, "| shapes:", dq.shape, dk.shape, dv.shape)
print("the empty row's dQ:", dq[0, :, 3].ravel()[:4], "...")

# the flash-attention shortcut: rowsum(dP * P) == rowsum(dO * O)
with np.errstate(invalid="ignore"):  # the empty row: softmax of all -inf is 0/0
    P = np.nan_to_num(mn.softmax(np.where(mask, q @ np.swapaxes(k, -1, -2) / np.sqrt(D), -np.inf)))
O = mn.scaled_dot_product_attention(q, k, v, attn_mask=mask)
dP = dout @ np.swapaxes(v, -1, -2)
err_delta = np.abs((dP * P).sum(-1) - (dout * O).sum(-1)).max()
print(f"max |rowsum(dP*P) - rowsum(dO*O)| = {err_delta:.1e}")

# %% [markdown]
# **Measured:** $dQ$, $dK$ and $dV$ agree with PyTorch's autograd to within 1e-13, with the
# gradient of the shared key/value head summed over the 4 query heads that use it; the row
# that sees nothing gets exactly zero gradient; and $\langle dP_i, P_i\rangle = \langle dO_i, O_i\rangle$
# holds to within 1e-13.

# %%
assert max(errors.values()) < 1e-13 and dk.shape == k.shape
assert np.all(dq[0, :, 3] == 0) and np.isfinite(dq).all()
assert err_delta < 1e-13

# %% [markdown]
# What the backward costs: the forward does two matrix products ($QK^\top$, $PV$), the
# backward five ($QK^\top$ again to recompute $P$, then $dV$, $dP$, $dQ$, $dK$), which is why
# benchmarks count the backward as about 2.5 times the forward. And it needs $P$, an
# $L \times S$ matrix per head: the memory problem chapter 6 removes.

# %% [markdown]
# ## Exercises
#
# Graded by the classroom assignment **attention-backward**:
# `minilm assignment make attention-backward --out hw/` asks for
# `scaled_dot_product_attention_backward`; `minilm assignment grade hw/` checks it against
# finite differences and autograd, with masks and broadcast heads.
#
# 1. Derive $dQ$ and $dK$ when the scores get an additive float mask $M$: does $M$ get a
#    gradient, and what is it?
# 2. Why is the softmax Jacobian symmetric? Is the Jacobian of log-softmax symmetric too?
# 3. Broadcasting one key/value head over four query heads makes $dK$ a sum over heads.
#    Write where that sum happens in minilm's code.
# 4. Redo the finite-difference plot in float32. Where is the best step now, and why?
