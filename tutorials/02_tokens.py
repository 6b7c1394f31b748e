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
# # 2. Tokens
#
# **Learning goals**
#
# - turn text into the integer ids a model reads, with a character tokenizer and with
#   byte-level byte-pair encoding (BPE);
# - train BPE and watch what its merges learn;
# - measure the trade-off BPE makes: vocabulary size against tokens per character, in and
#   out of the domain it was trained on;
# - use special tokens, padding and attention masks to put sequences of different lengths in
#   one batch without changing a single number the model computes for the real tokens.
#
# Chapter 1 treated a text as a sequence of tokens $w_1 \dots w_T$ from a vocabulary of size
# $V$. This chapter decides what a token is.

# %%
import matplotlib.pyplot as plt
import numpy as np

import minilm.numpy as mn
from minilm.data import BPETokenizer, CharTokenizer, causal_key_mask, load_corpus, pad_batch, train_val_split
from minilm.data.bpe import merge, pair_counts, train_merges
from minilm.tutorials import show

# %% [markdown]
# ## Characters
#
# The simplest tokenizer gives each distinct character of the training text an id. On
# tinyshakespeare (1.1 million characters, shipped with minilm) that is 65 characters, plus
# three special tokens. It is exact and tiny, but it cannot encode a character it never saw,
# and every character costs the model one position.

# %%
text = load_corpus("tinyshakespeare")
train_text, val_text = train_val_split(text, 0.1)
chars = CharTokenizer.train(train_text)
print(f"{len(text):,} characters; CharTokenizer: {len(chars.chars)} characters + "
      f"{len(chars.special_tokens)} special tokens = V {chars.vocab_size}")
print(chars.encode("To be, or not"))
try:
    chars.encode("café")
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## Byte-level byte-pair encoding
#
# Byte-level BPE (GPT-2's tokenizer) starts from the 256 possible bytes of UTF-8, so every
# string can be encoded, and then learns **merges**: repeatedly, the most frequent adjacent
# pair of tokens $(a, b)$ in the training text becomes a new token whose bytes are those of
# $a$ followed by $b$. After $M$ merges the vocabulary has $256 + M$ tokens (plus the
# specials). Encoding replays the merges in the order they were learned. Three small
# functions do the work:

# %%
show(pair_counts, merge, train_merges)

# %% [markdown]
# Text is first cut into chunks by GPT-2's regular expression (a word with its leading
# space, a run of digits, a run of punctuation) and merges never cross a chunk boundary.
# We train once, up to 4096 tokens; a tokenizer with fewer tokens is the same list of
# merges cut short, so every smaller vocabulary comes for free.

# %%
bpe = BPETokenizer.train(train_text, vocab_size=4096)
print("the first 12 merges:", [bpe.vocab[256 + r].decode() for r in range(12)])
print("merges 1000-1011:   ", [bpe.vocab[1256 + r].decode() for r in range(12)])
example = "Wherefore art thou Romeo? café 東京"
ids = bpe.encode(example)
print(ids)
print([bpe.vocab[i] for i in ids])
print("round trip:", bpe.decode(ids) == example)

# %% [markdown]
# `é` is two bytes in UTF-8 and `東` three; neither occurs in Shakespeare, so they stay
# single bytes (tokens that are not valid text on their own), yet the round trip is exact.
#
# ## Vocabulary size against tokens per character
#
# A bigger vocabulary turns the same text into fewer tokens: cheaper for a model whose
# attention costs grow like $T^2$, at the price of a bigger embedding table ($V \times C$
# parameters) and rarer, harder-to-learn tokens. We measure tokens per character on the
# held-out tenth of Shakespeare, and, to see what happens outside the training domain, on the
# Python documentation that ships with Python (`load_corpus("builtin")`).

# %%
other_text = load_corpus("builtin")[:300_000]
n_special = len(bpe.special_tokens)
sizes = [256 + n_special, 300, 400, 512, 768, 1024, 2048, 4096]
per_char = {"Shakespeare (held out)": [], "Python docs (other domain)": []}
for size in sizes:
    tok = BPETokenizer(bpe.merges[: size - 256 - n_special])  # the first merges only
    assert tok.vocab_size == size
    per_char["Shakespeare (held out)"].append(len(tok.encode(val_text)) / len(val_text))
    per_char["Python docs (other domain)"].append(len(tok.encode(other_text)) / len(other_text))
for size, a, b in zip(sizes, *per_char.values()):
    print(f"V = {size:5d}: {a:.3f} tokens/char on Shakespeare, {b:.3f} on the Python docs")

fig, ax = plt.subplots(figsize=(6.5, 3.6))
for label, values in per_char.items():
    ax.semilogx(sizes, values, "o-", base=2, label=label)
ax.axhline(1.0, color="gray", ls=":", label="characters (V = 68)")
ax.set_xlabel("vocabulary size V (BPE trained on Shakespeare)")
ax.set_ylabel("tokens per character")
ax.set_title("a bigger vocabulary, shorter sequences: mostly in its own domain")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Measured:** tokens per character fall with every step up in vocabulary size. At
# $V = 4096$ held-out Shakespeare takes at most 0.35 tokens per character (about 2.9
# characters per token), while the Python documentation, a domain the merges never saw, still
# needs more than 0.45: merges learned on one kind of text compress another kind much less.
# With no merges at all, ASCII text is exactly one token per character.

# %%
shakespeare, docs = (np.array(v) for v in per_char.values())
assert np.all(np.diff(shakespeare) < 0) and np.all(np.diff(docs) < 0)
assert shakespeare[-1] < 0.35 and docs[-1] > 0.45
assert shakespeare[0] == 1.0

# %% [markdown]
# ## Special tokens, padding and attention masks
#
# Both tokenizers reserve ids for `<pad>`, `<bos>` and `<eos>`. A special id never comes out
# of ordinary text: the string `"<eos>"` in a text is five ordinary characters unless we say
# it is allowed to be special.

# %%
print(bpe.special_tokens)
print(bpe.encode("the end<eos>"), bpe.encode("the end<eos>", allowed_special="all"))

# %% [markdown]
# A batch is a rectangle, sequences are not. `pad_batch` right-pads them with `<pad>` and
# returns three arrays: the inputs $x$, the targets $y$ (the next token, or `ignore_index`
# where there is nothing to predict) and a boolean mask of the real tokens.
# `causal_key_mask` combines it with causality into the `(B, 1, T, T)` mask attention takes:
# query $i$ may look at key $j$ when $j \le i$ and $j$ is a real token.

# %%
show(pad_batch, causal_key_mask)
docs_ = ["To be, or not to be", "Ay me!", "O Romeo, Romeo!"]
seqs = [bpe.encode(d) for d in docs_]
x, y, mask = pad_batch(seqs, pad_id=bpe.pad_id)
print(x, y, mask, sep="\n")

full_mask = causal_key_mask(mask)  # (B, 1, T, T)
fig, axes = plt.subplots(1, len(seqs), figsize=(10, 3))
for b, ax in enumerate(axes):
    ax.imshow(full_mask[b, 0], cmap="Greys", vmin=0, vmax=1.5)
    ax.set_title(f"{docs_[b]!r}: {len(seqs[b])} tokens", fontsize=9)
    ax.set_xlabel("key j")
axes[0].set_ylabel("query i")
fig.suptitle("which keys each query may see (dark): causal, and never a pad")
plt.show()

# %% [markdown]
# Does padding change anything the model computes? It must not. We give each token a random
# vector (standing in for a model's queries, keys and values), run attention on the padded
# batch and on each sequence alone, and compare the outputs at the real positions. Two cases:
#
# - a causal decoder (GPT): with **right** padding, causality alone already hides every pad
#   from every real token (pads come after), so the padding mask changes only the outputs at
#   the pads, which the loss ignores;
# - a bidirectional encoder (BERT, chapter 14): every token sees every other, so without the
#   key mask the real tokens attend to the pads.
#
# And the loss: `cross_entropy` with `ignore_index` must give the mean over the real targets
# only.

# %%
rng = np.random.default_rng(0)
D = 16
table = rng.standard_normal((bpe.vocab_size, D))  # (V, D): a random vector per token
qkv = table[x][:, None]  # (B, 1, T, D): one head
key_mask = mask[:, None, None, :]  # (B, 1, 1, T)

err = {"causal, no padding mask": 0.0, "causal + padding mask": 0.0,
       "bidirectional + padding mask": 0.0, "bidirectional, no padding mask": 0.0}
for b, s in enumerate(seqs):
    alone = table[np.array(s)][None]  # (1, T_b, D)
    n = len(s)
    runs = {
        "causal, no padding mask": (mn.scaled_dot_product_attention(qkv, qkv, qkv, is_causal=True),
                                    mn.scaled_dot_product_attention(alone, alone, alone, is_causal=True)),
        "causal + padding mask": (mn.scaled_dot_product_attention(qkv, qkv, qkv, attn_mask=full_mask),
                                  mn.scaled_dot_product_attention(alone, alone, alone, is_causal=True)),
        "bidirectional + padding mask": (mn.scaled_dot_product_attention(qkv, qkv, qkv, attn_mask=key_mask),
                                         mn.scaled_dot_product_attention(alone, alone, alone)),
        "bidirectional, no padding mask": (mn.scaled_dot_product_attention(qkv, qkv, qkv),
                                           mn.scaled_dot_product_attention(alone, alone, alone)),
    }
    for name, (batched, single) in runs.items():
        err[name] = max(err[name], np.abs(batched[b, 0, :n] - single[0]).max())
for name, e in err.items():
    print(f"{name:32s} max |padded - alone| at real tokens: {e:.2e}")

logits = rng.standard_normal(y.shape + (bpe.vocab_size,))  # (B, T, V)
loss_padded = mn.cross_entropy(logits, y)
real = y != -100
loss_real = -np.mean(mn.log_softmax(logits)[real, y[real]])
print(f"cross-entropy over the padded batch {loss_padded:.6f}, over the real targets only {loss_real:.6f}")

# %% [markdown]
# **Measured:** with the masks the padded batch reproduces each sequence's attention outputs
# to within 1e-12 (the causal decoder even without the padding mask, as right padding comes
# last), the bidirectional encoder without the key mask is off by more than 0.1, and the
# loss with `ignore_index` equals the mean over the real targets to within 1e-12.

# %%
assert err["causal, no padding mask"] < 1e-12 and err["causal + padding mask"] < 1e-12
assert err["bidirectional + padding mask"] < 1e-12 and err["bidirectional, no padding mask"] > 0.1
assert abs(loss_padded - loss_real) < 1e-12

# %% [markdown]
# ## Exercises
#
# Graded by the classroom assignment **bpe**: `minilm assignment make bpe --out hw/` asks you
# to write `pair_counts`, `merge` and the training loop; `minilm assignment grade hw/` checks
# your merges against minilm's on the same text.
#
# 1. Train BPE on the Python documentation instead and redo the plot. Which text now
#    compresses better?
# 2. Why must merges be replayed in the order they were learned when encoding? Find a string
#    for which another order gives different ids.
# 3. Count how many of the 4096 tokens are whole words with a leading space. What does that
#    say about GPT-2's pre-splitting regex?
# 4. Left padding puts the pads first. Show that a causal decoder then needs the padding mask,
#    and what happens to a query row that may see nothing.
