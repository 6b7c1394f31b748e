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
# # 3. Softmax and cross-entropy
#
# **Learning goals**
#
# - turn a row of logits into a probability distribution with softmax, and score it with
#   cross-entropy;
# - see exactly where the textbook formula overflows (float32 and float64), and why
#   subtracting the row maximum fixes it for every finite input;
# - compute log-softmax with the log-sum-exp trick;
# - derive the gradient of cross-entropy, $\mathrm{softmax}(x) - \mathrm{onehot}(t)$, and check
#   it against finite differences and PyTorch's autograd.
#
# Every language model in this book ends in the same two functions: its last layer produces
# one logit per vocabulary entry, softmax turns them into $p(w_t \mid w_{<t})$ and
# cross-entropy measures how much probability went to the token that actually came next.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

import minilm.numpy as mn
from minilm.numpy.functional import cross_entropy_backward
from minilm.testing import numerical_grad
from minilm.tutorials import show

# %% [markdown]
# ## Softmax, and the overflow of its textbook form
#
# For a row of logits $x \in \mathbb{R}^V$,
#
# $$\mathrm{softmax}(x)_i = \frac{e^{x_i}}{\sum_{j=1}^{V} e^{x_j}}.$$
#
# Written exactly like this, it breaks as soon as the denominator $\sum_j e^{x_j}$ passes the
# largest representable number ($3.4\times 10^{38}$ in float32, $1.8\times 10^{308}$ in
# float64): the sum becomes `inf`, and every probability $e^{x_i}/\infty$ becomes 0 (or
# `inf / inf = nan` once $e^{x_i}$ itself overflows). For the row $x = [c, c-1, c-2]$ the sum is
# $e^c(1 + e^{-1} + e^{-2})$, so the formula must fail at
#
# $$c^\ast = \ln(\text{largest float}) - \ln(1 + e^{-1} + e^{-2}).$$
#
# Logits that large are rare at initialisation but ordinary in a trained model, in low
# precision, or after dividing by a small temperature. Let us find the threshold by
# experiment, sweeping $c$ in steps of 0.01 and calling a result wrong when it is not
# finite or is more than $10^{-4}$ away from the true softmax (which, as we will see, is the
# same for every $c$).

# %%
def naive_softmax(x):
    """The textbook formula, with no protection against overflow."""
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


TRUE = np.exp([0.0, -1.0, -2.0]) / np.exp([0.0, -1.0, -2.0]).sum()  # softmax of [c, c-1, c-2], any c


def naive_correct(c, dtype):
    """Is the naive softmax of [c, c-1, c-2] in ``dtype`` finite and within 1e-4 of the truth?"""
    with np.errstate(over="ignore", invalid="ignore"):
        y = naive_softmax(np.array([c, c - 1.0, c - 2.0], dtype=dtype))
    return bool(np.isfinite(y).all() and np.abs(y - TRUE).max() < 1e-4)


def first_failure(dtype):
    """The smallest c of the sweep at which the naive softmax goes wrong."""
    return next(float(c) for c in np.arange(0.0, 800.0, 0.01) if not naive_correct(c, dtype))


c32, c64 = first_failure(np.float32), first_failure(np.float64)
shift = math.log(1 + math.exp(-1) + math.exp(-2))
pred32, pred64 = (math.log(np.finfo(t).max) - shift for t in (np.float32, np.float64))
print(f"naive softmax first fails at c = {c32:.2f} (float32), {c64:.2f} (float64)")
print(f"predicted c* = {pred32:.4f} (float32), {pred64:.4f} (float64)")

# %% [markdown]
# **Measured:** the naive softmax goes wrong from $c$ = 88.32 in float32 and 709.38 in
# float64: the first step of the sweep past the predicted $c^\ast$ (88.3152 and 709.3751).

# %%
assert abs(c32 - 88.32) < 0.005 and abs(c64 - 709.38) < 0.005, (c32, c64)
assert 0 <= c32 - pred32 < 0.01 + 1e-9 and 0 <= c64 - pred64 < 0.01 + 1e-9

# %% [markdown]
# ## The max trick and log-sum-exp
#
# Softmax does not change when the same constant is added to every logit (the factor
# $e^{-m}$ cancels), so we subtract the row maximum $m = \max_j x_j$ first:
#
# $$\mathrm{softmax}(x)_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}}.$$
#
# Every exponent is now $\le 0$, so nothing overflows, and the largest term is $e^0 = 1$, so
# the denominator is at least 1 and never underflows to 0. The logarithm of the denominator
# gives log-softmax without ever forming a tiny probability and taking its log:
#
# $$\log \mathrm{softmax}(x)_i = x_i - \mathrm{LSE}(x), \qquad
#   \mathrm{LSE}(x) = m + \log \sum_j e^{x_j - m}.$$
#
# Here is minilm's code, the function every model in the library calls:

# %%
show(mn.softmax, mn.log_softmax)

# %% [markdown]
# The sweep again, on the same rows, with the library's softmax and in float32, up to
# logits of $10^4$:

# %%
cs = np.concatenate([np.arange(0.0, 800.0, 0.5), [1e3, 1e4]])
naive_ok = np.array([naive_correct(c, np.float32) for c in cs])
stable = np.array([mn.softmax(np.array([c, c - 1, c - 2], np.float32)) for c in cs])  # (len(cs), 3)
stable_err = np.abs(stable - TRUE).max(axis=1)
print(f"naive: correct for {naive_ok.mean():.0%} of the rows; "
      f"max trick: largest error {stable_err.max():.1e} over all {len(cs)} rows")

# %%
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(cs[:-2], naive_ok[:-2].astype(float), label="naive softmax correct (float32)")
ax.plot(cs[:-2], (stable_err[:-2] < 1e-6).astype(float) + 0.02, label="max-trick softmax correct (float32)")
ax.axvline(pred32, color="gray", ls=":", label=f"c* = {pred32:.2f}")
ax.set_xlabel("largest logit c in the row [c, c-1, c-2]")
ax.set_yticks([0, 1], ["no", "yes"])
ax.set_title("The textbook softmax overflows; the max trick never does")
ax.legend(loc="center right", fontsize=8)
plt.show()

# %% [markdown]
# **Measured:** with the max trick every row, up to logits of $10^4$, agrees with the
# softmax of $[0, -1, -2]$ to within 1e-6 in float32, while the naive formula fails on every
# row past 88.32.

# %%
assert stable_err.max() < 1e-6
assert not naive_ok[cs > 88.32].any() and naive_ok[cs < 88.3].all()

# %% [markdown]
# ## Cross-entropy
#
# A language model predicts $p = \mathrm{softmax}(x)$ and the next token is $t$. The loss is
# the negative log-probability of $t$, averaged over the $N$ positions of a batch:
#
# $$\ell = -\frac{1}{N} \sum_{n=1}^{N} \log \mathrm{softmax}(x_n)_{t_n}
#        = \frac{1}{N} \sum_n \bigl(\mathrm{LSE}(x_n) - x_{n,t_n}\bigr).$$
#
# Uniform logits over $V$ classes give $\ell = \ln V$ whatever the targets: the loss of a
# model that knows nothing, and the number to compare a first training step against.

# %%
show(mn.cross_entropy)
V = 65
print(f"uniform logits over V={V}: loss {mn.cross_entropy(np.zeros((4, V)), np.arange(4)):.4f}, ln V = {math.log(V):.4f}")

# %% [markdown]
# ## The gradient: softmax minus one-hot
#
# For one row, $\ell = \mathrm{LSE}(x) - x_t$. Since
# $\partial\,\mathrm{LSE}/\partial x_i = e^{x_i}/\sum_j e^{x_j} = p_i$ and
# $\partial x_t / \partial x_i = [i = t]$,
#
# $$\frac{\partial \ell}{\partial x_i} = p_i - [i = t],$$
#
# and with the mean over $N$ positions each row's gradient is divided by $N$. The gradient
# pushes the target's logit up by $1 - p_t$ and every other logit down by its probability;
# it sums to zero over the row, and it vanishes only when $p_t = 1$. No exponential of a
# large number, and no division by a small probability, appears anywhere.

# %%
show(cross_entropy_backward)

# %% [markdown]
# We check it twice, against two independent computations: central finite differences
# $(\ell(x + \varepsilon e_i) - \ell(x - \varepsilon e_i)) / 2\varepsilon$, and the gradient
# PyTorch's autograd takes through `torch.nn.functional.cross_entropy`, all in float64.

# %%
rng = np.random.default_rng(0)
N, V = 6, 10
logits = rng.standard_normal((N, V)) * 3.0
targets = rng.integers(0, V, size=N)

ours = cross_entropy_backward(logits, targets)
numeric = numerical_grad(lambda x: float(mn.cross_entropy(x, targets)), logits.copy())
x_t = torch.tensor(logits, requires_grad=True)
torch.nn.functional.cross_entropy(x_t, torch.tensor(targets)).backward()
autograd = x_t.grad.numpy()

err_fd, err_autograd = np.abs(ours - numeric).max(), np.abs(ours - autograd).max()
print(f"max |ours - finite differences| = {err_fd:.1e}")
print(f"max |ours - torch autograd|     = {err_autograd:.1e}")
print(f"row sums of the gradient: {np.abs(ours.sum(axis=1)).max():.1e} (0 up to rounding)")

# %% [markdown]
# **Measured:** the hand-written gradient agrees with finite differences to within 1e-8 (the
# truncation error of the $\varepsilon = 10^{-6}$ central difference) and with autograd to
# within 1e-14 (rounding alone).

# %%
assert err_fd < 1e-8 and err_autograd < 1e-14, (err_fd, err_autograd)

# %% [markdown]
# A picture of one row: the predicted distribution, and the gradient it receives.

# %%
row = 0
p = mn.softmax(logits[row])
fig, axes = plt.subplots(1, 2, figsize=(9, 3), sharex=True)
axes[0].bar(range(V), p, color=["C3" if i == targets[row] else "C0" for i in range(V)])
axes[0].set_title(f"p = softmax(x), target t = {targets[row]} in red")
axes[1].bar(range(V), ours[row] * N, color=["C3" if i == targets[row] else "C0" for i in range(V)])
axes[1].axhline(0, color="k", lw=0.5)
axes[1].set_title("gradient p - onehot(t): target pushed up, the rest down")
for ax in axes:
    ax.set_xlabel("class i")
plt.show()

# %% [markdown]
# ## Exercises
#
# Graded by the classroom assignment **softmax**: `minilm assignment make softmax --out hw/`
# gives you `softmax`, `log_softmax`, `cross_entropy` and their backward passes with the
# bodies removed; `minilm assignment grade hw/` runs the tests against your code.
#
# 1. Implement the three functions with the max trick; confirm they are finite for logits of
#    $\pm 10^4$ in float32.
# 2. Derive the Jacobian of softmax, $\partial p_i / \partial x_j = p_i(\delta_{ij} - p_j)$,
#    and from it `softmax_backward`: $dx = p \odot (dy - \langle dy, p\rangle)$.
# 3. Show that the cross-entropy gradient of a row sums to zero. What does that say about
#    adding a constant to every logit?
# 4. Temperature: plot the entropy of $\mathrm{softmax}(x / \tau)$ for $\tau \in [0.1, 10]$ on
#    the logits above. What happens as $\tau \to 0$ and $\tau \to \infty$?
