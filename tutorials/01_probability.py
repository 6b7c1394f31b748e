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
# # 1. Language modelling as probability
#
# **Learning goals**
#
# - write the probability of a whole text with the chain rule,
#   $P(W) = \prod_t P(w_t \mid w_{<t})$, and see that a model of next-token conditionals is
#   a distribution over texts;
# - fit a bigram model by maximum likelihood, which turns out to be counting, and see why
#   counts need smoothing;
# - measure a model with log-likelihood, cross-entropy, perplexity and bits per character;
# - compare a model's loss with the best loss possible: the exact entropy rate of a source
#   whose probabilities we know.
#
# A language model is nothing more than a way to assign a probability to every possible
# text. Everything else in this book, from attention to the Triton kernel, is about
# computing the conditionals $P(w_t \mid w_{<t})$ better or faster.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

import minilm.numpy as mn
from minilm.data import MarkovSource
from minilm.tutorials import show

# %% [markdown]
# ## The chain rule of probability
#
# A text is a sequence of tokens $W = w_1 w_2 \dots w_T$. Any joint distribution factorises,
# exactly and without assumptions, into next-token conditionals:
#
# $$P(W) = P(w_1)\,P(w_2 \mid w_1)\,P(w_3 \mid w_1 w_2) \cdots
#        = \prod_{t=1}^{T} P(w_t \mid w_{<t}),
# \qquad \log P(W) = \sum_{t=1}^{T} \log P(w_t \mid w_{<t}).$$
#
# A causal language model outputs, at each position, logits whose softmax is
# $P(\cdot \mid w_{<t})$; summing the log-probabilities of the tokens that actually came is
# all it takes to score a text. minilm's functions for this take logits `(B, T, V)` and
# targets `(B, T)`:

# %%
show(mn.token_log_probs, mn.sequence_log_prob)

# %% [markdown]
# ## A source whose answer we know
#
# To judge a model we need to know the best it could do. `MarkovSource` is a synthetic
# language: $V$ characters, each drawn from a distribution that depends only on the one
# before it, $P(w_t \mid w_{<t}) = P[w_{t-1}, w_t]$, with the rows of the transition table
# $P$ drawn at random. Because we know $P$, we know the **entropy rate**
#
# $$H = -\sum_s \pi_s \sum_w P[s, w] \log P[s, w],$$
#
# with $\pi$ the stationary distribution of the chain: the average surprise per token of the
# true model, and the lowest cross-entropy any model can reach on long text from this
# source.

# %%
V = 16
source = MarkovSource(vocab_size=V, order=1, concentration=0.3, seed=0)
rng = np.random.default_rng(1)
train = source.sample(1_000_000, rng)  # (N,) token ids
val = source.sample(200_000, rng)
print(source)
print("a sample, rendered as text:", source.to_text(train[:80]))

fig, ax = plt.subplots(figsize=(4.5, 4))
im = ax.imshow(source.transition, cmap="viridis")
ax.set_xlabel("next token w")
ax.set_ylabel("previous token s")
ax.set_title("transition table P[s, w]")
fig.colorbar(im, ax=ax, shrink=0.8)
plt.show()

# %% [markdown]
# ### The chain rule makes a distribution over texts
#
# A bigram model is the simplest causal model: its logits at position $t$ are
# $\log P[w_{t-1}, \cdot]$, whatever came before $w_{t-1}$. Feed those logits to
# `sequence_log_prob` and we get $\log P(W)$ for a text. If the chain rule is right, the
# probabilities of all $V^T$ texts of length $T$ must add up to exactly 1. With $T = 3$ there
# are $16^3 = 4096$ texts, few enough to enumerate:

# %%
T = 3
texts = np.stack(np.meshgrid(*[np.arange(V)] * T, indexing="ij"), axis=-1).reshape(-1, T)  # (V^T, T)
logits = np.log(source.transition)[texts[:, :-1]]  # (V^T, T-1, V): log P[w_{t-1}, .]
log_p = np.log(source.stationary)[texts[:, 0]] + mn.sequence_log_prob(logits, texts[:, 1:])  # (V^T,)
total = np.exp(log_p).sum()
print(f"sum over all {len(texts)} texts of P(W) = {total:.15f}")

# %% [markdown]
# **Measured:** the probabilities of the 4096 texts of length 3 sum to 1 within 1e-12.

# %%
assert abs(total - 1.0) < 1e-12 and len(texts) == 4096

# %% [markdown]
# ## Cross-entropy, perplexity, bits per character
#
# A model $q$ is scored on held-out text by its average negative log-likelihood, the
# **cross-entropy** in nats per token,
#
# $$\ell = -\frac{1}{N} \sum_{t=1}^{N} \log q(w_t \mid w_{<t}),
# \qquad \text{perplexity} = e^{\ell}, \qquad \text{bits per token} = \ell / \ln 2.$$
#
# Perplexity is an effective branching factor: a model that is as uncertain as a uniform
# choice among $k$ tokens has perplexity $k$. Here a token is a character, so bits per token
# is bits per character, the unit text compressors are compared in: an arithmetic coder
# driven by $q$ needs $\ell/\ln 2$ bits per character. For long samples from the source, the
# true model's cross-entropy converges to $H$ and no model does better on average (Gibbs'
# inequality: $\ell(q) - \ell(p) = \mathrm{KL}(p \,\|\, q) \ge 0$).

# %%
show(mn.perplexity, mn.bits_per_token)


def bigram_logits(table, tokens):
    """The bigram model as a causal LM: logits (1, N-1, V) predicting tokens[1:] from tokens[:-1]."""
    return np.log(table)[tokens[None, :-1]]  # (1, N-1, V)


true_logits = bigram_logits(source.transition, val)
true_nll = mn.cross_entropy(true_logits, val[None, 1:])
print(f"true model on the validation text: {true_nll:.4f} nats/char = "
      f"{mn.bits_per_token(true_logits, val[None, 1:]):.4f} bits/char, "
      f"perplexity {mn.perplexity(true_logits, val[None, 1:]):.3f}")
print(f"entropy rate H = {source.entropy_rate:.4f} nats = {source.entropy_rate_bits:.4f} bits, "
      f"e^H = {math.exp(source.entropy_rate):.3f}; uniform over {V}: ln V = {math.log(V):.4f}")

# %% [markdown]
# **Measured:** the true model's cross-entropy on 200 000 held-out characters is within 0.01
# nats of the entropy rate $H = 1.969$ nats (2.841 bits per character, perplexity 7.17: as
# uncertain as a fair choice among about 7 of the 16 characters).

# %%
assert abs(true_nll - source.entropy_rate) < 0.01
assert abs(source.entropy_rate - 1.969) < 0.0005 and abs(math.exp(source.entropy_rate) - 7.17) < 0.005

# %% [markdown]
# ## Maximum likelihood is counting
#
# Now forget $P$ and estimate it from the training text. The bigram model has one
# distribution $q[s, \cdot]$ per previous token $s$; the log-likelihood of the training text
# is
#
# $$\log L(q) = \sum_t \log q[w_{t-1}, w_t] = \sum_{s, w} c(s, w) \log q[s, w],$$
#
# with $c(s, w)$ the number of times $w$ follows $s$. Maximising it row by row under
# $\sum_w q[s, w] = 1$ (a Lagrange multiplier per row) gives
#
# $$\hat q[s, w] = \frac{c(s, w)}{\sum_{w'} c(s, w')} = \frac{c(s, w)}{c(s)}:$$
#
# the maximum-likelihood estimate is the table of relative counts. A pair never seen gets
# probability 0, and a single unseen pair in the validation text then costs
# $-\log 0 = \infty$. Add-$\alpha$ smoothing ($\alpha = 1$: Laplace) pretends every pair was
# seen $\alpha$ extra times: $\hat q[s, w] = (c(s, w) + \alpha)/(c(s) + V\alpha)$.

# %%
show(MarkovSource.fit)

# %% [markdown]
# First, that counting really maximises the likelihood: no nearby table does better. We
# perturb the counted table at random (keeping each row a distribution) a hundred times and
# compare training log-likelihoods.

# %%
n_fit = 10_000
mle = MarkovSource.fit(train[:n_fit], V, order=1, alpha=1e-9).transition  # (V, V), alpha -> 0: counts
train_nll = mn.cross_entropy(bigram_logits(mle, train[:n_fit]), train[None, 1:n_fit])
worse = 0
for _ in range(100):
    other = mle * np.exp(0.05 * rng.standard_normal(mle.shape))
    other /= other.sum(axis=1, keepdims=True)
    worse += mn.cross_entropy(bigram_logits(other, train[:n_fit]), train[None, 1:n_fit]) > train_nll
print(f"training NLL of the counted table: {train_nll:.5f}; {worse} of 100 perturbed tables are worse")

# %% [markdown]
# **Measured:** all 100 of 100 randomly perturbed tables have a higher training loss than the
# counted one.

# %%
assert worse == 100

# %% [markdown]
# ## Approaching the entropy rate
#
# How close does the counted model get to the truth, as it sees more text? We fit it on the
# first $N$ characters, with and without smoothing, and score it on the validation text. The
# excess over the true model's loss is the KL divergence from the truth, which for a
# smoothed count model falls like the number of free parameters over twice the amount of
# data: $V(V-1)/2N$ (the classic asymptotic result behind Akaike's criterion).

# %%
sizes = np.array([100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000])
excess = {}
for alpha in (1.0, 1e-9):
    excess[alpha] = np.array([
        mn.cross_entropy(bigram_logits(MarkovSource.fit(train[:n], V, 1, alpha=alpha).transition, val),
                         val[None, 1:]) - true_nll
        for n in sizes])
predicted = V * (V - 1) / (2 * sizes)
for n, a, b, p in zip(sizes, excess[1.0], excess[1e-9], predicted):
    print(f"N = {n:>9,}: add-one excess {a:.5f}  (V(V-1)/2N = {p:.5f})   counts only {b:.5f}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for alpha, label in ((1.0, "add-one (Laplace)"), (1e-9, "counts only (alpha -> 0)")):
    axes[0].semilogx(sizes, (true_nll + excess[alpha]) / math.log(2), "o-", label=label)
axes[0].axhline(source.entropy_rate_bits, color="k", ls="--", label=f"entropy rate H = {source.entropy_rate_bits:.3f}")
axes[0].set_ylim(2.7, 4.5)
axes[0].set_xlabel("training characters N")
axes[0].set_ylabel("validation bits per character")
axes[0].legend(fontsize=8)
axes[1].loglog(sizes, excess[1.0], "o-", label="add-one: measured excess")
axes[1].loglog(sizes, predicted, "k--", label="V(V-1)/2N")
axes[1].set_xlabel("training characters N")
axes[1].set_ylabel("excess over the true model (nats)")
axes[1].legend(fontsize=8)
fig.suptitle("a bigram model learned by counting approaches the entropy rate")
plt.show()

# %% [markdown]
# **Measured:** the smoothed model's loss falls with every tenfold increase of data and ends
# within 0.001 nats of the true model at a million characters; from $N = 10^4$ on, its excess
# is within a factor of 2 of $V(V-1)/2N$. Without smoothing, unseen pairs make the loss far
# worse on small data: at $N$ = 1000, the excess is over 3 times the smoothed model's.

# %%
assert np.all(np.diff(excess[1.0]) < 0) and 0 < excess[1.0][-1] < 0.001
ratio = excess[1.0][sizes >= 10_000] / predicted[sizes >= 10_000]
assert np.all((0.5 < ratio) & (ratio < 2)), ratio
assert excess[1e-9][sizes == 1000][0] > 3 * excess[1.0][sizes == 1000][0]

# %% [markdown]
# Two lessons carry over to every model in this book. The loss we train is this same
# cross-entropy, and it can only approach the entropy of the data from above; and a model
# with more parameters than its data can pin down does worse on new text than on the text it
# counted (chapter 12 measures the same thing for a Transformer).

# %% [markdown]
# ## Exercises
#
# Graded by the classroom assignment **likelihood**: `minilm assignment make likelihood --out hw/`
# gives you `token_log_probs`, `sequence_log_prob`, `perplexity` and `bits_per_token` to write;
# `minilm assignment grade hw/` checks them.
#
# 1. Derive the maximum-likelihood bigram table with a Lagrange multiplier per row, and show
#    that add-$\alpha$ smoothing is the posterior mean under a Dirichlet($\alpha$) prior.
# 2. Fit an order-2 model (`MarkovSource.fit(..., order=2)`) on this order-1 source. How much
#    data does it need to match the bigram model, and why?
# 3. Raise `concentration` to 5 and lower it to 0.1. How do $H$, the perplexity and the
#    data the model needs change?
# 4. The unigram model ignores the previous token. Compute its validation loss, and explain
#    why it lies between $H$ and $\ln V$.
