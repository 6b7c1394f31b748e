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
# # 13. Generation: decoding strategies and the KV cache
#
# **Learning goals**
#
# - Turn a language model into a text generator: sample the next token, append it, repeat.
# - Shape the next-token distribution: greedy decoding, temperature, top-k and top-p
#   (nucleus) sampling, and see what each does to the distribution and to the text.
# - Draw several samples per prompt and stop each one at an end-of-sequence token.
# - Cache the keys and values of past tokens and measure the speed-up against recomputing
#   them.

# %%
import dataclasses
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import minilm
import minilm.numpy
import minilm.numpy.layers
import minilm.torch
from minilm.numpy.generate import next_token, sample_from_probs, softmax64, top_k_filter, top_p_filter
from minilm.presets import get_preset
from minilm.runs import load_run
from minilm.tutorials import show

minilm.seed_everything(0)
torch.set_num_threads(1)  # tiny models: one thread is as fast, and robust on a busy machine

# %% [markdown]
# ## A model to sample from
#
# A small character-level Transformer trained for a few hundred steps on Shakespeare by the
# PyTorch loop, then loaded into the **NumPy** twin (the same weights load into either): this
# chapter's generation runs in NumPy, where every line of the sampler can be read.

# %%
args = get_preset("tiny", impl="torch", device="cpu", corpus="tinyshakespeare", d_model=64,
                  n_head=4, context_length=64, batch_size=16, steps=300, lr=3e-3,
                  warmup_steps=20, eval_interval=300, eval_iters=4, sample_tokens=0)
with tempfile.TemporaryDirectory() as out:
    run = minilm.torch.train.train(args, out, progress=False, print_fn=lambda s: None)
    model, tok, _ = load_run(out, impl="numpy")
print(f"trained {run.step} steps in {run.seconds:.1f} s; validation loss {run.val_loss:.3f} nats/char")
prompt = np.array([tok.encode("ROMEO:\n")])  # (1, 7)

# %% [markdown]
# ## The sampling step
#
# Given the logits $\ell \in \mathbb{R}^V$ of the last position, a decoding strategy picks the
# next token:
#
# - **Greedy**: $w = \arg\max_i \ell_i$. Deterministic, and prone to loops.
# - **Temperature** $\tau$: sample from $p_i = \mathrm{softmax}(\ell/\tau)_i$. $\tau < 1$ sharpens
#   the distribution (towards greedy as $\tau \to 0$), $\tau > 1$ flattens it (towards
#   uniform).
# - **Top-k**: keep the $k$ largest logits, set the rest to $-\infty$, renormalise.
# - **Top-p** (nucleus): keep the fewest most probable tokens whose probabilities sum to at
#   least $p$, renormalise. Unlike top-k, the number kept adapts: few tokens where the model
#   is sure, many where it is not.
#
# Then draw: with a uniform $u \in [0, 1)$, the token is the first $i$ whose cumulative
# probability exceeds $u$ (inverse-CDF sampling). minilm's NumPy sampler:

# %%
show(next_token, top_k_filter, top_p_filter, sample_from_probs)

# %% [markdown]
# ## Experiment 1: temperature, top-k and top-p on one distribution
#
# The model's distribution over the character after "ROMEO:\nI will ", reshaped by each
# strategy.

# %%
ctx = np.array([tok.encode("ROMEO:\nI will ")])
logits = model(ctx)[:, -1]  # (1, V) the last position's logits


def entropy(p):
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


temps = [0.25, 0.5, 0.8, 1.0, 1.5, 2.0, 4.0]
ent = [entropy(softmax64(logits / t)[0]) for t in temps]
p_model = softmax64(logits)[0]
kept_k = int(np.isfinite(top_k_filter(logits, 5)).sum())
kept_p = int(np.isfinite(top_p_filter(logits, 0.9)).sum())
nucleus_mass = float(p_model[np.isfinite(top_p_filter(logits, 0.9))[0]].sum())
print("entropy (bits) at temperatures", temps, ":", np.round(ent, 2))
print(f"top-k=5 keeps {kept_k} tokens; top-p=0.9 keeps {kept_p} tokens holding {nucleus_mass:.3f} of the mass")

fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
order = np.argsort(-p_model)[:20]
labels = [repr(tok.decode([int(i)]))[1:-1] or "?" for i in order]
for t in (0.5, 1.0, 2.0):
    a1.plot(range(20), softmax64(logits / t)[0][order], "o-", label=f"temperature {t}")
a1.set_xticks(range(20), labels)
a1.set_ylabel("probability")
a1.set_title('next character after "ROMEO:\\nI will "')
a1.legend()
cum = np.cumsum(p_model[order])
a2.bar(range(20), p_model[order], color=["C2" if j < kept_p else "C7" for j in range(20)])
a2.plot(range(20), cum, "k.-", label="cumulative")
a2.axhline(0.9, ls="--", c="gray", label="p = 0.9")
a2.axvline(4.5, ls=":", c="C3", label="top-k = 5 cut")
a2.set_xticks(range(20), labels)
a2.set_title(f"top-p = 0.9 keeps the {kept_p} green tokens")
a2.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# **Measured:** the entropy of the next-character distribution rises monotonically with the
# temperature, from about 1.8 bits at $\tau = 0.25$ to about 5.9 bits at $\tau = 4$ (the
# uniform distribution over the 65 characters has 6.02 bits). Top-k = 5 keeps exactly 5 tokens;
# top-p = 0.9 keeps the fewest tokens holding at least 0.9 of the probability: dropping the
# last of them would fall below 0.9.

# %%
assert all(a < b for a, b in zip(ent, ent[1:]))
assert ent[0] < 2.5 and 5.5 < ent[-1] < np.log2(65)
assert kept_k == 5
assert nucleus_mass >= 0.9 and nucleus_mass - np.sort(p_model)[::-1][kept_p - 1] < 0.9

# %% [markdown]
# ## Experiment 2: what the strategies do to text
#
# Generate 300 characters from the same prompt with each strategy (one seed each). A
# simple measure of degeneration: the fraction of distinct 8-character strings in the
# generated text (1.0: nothing repeats; low: the text loops).

# %%
def distinct(ids, n=8):
    s = tok.decode(ids.tolist())
    grams = [s[i:i + n] for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams)


strategies = {"greedy": dict(temperature=0), "temperature 0.8": dict(temperature=0.8),
              "temperature 1.0": dict(temperature=1.0), "top-k 10": dict(top_k=10),
              "top-p 0.9": dict(top_p=0.9)}
texts, dist = {}, {}
for name, kw in strategies.items():
    out = minilm.numpy.generate(model, prompt, 300, seed=1, **kw)  # (1, 7 + 300)
    texts[name], dist[name] = tok.decode(out[0].tolist()), distinct(out[0, prompt.shape[1]:])
for name in ("greedy", "top-p 0.9"):
    print(f"--- {name} (distinct 8-grams {dist[name]:.2f}) ---\n{texts[name][:300]}\n")

fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(list(dist), list(dist.values()))
ax.set_ylabel("distinct 8-character strings")
ax.tick_params(axis="x", labelsize=8)
plt.show()

# %% [markdown]
# **Measured:** greedy decoding falls into a loop: fewer than half of its 8-character
# strings are distinct (about 0.2 here), while every sampling strategy stays above 0.8.
# Greedy picks the single most likely character every time, and once a phrase brings the
# model back to a state it has been in, it repeats itself forever.
#
# Also: greedy is top-k with $k = 1$, and the sampler is the same function for both.

# %%
assert dist["greedy"] < 0.5
assert all(v > 0.8 for k, v in dist.items() if k != "greedy")
assert np.array_equal(minilm.numpy.generate(model, prompt, 50, temperature=0),
                      minilm.numpy.generate(model, prompt, 50, top_k=1, seed=3))

# %% [markdown]
# ## Experiment 3: several samples, and stopping at end-of-sequence
#
# `num_return_sequences=n` draws $n$ continuations per prompt (row $b n + j$ is sample $j$ of
# prompt $b$). `eos_id` ends a row when it samples that token: the rest of the row is filled
# with it, and generation stops as soon as every row has finished. Here a line break is the
# end of the sequence: each sample is one line of verse.

# %%
nl = tok.encode("\n")[0]
lines = minilm.numpy.generate(model, prompt, 120, temperature=0.8, num_return_sequences=4,
                              eos_id=nl, seed=7)  # (4, 7 + 120)
new = lines[:, prompt.shape[1]:]  # (4, 120)
ends = [int(np.argmax(row == nl)) if (row == nl).any() else None for row in new]
for row, end in zip(new, ends):
    print(repr(tok.decode(row[: (end if end is not None else len(row))].tolist())))
pt_model = minilm.torch.TransformerLM(model.config)
pt_model.load_state_dict(model.state_dict())
pt_lines = minilm.torch.generate(pt_model, torch.as_tensor(prompt), 120, temperature=0.8,
                                 num_return_sequences=4, eos_id=nl, seed=7)

# %% [markdown]
# **Measured:** the 4 samples are 4 different lines, every one ends at its first line break
# with the rest of its row padded with line breaks, and the PyTorch twin, from the same
# weights and seed, samples exactly the same 4 rows.

# %%
assert lines.shape == (4, prompt.shape[1] + 120)
assert len({tok.decode(r.tolist()) for r in new}) == 4
assert all(e is not None and (new[i, e:] == nl).all() for i, e in enumerate(ends))
assert np.array_equal(lines, pt_lines.numpy())

# %% [markdown]
# ## The KV cache
#
# Generating token $t + 1$ needs attention from the newest position to all $t$ before it.
# Recomputing the whole prefix every step costs $O(t)$ token-forwards per step, $O(T^2)$ for
# $T$ tokens. But the keys and values of past positions never change (attention is causal):
# keep them, and each step runs the model on **one** new token, appending its key and value
# to the cache:
#
# $$K_{1..t+1} = [K_{1..t};\, k_{t+1}], \quad V_{1..t+1} = [V_{1..t};\, v_{t+1}], \quad
#   o_{t+1} = \mathrm{softmax}\big(q_{t+1} K_{1..t+1}^\top / \sqrt{d}\big)\, V_{1..t+1}.$$
#
# minilm's attention writes into the cache and attends over everything cached:

# %%
show(minilm.numpy.layers.attention_forward)

# %% [markdown]
# ## Experiment 4: the speed-up, measured
#
# Speed does not depend on the values of the weights, only on the model's shape, so this
# experiment uses the trained model's shape with a longer context, 256, so that the window
# never slides: generate 60, 120 and 250 tokens after the 7-token prompt with and without the
# cache. Each is timed more than once, interleaved, and the best time kept: on a busy machine
# the minimum is the least noisy estimate of the true cost. The clock is this process's CPU
# time, with NumPy's BLAS held to one thread (``threadpoolctl``), so that other programs
# sharing the machine do not count.

# %%
from threadpoolctl import threadpool_limits

long_model = minilm.numpy.TransformerLM(dataclasses.replace(model.config, context_length=256), seed=0)


def timed(n, **kw):
    t0 = time.process_time()
    out = minilm.numpy.generate(long_model, prompt, n, temperature=0.8, seed=5, **kw)  # (1, 7 + n)
    return time.process_time() - t0, out


lengths = [60, 120, 250]
best, same = {}, {}
with threadpool_limits(1):
    for n in lengths:
        times, outs = {True: [], False: []}, {}
        for rep in range(3):
            for cache in (True, False):
                t, outs[cache] = timed(n, use_cache=cache)
                times[cache].append(t)
        best[n] = {cache: min(ts) for cache, ts in times.items()}
        same[n] = np.array_equal(outs[True], outs[False])
speedup = {n: best[n][False] / best[n][True] for n in lengths}
for n in lengths:
    print(f"{n:4d} tokens: with cache {best[n][True] * 1e3:6.0f} ms, without {best[n][False] * 1e3:6.0f} ms: "
          f"{speedup[n]:.1f}x faster")

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(lengths, [best[n][True] * 1e3 for n in lengths], "o-", label="with KV cache")
ax.plot(lengths, [best[n][False] * 1e3 for n in lengths], "s-", label="without")
ax.set_xlabel("new tokens")
ax.set_ylabel("CPU ms (best time)")
ax.legend()
plt.show()

# %% [markdown]
# **Measured:** the cached generator samples exactly the same tokens, and its advantage grows
# with the length: about 2.7 times faster for 120 new tokens and about 5 times for 250 on one
# thread (asserted: more than 3 times at 250, and more at 250 than at 60; ratios rather than
# times, so that a slow machine does not fail it, and best-of-several CPU times, so that a busy
# one does not either). Without the cache, step $t$ costs a forward pass over $t$ tokens, so
# the total grows like $T^2$; with it each step costs one token's forward plus an attention
# over the cache, so it grows like $T$. For a model this small the fixed cost of each call
# hides much of that at short lengths.

# %%
assert all(same.values())
assert speedup[250] > 3 and speedup[250] > speedup[60]

# %% [markdown]
# ## Exercises
#
# 1. Write `top_p_filter` yourself from its definition (keep token $j$ when the tokens ranked
#    before it sum to less than $p$) and check it on the worked example in its docstring.
# 2. Write temperature sampling with top-k from `softmax` and a uniform draw, and check it
#    against `generate` with the same seed.
# 3. Extend Experiment 4 to 500 new tokens (context 512) and fit the uncached time to
#    $a T + b T^2$ and the cached one to $c + d T$.
# 4. With the cache, what is the memory cost per token, per layer, for this model? For GPT-2
#    small (12 layers, 12 heads of 64, float16)?
#
# The classroom assignment **sampling** grades exercises 1 and 2:
# `minilm assignment make sampling --out hw/`.
