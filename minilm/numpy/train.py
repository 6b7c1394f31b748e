"""The NumPy training loop: AdamW, warm-up + cosine schedule, clipping, evaluation, checkpoints.

One step, in the notation of ``minilm.numpy.optim``::

    lr_t        = cosine_schedule(t, lr, min_lr, warmup_steps, steps)
    x, y        = batch(t)                               # (B, T) int64 each, y = x shifted by one
    loss, g     = model.loss_and_grads(x, y)             # mean cross-entropy in nats, grads
    g          <- g * min(1, clip / ||g||_2)             # global-norm clipping
    theta      <- AdamW(theta, g, lr_t)                  # decay only on >= 2-D weights

Every ``eval_interval`` steps (and at the end) the loop estimates the validation loss,
reports perplexity exp(loss) and bits per character (loss / ln 2 / chars per token), prints a
sample, appends to ``log.jsonl``, redraws ``loss.png`` and writes ``checkpoint.npz``.

Batches. The Transformer trains on random windows drawn from an explicit
``np.random.Generator`` (``minilm.data.get_batch``). The LSTM does truncated back-propagation
through time with ``lstm_bptt="carry"`` (the default): the training tokens are cut into B
contiguous streams, step t reads window t of every stream, and the final (h, c) of one window
is the initial state of the next (gradients stop at the window edge; the state is reset to
zeros when the streams wrap around). ``lstm_bptt="random"`` draws random windows and starts
each from a zero state, like the Transformer. Validation of an LSTM in carry mode streams
through the start of the validation tokens the same way.

Everything random comes from the seed: the weights (``seed``), the batch generator
(``np.random.default_rng(seed)``, saved in the checkpoint as its bit-generator state), the
validation windows (a fresh ``default_rng(seed + 1)`` at every evaluation, so evaluations
are comparable) and the printed samples (``seed``). So a run stopped at step k and resumed
gives bit-identical losses to one that never stopped.

The framework-free helpers here (data, batches, Ctrl-C handling, reporting) are shared by
the PyTorch twin ``minilm.torch.train``, so both loops see the same batches.

Deliberately left out: dropout (``minilm.numpy`` models have none), mixed precision,
gradient accumulation, distributed training (see the PyTorch twin).
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from minilm.checkpoint import (
    CheckpointError,
    RunFolder,
    load_checkpoint,
    plot_losses,
    plotting_problem,
    save_checkpoint,
    write_json,
)
from minilm.presets import TrainArgs

__all__ = ["train", "TrainResult", "estimate_loss", "prepare_data", "Data", "RESUMABLE_CHANGES"]

LN2 = math.log(2.0)

# TrainArgs fields a resumed run may change; any other difference is an error.
RESUMABLE_CHANGES = {"steps", "eval_interval", "eval_iters", "sample_tokens", "device", "threads",
                     "amp"}


# ---------------------------------------------------------------------------------------------
# Shared, framework-free helpers (also used by minilm.torch.train)


@dataclass
class TrainResult:
    """What ``train`` returns."""

    out: Path | None  # run folder (None when nothing was written)
    step: int  # optimiser steps completed in total
    first_step: int  # the step this call started from (> 0 after a resume)
    losses: list[float]  # training loss of every step this call ran
    val_loss: float  # nats per token, last evaluation
    val_perplexity: float  # exp(val_loss)
    bits_per_char: float  # val_loss / ln 2 / chars per token
    sample: str  # the last printed sample
    interrupted: bool = False  # stopped by Ctrl-C (a checkpoint was saved)
    checkpoint: Path | None = None  # the last checkpoint written
    loss_plot: Path | None = None  # loss.png, if drawn (None: no run folder, or no matplotlib)
    seconds: float = 0.0  # wall time of this call
    evals: list[dict[str, Any]] = field(default_factory=list)  # every evaluation record


@dataclass
class Data:
    """A tokenized corpus, split in two."""

    tokenizer: Any
    train: np.ndarray  # (N_train,) int64 token ids
    val: np.ndarray  # (N_val,) int64 token ids
    chars_per_token: float  # characters of validation text per validation token


def make_tokenizer(args: TrainArgs, text: str):
    from minilm.data import BPETokenizer, CharTokenizer

    if args.tokenizer == "char":
        return CharTokenizer.train(text)
    return BPETokenizer.train(text, args.vocab_size)


def prepare_data(args: TrainArgs, tokenizer: Any = None, corpus: str | None = None) -> Data:
    """Load ``args.corpus`` (or ``corpus``), train the tokenizer unless given, split the ids.

    The last ``val_fraction`` of the token stream is the validation set.
    """
    from minilm.data import load_corpus, train_val_split

    name = corpus or args.corpus
    text = load_corpus(name)
    if tokenizer is None:
        tokenizer = make_tokenizer(args, text)
    try:
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)  # (N,)
    except ValueError as e:  # a char tokenizer (from a checkpoint) missing a character
        raise ValueError(f"corpus {name!r} cannot be encoded with this tokenizer: {e}") from None
    need = args.context_length + 2
    if len(ids) * args.val_fraction < need + 1:
        raise ValueError(
            f"corpus {name!r} is too small: {len(ids)} tokens, and its "
            f"validation part ({args.val_fraction:g} of it) needs more than context_length + 1 = "
            f"{args.context_length + 1}")
    train_ids, val_ids = train_val_split(ids, args.val_fraction)  # (N_train,), (N_val,)
    chars_per_token = len(tokenizer.decode(val_ids.tolist())) / len(val_ids)
    return Data(tokenizer, train_ids, val_ids, chars_per_token)


def random_batch(data: np.ndarray, batch_size: int, block_size: int, rng: np.random.Generator,
                 rank: int = 0, world_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Random windows for rank ``rank``: its rows of ONE batch of ``batch_size`` rows.

    Every rank draws the whole batch from an identical generator and keeps its
    ``batch_size / world_size`` rows, so W ranks together see exactly the batch one process
    would. x, y: (B / W, T) int64, y = x shifted by one.
    """
    from minilm.data import get_batch

    x, y = get_batch(data, batch_size, block_size, rng)  # (B, T), (B, T)
    b = batch_size // world_size
    return x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b]


def stream_batch(data: np.ndarray, step: int, batch_size: int, block_size: int,
                 rank: int = 0, world_size: int = 1) -> tuple[np.ndarray, np.ndarray, bool]:
    """Window ``step`` of ``batch_size`` contiguous streams (truncated BPTT with carried state).

    The tokens are cut into B streams of L = (N - 1) // B tokens; window w = step mod
    (L // T) of stream b is tokens [b L + w T, b L + w T + T). Returns this rank's rows
    x, y: (B / W, T) and ``reset``: True when w == 0 (the carried state must start from 0).
    """
    L = (len(data) - 1) // batch_size
    n_windows = L // block_size
    if n_windows < 1:
        raise ValueError(
            f"{len(data)} training tokens are too few for {batch_size} streams of "
            f"context_length={block_size}")
    w = step % n_windows
    b = batch_size // world_size
    streams = np.arange(rank * b, (rank + 1) * b)  # (B/W,)
    # offsets[b, t] = b L + w T + t
    offsets = (streams * L + w * block_size)[:, None] + np.arange(block_size)[None, :]  # (B/W, T)
    return data[offsets], data[offsets + 1], w == 0


def stream_windows(data: np.ndarray, batch_size: int, block_size: int, max_windows: int) -> tuple[int, int]:
    """(streams, windows) for streaming validation: at most ``batch_size`` streams."""
    streams = max(1, min(batch_size, (len(data) - 1) // block_size))
    windows = max(1, min(max_windows, ((len(data) - 1) // streams) // block_size))
    return streams, windows


def metrics(val_loss: float, chars_per_token: float) -> dict[str, float]:
    """perplexity = exp(loss); bits/token = loss / ln 2; bits/char = bits/token / chars/token."""
    return {
        "val_loss": val_loss,
        "val_perplexity": math.exp(min(val_loss, 700.0)),
        "val_bits_per_token": val_loss / LN2,
        "val_bits_per_char": val_loss / LN2 / chars_per_token,
    }


class StopFlag:
    """Turns the first Ctrl-C into a request to stop after the current step.

    The loop checks ``requested`` before each step, saves a checkpoint and returns; a second
    Ctrl-C raises ``ForcedStop`` at once (nothing saved: the step may be half done).
    Outside the main thread signals cannot be caught and Ctrl-C is an ordinary
    KeyboardInterrupt.
    """

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise ForcedStop()
        self.requested = True

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class ForcedStop(KeyboardInterrupt):
    """A second Ctrl-C: stop immediately without saving."""


class Reporter:
    """Progress bar, printed evaluations and samples, ``log.jsonl`` and ``loss.png``.

    Only the process with ``active=True`` (rank 0) prints or writes anything. The bar shows
    the running loss: an exponential moving average of the step losses, bias-corrected so
    the first steps are not pulled towards 0 (as in Adam)::

        m_n = beta m_{n-1} + (1 - beta) loss_n,   m_0 = 0,   shown: m_n / (1 - beta^n)

    with beta = ``EMA_BETA`` = 0.9: a mean over roughly the last 1 / (1 - beta) = 10 steps,
    steadier than one step's loss. Without matplotlib, ``loss.png`` is skipped and one line
    says so.
    """

    EMA_BETA = 0.9

    def __init__(self, args: TrainArgs, run: RunFolder | None, start: int, progress: bool,
                 active: bool, print_fn: Callable[[str], None] | None) -> None:
        self.args, self.run, self.active = args, run, active
        self.pending: list[dict[str, Any]] = []
        self.records: list[dict[str, Any]] = []
        self.window: list[float] = []
        self._ema, self._n = 0.0, 0  # m_n and n of the running loss
        self.loss_plot: Path | None = None  # loss.png once drawn
        self._plot_problem: str | None = None  # why loss.png cannot be drawn ('' if it can)
        self.t0 = time.perf_counter()
        self.bar = None
        if active and progress and sys.stderr.isatty():  # a bar in a log file is noise
            from tqdm.auto import tqdm

            self.bar = tqdm(total=args.steps, initial=start, desc="train", unit="step",
                            dynamic_ncols=True, leave=False)
        self._print = print_fn

    def say(self, text: str) -> None:
        if not self.active:
            return
        if self._print is not None:
            self._print(text)
        elif self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    @property
    def running_loss(self) -> float:
        """The bias-corrected moving average m_n / (1 - beta^n) (nan before the first step)."""
        if self._n == 0:
            return float("nan")
        return self._ema / (1.0 - self.EMA_BETA ** self._n)

    def step(self, done: int, loss: float, lr: float) -> None:
        self.window.append(loss)
        # m_n = beta m_{n-1} + (1 - beta) loss_n
        self._ema = self.EMA_BETA * self._ema + (1.0 - self.EMA_BETA) * loss
        self._n += 1
        if not self.active:
            return
        self.pending.append({"step": done, "train_loss": loss, "lr": lr})
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {self.running_loss:.4f} (ema)", refresh=False)

    def evaluation(self, done: int, m: dict[str, float], lr: float, sample: str) -> dict[str, Any]:
        train_loss = float(np.mean(self.window)) if self.window else float("nan")
        self.window = []
        rec = {"step": done, **m, "train_loss_mean": train_loss,
               "time": round(time.perf_counter() - self.t0, 3)}
        self.records.append(rec)
        if not self.active:
            return rec
        self.say(f"step {done}/{self.args.steps} | train loss {train_loss:.4f} | val loss "
                 f"{m['val_loss']:.4f} | val ppl {m['val_perplexity']:.2f} | val bits/char "
                 f"{m['val_bits_per_char']:.3f} | lr {lr:.2e} | {rec['time']:.1f}s")
        if sample:
            self.say(f"--- sample at step {done} ---\n{sample}\n---")
        self.pending.append(rec)
        self.flush()
        return rec

    def flush(self) -> None:
        if not self.active or self.run is None:
            self.pending = []
            return
        self.run.append_log(self.pending)
        self.pending = []
        if self._plot_problem is None:
            self._plot_problem = plotting_problem()
            if self._plot_problem:
                self.say(f"{self.run.loss_plot.name} skipped: {self._plot_problem}")
        if self._plot_problem:
            return
        title = f"{self.args.model} ({self.args.impl}) on {Path(self.args.corpus).name}"
        self.loss_plot = plot_losses(self.run.read_log(), self.run.loss_plot, title=title)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def check_resume(ckpt_args: dict[str, Any], args: TrainArgs, path: Path) -> None:
    """A resumed run may change only ``RESUMABLE_CHANGES``; anything else is an error."""
    mine = args.to_dict()
    diff = sorted(k for k in set(ckpt_args) | set(mine)
                  if k not in RESUMABLE_CHANGES and ckpt_args.get(k) != mine.get(k))
    if diff:
        detail = ", ".join(f"{k}: {ckpt_args.get(k)!r} -> {mine.get(k)!r}" for k in diff)
        raise CheckpointError(f"{path}: cannot resume with different settings ({detail})")


def checkpoint_meta(args: TrainArgs, framework: str, config: Any, tokenizer: Any, step: int,
                    rng: np.random.Generator, chars_per_token: float) -> dict[str, Any]:
    """The JSON half of a checkpoint (see ``minilm.checkpoint``)."""
    return {
        "framework": framework,
        "model": args.model,
        "config": config.to_dict(),
        "args": args.to_dict(),
        "step": step,
        "tokenizer": tokenizer.to_dict(),  # the checkpoint is complete on its own
        "chars_per_token": chars_per_token,
        "numpy_rng": rng.bit_generator.state,  # JSON-able dict of ints
    }


def tokenizer_from_meta(meta: dict[str, Any], path: Path):
    """Rebuild the tokenizer stored in a checkpoint's JSON."""
    from minilm.data import tokenizer_from_dict

    if "tokenizer" not in meta:
        raise CheckpointError(f"{path}: holds no tokenizer")
    try:
        return tokenizer_from_dict(meta["tokenizer"], source=str(path))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its tokenizer cannot be read ({e})") from None


def sample_prompt(data: Data) -> np.ndarray:
    """The prompt for printed samples: the first validation token, (1, 1)."""
    return data.val[:1][None, :]


# ---------------------------------------------------------------------------------------------
# The NumPy model, evaluation and loop


def build_model(config: Any, args: TrainArgs):
    if args.model == "transformer":
        from minilm.numpy.transformer import TransformerLM as Model
    else:
        from minilm.numpy.lstm import LSTMLM as Model
    return Model(config, seed=args.seed, dtype=np.dtype(args.dtype).type)


def _forward_logits(model: Any, x: np.ndarray, state: Any = None) -> tuple[np.ndarray, Any]:
    out = model.forward(x, state=state) if state is not None else model.forward(x)
    if isinstance(out, tuple):  # the LSTM returns (logits, state)
        return out
    return out, None


def estimate_loss(model: Any, val: np.ndarray, args: TrainArgs, eval_iters: int | None = None) -> float:
    """Mean validation cross-entropy in nats per token.

    Transformer (and LSTM with ``lstm_bptt="random"``): ``eval_iters`` batches of random
    windows from a fresh ``default_rng(seed + 1)``. LSTM in carry mode: B streams through the
    start of ``val``, ``eval_iters`` consecutive windows, state carried.
    """
    from minilm.numpy.functional import cross_entropy

    n = eval_iters or args.eval_iters
    B, T = args.batch_size, args.context_length
    losses = []
    if args.model == "lstm" and args.lstm_bptt == "carry":
        streams, windows = stream_windows(val, B, T, n)
        L = (len(val) - 1) // streams
        state = None
        for w in range(windows):
            offsets = (np.arange(streams) * L + w * T)[:, None] + np.arange(T)[None, :]  # (B, T)
            logits, state = _forward_logits(model, val[offsets], state)  # (B, T, V)
            losses.append(float(cross_entropy(logits, val[offsets + 1])))
        return float(np.mean(losses))
    rng = np.random.default_rng(args.seed + 1)
    for _ in range(n):
        x, y = random_batch(val, B, T, rng)  # (B, T) each
        logits, _ = _forward_logits(model, x)  # (B, T, V)
        losses.append(float(cross_entropy(logits, y)))
    return float(np.mean(losses))


def sample(model: Any, data: Data, args: TrainArgs, n_tokens: int | None = None) -> str:
    """A sample of ``sample_tokens`` tokens (temperature 0.8, seed ``args.seed``)."""
    from minilm.numpy.generate import generate

    n = args.sample_tokens if n_tokens is None else n_tokens
    if n <= 0:
        return ""
    idx = generate(model, sample_prompt(data), n, temperature=0.8, seed=args.seed)  # (1, 1 + n)
    return data.tokenizer.decode(np.asarray(idx)[0].tolist())


def _lstm_loss_and_grads(model: Any, x: np.ndarray, y: np.ndarray, state: Any):
    """(loss, grads, final state) of one BPTT window starting from ``state``."""
    return model.loss_and_grads(x, y, state=state, return_state=True)


def train(args: TrainArgs, out: str | Path | None = None, *, resume: bool = False,
          progress: bool = True, callback: Callable[[int, float], None] | None = None,
          print_fn: Callable[[str], None] | None = None) -> TrainResult:
    """Train a NumPy model as ``args`` says; write the run folder ``out`` (if given).

    ``resume=True`` continues from ``out``'s checkpoint (only ``RESUMABLE_CHANGES`` may
    differ from the args it was started with). ``callback(step, loss)`` runs after every
    step. Ctrl-C stops after the current step, saves a checkpoint and returns with
    ``interrupted=True``.
    """
    from minilm.numpy.optim import AdamW, clip_grad_norm, cosine_schedule

    if args.impl != "numpy":
        args = args.replace(impl="numpy")
    run = RunFolder(out) if out is not None else None
    ckpt = None
    if resume:
        if run is None:
            raise ValueError("resume=True needs the run folder `out`")
        ckpt = load_checkpoint(run.root)
        if ckpt.framework != "numpy":
            raise CheckpointError(f"{ckpt.path}: written by the {ckpt.framework} loop; resume it "
                                  f"with --impl {ckpt.framework}")
        check_resume(ckpt.meta["args"], args, ckpt.path)

    # --- data, model, optimiser ---
    tokenizer = tokenizer_from_meta(ckpt.meta, ckpt.path) if ckpt else None
    data = prepare_data(args, tokenizer)
    config = args.model_config(data.tokenizer.vocab_size)
    model = build_model(config, args)
    # weight decay on matrices (>= 2-D: embeddings, linear weights) only, as in nanoGPT
    decay = {k: v for k, v in model.params.items() if v.ndim >= 2}
    no_decay = {k: v for k, v in model.params.items() if v.ndim < 2}
    optimizer = AdamW([{"params": decay, "weight_decay": args.weight_decay},
                       {"params": no_decay, "weight_decay": 0.0}],
                      lr=args.lr, betas=(args.beta1, args.beta2), eps=1e-8,
                      weight_decay=args.weight_decay)
    rng = np.random.default_rng(args.seed)  # the batch sampler's generator
    state = None  # LSTM state carried between windows, (h, c) each (n_layer, B, d_hidden)
    start = 0
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt.state["model"])
            optimizer.load_state_dict(ckpt.state["optim"])
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{ckpt.path}: does not match the model ({e})") from None
        rng.bit_generator.state = ckpt.meta["numpy_rng"]
        if ckpt.state.get("lstm_state") is not None:
            state = tuple(np.asarray(s) for s in ckpt.state["lstm_state"])
        start = ckpt.step
    if run is not None:
        run.make()
        write_json(run.config, {"model": args.model, "config": config.to_dict(), "args": args.to_dict()})
        data.tokenizer.save(str(run.tokenizer))
        if resume:
            run.truncate_log(start)
        elif run.log.exists():
            run.log.unlink()

    def save(done: int) -> Path | None:
        if run is None:
            return None
        meta = checkpoint_meta(args, "numpy", config, data.tokenizer, done, rng, data.chars_per_token)
        tree = {"model": model.state_dict(), "optim": optimizer.state_dict(),
                "lstm_state": list(state) if state is not None else None}
        return save_checkpoint(run.checkpoint("numpy"), meta, tree)

    # --- the loop ---
    rep = Reporter(args, run, start, progress, active=True, print_fn=print_fn)
    losses: list[float] = []
    result = TrainResult(out=run.root if run else None, step=start, first_step=start, losses=losses,
                         val_loss=float("nan"), val_perplexity=float("nan"),
                         bits_per_char=float("nan"), sample="")
    t0 = time.perf_counter()
    done = start
    lr = cosine_schedule(start, args.lr, args.min_lr, args.warmup_steps, args.steps)
    try:
        with StopFlag() as stop:
            for step in range(start, args.steps):
                if stop.requested:
                    raise KeyboardInterrupt
                lr = cosine_schedule(step, args.lr, args.min_lr, args.warmup_steps, args.steps)
                optimizer.lr = lr
                if args.model == "lstm" and args.lstm_bptt == "carry":
                    x, y, reset = stream_batch(data.train, step, args.batch_size, args.context_length)
                    if reset:
                        state = None
                    loss, grads, state = _lstm_loss_and_grads(model, x, y, state)
                else:
                    x, y = random_batch(data.train, args.batch_size, args.context_length, rng)
                    loss, grads = model.loss_and_grads(x, y)  # LSTM: each window from zero state
                if args.grad_clip > 0:
                    # g <- g * min(1, clip / ||g||)
                    clip_grad_norm(grads, args.grad_clip)
                optimizer.step(grads)
                done = step + 1
                loss = float(loss)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss} at step {done}; "
                                             f"try a lower --lr")
                losses.append(loss)
                rep.step(done, loss, lr)
                if callback is not None:
                    callback(done, loss)
                if done % args.eval_interval == 0 or done == args.steps:
                    _evaluate(model, data, args, rep, done, lr, result)
                    result.checkpoint = save(done)
    except ForcedStop:
        rep.close()
        raise
    except KeyboardInterrupt:
        rep.flush()
        rep.close()
        result.checkpoint = save(done)
        result.interrupted = True
    finally:
        rep.close()
    if not result.interrupted and not rep.records:  # nothing left to train: report anyway
        _evaluate(model, data, args, rep, done, lr, result)
    result.step = done
    result.seconds = time.perf_counter() - t0
    result.evals = rep.records
    result.loss_plot = rep.loss_plot
    return result


def _evaluate(model: Any, data: Data, args: TrainArgs, rep: Reporter, done: int, lr: float,
              result: TrainResult) -> None:
    m = metrics(estimate_loss(model, data.val, args), data.chars_per_token)
    text = sample(model, data, args)
    rep.evaluation(done, m, lr, text)
    result.val_loss = m["val_loss"]
    result.val_perplexity = m["val_perplexity"]
    result.bits_per_char = m["val_bits_per_char"]
    result.sample = text
