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
# # 15. Compression
#
# **Learning goals**
#
# - quantise weights to int8 symmetrically, per tensor and per output channel, and derive the
#   error bound $|w - \hat w| \le s/2$; measure it on a trained model and on a planted outlier;
# - run a Linear layer on integers (int8 × int8 → int32, scales applied after) and check its
#   error against the bound derived for it;
# - prune by magnitude (single weights) and by structure (whole attention heads), and recover
#   with a little fine-tuning under the masks;
# - weigh every variant: validation perplexity against bytes on disk, plotted.
#
# A trained model is a large set of float32 numbers. Deployment asks how many of those bits and
# how many of those numbers it really needs. We train a small character-level Transformer on
# tinyshakespeare inside this chapter (a few seconds), then compress it with
# `minilm.numpy.quantize`, `minilm.numpy.prune` and `minilm.compress` (what `minilm compress`
# runs).

# %%
import math
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import torch

from minilm import compress as mc
from minilm.numpy import prune as npr
from minilm.numpy import quantize as nq
from minilm.presets import TrainArgs
from minilm.runs import load_run
from minilm.torch.train import train
from minilm.tutorials import show

torch.set_num_threads(1)

# %% [markdown]
# ## A model to compress
#
# Two pre-LN blocks of width 64, four heads, a context of 64 characters: 109 thousand
# parameters, trained for 200 steps of 16 windows (the run folder goes to a temporary directory).

# %%
workdir = tempfile.TemporaryDirectory(prefix="minilm-ch15-")
run_dir = os.path.join(workdir.name, "run")
args = TrainArgs(corpus="tinyshakespeare", context_length=64, d_model=64, n_layer=2, n_head=4, batch_size=16,
                 steps=200, lr=3e-3, warmup_steps=20, eval_interval=200, eval_iters=8, sample_tokens=0,
                 threads=1, device="cpu", seed=0)
result = train(args, run_dir, progress=False, print_fn=lambda s: None)
model, tokenizer, ckpt = load_run(run_dir, impl="numpy")
params = model.params
print(f"{model.num_params():,} parameters; validation loss {result.evals[-1]['val_loss']:.3f} "
      f"(perplexity {math.exp(result.evals[-1]['val_loss']):.2f})")

# %% [markdown]
# ## Symmetric int8 quantisation
#
# A $b$-bit symmetric quantiser stores each number of a block as an integer in $[-Q, Q]$,
# $Q = 2^{b-1} - 1$ (127 for int8), and one float scale $s$ per block:
#
# $$s = \frac{\max_{\text{block}} |w|}{Q}, \qquad q = \mathrm{clamp}\bigl(\mathrm{round}(w / s), -Q, Q\bigr),
#   \qquad \hat w = s\, q.$$
#
# Since $s \ge \max|w|/Q$, every $|w/s| \le Q$: the clamp never bites, and rounding to the nearest
# integer moves $w/s$ by at most $1/2$, so
#
# $$|w - \hat w| \le \frac{s}{2} \quad \text{for every element.}$$
#
# The block is the choice. **Per tensor**: one $s$ for the whole matrix, so one large weight
# anywhere coarsens the grid for all of them. **Per channel**: one $s$ per output row of a Linear
# layer's $W \in \mathbb{R}^{C_\text{out} \times C_\text{in}}$, so each row gets the resolution
# its own largest weight allows, for $C_\text{out}$ extra floats.

# %%
show(nq.quantize, nq.dequantize)

# %% [markdown]
# In floating point the product $s q$ is itself rounded (to float32 here, a relative error of at
# most $\varepsilon = 2^{-24}$), so the bound the library states and tests is
# $|w - \hat w| \le s/2 + \varepsilon |w|$. We quantise every weight matrix of the trained model
# both ways and measure the largest error against that bound (1 means "exactly at it"), how close
# the errors come to $s/2$, and the mean error.

# %%
matrices = {k: v for k, v in params.items() if v.ndim == 2}
eps = 2.0**-24
worst = {"per tensor": 0.0, "per channel": 0.0}  # max of err / (s/2 + eps |w|)
reach = {"per tensor": 0.0, "per channel": 0.0}  # max of err / (s/2)
mean_err = {"per tensor": [], "per channel": []}
for name, w in matrices.items():
    for kind, per_channel in (("per tensor", False), ("per channel", True)):
        q, s = nq.quantize(w, 8, per_channel=per_channel)
        err = np.abs(w.astype(np.float64) - nq.dequantize(q, s))  # (C_out, C_in)
        half = np.broadcast_to(np.asarray(s, np.float64) / 2, w.shape)  # s/2 of each element's block
        worst[kind] = max(worst[kind], float((err / (half + eps * np.abs(w))).max()))
        reach[kind] = max(reach[kind], float((err / half).max()))
        mean_err[kind].append(float(err.mean()))
ratio = np.mean(mean_err["per tensor"]) / np.mean(mean_err["per channel"])
print(f"largest |w - deq| / (s/2 + eps |w|): per tensor {worst['per tensor']:.6f}, per channel {worst['per channel']:.6f}")
print(f"largest |w - deq| / (s/2):          per tensor {reach['per tensor']:.6f}, per channel {reach['per channel']:.6f}")
print(f"mean error: per tensor {np.mean(mean_err['per tensor']):.2e}, per channel "
      f"{np.mean(mean_err['per channel']):.2e} ({ratio:.2f}x smaller per channel)")

# %% [markdown]
# **Measured:** over all 14 weight matrices of the model (embeddings included), in both
# granularities, every error is within the stated bound $s/2 + \varepsilon|w|$, and the largest
# come within 0.99 of $s/2$: the bound is tight (it is reached whenever some $w/s$ lies halfway
# between two integers). Per-channel scales make the mean error more than 1.1 times smaller.

# %%
assert len(matrices) == 14
assert worst["per tensor"] <= 1 and worst["per channel"] <= 1, worst
assert reach["per tensor"] > 0.99 and reach["per channel"] > 0.99, reach
assert ratio > 1.1, ratio

# %% [markdown]
# The difference between the two is modest on a well-behaved model. It becomes the whole story
# when one weight is an **outlier**, as happens in large trained Transformers: we multiply a single
# weight of the first MLP matrix by 50 and quantise again.

# %%
w = matrices["blocks.0.mlp.fc.weight"].astype(np.float64).copy()  # (256, 64)
w[3, 7] *= 50.0
row_err = {}
for kind, per_channel in (("per tensor", False), ("per channel", True)):
    q, s = nq.quantize(w, 8, per_channel=per_channel)
    row_err[kind] = np.abs(w - nq.dequantize(q, s)).max(axis=1)  # (256,) worst error of each row
others = np.arange(w.shape[0]) != 3
blowup = np.median(row_err["per tensor"][others]) / np.median(row_err["per channel"][others])
print(f"median over the other 255 rows of the worst error: per tensor {np.median(row_err['per tensor'][others]):.2e}, "
      f"per channel {np.median(row_err['per channel'][others]):.2e} ({blowup:.0f}x)")

# %%
fig, ax = plt.subplots(figsize=(8, 3.5))
for kind, color in (("per tensor", "C3"), ("per channel", "C0")):
    ax.semilogy(row_err[kind], ".", color=color, ms=4, label=kind)
ax.axvline(3, color="grey", ls=":", label="row 3 holds the outlier")
ax.set_xlabel("output channel (row of W)")
ax.set_ylabel("max |w - deq| in the row")
ax.set_title("one outlier (x50): per-tensor int8 coarsens every row, per-channel only its own")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Measured:** with one weight 50 times larger, per-tensor int8 makes the other rows' worst
# error more than 10 times larger than per-channel int8 does (the per-tensor grid is set by the
# outlier; each per-channel grid by its own row).

# %%
assert blowup > 10, blowup

# %% [markdown]
# ## Integer arithmetic
#
# Quantised weights save memory; integer *arithmetic* saves time on hardware with int8 units. With
# the activations quantised too, per token ($s_{x,i}$ from row $i$ of $x$, computed at run time:
# "dynamic") and the weights per channel ($s_{w,j}$),
#
# $$y_{ij} = \sum_k x_{ik} W_{jk} \approx s_{x,i}\, s_{w,j} \sum_k q^x_{ik}\, q^w_{jk},$$
#
# so the whole sum runs on integers (int8 products accumulated in int32, exactly) and the two
# scales multiply once per output. Writing $\hat x = x + e_x$, $\hat W = W + e_W$ with
# $|e_x| \le s_x/2$ and $|e_W| \le s_w/2$ elementwise,
#
# $$|\hat y_{ij} - y_{ij}| \le \frac{s_{x,i}}{2} \sum_k |W_{jk}| + \frac{s_{w,j}}{2} \sum_k |x_{ik}|
#   + K \frac{s_{x,i}\, s_{w,j}}{4}.$$

# %%
show(nq.int8_matmul, nq.int8_matmul_error_bound)

# %%
rng = np.random.default_rng(0)
x = rng.standard_normal((32, 64))  # 32 tokens of width 64
W = matrices["blocks.0.mlp.fc.weight"].astype(np.float64)  # (256, 64)
qx, sx = nq.quantize_activations(x)
qw, sw = nq.quantize(W, 8, per_channel=True)
y_int = nq.int8_matmul(qx, sx, qw, sw)  # (32, 256)
y_float = x @ W.T
err = np.abs(y_int - y_float)
bound = nq.int8_matmul_error_bound(x, W, sx, sw)
print(f"int8 x int8 -> int32: max error {err.max():.2e}; max error / bound {(err / bound).max():.3f}; "
      f"mean error / bound {(err / bound).mean():.3f}; relative error {err.max() / np.abs(y_float).max():.1e}")

# %% [markdown]
# **Measured:** every output of the integer matmul is within its bound; the largest error reaches
# less than 0.5 of it (the bound adds worst cases that the signs of the rounding errors rarely
# line up to reach), and the relative error is below 0.01.

# %%
assert (err <= bound).all()
assert (err / bound).max() < 0.5
assert err.max() / np.abs(y_float).max() < 0.01

# %% [markdown]
# ## Pruning
#
# **Unstructured magnitude pruning** sets the fraction $\rho$ of weights with the smallest $|w|$
# to zero, ranked over all prunable matrices together (global) or in each separately. A boolean
# mask per matrix remembers which; further training must keep them at zero, so the mask is
# applied to the gradients before each optimiser step and to the weights after it (AdamW's
# momentum would otherwise move a pruned weight off zero).
#
# **Structured pruning** removes whole units, here attention heads, ranked by the $L_2$ norm of
# everything that belongs to the head: its rows of $W_Q, W_K, W_V$ and its columns of $W_O$.
# Zeroing its $W_O$ columns removes its contribution exactly, and the model becomes a smaller
# dense one (no sparse kernels needed to run it faster).

# %%
show(npr.magnitude_masks, npr.head_importance)

# %%
masks = npr.magnitude_masks(params, 0.5)
kept = {k: float(m.mean()) for k, m in masks.items()}
head_masks = npr.prune_heads(params, model.config, 0.25)
scores = npr.head_importance(params, model.config)  # (n_layer, H)
print(f"global 50 %: {len(masks)} matrices, sparsity {masks.sparsity():.3f}; kept per matrix from "
      f"{min(kept.values()):.2f} to {max(kept.values()):.2f}")
print("head importance (rows: layers):\n", np.round(scores, 2))
print("heads pruned:", [(i, h) for i in range(scores.shape[0]) for h in range(scores.shape[1])
                        if not head_masks[f"blocks.{i}.attn.o_proj.weight"][0, h * model.config.head_dim]])

# %% [markdown]
# A global ranking prunes the matrices unevenly: those with many small weights lose more.
#
# ## Perplexity against size
#
# `minilm.compress.measure` takes a run folder and a list of variants; for each it prunes (and
# fine-tunes, on the run's training data, under the masks), stores the weights in the compressed
# format (int8/int4 values plus scales; a pruned matrix as a bitmask and its kept values), loads
# them back and measures validation perplexity, next-token accuracy, bytes on disk and generation
# speed. `minilm compress --checkpoint RUN ...` prints the same table.

# %%
show(mc.compress_state)

# %%
variants = [
    mc.Variant("float32"),
    mc.Variant("int8 per-tensor", bits=8, per_channel=False),
    mc.Variant("int8 per-channel", bits=8),
    mc.Variant("int4 g32", bits=4, group_size=32),
    mc.Variant("prune 50%", prune=0.5),
    mc.Variant("prune 75%", prune=0.75),
    mc.Variant("prune 75% + ft50", prune=0.75, finetune_steps=50),
    mc.Variant("heads 25%", prune=0.25, structured="heads"),
    mc.Variant("prune 50% + int8", prune=0.5, bits=8),
]
rows = mc.measure(run_dir, variants, eval_iters=8, gen_tokens=16, progress=None)
print(mc.format_table(rows))
by = {r["variant"]: r for r in rows}

# %%
families = {"float32": ("k", "*"), "int": ("C0", "o"), "prune": ("C3", "s"), "heads": ("C2", "^")}
fig, ax = plt.subplots(figsize=(8, 5))
for j, r in enumerate(rows):
    fam = "float32" if r["variant"] == "float32" else ("heads" if r["structured"] else
                                                        "prune" if r["prune"] else "int")
    color, marker = families[fam]
    ax.scatter(r["bytes"] / 1e3, r["val_perplexity"], color=color, marker=marker, s=60)
    ax.annotate(r["variant"], (r["bytes"] / 1e3, r["val_perplexity"]), fontsize=7, xytext=(5, 3 if j % 2 else -9),
                textcoords="offset points")
ax.set_xscale("log")
ax.set_xlabel("weights on disk (kB, log scale)")
ax.set_ylabel("validation perplexity")
ax.set_title("compression of a 109k-parameter character model: perplexity against size")
ax.grid(True, alpha=0.3)
plt.show()

# %% [markdown]
# **Measured:** int8 per-channel keeps the perplexity within 1 % of float32 at less than 0.3 of
# its bytes, and int4 with groups of 32 within 2 % at less than 0.2. Pruning costs more per byte
# saved: at 75 % sparsity the perplexity rises by more than 5 %, and 50 steps of fine-tuning
# under the masks win most of that back. Removing a quarter of the heads costs under 2 %.

# %%
f32 = by["float32"]
assert by["int8 per-channel"]["ppl_vs_float"] < 1.01 and by["int8 per-channel"]["bytes_vs_float"] < 0.3
assert by["int4 g32"]["ppl_vs_float"] < 1.02 and by["int4 g32"]["bytes_vs_float"] < 0.2
assert by["prune 75%"]["ppl_vs_float"] > 1.05
ft_gain = (by["prune 75%"]["val_perplexity"] - by["prune 75% + ft50"]["val_perplexity"]) / (
    by["prune 75%"]["val_perplexity"] - f32["val_perplexity"])
assert ft_gain > 0.5, ft_gain
assert by["heads 25%"]["ppl_vs_float"] < 1.02
assert by["prune 50% + int8"]["bytes"] < by["int8 per-channel"]["bytes"]
workdir.cleanup()

# %% [markdown]
# Two caveats the table makes plain. The pruned models are *stored* sparse but *run* dense (a
# zero is multiplied like any other number), so they are no faster; the `tokens/s` column moves
# with the machine's load, not with sparsity. And this model is tiny and under-trained, so it is
# forgiving. The real test is `minilm compress --checkpoint RUN` on a fully trained
# shakespeare-char model (`minilm train`), where int8 per-channel is expected within 1 % of the
# float32 perplexity at a quarter of the weight bytes, and 50 % sparsity with fine-tuning within 5 %.

# %% [markdown]
# ## Exercises
#
# Graded by the classroom assignment **layernorm-mlp**: `minilm assignment make layernorm-mlp --out hw/`
# asks for the LayerNorm and MLP forward and backward, the layers every matrix above belongs to;
# `minilm assignment grade hw/` checks them. (No assignment grades quantisation yet; the
# exercises below are checked by the measurements they ask for.)
#
# 1. Write `quantize` and `dequantize` yourself, per tensor and per channel, and test them against
#    the bound $s/2$ on random matrices, on an all-zero matrix, and on a matrix holding one huge
#    outlier. What happens to your bound if you compute $s$ in float32 and $\max|w|$ is a
#    denormal number?
# 2. Derive the int8 matmul bound above and find inputs $x$, $W$ for which the error reaches at
#    least 0.9 of it.
# 3. Plot perplexity against sparsity (0 to 95 %) for global and per-layer (`scope="layer"`)
#    magnitude pruning. Which degrades later, and which matrices does the global ranking strip
#    first?
# 4. Prune half of the MLP neurons (`structured="neurons"`) with and without fine-tuning. How many
#    bytes would a model that physically drops those neurons need?
# 5. Compare int8 w+a (`mc.Variant("int8 w+a", bits=8, activations=True)`) with weight-only int8
#    and with `torch.ao`'s `quantize_dynamic` (`peer=True`): perplexity, bytes and tokens/s.
