"""The training loops: they learn, the twins agree, the batches are what the docs say.

- Each twin trains each model kind on the builtin corpus (a tiny preset, a few dozen steps)
  and the loss must fall well below its start (about ln V for a fresh model).
- From the same seed in float64 the NumPy and PyTorch loops see the same batches, start from
  the same weights and apply the same AdamW maths, so their loss curves agree to ~1e-10.
- On a Markov source of exactly known entropy rate H, the validation loss of a Transformer
  and of an LSTM falls towards H over successive evaluations and never below it (beyond a
  stated statistical tolerance).
- The LSTM's truncated-BPTT streams are contiguous from one window to the next; ranks'
  slices of a batch put together are the batch one process would draw.
- A real SIGINT during training stops it after the current step with a checkpoint.
- Without matplotlib the loss curve is skipped, and one line says so; the progress bar shows
  a bias-corrected moving average of the loss.
"""

from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import pytest

from minilm.presets import PRESETS, TrainArgs, get_preset
from minilm.testing import assert_close

torch = pytest.importorskip("torch")


def _train(impl):
    if impl == "numpy":
        from minilm.numpy.train import train
    else:
        from minilm.torch.train import train
    return train


@pytest.mark.parametrize("impl", ["numpy", "torch"])
@pytest.mark.parametrize("preset", ["tiny", "tiny-lstm"])
def test_loop_learns_and_writes_the_run_folder(tmp_path, impl, preset):
    printed = []
    args = get_preset(preset, impl=impl, steps=40, eval_interval=20)
    res = _train(impl)(args, tmp_path / "run", progress=False, print_fn=printed.append)
    assert len(res.losses) == 40 and res.step == 40 and not res.interrupted
    first, last = res.losses[0], float(np.mean(res.losses[-5:]))
    # A fresh model predicts ~uniformly: loss ~ ln V (V ~ 100 characters = 4.6 nats).
    assert first > 3.5, first
    assert last < first - 1.0, (first, last)
    assert math.isfinite(res.val_loss) and res.val_loss < first - 0.8
    assert res.val_perplexity == pytest.approx(math.exp(res.val_loss))
    assert res.bits_per_char == pytest.approx(res.val_loss / math.log(2))  # char level: 1 char/token
    # samples were printed at each evaluation, the last one is in the result
    assert sum("sample at step" in p for p in printed) == 2 and len(res.sample) > 10
    run = tmp_path / "run"
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "tokenizer.json", "log.jsonl", "loss.png", "checkpoint"} <= names
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.loss_plot == run / "loss.png"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [20, 40]
    assert [r["train_loss"] for r in records if "train_loss" in r] == res.losses
    config = json.loads((run / "config.json").read_text())
    assert config["args"]["steps"] == 40 and config["model"] == args.model


@pytest.mark.parametrize("preset", ["tiny", "tiny-lstm"])
def test_numpy_and_torch_loops_give_the_same_losses_in_float64(preset):
    args = get_preset(preset, steps=8, eval_interval=8, eval_iters=1, sample_tokens=0,
                      dtype="float64", weight_decay=0.1, grad_clip=0.5)  # decay and clipping active
    quiet = dict(progress=False, print_fn=lambda s: None)
    ref = _train("numpy")(args, **quiet)
    twin = _train("torch")(args, **quiet)
    assert_close(np.array(twin.losses), np.array(ref.losses), atol=1e-10, rtol=1e-10, name="losses")
    assert twin.val_loss == pytest.approx(ref.val_loss, rel=1e-10)
    assert ref.losses[-1] < ref.losses[0]  # and they did move


def test_torch_loop_is_deterministic_given_the_seed():
    args = get_preset("tiny", impl="torch", steps=6, eval_interval=6, eval_iters=1, sample_tokens=0)
    quiet = dict(progress=False, print_fn=lambda s: None)
    train = _train("torch")
    a, b = train(args, **quiet), train(args, **quiet)
    c = train(args.replace(seed=args.seed + 1), **quiet)
    assert a.losses == b.losses
    assert a.losses != c.losses


@pytest.mark.parametrize("preset", ["tiny", "tiny-lstm"])
def test_markov_source_validation_loss_falls_towards_its_entropy_rate(tmp_path, preset):
    """On text from a first-order Markov chain over 8 symbols, the validation loss of a small
    Transformer / LSTM (NumPy loop, 150 steps, evaluated every 30) falls towards the chain's
    entropy rate H and never below it.

    H is exact: MarkovSource computes it from the transition matrix P and its stationary law
    pi, H = -sum_s pi_s sum_w P[s, w] log P[s, w]. Every validation target has its full
    context (order 1: the token before it is the window's input at that position), so H is
    the floor. A loss estimated on finite held-out text still fluctuates around the model's
    true loss, so the bounds carry tolerances:

    - below H: the estimate averages n scored targets, some scored twice (random windows
      overlap), with n_eff = (sum c_i)^2 / sum c_i^2 for target i scored c_i times. The
      source's own per-token loss -log P[s, w] has variance
      sigma^2 = sum_s pi_s sum_w P log^2 P - H^2 (exact, from P and pi), so the same windows
      scored by the TRUE model fall below H by more than 4 sigma / sqrt(n_eff) only with
      probability ~3e-5 (a normal tail; successive tokens of this fast-mixing chain are only
      weakly dependent). No model beats the true one in expectation, so
      val_loss >= H - 4 sigma / sqrt(n_eff) (~0.06 nats here).
    - the sharper, paired form: on the very windows evaluated, val_loss - H_hat (H_hat: the
      true model's loss on them) is a mean of log p/q terms whose conditional mean is a KL
      divergence >= 0 and whose spread shrinks with it (variance ~ 2 KL near q = p); its
      lowest likely value, KL - 4 sqrt(2 KL / n_eff), is at least -8 / n_eff (~0.003): so
      val_loss >= H_hat - 0.01.
    - above H: after 150 steps the model must be within 0.05 nats of H_hat and 0.08 of H
      (measured: 0.021 / 0.047 Transformer, 0.027 / 0.054 LSTM; this validation sample's
      H_hat is 0.026 above H), having fallen from well above it, and no evaluation may be
      more than noise (0.01) above the one before.
    """
    from minilm.data import MarkovSource, get_batch
    from minilm.training import prepare_data

    src = MarkovSource(vocab_size=8, order=1, concentration=0.3, seed=0)
    path = tmp_path / "markov.txt"
    path.write_text(src.sample_text(60_000, np.random.default_rng(1)))
    H = src.entropy_rate  # nats per symbol
    args = get_preset(preset, impl="numpy", corpus=str(path), steps=150, eval_interval=30,
                      eval_iters=10, batch_size=16, context_length=32, sample_tokens=0,
                      lstm_bptt="random")  # the LSTM scores random windows too (from zero state)
    res = _train("numpy")(args, progress=False, print_fn=lambda s: None)
    val = np.array([r["val_loss"] for r in res.evals])  # (5,) one per evaluation

    # which validation targets estimate_loss scored: the same draws on positions 0..N-1
    data = prepare_data(args)
    ids = np.arange(len(data.val))
    rng = np.random.default_rng(args.seed + 1)  # estimate_loss's generator
    scored = np.concatenate([get_batch(ids, args.batch_size, args.context_length, rng)[1].ravel()
                             for _ in range(args.eval_iters)])  # positions of the targets
    counts = np.bincount(scored)
    n_eff = counts.sum() ** 2 / (counts ** 2).sum()
    H_hat = float(-src.log_probs(data.val)[scored - 1].mean())  # the true model on those windows
    P, pi = src.transition, src.stationary  # (V, V), (V,)
    logP = np.log(np.where(P > 0, P, 1.0))  # (V, V); 0 log 0 = 0
    sigma = math.sqrt((pi[:, None] * P * logP ** 2).sum() - H ** 2)
    tol = 4 * sigma / math.sqrt(n_eff)

    assert len(val) == 5
    assert tol < 0.1 and abs(H_hat - H) < tol  # the sample itself is typical of the source
    assert (val >= H - tol).all(), (val, H, tol)
    assert (val >= H_hat - 0.01).all(), (val, H_hat)
    assert val[0] > H + 0.15, (val, H)  # from far above ...
    assert val[-1] < H_hat + 0.05 and val[-1] < H + 0.08, (val, H_hat, H)  # ... to near
    assert (np.diff(val) < 0.01).all(), val  # falling, give or take noise
    assert val[-1] <= val.min() + 0.01, val


def test_stream_batches_are_contiguous_and_reset_at_the_wrap():
    from minilm.training import stream_batch

    data = np.arange(1000, dtype=np.int64)
    B, T = 4, 10
    L = (len(data) - 1) // B  # 249 tokens per stream -> 24 windows
    x0, y0, r0 = stream_batch(data, 0, B, T)
    x1, y1, r1 = stream_batch(data, 1, B, T)
    assert r0 and not r1
    np.testing.assert_array_equal(x0[:, 0], np.arange(B) * L)  # stream b starts at b L
    np.testing.assert_array_equal(y0, x0 + 1)
    np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)  # window 1 continues window 0
    x24, _, r24 = stream_batch(data, 24, B, T)
    assert r24
    np.testing.assert_array_equal(x24, x0)
    # ranks' rows, put together, are the one-process batch
    parts = [stream_batch(data, 5, B, T, rank, 2)[0] for rank in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), stream_batch(data, 5, B, T)[0])


def test_random_batches_split_across_ranks_like_one_process():
    from minilm.training import random_batch

    data = np.arange(500, dtype=np.int64)
    whole = random_batch(data, 6, 8, np.random.default_rng(3))[0]
    parts = [random_batch(data, 6, 8, np.random.default_rng(3), rank, 3)[0] for rank in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_sigint_stops_after_the_step_and_saves(tmp_path):
    """A real SIGINT (what Ctrl-C sends) to this process in the middle of training."""
    args = get_preset("tiny", steps=1000, eval_interval=500, sample_tokens=0)

    def ctrl_c_at_step_3(step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    res = _train("numpy")(args, tmp_path / "run", progress=False, print_fn=lambda s: None,
                          callback=ctrl_c_at_step_3)
    assert res.interrupted and res.step == 3
    from minilm.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "run").step == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_presets_are_valid_and_mirror_nanogpt():
    for name in PRESETS:
        a = get_preset(name)
        a.model_config(vocab_size=65)  # builds a valid model config
    for name, lr in (("shakespeare-char-nanogpt", 1e-3), ("shakespeare-char", 2e-3)):
        s = get_preset(name)
        assert (s.n_layer, s.n_head, s.d_model, s.context_length, s.batch_size, s.steps) == (
            4, 4, 128, 64, 12, 2000)
        assert (s.lr, s.min_lr, s.warmup_steps, s.dropout, s.beta1, s.beta2, s.weight_decay,
                s.grad_clip) == (lr, lr / 10, 100, 0.0, 0.9, 0.99, 0.1, 1.0)
        assert s.corpus == "tinyshakespeare" and s.tokenizer == "char"
    # the main job is shakespeare-char, also under the name "default"
    assert get_preset("default") == get_preset("shakespeare-char")
    assert get_preset("pydoc-char").corpus == "builtin"
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset("nope")
    with pytest.raises(ValueError, match="lr"):
        get_preset("tiny", lr=-1.0)
    with pytest.raises(ValueError, match="impl"):
        TrainArgs(impl="jax")


@pytest.mark.parametrize("preset", ["tiny", "tiny-lstm"])
def test_autocast_bf16_trains_and_keeps_float32_weights(preset):
    """The mixed-precision path (torch.autocast) on the CPU, where bf16 autocast exists: the
    loss falls, the master weights and the optimiser state stay float32."""
    from minilm.torch.train import build_model, resolve_amp, resolve_device

    args = get_preset(preset, impl="torch", amp="bf16", steps=20, eval_interval=20, sample_tokens=0)
    res = _train("torch")(args, progress=False, print_fn=lambda s: None)
    assert math.isfinite(res.val_loss) and np.mean(res.losses[-5:]) < res.losses[0] - 0.5
    assert resolve_amp(args, torch.device("cpu")) is torch.bfloat16
    assert resolve_amp(args.replace(amp="auto"), torch.device("cpu")) is None  # auto: off on CPU
    with pytest.raises(ValueError, match="fp16"):
        resolve_amp(args.replace(amp="fp16"), torch.device("cpu"))
    model = build_model(args.model_config(10), args, resolve_device("cpu"))
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_without_matplotlib_the_loss_plot_is_skipped_and_one_line_says_why(tmp_path, monkeypatch, impl):
    """A NumPy-only install has no matplotlib: the loop trains, writes everything else, says
    once (not at every evaluation) that loss.png was skipped and why, and reports no plot."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    printed = []
    args = get_preset("tiny", impl=impl, steps=4, eval_interval=2, sample_tokens=0)
    res = _train(impl)(args, tmp_path / "run", progress=False, print_fn=printed.append)
    assert res.step == 4 and len(res.evals) == 2
    skipped = [line for line in printed if "loss.png" in line]
    assert skipped == ["loss.png skipped: matplotlib is not installed (pip install matplotlib)"]
    assert res.loss_plot is None and not (tmp_path / "run" / "loss.png").exists()
    assert (tmp_path / "run" / "log.jsonl").exists()


def test_progress_bar_shows_a_bias_corrected_moving_average_of_the_loss():
    """The bar's postfix after losses 4, 2, 3 with beta = 0.9, worked out by hand:
    m_1 = 0.4, m_2 = 0.36 + 0.2 = 0.56, m_3 = 0.504 + 0.3 = 0.804;
    shown m_3 / (1 - 0.9^3) = 0.804 / 0.271 = 2.966789... (the last loss alone would be 3)."""
    from minilm.training import Reporter

    class Bar:  # what Reporter uses of tqdm
        def __init__(self):
            self.postfix = ""

        def update(self, n):
            pass

        def set_postfix_str(self, text, refresh=True):
            self.postfix = text

        def close(self):
            pass

    rep = Reporter(30, None, progress=False, active=True, print_fn=lambda s: None)
    assert Reporter.EMA_BETA == 0.9 and math.isnan(rep.running_loss)
    rep.bar = Bar()
    rep.step(1, 4.0, 1e-3)
    assert rep.running_loss == pytest.approx(4.0)  # bias correction: the first value is itself
    rep.step(2, 2.0, 1e-3)
    rep.step(3, 3.0, 1e-3)
    assert rep.running_loss == pytest.approx(0.804 / 0.271, rel=1e-12)
    assert rep.bar.postfix == "loss 2.9668 (ema)"


# ---------------------------------------------------------------------------------------------
# The whole validation split, exactly


def test_split_windows_score_every_target_once_in_order():
    from minilm.training import IGNORE_INDEX, split_windows

    data = np.arange(1, 1000, dtype=np.int64)  # token i+1 at position i: targets name positions
    seen = []
    prev = None
    for x, y in split_windows(data, 7, 16):  # (7, 16) each
        valid = y != IGNORE_INDEX
        np.testing.assert_array_equal(y[valid], x[valid] + 1)  # y is x shifted by one
        if prev is not None:  # row b continues where it stopped: an LSTM may carry its state
            cont = valid[:, 0]
            np.testing.assert_array_equal(x[cont, 0], prev[cont] + 1)
        prev = x[:, -1]
        seen.append(y[valid])
    seen = np.concatenate(seen)
    np.testing.assert_array_equal(np.sort(seen), data[1:])  # each of the N - 1 targets once


@pytest.mark.parametrize("preset", ["tiny", "tiny-lstm"])
def test_whole_split_loss_is_exact_in_both_twins(preset):
    """estimate_loss(whole_split=True) against an independent sum: the LSTM run over each of
    the B chunks in ONE forward call (carrying the state over windows is exact), the
    Transformer over each T-window of each chunk on its own; mean NLL over the N - 1 targets.
    The torch twin gives the same number from the same weights (float64)."""
    from minilm.numpy.train import build_model, estimate_loss
    from minilm.torch.train import build_model as torch_build_model
    from minilm.torch.train import estimate_loss as torch_estimate_loss
    from minilm.training import prepare_data

    args = get_preset(preset, dtype="float64", batch_size=5, context_length=16)
    data = prepare_data(args)
    val = data.val[:3001]  # 3000 targets: chunks of 600, windows of 16 (the last one partial)
    config = args.model_config(data.tokenizer.vocab_size)
    model = build_model(config, args)
    got = estimate_loss(model, val, args, whole_split=True)

    def nll(logits, targets):  # (T, V), (T,) -> sum of -log p(target)
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return -logp[np.arange(len(targets)), targets].sum()

    total = 0.0
    for chunk in np.array_split(np.arange(len(val) - 1), 5):
        x, y = val[chunk], val[chunk + 1]
        if args.model == "lstm":
            total += nll(model.forward(x[None])[0][0], y)
        else:
            for s in range(0, len(x), 16):
                total += nll(model.forward(x[None, s:s + 16])[0], y[s:s + 16])
    assert got == pytest.approx(total / (len(val) - 1), rel=1e-12)
    twin = torch_build_model(config, args)
    assert torch_estimate_loss(twin, val, args, whole_split=True) == pytest.approx(got, rel=1e-10)
    assert estimate_loss(model, val, args, whole_split=True) == got  # deterministic
    assert estimate_loss(model, val, args) != got  # the estimate is a different number


# ---------------------------------------------------------------------------------------------
# The reporter serves any objective


def test_reporter_logs_any_metrics_and_feeds_observers(tmp_path):
    from minilm.checkpoint import RunFolder
    from minilm.training import Observer, Reporter

    class Spy(Observer):
        def __init__(self):
            self.steps, self.evals, self.closed = [], [], 0

        def on_step(self, record):
            self.steps.append(record)

        def on_eval(self, record, sample, params):
            self.evals.append((record, sample, params()))

        def close(self):
            self.closed += 1

    spy, printed = Spy(), []
    run = RunFolder(tmp_path)
    rep = Reporter(4, run, progress=False, print_fn=printed.append, observers=[spy])
    rep.step(1, 2.0, 1e-3, token_accuracy=0.25)
    rep.step(2, 1.0, 1e-3, token_accuracy=0.5)
    rec = rep.evaluation(2, {"val_loss": 1.5, "mlm_accuracy": 0.375}, 1e-3, "some text",
                         params=lambda: {"w": np.ones(2)})
    rep.close()
    rep.close()
    assert [r["token_accuracy"] for r in spy.steps] == [0.25, 0.5]
    assert spy.evals[0][0] is rec and spy.evals[0][1] == "some text"
    np.testing.assert_array_equal(spy.evals[0][2]["w"], np.ones(2))
    assert spy.closed == 1
    line = next(p for p in printed if p.startswith("step 2/4"))
    assert "train loss 1.5000 | val loss 1.5000 | mlm accuracy 0.375 | lr 1.00e-03" in line, line
    log = run.read_log()
    assert log[0] == {"step": 1, "train_loss": 2.0, "lr": 1e-3, "token_accuracy": 0.25}
    assert log[2]["mlm_accuracy"] == 0.375 and log[2]["train_loss_mean"] == 1.5
    assert (tmp_path / "loss.png").exists()


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_loops_pass_observers_every_step_and_evaluation(impl):
    from minilm.training import Observer

    class Count(Observer):
        steps = evals = 0
        names: set = set()

        def on_step(self, record):
            Count.steps += 1

        def on_eval(self, record, sample, params):
            Count.evals += 1
            Count.names = set(params())

    res = _train(impl)(get_preset("tiny", impl=impl, steps=4, eval_interval=2, sample_tokens=0),
                       progress=False, print_fn=lambda s: None, observers=[Count()])
    assert (Count.steps, Count.evals) == (4, 2) and res.step == 4
    assert "tok_emb.weight" in Count.names
