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
# # 10. The LSTM language model
#
# **Learning goals**
#
# - Write the LSTM cell: its input, forget and output gates and its cell candidate, and see
#   why the additive cell update lets gradients survive many steps.
# - Read back-propagation through time (BPTT) in minilm's NumPy code: the time loop run
#   backwards, one step's gradient feeding the step before.
# - Check the NumPy LSTM against `torch.nn.LSTM` itself: same weight layout, same numbers.
# - Measure truncated BPTT: carrying the state across training windows against resetting it,
#   and what that is worth in validation loss.

# %%
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import torch

import minilm
import minilm.numpy
import minilm.torch
import minilm.training
from minilm.numpy.lstm import lstm_backward, lstm_forward
from minilm.presets import get_preset
from minilm.runs import load_run
from minilm.training import prepare_data
from minilm.tutorials import show

minilm.seed_everything(0)
torch.set_num_threads(1)  # tiny models: one thread is as fast, and robust on a busy machine

# %% [markdown]
# ## The cell
#
# A recurrent language model reads one token at a time and keeps a summary of everything
# read so far in its state. The LSTM's state is a pair: the hidden state $h_t$ (what the
# layer outputs) and the cell $c_t$ (its memory). From the input $x_t$ and the previous
# $h_{t-1}$ it computes four pre-activations, $a = W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}$,
# split in four blocks of $H$:
#
# $$i_t = \sigma(a_i), \quad f_t = \sigma(a_f), \quad g_t = \tanh(a_g), \quad o_t = \sigma(a_o),$$
#
# $$c_t = f_t \odot c_{t-1} + i_t \odot g_t, \qquad h_t = o_t \odot \tanh(c_t).$$
#
# The input gate $i$ says how much of the candidate $g$ to write, the forget gate $f$ how much
# of the old memory to keep, the output gate $o$ how much of the memory to show. The logits
# of the next token are $z_t = h_t W_{\text{head}}^\top + b$.
#
# ## Back-propagation through time
#
# Unrolled over $T$ steps the LSTM is a deep network with shared weights, and its gradient
# is the chain rule walked backwards in time. The cell's path is the important one:
#
# $$\frac{\partial \mathcal{L}}{\partial c_{t-1}} = \frac{\partial \mathcal{L}}{\partial c_t} \odot f_t
#   \quad(+\text{ the paths through } h_{t-1}),$$
#
# a product of forget gates, not of weight matrices and squashing derivatives as in a plain
# RNN ($h_t = \tanh(W h_{t-1} + U x_t)$, whose gradient shrinks by about $\|W\|\,\tanh'$ each
# step). When $f_t \approx 1$ the memory and its gradient pass through unchanged. The weight
# gradients are sums over time: $\partial \mathcal{L}/\partial W_{hh} = \sum_t (\partial \mathcal{L}/\partial a_t)^\top h_{t-1}$.
#
# minilm's NumPy cell, forward and backward (the gates are computed in place, in torch's
# order i, f, g, o):

# %%
show(minilm.numpy.lstm._step_forward, minilm.numpy.lstm._step_backward)

# %% [markdown]
# and BPTT over one layer: the loop runs over time in reverse, and the weight gradients are
# one matrix product each after it:

# %%
show(minilm.numpy.lstm.lstm_layer_backward)

# %% [markdown]
# ## Experiment 1: against `torch.nn.LSTM`
#
# minilm stores the weights exactly as `torch.nn.LSTM` does (`weight_ih_l0` is $[W_{ii}; W_{if}; W_{ig}; W_{io}]$,
# shape $(4H, C_{in})$), so PyTorch's own LSTM, cuDNN's on a GPU, can be loaded with them.
# A 2-layer LSTM, float64, a non-zero initial state, and a loss that touches every output and
# the final state:

# %%
T, B, C, H, L = 12, 3, 5, 7, 2
rng = np.random.default_rng(0)
ref = torch.nn.LSTM(C, H, L).double()
p = {k: v.detach().numpy().copy() for k, v in ref.named_parameters()}
x = rng.normal(size=(T, B, C))
h0, c0 = rng.normal(size=(L, B, H)), rng.normal(size=(L, B, H))
dy, dh_n, dc_n = rng.normal(size=(T, B, H)), rng.normal(size=(L, B, H)), rng.normal(size=(L, B, H))

# minilm: forward, then BPTT from dL/dy and dL/d(h_n, c_n)
y, (h_n, c_n), cache = lstm_forward(x, p, L, (h0, c0))
dx, grads, (dh0, dc0) = lstm_backward(dy, cache, (dh_n, dc_n))

# torch: the same loss, L = <y, dy> + <h_n, dh_n> + <c_n, dc_n>, so dL/dy = dy etc.
xt, h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
yt, (hnt, cnt) = ref(xt, (h0t, c0t))
((yt * torch.tensor(dy)).sum() + (hnt * torch.tensor(dh_n)).sum() + (cnt * torch.tensor(dc_n)).sum()).backward()

errors = {"y": np.abs(y - yt.detach().numpy()).max(),
          "h_n, c_n": max(np.abs(h_n - hnt.detach().numpy()).max(), np.abs(c_n - cnt.detach().numpy()).max()),
          "dx": np.abs(dx - xt.grad.numpy()).max(),
          "dh0, dc0": max(np.abs(dh0 - h0t.grad.numpy()).max(), np.abs(dc0 - c0t.grad.numpy()).max())}
errors.update({f"d{k}": np.abs(grads[k] - w.grad.numpy()).max() for k, w in ref.named_parameters()})
for k, v in errors.items():
    print(f"{k:16s} max abs error {v:.1e}")

# %% [markdown]
# **Measured:** outputs, final states and all twelve gradients (inputs, initial states, the
# eight weight and bias tensors) agree with PyTorch's LSTM to within 1e-12 (about 1e-15 in
# this run: float64 rounding).

# %%
assert max(errors.values()) < 1e-12, errors

# %% [markdown]
# ## Experiment 2: how far back does the gradient reach?
#
# How much does the output at the last step depend on the input $k$ steps earlier? Measure
# $\|\partial h_T / \partial x_{T-k}\|$ (through a random projection of $h_T$, averaged over
# 20 random input sequences) for a plain tanh RNN and an LSTM of the same size at PyTorch's
# default initialisation, and for the same LSTM with its forget-gate biases raised by 2, so
# that the forget gates start near $\sigma(2) \approx 0.88$ instead of $\sigma(0) = 0.5$.

# %%
def reach(cell, T=60, n=20):
    torch.manual_seed(0)
    x = torch.randn(T, n, 16, requires_grad=True)  # (T, B, C)
    out, _ = cell(x)  # (T, B, H)
    (out[-1] * torch.randn_like(out[-1])).sum().backward()
    return x.grad.norm(dim=(1, 2)).flip(0).numpy()  # index k: the input k steps before the end


torch.manual_seed(0)
g_rnn = reach(torch.nn.RNN(16, 64))
torch.manual_seed(0)
g_lstm = reach(torch.nn.LSTM(16, 64))
torch.manual_seed(0)
lstm_f = torch.nn.LSTM(16, 64)
with torch.no_grad():
    lstm_f.bias_hh_l0[minilm.numpy.lstm.gate_slices(64)["f"]] += 2.0  # open the forget gates
g_lstm_f = reach(lstm_f)
for k in (0, 10, 30):
    print(f"k = {k:2d}: RNN {g_rnn[k]:.1e}   LSTM {g_lstm[k]:.1e}   LSTM, forget bias +2 {g_lstm_f[k]:.1e}")

fig, ax = plt.subplots(figsize=(7, 4))
ax.semilogy(g_rnn, label="tanh RNN")
ax.semilogy(g_lstm, label="LSTM")
ax.semilogy(g_lstm_f, label="LSTM, forget-gate bias +2")
ax.set_xlabel("k (steps back from the last output)")
ax.set_ylabel("|d h_T / d x_(T-k)|")
ax.set_title("Gradients through time, at initialisation")
ax.legend()
plt.show()

# %% [markdown]
# **Measured:** at PyTorch's default initialisation the LSTM's gradient vanishes
# geometrically too, only more slowly than the RNN's: 30 steps back it is about 5e-7 of its
# last-step value (asserted: below 1e-4), against about 1e-8 for the RNN (asserted: the
# LSTM's ratio is more than 10 times the RNN's). Raise the forget-gate bias by 2 and the
# gradient from 30 steps back is still about 15% of the last step's (asserted: above 0.05).
#
# The forget gate is the knob, and training can turn it; the plain RNN has none. At the
# default, the curves also say why **truncating** BPTT to windows of a few dozen steps costs
# little gradient: hardly any would have arrived from further back anyway.

# %%
assert g_lstm[30] / g_lstm[0] > 10 * g_rnn[30] / g_rnn[0]  # the LSTM decays more slowly
assert g_lstm[30] / g_lstm[0] < 1e-4  # ... but still vanishes at the default init
assert g_lstm_f[30] / g_lstm_f[0] > 0.05  # open forget gates carry the gradient far

# %% [markdown]
# ## Truncated BPTT: carry the state, or reset it?
#
# A corpus is one long stream; we train on windows of $T$ tokens. Gradients stop at the
# window's first token either way. The **state's value** need not stop there:
#
# - `lstm_bptt="random"`: random windows, each started from $h = c = 0$. The model only ever
#   sees $T$ tokens of context.
# - `lstm_bptt="carry"` (the default): the training tokens are cut into $B$ contiguous
#   streams; step $t$ reads window $t$ of every stream and starts from the final state of
#   window $t-1$ (detached). The model learns to use context from long before the window.
#
# The batch layout of carry mode:

# %%
show(minilm.training.stream_batch)

# %% [markdown]
# ## Experiment 3: carry vs reset, measured
#
# Two LSTMs, identical but for `lstm_bptt`, trained with short windows ($T = 8$) for 1500
# steps by the PyTorch loop. Then **both** are evaluated **both** ways on the same
# validation tokens: streamed with the state carried (`estimate_loss` in carry mode) and on
# windows from a zero state.

# %%
base = get_preset("tiny-lstm", impl="torch", device="cpu", context_length=8, d_embed=32,
                  d_hidden=96, batch_size=32, steps=1500, lr=1e-2, min_lr=1e-3, warmup_steps=20,
                  eval_interval=1500, eval_iters=40, sample_tokens=0)
val = prepare_data(base).val
quiet = dict(progress=False, print_fn=lambda s: None)
results = {}
for mode in ("carry", "random"):
    with tempfile.TemporaryDirectory() as out:
        run = minilm.torch.train.train(base.replace(lstm_bptt=mode), out, **quiet)
        model, _, _ = load_run(out)
    results[mode] = {ev: minilm.torch.train.estimate_loss(model, val, base.replace(lstm_bptt=ev))
                     for ev in ("carry", "random")}
    print(f"trained with {mode:6s} ({run.seconds:4.1f} s): val loss, state carried "
          f"{results[mode]['carry']:.3f}, from zero state {results[mode]['random']:.3f}")

# %%
fig, ax = plt.subplots(figsize=(6, 4))
w = 0.35
for j, ev in enumerate(("carry", "random")):
    ax.bar(np.arange(2) + (j - 0.5) * w, [results[m][ev] for m in ("carry", "random")], w,
           label=f"evaluated: {'state carried' if ev == 'carry' else 'zero state per window'}")
ax.set_xticks(range(2), ["trained: carry", "trained: random (reset)"])
ax.set_ylabel("validation loss (nats / char)")
ax.set_ylim(1.5, None)
ax.legend()
plt.show()

# %% [markdown]
# Read the four bars in three steps (numbers from this run on 2 CPU cores; seeded, so yours
# agree to rounding).
#
# **Measured:** trained with 8-token windows, the LSTM that carries its state beats the one
# that resets it by about 0.19 nats per character (asserted: more than 0.1), each trained and
# evaluated its own way.
#
# 1. **Each trained and evaluated its own way** (what `train` itself reports as `val_loss`):
#    carried state 1.61 nats/char, reset 1.80. Carrying the state is worth about 0.19 nats
#    per character here (asserted: more than 0.1).
# 2. **Most of that comes from the context at evaluation.** The reset-trained model, which
#    never saw more than 8 tokens, still improves when its state is carried at evaluation
#    (1.64 instead of 1.80): the recurrence it learned does not know where windows end.
# 3. **Training with the carried state adds the rest** (1.61 against 1.64, asserted: better
#    by more than 0.01): only that model learned to rely on memory from before its window.
#    The flip side: started from a zero state it does badly (2.11), because in training it
#    almost never starts from zero.
#
# With longer windows (exercise 3) the gap shrinks: an 8-token window is a very short memory.

# %%
gain = results["random"]["random"] - results["carry"]["carry"]
assert gain > 0.1, results
assert results["random"]["carry"] < results["random"]["random"] - 0.05, results  # context helps at eval
assert results["carry"]["carry"] < results["random"]["carry"] - 0.01, results  # and in training
assert results["carry"]["random"] > results["carry"]["carry"] + 0.2, results  # relies on its state

# %% [markdown]
# ## Exercises
#
# 1. Write `_step_backward` yourself from the cell equations; check it against
#    `torch.nn.LSTMCell` with the same loss trick as Experiment 1.
# 2. Load the carry-trained model of Experiment 3 (its `lstm.*` weights go straight into a
#    `torch.nn.LSTM`) and measure its reach as in Experiment 2. Did training open the forget
#    gates?
# 3. Repeat Experiment 3 with $T = 32$ and $T = 64$. How does the gain from carrying the state
#    change with the window length, and why?
# 4. `loss_and_grads` treats the carried-in state as a constant. What would it take to
#    back-propagate into the previous window as well, and what would it cost?
#
# The classroom assignment **lstm** grades exercise 1 (and more):
# `minilm assignment make lstm --out hw/`.
