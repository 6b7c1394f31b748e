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
# # 14. Pre-training and fine-tuning
#
# **Learning goals**
#
# - state the two pre-training objectives, causal (left-to-right) and masked language
#   modelling, as likelihoods, and see what each model may look at;
# - apply BERT's masking recipe (15 % of positions; of those 80 % `[MASK]`, 10 % a random
#   token, 10 % unchanged) and measure its proportions against binomial bounds;
# - pre-train a small encoder both ways and compare what each learns per step;
# - fine-tune a classifier on a real labelled task, tinyshakespeare's speakers, split so that no
#   line leaks, and compare it with the same model trained from scratch, reading the result
#   against the test set's own noise.
#
# Until now every model in this book was a decoder trained on one objective, the next token.
# BERT (Devlin et al., 2019) made a different bet: pre-train a *bidirectional* encoder on
# unlabelled text with a fill-in-the-blanks objective, then fine-tune it, with a small new head,
# on a labelled task. minilm's encoder (`minilm.numpy.encoder`, `minilm.torch.encoder`) is that
# model, with the post-LayerNorm blocks of chapter 8.

# %%
import math
import os
import tempfile
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import torch

from minilm.data import CharTokenizer, load_corpus
from minilm.data.mlm import ENCODER_SPECIALS, mask_tokens
from minilm.data.speakers import speaker_task
from minilm.encoder_training import EncoderArgs, finetune, pretrain, special_ids
from minilm.torch.encoder import TransformerEncoder
from minilm.tutorials import show

torch.set_num_threads(1)  # small matrices: one thread is fastest, and the runs are reproducible

# %% [markdown]
# ## Two objectives
#
# A **causal** language model factorises the probability of a text by the chain rule (chapter
# 1) and is trained to maximise it:
#
# $$\mathcal{L}_\text{causal} = -\sum_{t=1}^{T} \log p_\theta(w_t \mid w_{<t}).$$
#
# Position $t$ may look only to its left (the causal mask of chapter 4), so every position is a
# training example: $T$ targets per row.
#
# A **masked** language model corrupts the input into $\tilde w$ and predicts the original tokens
# at a random set $M$ of positions, seeing the whole corrupted row, left *and* right:
#
# $$\mathcal{L}_\text{MLM} = -\sum_{t \in M} \log p_\theta(w_t \mid \tilde w), \qquad
#   \Pr[t \in M] = 0.15 \text{ for every ordinary position.}$$
#
# This is not a factorisation of $p(w)$ (the masked tokens are predicted independently of one
# another), so an MLM cannot generate text left to right, but its hidden state at every
# position is built from the whole sentence, which is what a classifier wants. The price: only
# about 15 % of the positions carry a loss, so each step teaches it less.
#
# The corruption is BERT's recipe. Of the chosen positions, 80 % become `[MASK]`, 10 % a random
# ordinary token and 10 % stay as they are; the model cannot tell which unmasked tokens it will
# be asked about, so it must keep a good representation of every token, not only of `[MASK]`.

# %%
show(mask_tokens)

# %% [markdown]
# ## The recipe, measured
#
# We mask 2000 rows of 64 tokens of tinyshakespeare, each `[CLS]`, 62 characters, `[SEP]`, and count.
# Each ordinary position is chosen independently with probability $p = 0.15$, so over $n$
# positions the chosen fraction has standard deviation $\sqrt{p(1-p)/n}$; among the $m$ chosen,
# the fraction made `[MASK]` has standard deviation $\sqrt{0.8 \cdot 0.2 / m}$, and so on. A
# correct implementation lands within 4 standard deviations of every target (a wrong one, say
# with 0.15 applied to the special tokens too, or 10 % `[MASK]`, lands dozens away).

# %%
text = load_corpus("tinyshakespeare")
tok = CharTokenizer.train(text, special_tokens=ENCODER_SPECIALS)
sp = special_ids(tok)
print("vocabulary:", tok.vocab_size, "ids, of which special:", sp)

rng = np.random.default_rng(0)
ids = np.asarray(tok.encode(text), dtype=np.int64)
starts = rng.integers(0, len(ids) - 62, 2000)
body = ids[starts[:, None] + np.arange(62)]  # (2000, 62)
rows = np.concatenate([np.full((2000, 1), sp["cls"]), body, np.full((2000, 1), sp["sep"])], axis=1)  # (2000, 64)
inputs, targets = mask_tokens(rows, rng, tok.vocab_size, sp["mask"], list(sp.values()))

eligible = ~np.isin(rows, list(sp.values()))
chosen = targets != -100
n, m = int(eligible.sum()), int(chosen.sum())
frac = {
    "chosen": m / n,
    "[MASK]": float((inputs[chosen] == sp["mask"]).sum() / m),
    "random": float(((inputs[chosen] != sp["mask"]) & (inputs[chosen] != rows[chosen])).sum() / m),
    "unchanged": float((inputs[chosen] == rows[chosen]).sum() / m),
}
target_p = {"chosen": 0.15, "[MASK]": 0.8, "random": 0.1 * (1 - 1 / 65), "unchanged": 0.1 + 0.1 / 65}
sd = {k: math.sqrt(p * (1 - p) / (n if k == "chosen" else m)) for k, p in target_p.items()}
for k in frac:
    print(f"{k:<10} measured {frac[k]:.4f}  recipe {target_p[k]:.4f}  "
          f"({(frac[k] - target_p[k]) / sd[k]:+.1f} standard deviations)")
print("special positions chosen:", int((chosen & ~eligible).sum()))

# %% [markdown]
# (A random replacement is drawn from the 65 ordinary characters, so with probability 1/65 it
# is the original character again: the "random" share is $0.1 \cdot 64/65$ and the "unchanged"
# share $0.1 + 0.1/65$.)

# %%
fig, ax = plt.subplots(figsize=(7, 3))
names = list(frac)
ax.bar(names, [frac[k] for k in names], yerr=[4 * sd[k] for k in names], capsize=6, color="C0",
       label="measured (error bar: 4 standard deviations of the recipe)")
ax.scatter(names, [target_p[k] for k in names], color="C3", zorder=3, marker="_", s=600, label="recipe")
ax.set_ylabel("fraction")
ax.set_title(f"BERT's masking on {n} ordinary positions ({m} chosen)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Measured:** 0.15 of the ordinary positions are chosen, and of those 0.8 become `[MASK]`,
# 0.1 a random token and 0.1 stay, each within 4 standard deviations of the recipe; no special
# token is ever chosen.

# %%
for k in frac:
    assert abs(frac[k] - target_p[k]) < 4 * sd[k], (k, frac[k], target_p[k])
assert abs(frac["chosen"] - 0.15) < 0.01 and abs(frac["[MASK]"] - 0.8) < 0.02
assert abs(frac["random"] - 0.1) < 0.01 and abs(frac["unchanged"] - 0.1) < 0.01
assert not (chosen & ~eligible).any()

# %% [markdown]
# ## The encoder and its heads
#
# The encoder sums token, position and segment embeddings, normalises them, runs post-LN blocks
# with *no* causal mask (a padding mask instead), and puts three heads on the hidden states: the
# masked-LM head (tied to the token embedding), next-sentence prediction and sequence
# classification. The last two read one vector per row, the **pooled** output: the `[CLS]`
# token's hidden state through a dense layer and tanh. With `EncoderConfig(causal=True)` the
# same model is a left-to-right LM; its `[CLS]` then sees nothing, so the pooler reads the last
# real token, the only one that has seen the whole row.

# %%
show(TransformerEncoder._pooled, TransformerEncoder.loss)

# %% [markdown]
# ## Pre-training both ways
#
# `minilm.encoder_training.pretrain` is what `minilm pretrain --objective mlm|causal` runs: rows
# of 48 tokens of tinyshakespeare (`[CLS] window [SEP]` masked by the recipe for MLM;
# `[CLS] window` predicting each next character for causal), AdamW with warm-up and cosine
# decay. A small model (2 post-LN blocks, width 48, 4 heads), 200 steps of 32 rows each, the
# same for both objectives: a few seconds, a tiny fraction of what BERT spent, enough to see the
# difference between the objectives.

# %%
workdir = tempfile.TemporaryDirectory(prefix="minilm-ch14-")
quiet = dict(progress=False, print_fn=lambda s: None)
shape = dict(context_length=48, d_model=48, n_layer=2, n_head=4, batch_size=32, lr=3e-3, warmup_steps=20,
             eval_interval=200, eval_iters=10, threads=1, seed=0)
runs = {}
for objective in ("mlm", "causal"):
    args = EncoderArgs(objective=objective, impl="torch", steps=200, **shape)
    runs[objective] = pretrain(args, os.path.join(workdir.name, objective), **quiet)
    print(objective, {k: round(v, 3) for k, v in runs[objective].evals[-1].items()})

mlm_acc = runs["mlm"].evals[-1]["val_mlm_accuracy"]
causal_acc = runs["causal"].evals[-1]["val_next_token_accuracy"]
val = text[int(0.9 * len(text)):]
baseline = Counter(val).most_common(1)[0][1] / len(val)  # always guess the most frequent character
print(f"validation accuracy: MLM {mlm_acc:.3f} at the masked positions, causal {causal_acc:.3f} "
      f"for the next character; always guessing ' ': {baseline:.3f}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
for objective, color in (("mlm", "C0"), ("causal", "C1")):
    losses = np.array(runs[objective].losses)
    smooth = np.convolve(losses, np.ones(10) / 10, mode="valid")
    ax.plot(losses, color=color, alpha=0.25)
    ax.plot(np.arange(9, len(losses)), smooth, color=color, label=f"{objective} (10-step mean)")
ax.axhline(math.log(65), color="grey", ls=":", label="ln 65: uniform over the characters")
ax.set_xlabel("step")
ax.set_ylabel("training loss (nats per predicted token)")
ax.set_title("pre-training the same encoder with two objectives")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Measured:** after the same 200 steps, both models beat the always-guess-a-space baseline
# (0.149): the masked LM predicts 0.17 or more of the masked characters, the causal LM 0.25 or
# more of the next characters. The causal model is ahead although it sees only the left context:
# each of its steps has a loss at every position, the MLM's at 15 % of them. BERT's answer is
# many more steps; the benefit of the two-sided view shows in what the hidden states can be used
# for, not in the first 200 steps.

# %%
assert abs(baseline - 0.149) < 0.001, baseline
assert mlm_acc > 0.17 and causal_acc > 0.25, (mlm_acc, causal_acc)
assert causal_acc > mlm_acc

# %% [markdown]
# ## A labelled task: who is speaking?
#
# tinyshakespeare is a sequence of speeches, each under its speaker's name. The task
# (`minilm.data.speakers`): given the text of a speech, name its speaker among the most frequent
# ones. Splitting it is where the care goes: the corpus has no play boundaries and repeats short
# lines ("My lord?"), so chunks of 20 consecutive speeches are dealt to train, validation and
# test, and any validation or test speech that shares a line with an earlier split is dropped.

# %%
show(speaker_task)

# %% [markdown]
# We take the two most frequent speakers, so chance is 0.5 and the test split is balanced, and
# check the split ourselves: no line of a test speech occurs in the training split.

# %%
task = speaker_task(n_speakers=2)
train_lines = {ln.strip() for t, _ in task.train for ln in t.split("\n")}
test_lines = [ln.strip() for t, _ in task.test for ln in t.split("\n")]
shared = sum(ln in train_lines for ln in test_lines)
print(f"classes {task.classes}; speeches: train {len(task.train)}, validation {len(task.val)}, "
      f"test {len(task.test)} (per class {sorted(Counter(y for _, y in task.test).items())})")
print(f"test lines also in training: {shared} of {len(test_lines)}")

# %% [markdown]
# **Measured:** 309 training speeches, 44 test speeches (22 per speaker), and none of the 44
# test speeches' lines appears in the training split.

# %%
assert len(task.train) == 309 and len(task.test) == 44 and shared == 0
assert Counter(y for _, y in task.test) == {0: 22, 1: 22}

# %% [markdown]
# ## Fine-tuning against training from scratch
#
# Fine-tuning (`minilm finetune`, `minilm.encoder_training.finetune`) builds the same encoder
# with a classification head (`EncoderConfig(n_classes=2)`), loads the pre-trained weights with
# `strict=False` (the new head keeps its random initialisation) and trains everything on
# `[CLS] speech [SEP]` rows (the speech cut to 46 characters, so that the row fits the 48
# positions the position embedding covers), with the
# cross-entropy of the class. `from_scratch=True` trains the identical model from its random
# initialisation on the same batches: the only difference is the pre-training.
#
# How large must a difference be to mean something? With $n = 44$ test speeches, an accuracy
# near 0.5 has a binomial standard deviation of $\sqrt{0.5 \cdot 0.5 / 44} = 0.075$.

# %%
results = {}
for name, scratch in (("fine-tuned", False), ("from scratch", True)):
    args = EncoderArgs(impl="torch", checkpoint=os.path.join(workdir.name, "mlm"), n_classes=2,
                       from_scratch=scratch, steps=150, batch_size=32, lr=1e-3, warmup_steps=15,
                       eval_interval=150, threads=1, seed=0)
    results[name] = finetune(args, None, **quiet)
    r = results[name]
    print(f"{name:<13} test accuracy {r.test['accuracy']:.3f}, validation loss {r.evals[-1]['val_loss']:.3f}, "
          f"mean training loss of the last 30 steps {np.mean(r.losses[-30:]):.3f}")
print(results["fine-tuned"].test["report"])

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for (name, r), color in zip(results.items(), ("C0", "C1")):
    losses = np.array(r.losses)
    axes[0].plot(np.arange(9, len(losses)), np.convolve(losses, np.ones(10) / 10, mode="valid"), color=color, label=name)
axes[0].axhline(math.log(2), color="grey", ls=":", label="ln 2: chance")
axes[0].set_xlabel("fine-tuning step")
axes[0].set_ylabel("training loss (10-step mean)")
axes[0].legend(fontsize=8)
accs = [r.test["accuracy"] for r in results.values()]
axes[1].bar(list(results), accs, yerr=2 * 0.075, capsize=8, color=["C0", "C1"])
axes[1].axhline(0.5, color="grey", ls=":", label="chance")
axes[1].set_ylim(0, 1)
axes[1].set_ylabel("test accuracy (bars: 2 s.d.)")
axes[1].legend(fontsize=8)
fig.suptitle("speakers (2 classes): the pre-trained encoder fits faster, and generalises no better")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Measured:** the pre-trained encoder fits its training speeches much faster (mean training
# loss over the last 30 steps below 0.5, and more than 0.1 below the model trained from scratch;
# chance is $\ln 2 = 0.69$), yet neither model's test accuracy is further than 2 standard deviations
# (0.15) from chance, and the fine-tuned model's validation loss is the higher of the two (it is
# more confidently wrong). At this scale, a few seconds of pre-training buys faster memorisation
# of 309 speeches, not a better classifier: the gap between fitting and generalising of chapter 12
# shows up again.

# %%
ft_loss = np.mean(results["fine-tuned"].losses[-30:])
scratch_loss = np.mean(results["from scratch"].losses[-30:])
assert ft_loss < 0.5 and scratch_loss - ft_loss > 0.1, (ft_loss, scratch_loss)
assert all(abs(a - 0.5) <= 0.15 for a in accs), accs
workdir.cleanup()

# %% [markdown]
# The real experiment is `benchmarks/bench_finetune.py`: 1500 pre-training steps on 128
# characters, then fine-tuned and from-scratch classifiers for 25 to 678 labelled speeches of 5
# speakers, accuracy plotted against the number of labels (about 10 minutes on 2 cores). That is
# where a pre-training advantage, if the model is large enough and trained long enough, has room
# to appear, and where the same noise argument decides whether it did.

# %% [markdown]
# ## Exercises
#
# Graded by the classroom assignment **transformer-block**: `minilm assignment make transformer-block --out hw/`
# asks for the block the encoder is made of (attention, the MLP, the residual stream and
# LayerNorm, forward and backward); `minilm assignment grade hw/` checks it. The exercises below
# have no grader: their answers are measurements.
#
# 1. Implement BERT's masking yourself from the recipe and check it against the binomial bounds of
#    this chapter. Then break it on purpose (choose special tokens too; draw the random token from
#    the whole vocabulary) and see which bound catches each mistake.
# 2. Pre-train with `mask_prob` 0.05, 0.15 and 0.4 for the same number of steps. Which learns the
#    masked characters best, and why is there a trade-off between signal per step and context per
#    prediction?
# 3. Add next-sentence prediction (`objective="mlm+nsp"`): after 500 steps, is the NSP accuracy
#    above 0.5? RoBERTa dropped NSP; does it change the speaker accuracy?
# 4. Run `python benchmarks/bench_finetune.py --labelled 50 200 678` and plot fine-tuned against
#    from-scratch accuracy with binomial error bars. At which number of labels, if any, is the
#    difference more than two standard deviations?
# 5. Fine-tune from the *causal* pre-training run (its pooler reads the last token). Is it better
#    or worse than the MLM run on the speaker task, at equal pre-training steps?
# 6. The synthetic task `task="markov"` (`minilm.data.markov_task`: which of a few Markov sources
#    wrote a string) is learnable in seconds, and pre-training on the sources' own text
#    (`corpus="markov"`) is cheap. With 6, 24 and 96 labelled strings, is the fine-tuned model
#    ahead of the one trained from scratch by more than two standard deviations of its test set?
