"""What every training loop shares, free of any framework: data, batches, run folders,
resume checks, Ctrl-C, progress and logs.

The NumPy loop (``minilm.numpy.train``) and its PyTorch twin (``minilm.torch.train``) import
all of this, so both see the same batches and leave the same run folder; a loop for another
objective (an encoder's masked-LM pre-training, a classifier's fine-tuning) reuses the same
pieces with its own batches, loss and model:

| piece | what it does |
| --- | --- |
| ``open_run(out, resume=, overwrite=)`` | the run folder; refuses one that holds a run unless told |
| ``resume_checkpoint(run, args, framework)`` | the checkpoint to continue from, checked |
| ``run_meta(...)`` | the JSON half of a checkpoint (framework, args, step, RNG state, ...) |
| ``StopFlag``, ``ForcedStop`` | first Ctrl-C: stop after the step, checkpoint; second: now |
| ``Reporter`` | progress bar or plain lines, evaluations, ``log.jsonl``, ``loss.png``, observers |
| ``Observer`` | a hook on every step and evaluation (e.g. a TensorBoard writer) |
| ``TrainResult`` | what a loop returns |
| ``prepare_data``, ``random_batch``, ``stream_batch``, ``split_windows`` | a language model's data |

Everything random comes from the seed: the batch generator is ``np.random.default_rng(seed)``
(saved in the checkpoint as its bit-generator state), the validation windows come from a fresh
``default_rng(seed + 1)`` at every evaluation, so evaluations are comparable.

Deliberately left out: the model, the loss and the optimiser (they are the loops' own).
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from minilm.checkpoint import (
    Checkpoint,
    CheckpointError,
    RunFolder,
    load_checkpoint,
    plot_losses,
    plotting_problem,
    write_json,
)
from minilm.data import BPETokenizer, CharTokenizer, get_batch, load_corpus, tokenizer_from_dict, train_val_split
from minilm.presets import TrainArgs

__all__ = [
    "TrainResult", "Data", "prepare_data", "make_tokenizer", "random_batch", "stream_batch",
    "stream_windows", "split_windows", "IGNORE_INDEX", "lm_metrics", "eval_description",
    "StopFlag", "ForcedStop", "Observer", "Reporter", "open_run", "resume_checkpoint",
    "check_resume", "RESUMABLE_CHANGES", "run_meta", "tokenizer_from_meta", "sample_prompt",
    "format_duration", "write_run_files", "describe_run",
]

LN2 = math.log(2.0)
IGNORE_INDEX = -100  # targets that are not scored (padding), as in cross_entropy

# TrainArgs fields a resumed run may change; any other difference is an error.
RESUMABLE_CHANGES = {"steps", "eval_interval", "eval_iters", "sample_tokens", "device", "threads",
                     "amp"}


@dataclass
class TrainResult:
    """What a training loop returns."""

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
    val_over: str = ""  # what the last validation loss averaged over, in words


# ---------------------------------------------------------------------------------------------
# A language model's data and batches


@dataclass
class Data:
    """A tokenized corpus, split in two."""

    tokenizer: Any
    train: np.ndarray  # (N_train,) int64 token ids
    val: np.ndarray  # (N_val,) int64 token ids
    chars_per_token: float  # characters of validation text per validation token


def make_tokenizer(args: TrainArgs, text: str):
    if args.tokenizer == "char":
        return CharTokenizer.train(text)
    return BPETokenizer.train(text, args.vocab_size)


def prepare_data(args: TrainArgs, tokenizer: Any = None, corpus: str | None = None) -> Data:
    """Load ``args.corpus`` (or ``corpus``), train the tokenizer unless given, split the ids.

    The last ``val_fraction`` of the token stream is the validation set.
    """
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


def split_windows(data: np.ndarray, batch_size: int, block_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every target of ``data`` exactly once, in order: the whole split, for an exact loss.

    The N - 1 targets are cut into B contiguous chunks (``np.array_split``: lengths differ by
    at most one); window w holds tokens [w T, w T + T) of every chunk. Row b of consecutive
    windows continues the same text, so an LSTM carries its state from one window to the next;
    a Transformer scores each window on its own. Past a chunk's end, x is 0 and y is
    ``IGNORE_INDEX`` (not scored). x, y: (B', T) int64 with B' = min(B, N - 1).
    """
    positions = np.array_split(np.arange(len(data) - 1), min(batch_size, len(data) - 1))
    length = len(positions[0])  # the longest chunk
    starts = np.array([p[0] for p in positions])  # (B',)
    ends = np.array([p[-1] + 1 for p in positions])  # (B',)
    for w in range(0, length, block_size):
        offsets = starts[:, None] + w + np.arange(block_size)[None, :]  # (B', T)
        valid = offsets < ends[:, None]  # (B', T)
        safe = np.where(valid, offsets, 0)
        x = np.where(valid, data[safe], 0)
        y = np.where(valid, data[safe + 1], IGNORE_INDEX)
        yield x, y


def sample_prompt(data: Data) -> np.ndarray:
    """The prompt for printed samples: the first validation token, (1, 1)."""
    return data.val[:1][None, :]


def lm_metrics(val_loss: float, chars_per_token: float) -> dict[str, float]:
    """perplexity = exp(loss); bits/token = loss / ln 2; bits/char = bits/token / chars/token."""
    return {
        "val_loss": val_loss,
        "val_perplexity": math.exp(min(val_loss, 700.0)),
        "val_bits_per_token": val_loss / LN2,
        "val_bits_per_char": val_loss / LN2 / chars_per_token,
    }


def eval_description(args: TrainArgs, n_val: int, whole_split: bool = False, eval_iters: int | None = None) -> str:
    """What a validation loss of ``estimate_loss`` averaged over, in words."""
    n = eval_iters or args.eval_iters
    B, T = args.batch_size, args.context_length
    if whole_split:
        return f"over {n_val - 1:,} tokens (whole split)"
    if args.model == "lstm" and args.lstm_bptt == "carry":
        streams, windows = stream_windows(np.empty(n_val), B, T, n)
        return f"over the first {windows} windows of {streams}x{T} (state carried)"
    return f"over {n} random batches of {B}x{T}"


# ---------------------------------------------------------------------------------------------
# Run folders, checkpoints, resuming


def open_run(out: str | Path | None, *, resume: bool = False, overwrite: bool = False) -> RunFolder | None:
    """The run folder ``out`` (None: no files), checked before anything is built.

    A folder that already holds a run is refused unless ``resume`` (continue it) or
    ``overwrite`` (replace it: the loop calls ``run.clear()`` when it starts writing).
    """
    if out is None:
        if resume:
            raise ValueError("resume=True needs the run folder `out`")
        return None
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: give one of them")
    run = RunFolder(out)
    if not resume and not overwrite and run.holds_run():
        raise ValueError(f"{run.root} already holds a run: continue it with --resume, or replace "
                         f"it with --overwrite")
    return run


def resume_checkpoint(run: RunFolder, args: Any, framework: str,
                      resumable: set[str] = RESUMABLE_CHANGES) -> Checkpoint:
    """The checkpoint in ``run``, checked: written by ``framework``'s loop, and ``args`` (a
    dataclass with ``to_dict()``, or a dict) differ from its ``meta["args"]`` only in
    ``resumable`` fields."""
    ckpt = load_checkpoint(run.root)
    if ckpt.framework != framework:
        raise CheckpointError(f"{ckpt.path}: written by the {ckpt.framework} loop; resume it "
                              f"with --impl {ckpt.framework}")
    check_resume(ckpt.meta["args"], args, ckpt.path, resumable)
    return ckpt


def check_resume(ckpt_args: dict[str, Any], args: Any, path: Path,
                 resumable: set[str] = RESUMABLE_CHANGES) -> None:
    """A resumed run may change only ``resumable`` fields; any other difference is an error."""
    mine = args if isinstance(args, dict) else args.to_dict()
    diff = sorted(k for k in set(ckpt_args) | set(mine)
                  if k not in resumable and ckpt_args.get(k) != mine.get(k))
    if diff:
        detail = ", ".join(f"{k}: {ckpt_args.get(k)!r} -> {mine.get(k)!r}" for k in diff)
        raise CheckpointError(f"{path}: cannot resume with different settings ({detail})")


def run_meta(args: Any, framework: str, config: Any, tokenizer: Any, step: int,
             rng: np.random.Generator, **extra: Any) -> dict[str, Any]:
    """The JSON half of a checkpoint (``minilm.checkpoint``): enough to rebuild and resume.

    ``args`` and ``config`` are dataclasses with ``to_dict()`` (or plain dicts); ``extra``
    adds anything else (``chars_per_token``, ``model``, ...).
    """
    as_dict = (lambda x: x if isinstance(x, dict) else x.to_dict())
    meta = {
        "framework": framework,
        "config": as_dict(config),
        "args": as_dict(args),
        "step": step,
        "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
        "numpy_rng": rng.bit_generator.state,  # JSON-able dict of ints
    }
    meta.update(extra)
    return meta


def tokenizer_from_meta(meta: dict[str, Any], path: Path):
    """Rebuild the tokenizer stored in a checkpoint's JSON."""
    if not meta.get("tokenizer"):
        raise CheckpointError(f"{path}: holds no tokenizer")
    try:
        return tokenizer_from_dict(meta["tokenizer"], source=str(path))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its tokenizer cannot be read ({e})") from None


# ---------------------------------------------------------------------------------------------
# Ctrl-C


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


# ---------------------------------------------------------------------------------------------
# Progress, logs, observers


class Observer:
    """A hook the ``Reporter`` calls on rank 0; override what you need (all no-ops here).

    ``on_step(record)``: after every step, ``record`` as written to ``log.jsonl``
    (``step``, ``train_loss``, ``lr`` and any extra metrics the loop passed).
    ``on_eval(record, sample, params)``: after every evaluation; ``params()`` returns the
    model's parameters as {name: NumPy array} (call it only if you need them: it copies).
    ``on_grads(step, grads)``: after every evaluation whose loop passed its gradients;
    ``grads()`` returns the last step's gradients as {name: NumPy array} (after clipping).
    ``close()``: at the end of training (also after Ctrl-C).
    """

    def on_step(self, record: dict[str, Any]) -> None:
        pass

    def on_grads(self, step: int, grads: Callable[[], dict[str, np.ndarray]]) -> None:
        pass

    def on_eval(self, record: dict[str, Any], sample: str, params: Callable[[], dict[str, np.ndarray]] | None) -> None:
        pass

    def close(self) -> None:
        pass


# how evaluation lines show the usual metrics; any other key is shown as "name value"
_LABELS = {"val_loss": ("val loss", "{:.4f}"), "val_perplexity": ("val ppl", "{:.2f}"),
           "val_bits_per_char": ("val bits/char", "{:.3f}")}
_HIDDEN = {"val_bits_per_token"}  # in log.jsonl, not on the line


def format_duration(seconds: float) -> str:
    """``75.3`` -> ``"1 min 15 s"``; under a minute: ``"42 s"``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Reporter:
    """Progress bar or plain lines, printed evaluations and samples, ``log.jsonl``, ``loss.png``.

    Only the process with ``active=True`` (rank 0) prints or writes anything. On a terminal a
    progress bar shows the running loss: an exponential moving average of the step losses,
    bias-corrected so the first steps are not pulled towards 0 (as in Adam)::

        m_n = beta m_{n-1} + (1 - beta) loss_n,   m_0 = 0,   shown: m_n / (1 - beta^n)

    with beta = ``EMA_BETA`` = 0.9: a mean over roughly the last 1 / (1 - beta) = 10 steps.
    When the output is not a terminal (a log file, CI) there is no bar: one plain line reports
    the speed and the time left once ``SPEED_AFTER`` steps ran, then one line per evaluation.
    Without matplotlib, ``loss.png`` is skipped and one line says so.

    Nothing here is specific to language models: ``step`` takes any extra metrics,
    ``evaluation`` any dict of them, and ``observers`` (see ``Observer``) see both.
    """

    EMA_BETA = 0.9
    SPEED_AFTER = 20  # steps before the plain speed / time-left line

    def __init__(self, steps: int, run: RunFolder | None = None, *, start: int = 0,
                 progress: bool = True, active: bool = True,
                 print_fn: Callable[[str], None] | None = None, title: str = "",
                 observers: tuple[Observer, ...] | list[Observer] = ()) -> None:
        self.steps, self.run, self.start, self.active, self.title = steps, run, start, active, title
        self.observers = list(observers) if active else []
        self.pending: list[dict[str, Any]] = []
        self.records: list[dict[str, Any]] = []
        self.window: list[float] = []
        self._ema, self._n = 0.0, 0  # m_n and n of the running loss
        self.loss_plot: Path | None = None  # loss.png once drawn
        self._plot_problem: str | None = None  # why loss.png cannot be drawn ('' if it can)
        self.t0 = time.perf_counter()
        self.bar = None
        self.tty = sys.stderr.isatty() and sys.stdout.isatty()
        if active and progress and self.tty:  # a bar in a log file is noise
            from tqdm.auto import tqdm

            self.bar = tqdm(total=steps, initial=start, desc="train", unit="step",
                            dynamic_ncols=True, leave=False)
        self._plain = active and progress and not self.tty  # plain lines instead of the bar
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

    def seconds_left(self, done: int) -> float:
        """The time the remaining steps will take at this call's mean speed so far."""
        ran = done - self.start
        if ran <= 0:
            return float("nan")
        return (time.perf_counter() - self.t0) / ran * (self.steps - done)

    def step(self, done: int, loss: float, lr: float, **extra: float) -> None:
        self.window.append(loss)
        # m_n = beta m_{n-1} + (1 - beta) loss_n
        self._ema = self.EMA_BETA * self._ema + (1.0 - self.EMA_BETA) * loss
        self._n += 1
        if not self.active:
            return
        rec = {"step": done, "train_loss": loss, "lr": lr, **extra}
        self.pending.append(rec)
        for o in self.observers:
            o.on_step(rec)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {self.running_loss:.4f} (ema)", refresh=False)
        elif self._plain and done - self.start == self.SPEED_AFTER and done < self.steps:
            elapsed = time.perf_counter() - self.t0
            self.say(f"step {done}/{self.steps} | loss {self.running_loss:.4f} (ema) | "
                     f"{self.SPEED_AFTER / elapsed:.1f} steps/s | about "
                     f"{format_duration(self.seconds_left(done))} to go")

    def evaluation(self, done: int, metrics: dict[str, float], lr: float | None = None,
                   sample: str = "", params: Callable[[], dict[str, np.ndarray]] | None = None,
                   grads: Callable[[], dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
        """Log one evaluation: ``metrics`` (name -> number) go to the line, the log, observers."""
        train_loss = float(np.mean(self.window)) if self.window else float("nan")
        self.window = []
        rec = {"step": done, **metrics, "train_loss_mean": train_loss,
               "time": round(time.perf_counter() - self.t0, 3)}
        self.records.append(rec)
        if not self.active:
            return rec
        parts = [f"step {done}/{self.steps}", f"train loss {train_loss:.4f}"]
        for k, v in metrics.items():
            if k in _HIDDEN:
                continue
            label, fmt = _LABELS.get(k, (k.replace("_", " "), "{:.4g}"))
            parts.append(f"{label} {fmt.format(v)}")
        if lr is not None:
            parts.append(f"lr {lr:.2e}")
        timing = f"{rec['time']:.1f}s"
        if done < self.steps and done > self.start:
            timing += f", ~{format_duration(self.seconds_left(done))} left"
        parts.append(timing)
        self.say(" | ".join(parts))
        if sample:
            self.say(f"--- sample at step {done} ---\n{sample}\n---")
        self.pending.append(rec)
        for o in self.observers:
            o.on_eval(rec, sample, params)
            if grads is not None:
                o.on_grads(done, grads)
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
        self.loss_plot = plot_losses(self.run.read_log(), self.run.loss_plot, title=self.title)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        observers, self.observers = self.observers, []
        for o in observers:
            o.close()


def write_run_files(run: RunFolder, config: dict[str, Any], tokenizer: Any, resume_step: int | None) -> None:
    """Start writing the run folder (rank 0): ``config.json``, ``tokenizer.json``, the log.

    A new run (``resume_step`` None) first clears what an earlier run left (``open_run``
    already refused a folder holding a run unless told to overwrite it); a resumed one cuts
    ``log.jsonl`` back to its checkpoint's step (the steps after it are about to be redone).
    """
    run.make()
    if resume_step is None:
        run.clear()
    else:
        run.truncate_log(resume_step)
    write_json(run.config, config)
    if tokenizer is not None:
        write_json(run.tokenizer, tokenizer.to_dict())


def describe_run(args: TrainArgs, n_params: int, start: int, n_val: int) -> str:
    """The line a loop prints before its first step: what it trains, how long, how it evaluates."""
    what = f"{args.model} ({args.impl}), {n_params / 1e6:.2f}M parameters"
    todo = f"{args.steps - start} steps" + (f" (from step {start} to {args.steps})" if start else "")
    return (f"{what}: {todo} of {args.batch_size}x{args.context_length} tokens; validation "
            f"every {args.eval_interval} steps, {eval_description(args, n_val)}")
