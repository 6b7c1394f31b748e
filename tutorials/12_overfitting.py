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
# # 12. Validation and overfitting
#
# **Learning goals**
#
# - Hold out validation data and estimate the loss on it, and know why the training loss
#   alone cannot tell you when to stop.
# - Watch a model memorise a small slice of text: the training loss keeps falling while the
#   validation loss turns and climbs.
# - Stop early: keep the weights of the best validation step.
# - Measure what weight decay and dropout do to the gap between the two curves.

# %%
import copy

import matplotlib.pyplot as plt
import numpy as np
import torch

import minilm
import minilm.data
import minilm.torch
import minilm.torch.layers
from minilm.config import TransformerConfig
from minilm.data import CharTokenizer, get_batch, load_corpus
from minilm.numpy.optim import cosine_schedule
from minilm.tutorials import show

minilm.seed_everything(0)
torch.set_num_threads(1)

# %% [markdown]
# ## Training loss and validation loss
#
# Training minimises the average loss on the training tokens,
# $\hat{\mathcal{L}}_{\text{train}}(\theta) = \frac{1}{N}\sum_{n} -\log p_\theta(w_{n+1} \mid w_{\le n})$.
# What we want is the expected loss on text the model has **not** seen,
# $\mathcal{L}(\theta) = \mathbb{E}_{w \sim \text{language}}[-\log p_\theta(w_{t+1} \mid w_{\le t})]$.
# The validation loss, the same average over held-out tokens, is an unbiased estimate of it
# as long as nothing was fitted to those tokens. minilm keeps the last fraction of the token
# stream for validation (a contiguous block, so no validation window overlaps a training one):

# %%
show(minilm.data.train_val_split)

# %% [markdown]
# A model with enough parameters can drive $\hat{\mathcal{L}}_{\text{train}}$ far below
# $\mathcal{L}$ by memorising its training text: the difference
# $\mathcal{L} - \hat{\mathcal{L}}_{\text{train}}$ is the **generalisation gap**. Two classic
# brakes on memorising:
#
# - **Weight decay** pulls every weight matrix towards zero at each step,
#   $\theta \leftarrow \theta(1 - \eta\lambda)$ (AdamW's decoupled form, chapter 11): a
#   prior that prefers small weights, so only patterns that help on many examples survive.
# - **Dropout** zeroes each unit of a branch's output with probability $p$ during training
#   and scales the rest by $1/(1-p)$, so no unit can rely on any other always being there. At
#   evaluation it is switched off. minilm applies it to each block's attention and MLP
#   outputs (PyTorch twin only; the NumPy model is the deterministic reference):

# %%
show(minilm.torch.layers.Block.forward)

# %% [markdown]
# ## Experiment 1: a model memorises a small slice
#
# Train a 2-layer, width-96 Transformer (about 230 thousand parameters) on only the first
# 10,000 characters of Shakespeare, for 800 steps of 16 windows of 32 characters: about 41
# passes over its training text. Every 50 steps, score it on 64 fixed windows of its training
# text and 64 fixed windows of the last 50,000 characters, which it never sees.

# %%
text = load_corpus("tinyshakespeare")
tok = CharTokenizer.train(text)
ids = np.asarray(tok.encode(text), dtype=np.int64)
train_ids, val_ids = ids[:10_000], ids[-50_000:]
ex, ey = (torch.as_tensor(a) for a in get_batch(train_ids, 64, 32, np.random.default_rng(1)))
vx, vy = (torch.as_tensor(a) for a in get_batch(val_ids, 64, 32, np.random.default_rng(2)))


def train(dropout=0.0, weight_decay=0.0, steps=800, lr=3e-3, every=50, seed=0):
    """Train; return the (step, train loss, val loss) history and the best weights seen."""
    cfg = TransformerConfig(vocab_size=tok.vocab_size, context_length=32, d_model=96, n_layer=2,
                            n_head=4, dropout=dropout)
    torch.manual_seed(seed)  # dropout's masks
    model = minilm.torch.TransformerLM(cfg, seed=seed)
    # decay the matrices only (embeddings, projections), not biases or LayerNorm gains
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99))
    rng = np.random.default_rng(seed)
    history, best = [], (np.inf, None, 0)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_schedule(step, lr, lr, 20, steps)  # warm-up, then constant
        x, y = (torch.as_tensor(a) for a in get_batch(train_ids, 16, 32, rng))  # (B, T) each
        loss = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % every == 0:
            model.eval()  # dropout off
            with torch.no_grad():
                tr, va = model.loss(ex, ey).item(), model.loss(vx, vy).item()
            model.train()
            history.append((step + 1, tr, va))
            if va < best[0]:  # early stopping's bookkeeping: the best weights so far
                best = (va, copy.deepcopy(model.state_dict()), step + 1)
    return np.array(history), best, model


hist, best, model = train()
steps_, tr, va = hist.T
print(f"best validation loss {best[0]:.3f} at step {best[2]}; "
      f"at step 800: train {tr[-1]:.3f}, validation {va[-1]:.3f}")

fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(steps_, tr, "o-", label="training text")
ax.plot(steps_, va, "o-", label="validation text")
ax.axvline(best[2], ls="--", c="gray", label=f"early stop (step {best[2]})")
ax.set_xlabel("step")
ax.set_ylabel("loss (nats / char)")
ax.set_title("10,000 characters of training text, 800 steps")
ax.legend()
plt.show()

# %% [markdown]
# For the first few hundred steps both curves fall together: the model learns what any
# English text has in common (letters, spaces, common words). Then they part. The training
# loss keeps falling, because the model is learning *this* text by heart; the validation
# loss bottoms out and rises, because what it memorises does not transfer.
#
# **Measured:** the validation loss is lowest (about 2.71) at step 500 and climbs by about
# 0.17 to 2.88 by step 800 (asserted: by more than 0.1), while the training loss keeps
# falling to about 1.74: a gap of about 1.15 nats per character (asserted: more than 1.0).

# %%
assert 300 <= best[2] <= 700
assert va[-1] > best[0] + 0.1
assert tr[-1] < tr[steps_ == best[2]][0] - 0.15  # training loss still falling
assert va[-1] - tr[-1] > 1.0

# %% [markdown]
# ## Early stopping
#
# The cheapest regulariser: evaluate on validation data every so often, keep a copy of the
# best weights, and when validation has not improved for a while (the *patience*), stop and
# restore them. Here we trained on to the end to see the whole curve, but kept the best
# weights along the way. Restoring them gives back the best model:

# %%
model.load_state_dict(best[1])
model.eval()
with torch.no_grad():
    restored = model.loss(vx, vy).item()
print(f"validation loss: last weights {va[-1]:.3f}, restored best weights {restored:.3f}")
assert abs(restored - best[0]) < 1e-6

# %% [markdown]
# In a real run the validation set that picked the stopping step is no longer unbiased (we
# chose the minimum of a noisy curve); a separate **test** set gives the number to report.
#
# ## Experiment 2: weight decay and dropout
#
# The same run two more ways: with weight decay $\lambda = 1$ (strong: with $\eta = 3\times10^{-3}$
# each step shrinks the matrices by 0.3%), and with dropout $p = 0.2$.

# %%
runs = {"none": (hist, best)}
for name, kw in {"weight decay 1.0": dict(weight_decay=1.0), "dropout 0.2": dict(dropout=0.2)}.items():
    h, b, _ = train(**kw)
    runs[name] = (h, b)
for name, (h, b) in runs.items():
    print(f"{name:17s} best val {b[0]:.3f} (step {b[2]:3d})   at step 800: train {h[-1, 1]:.3f}, "
          f"val {h[-1, 2]:.3f}, gap {h[-1, 2] - h[-1, 1]:.3f}")

fig, axes = plt.subplots(1, len(runs), figsize=(11, 3.5), sharey=True)
for ax, (name, (h, b)) in zip(axes, runs.items()):
    ax.plot(h[:, 0], h[:, 1], "o-", ms=3, label="train")
    ax.plot(h[:, 0], h[:, 2], "o-", ms=3, label="validation")
    ax.set_title(name)
    ax.set_xlabel("step")
axes[0].set_ylabel("loss (nats / char)")
axes[0].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# **Measured:** weight decay 1.0 narrows the final gap between validation and training loss
# from about 1.15 to about 0.84 nats (asserted: by more than 0.2), lowers the best validation
# loss from about 2.71 to about 2.62 and the validation loss at step 800 from about 2.88 to
# about 2.67. Dropout 0.2, at this size and length, does not help: its best validation loss
# stays within 0.05 of the baseline's and its final gap does not narrow.
#
# Dropout is no universal cure: on a model this small and a run this short, it mostly adds
# noise to the gradient, and the model still has time to memorise through it. Weight decay
# acts on every step whatever the data, and here it is the brake that works. (Exercise 2 asks
# you to find the dropout rate, if any, that helps.)

# %%
gap = {k: h[-1, 2] - h[-1, 1] for k, (h, b) in runs.items()}
assert gap["weight decay 1.0"] < gap["none"] - 0.2
assert runs["weight decay 1.0"][1][0] < runs["none"][1][0] - 0.05
assert abs(runs["dropout 0.2"][1][0] - runs["none"][1][0]) < 0.05
assert gap["dropout 0.2"] > gap["none"] - 0.05

# %% [markdown]
# ## Exercises
#
# 1. Implement patience-based early stopping: stop training when the validation loss has not
#    improved for 3 evaluations, and report at which step your loop stops.
# 2. Sweep dropout over 0.1, 0.3 and 0.5 and weight decay over 0.1, 0.3 and 3. Plot the best
#    validation loss against each. Is there a dropout rate that helps here?
# 3. Train on 100,000 characters instead of 10,000 with everything else unchanged. Does the
#    model still overfit in 800 steps? What does that say about when regularisation matters?
# 4. Why does weight decay skip the biases and LayerNorm gains? Decay them too and compare.
#
# Weight decay is part of the optimiser you write in the classroom assignment **adamw**:
# `minilm assignment make adamw --out hw/`.
