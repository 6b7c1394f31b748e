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
# # 9. A Transformer LM from scratch
#
# **Learning goals**
#
# - Write down the whole decoder-only Transformer language model: embeddings, a stack of
#   blocks, a final LayerNorm, a (tied) output head, the cross-entropy loss.
# - Read minilm's NumPy forward **and** hand-written backward of the whole model, and see
#   that it is the chain rule applied layer by layer, in reverse.
# - Check it against the PyTorch twin: the same weights give the same logits, the same loss
#   and the same gradients (float64, to about 1e-12), and a few finite differences agree.
# - Train a small model with both training loops and read the loss curves.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import minilm
import minilm.numpy
import minilm.torch
from minilm.config import TransformerConfig
from minilm.data import CharTokenizer, get_batch, load_corpus, train_val_split
from minilm.presets import get_preset
from minilm.tutorials import show

minilm.seed_everything(0)
torch.set_num_threads(1)  # tiny models: one thread is as fast, and robust on a busy machine

# %% [markdown]
# ## The model
#
# Token ids $w_1, \dots, w_T$ become vectors by two table look-ups, one for the token and one
# for its position:
#
# $$x^{(0)}_t = E[w_t] + P[t], \qquad E \in \mathbb{R}^{V \times C},\; P \in \mathbb{R}^{T_{\max} \times C}.$$
#
# Each of the $N$ blocks (chapter 8) updates the residual stream,
#
# $$x \leftarrow x + \mathrm{Attn}(\mathrm{LN}_1(x)), \qquad x \leftarrow x + \mathrm{MLP}(\mathrm{LN}_2(x)),$$
#
# and the last one is read out through a final LayerNorm and the head. With **tied** weights
# the head is the embedding matrix itself:
#
# $$z_t = \mathrm{LN}_f(x^{(N)}_t)\, E^\top \in \mathbb{R}^V, \qquad
#   \mathcal{L} = -\frac{1}{BT}\sum_{b,t} \log \mathrm{softmax}(z_{b,t})_{w_{b,t+1}}.$$
#
# Attention is causal (chapter 4), so $z_t$ depends on $w_1..w_t$ only and one forward pass
# scores every next-token prediction of the window at once.
#
# ## The backward pass
#
# Reverse-mode differentiation walks the same graph backwards. Starting from
# $\partial\mathcal{L}/\partial z = (\mathrm{softmax}(z) - \mathrm{onehot})/(BT)$ (chapter 3):
#
# $$\frac{\partial \mathcal{L}}{\partial h} = \frac{\partial \mathcal{L}}{\partial z} E, \qquad
#   \frac{\partial \mathcal{L}}{\partial E}\Big|_{\text{head}} = \Big(\frac{\partial \mathcal{L}}{\partial z}\Big)^{\!\top} h,$$
#
# then through $\mathrm{LN}_f$ and each block in reverse (chapter 8), and finally into the
# two look-up tables. A matrix used twice gets the **sum** of both gradients: the tied $E$
# collects one from the head and one from the embedding, and the residual stream adds the
# gradient that flows straight through to the one that flows through each branch.
#
# Here is minilm's NumPy model. Its forward keeps each layer's cache; `loss_and_grads` walks
# the caches in reverse.

# %%
show(minilm.numpy.transformer.TransformerLM._forward)
show(minilm.numpy.transformer.TransformerLM.loss_and_grads)

# %% [markdown]
# And its PyTorch twin, whose backward comes from autograd. Same parameter names, same
# shapes, same initialisation:

# %%
show(minilm.torch.transformer.TransformerLM.forward)

# %% [markdown]
# ## Experiment 1: same weights, same numbers
#
# A small model with grouped-query heads (4 query heads share 2 key/value heads) and no weight
# tying, so every parameter kind is exercised. The NumPy model is built in float64; its
# `state_dict()` is loaded into the PyTorch twin converted to float64. We compare logits,
# loss and every gradient.

# %%
text = load_corpus("builtin")
tok = CharTokenizer.train(text)
ids = np.asarray(tok.encode(text), dtype=np.int64)
cfg = TransformerConfig(vocab_size=tok.vocab_size, context_length=16, d_model=32, n_layer=2,
                        n_head=4, n_kv_head=2, tie_weights=False)
np_model = minilm.numpy.TransformerLM(cfg, seed=0, dtype=np.float64)
pt_model = minilm.torch.TransformerLM(cfg, seed=1, attention="naive").double()
pt_model.load_state_dict(np_model.state_dict())  # the NumPy weights, transplanted

x, y = get_batch(ids, 4, 16, np.random.default_rng(0))  # (B, T) each
loss_np, grads_np = np_model.loss_and_grads(x, y)

loss_pt = pt_model.loss(torch.as_tensor(x), torch.as_tensor(y))
loss_pt.backward()
grads_pt = {k: p.grad.numpy() for k, p in pt_model.named_parameters()}

logit_err = np.abs(np_model.forward(x) - pt_model(torch.as_tensor(x)).detach().numpy()).max()
# error relative to the scale of the whole gradient (see below for why not per parameter)
scale = max(np.abs(g).max() for g in grads_pt.values())
rel_err = {k: np.abs(grads_np[k] - grads_pt[k]).max() / scale for k in grads_np}
print(f"loss: NumPy {loss_np:.12f}   PyTorch {loss_pt.item():.12f}")
print(f"max |logits difference| = {logit_err:.2e}")
print(f"largest gradient error, relative to the largest gradient: {max(rel_err.values()):.2e} "
      f"({max(rel_err, key=rel_err.get)})")
print(f"largest |gradient| of the key biases: "
      f"{max(np.abs(grads_pt[f'blocks.{i}.attn.k_proj.bias']).max() for i in range(2)):.1e}")

# %% [markdown]
# The two implementations share no code (NumPy's backward is written by hand, PyTorch's is
# derived by autograd).
#
# **Measured:** in float64 the loss and the logits agree to within 1e-12 (in fact to about
# 1e-15), and every gradient to within 1e-12 of the largest gradient (about
# 2e-16 in this run). In float32 the same comparison agrees to about 1e-6: rounding, not a bug.
#
# Why not the error of each parameter relative to its own gradient? Because one gradient is
# exactly zero: the key bias $b_k$. It adds $q_i \cdot b_k$ to every score of row $i$, the
# same constant for all keys, and softmax is blind to a constant shift. Both twins return
# rounding noise (~1e-17) there, and noise divided by noise is not an error measure. (This
# is why some models, LLaMA among them, drop the key bias altogether.)

# %%
assert sorted(grads_np) == sorted(grads_pt)  # the same parameter names
assert abs(loss_np - loss_pt.item()) < 1e-12
assert logit_err < 1e-12
assert max(rel_err.values()) < 1e-12, rel_err
assert all(np.abs(grads_pt[f"blocks.{i}.attn.k_proj.bias"]).max() < 1e-12 for i in range(2))

# %%
names = list(rel_err)
fig, ax = plt.subplots(figsize=(8, 4.5))
ax.barh(range(len(names)), [max(rel_err[k], 1e-18) for k in names])
ax.set_yticks(range(len(names)), names, fontsize=7)
ax.set_xscale("log")
ax.set_xlabel("max |grad_numpy - grad_torch|, relative to the largest gradient")
ax.set_title("Hand-written NumPy backward vs PyTorch autograd (float64)")
ax.invert_yaxis()
plt.tight_layout()
plt.show()

# %% [markdown]
# Agreeing with autograd could still mean both are wrong the same way (say, a different
# loss). A third witness is the definition of the derivative itself: central finite
# differences $\big(\mathcal{L}(\theta + \epsilon e_i) - \mathcal{L}(\theta - \epsilon e_i)\big) / 2\epsilon$
# on a few coordinates of several parameters.

# %%
rng = np.random.default_rng(1)
fd_err = []
for name in ["tok_emb.weight", "blocks.0.attn.k_proj.weight", "blocks.1.ln2.weight",
             "blocks.1.mlp.fc.bias", "lm_head.weight"]:
    p = np_model.params[name].reshape(-1)  # a view: perturbing it perturbs the model
    for i in rng.choice(p.size, size=3, replace=False):
        old, eps = p[i], 1e-5
        p[i] = old + eps
        up = np_model.loss(x, y)
        p[i] = old - eps
        down = np_model.loss(x, y)
        p[i] = old
        numeric = (up - down) / (2 * eps)
        fd_err.append(abs(numeric - grads_np[name].reshape(-1)[i]))
print(f"max |finite difference - backward| over {len(fd_err)} coordinates: {max(fd_err):.1e}")

# %% [markdown]
# **Measured:** on 15 coordinates of 5 parameters, central differences with
# $\epsilon = 10^{-5}$ agree with the backward pass to within 1e-8 (about 7e-11 here: the
# $\epsilon^2$ truncation error of the central difference).

# %%
assert len(fd_err) == 15 and max(fd_err) < 1e-8

# %% [markdown]
# ## Experiment 2: training, twice
#
# `minilm.numpy.train.train` and `minilm.torch.train.train` are twins too: the same batches
# (drawn from one NumPy generator), the same AdamW, schedule and clipping. Train the `tiny`
# preset (2 layers, width 32, context 16, character-level, the corpus that ships with
# Python) for 120 steps with each loop.

# %%
args = get_preset("tiny", steps=120, eval_interval=40, sample_tokens=0)
quiet = dict(progress=False, print_fn=lambda s: None)
t0 = time.perf_counter()
run_np = minilm.numpy.train.train(args, **quiet)
t_np = time.perf_counter() - t0
t0 = time.perf_counter()
run_pt = minilm.torch.train.train(args.replace(impl="torch", device="cpu"), **quiet)
t_pt = time.perf_counter() - t0
step_gap = np.abs(np.array(run_np.losses) - np.array(run_pt.losses)).max()
print(f"NumPy loop {t_np:.1f} s, PyTorch loop {t_pt:.1f} s")
print(f"final val loss: NumPy {run_np.val_loss:.4f}, PyTorch {run_pt.val_loss:.4f}")
print(f"largest per-step difference of the training loss: {step_gap:.1e}")

# %%
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(range(1, len(run_np.losses) + 1), run_np.losses, label="NumPy loop (train)", lw=3, alpha=0.5)
ax.plot(range(1, len(run_pt.losses) + 1), run_pt.losses, label="PyTorch loop (train)", lw=1)
ax.plot([e["step"] for e in run_pt.evals], [e["val_loss"] for e in run_pt.evals], "o-",
        label="PyTorch loop (validation)")
ax.axhline(np.log(tok.vocab_size), ls="--", c="gray", label="ln V (uniform guess)")
ax.set_xlabel("step")
ax.set_ylabel("cross-entropy (nats / char)")
ax.set_title("The two training loops, same seed, float32")
ax.legend()
plt.show()

# %% [markdown]
# The two curves lie on top of each other, and the model learns: it starts at
# $\ln V \approx 4.66$ nats, the loss of a uniform guess over the 106 characters.
#
# **Measured:** in float32 the two loops' training losses differ by about 1e-6 at worst over
# the 120 steps (float32 rounding accumulating through 120 AdamW updates; asserted with a
# margin: less than 1e-4), and the validation loss falls from 4.66 to about 2.87 nats per
# character (asserted: below 3.0).

# %%
assert step_gap < 1e-4
assert abs(run_np.val_loss - run_pt.val_loss) < 1e-4
assert run_pt.losses[0] > np.log(tok.vocab_size) - 0.1  # starts near the uniform guess
assert run_pt.val_loss < 3.0 < 4.66 - 1

# %% [markdown]
# ## Experiment 3: a little longer
#
# A model four times wider trained for longer by the PyTorch loop (the fast one on a CPU).
# Where does it land against a baseline that knows only letter frequencies? The unigram
# model's cross-entropy is the entropy of the character distribution of the training text.

# %%
train_ids, val_ids = train_val_split(ids, 0.1)
counts = np.bincount(train_ids, minlength=tok.vocab_size) + 1  # add-one smoothing
unigram = -np.mean(np.log(counts / counts.sum())[val_ids])  # nats per char on validation
args = get_preset("tiny", impl="torch", device="cpu", d_model=64, n_head=4, context_length=64,
                  batch_size=16, steps=400, lr=3e-3, warmup_steps=20, eval_interval=50,
                  eval_iters=8, sample_tokens=120)
run = minilm.torch.train.train(args, **quiet)
print(f"unigram baseline: {unigram:.3f} nats/char;  model after {run.step} steps: "
      f"{run.val_loss:.3f} nats/char ({run.bits_per_char:.2f} bits/char, {run.seconds:.1f} s)")
print("sample:", run.sample)

# %%
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(range(1, len(run.losses) + 1), run.losses, lw=0.8, label="train (per step)")
ax.plot([e["step"] for e in run.evals], [e["val_loss"] for e in run.evals], "o-", label="validation")
ax.axhline(unigram, ls="--", c="gray", label="unigram baseline")
ax.set_xlabel("step")
ax.set_ylabel("cross-entropy (nats / char)")
ax.legend()
plt.show()

# %% [markdown]
# **Measured:** in 400 steps (about ten seconds) the model reaches about 2.05 nats per
# character, 1.2 nats below the unigram baseline of 3.24 (asserted: more than 0.8 below). It
# has learned which characters follow which, and the sample shows word-like strings and
# spaces in sensible places.

# %%
assert run.val_loss < unigram - 0.8

# %% [markdown]
# ## Exercises
#
# 1. Tie the weights (`tie_weights=True`) in Experiment 1 and find, in `loss_and_grads`, the
#    line that makes the tied gradient right. Delete it and watch which assert fails.
# 2. Run Experiment 1 in float32 (`dtype=np.float32`, and no `.double()`). How large are the
#    errors now, and why is that not a bug?
# 3. Count the parameters of the Experiment 3 model by hand from `param_shapes` and check
#    against `model.num_params()`.
# 4. Write `block_backward` yourself from `block_forward` and the layer backwards.
#
# The classroom assignment **transformer-block** grades exercise 4 (and more):
# `minilm assignment make transformer-block --out hw/`.
