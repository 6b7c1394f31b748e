"""The NumPy training loop: AdamW, warm-up + cosine schedule, clipping, evaluation, checkpoints.

One step, in the notation of ``minilm.numpy.optim``::

    lr_t        = cosine_schedule(t, lr, min_lr, warmup_steps, steps)
    x, y        = batch(t)                               # (B, T) int64 each, y = x shifted by one
    loss, g     = model.loss_and_grads(x, y)             # mean cross-entropy in nats, grads
    g          <- g * min(1, clip / ||g||_2)             # global-norm clipping
    theta      <- AdamW(theta, g, lr_t)                  # decay only on >= 2-D weights

Every ``eval_interval`` steps (and at the end) the loop estimates the validation loss,
reports perplexity exp(loss) and bits per character (loss / ln 2 / chars per token), prints a
sample, appends to ``log.jsonl``, redraws ``loss.png`` and writes ``checkpoint/``
(``minilm.checkpoint``: safetensors weights and optimiser state, JSON metadata).

Batches. The Transformer trains on random windows drawn from an explicit
``np.random.Generator`` (``minilm.data.get_batch``). The LSTM does truncated back-propagation
through time with ``lstm_bptt="carry"`` (the default): the training tokens are cut into B
contiguous streams, step t reads window t of every stream, and the final (h, c) of one window
is the initial state of the next (gradients stop at the window edge; the state is reset to
zeros when the streams wrap around). ``lstm_bptt="random"`` draws random windows and starts
each from a zero state, like the Transformer. Validation of an LSTM in carry mode streams
through the start of the validation tokens the same way. These in-training evaluations are
estimates on ``eval_iters`` batches; ``minilm eval`` (``estimate_loss(..., whole_split=True)``)
scores every validation target once, in order: exact and deterministic.

Everything random comes from the seed: the weights (``seed``), the batch generator
(``np.random.default_rng(seed)``, saved in the checkpoint as its bit-generator state), the
validation windows (a fresh ``default_rng(seed + 1)`` at every evaluation, so evaluations
are comparable) and the printed samples (``seed``). So a run stopped at step k and resumed
gives bit-identical losses to one that never stopped.

The framework-free pieces (data, batches, run folder, Ctrl-C, reporting) live in
``minilm.training`` and are shared with the PyTorch twin ``minilm.torch.train``, whose code
reads as a line-by-line translation of this one.

Deliberately left out: dropout (``minilm.numpy`` models have none), mixed precision,
gradient accumulation, distributed training (see the PyTorch twin).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from minilm.checkpoint import CheckpointError, save_checkpoint
from minilm.numpy.functional import cross_entropy
from minilm.numpy.generate import generate
from minilm.numpy.lstm import LSTMLM
from minilm.numpy.metrics import TopKCounter
from minilm.numpy.optim import AdamW, clip_grad_norm, cosine_schedule
from minilm.numpy.transformer import TransformerLM
from minilm.presets import TrainArgs
from minilm.training import (
    IGNORE_INDEX,
    Data,
    ForcedStop,
    Observer,
    Reporter,
    StopFlag,
    TrainResult,
    describe_run,
    eval_description,
    lm_metrics,
    open_run,
    prepare_data,
    random_batch,
    resume_checkpoint,
    run_meta,
    sample_prompt,
    split_windows,
    stream_batch,
    stream_windows,
    tokenizer_from_meta,
    write_run_files,
)

__all__ = ["train", "TrainResult", "estimate_loss", "build_model", "sample"]


# ---------------------------------------------------------------------------------------------
# Model, evaluation, sampling


def build_model(config: Any, args: TrainArgs) -> TransformerLM | LSTMLM:
    """The NumPy model of ``args.model``, initialised from ``args.seed``."""
    Model = TransformerLM if args.model == "transformer" else LSTMLM
    return Model(config, seed=args.seed, dtype=np.dtype(args.dtype).type)


def _logits(model: Any, x: np.ndarray, state: Any = None) -> tuple[np.ndarray, Any]:
    out = model.forward(x, state=state) if state is not None else model.forward(x)
    if isinstance(out, tuple):  # the LSTM returns (logits, state)
        return out
    return out, None


def estimate_loss(model: Any, val: np.ndarray, args: TrainArgs, eval_iters: int | None = None,
                  whole_split: bool = False, accuracy: TopKCounter | None = None) -> float:
    """Mean validation cross-entropy in nats per token.

    ``whole_split``: every target of ``val`` once, in order (``split_windows``; the LSTM
    carries its state along each of B streams): exact and deterministic. Otherwise an
    estimate, as during training: the Transformer (and an LSTM with ``lstm_bptt="random"``)
    on ``eval_iters`` batches of random windows from a fresh ``default_rng(seed + 1)``; an
    LSTM in carry mode on B streams through the start of ``val``, ``eval_iters`` consecutive
    windows, state carried. ``eval_description`` says which, in words. ``accuracy`` (a
    ``TopKCounter``), if given, also counts next-token and top-k accuracy over the same logits.
    """
    n = eval_iters or args.eval_iters
    B, T = args.batch_size, args.context_length
    carry = args.model == "lstm"
    if whole_split:
        total, count, state = 0.0, 0, None
        for x, y in split_windows(val, B, T):  # (B, T) each, y = IGNORE_INDEX past the end
            logits, state = _logits(model, x, state if carry else None)  # (B, T, V)
            if accuracy is not None:
                accuracy.update(logits, y, IGNORE_INDEX)
            k = int((y != IGNORE_INDEX).sum())
            total += float(cross_entropy(logits, y, ignore_index=IGNORE_INDEX)) * k  # sum of NLL
            count += k
        return total / count
    losses = []
    if carry and args.lstm_bptt == "carry":
        streams, windows = stream_windows(val, B, T, n)
        L = (len(val) - 1) // streams
        state = None
        for w in range(windows):
            offsets = (np.arange(streams) * L + w * T)[:, None] + np.arange(T)[None, :]  # (B, T)
            logits, state = _logits(model, val[offsets], state)  # (B, T, V)
            if accuracy is not None:
                accuracy.update(logits, val[offsets + 1])
            losses.append(float(cross_entropy(logits, val[offsets + 1])))
        return float(np.mean(losses))
    rng = np.random.default_rng(args.seed + 1)
    for _ in range(n):
        x, y = random_batch(val, B, T, rng)  # (B, T) each
        logits, _ = _logits(model, x)  # (B, T, V)
        if accuracy is not None:
            accuracy.update(logits, y)
        losses.append(float(cross_entropy(logits, y)))
    return float(np.mean(losses))


def sample(model: Any, data: Data, args: TrainArgs, n_tokens: int | None = None) -> str:
    """A sample of ``sample_tokens`` tokens (temperature 0.8, seed ``args.seed``)."""
    n = args.sample_tokens if n_tokens is None else n_tokens
    if n <= 0:
        return ""
    idx = generate(model, sample_prompt(data), n, temperature=0.8, seed=args.seed)  # (1, 1 + n)
    return data.tokenizer.decode(np.asarray(idx)[0].tolist())


# ---------------------------------------------------------------------------------------------
# The loop


def train(args: TrainArgs, out: str | Path | None = None, *, resume: bool = False,
          overwrite: bool = False, progress: bool = True,
          callback: Callable[[int, float], None] | None = None,
          print_fn: Callable[[str], None] | None = None,
          observers: tuple[Observer, ...] | list[Observer] = ()) -> TrainResult:
    """Train a NumPy model as ``args`` says; write the run folder ``out`` (if given).

    A folder ``out`` that already holds a run is refused unless ``resume=True`` (continue
    from its checkpoint; only ``RESUMABLE_CHANGES`` may differ from the args it was started
    with) or ``overwrite=True`` (replace it). ``callback(step, loss)`` runs after every step;
    ``observers`` (``minilm.training.Observer``) see every step and evaluation. Ctrl-C stops
    after the current step, saves a checkpoint and returns with ``interrupted=True``.
    """
    if args.impl != "numpy":
        args = args.replace(impl="numpy")
    run = open_run(out, resume=resume, overwrite=overwrite)
    ckpt = resume_checkpoint(run, args, "numpy") if resume else None

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
            model.load_state_dict(ckpt.weights)
            optimizer.load_state_dict(ckpt.state["optim"])
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{ckpt.path}: does not match the model ({e})") from None
        rng.bit_generator.state = ckpt.meta["numpy_rng"]
        if ckpt.state.get("lstm_state") is not None:
            state = tuple(np.asarray(s) for s in ckpt.state["lstm_state"])
        start = ckpt.step
    if run is not None:
        write_run_files(run, {"model": args.model, "config": config.to_dict(), "args": args.to_dict()},
                        data.tokenizer, start if resume else None)

    def save(done: int) -> Path | None:
        if run is None:
            return None
        meta = run_meta(args, "numpy", config, data.tokenizer, done, rng, model=args.model,
                        chars_per_token=data.chars_per_token)
        extra = {"optim": optimizer.state_dict(),
                 "lstm_state": list(state) if state is not None else None}
        return save_checkpoint(run.checkpoint, meta, model.state_dict(), extra)

    def params() -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in model.params.items()}

    last: dict[str, Any] = {}  # the last step's gradients, for observers (TensorBoard histograms)

    def gradients() -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in last.get("grads", {}).items()}

    # --- the loop ---
    rep = Reporter(args.steps, run, start=start, progress=progress, active=True, print_fn=print_fn,
                   title=_title(args), observers=observers)
    rep.say(describe_run(args, sum(v.size for v in model.params.values()), start, len(data.val)))
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
                    # truncated BPTT: the state goes on, its gradient stops at the window edge
                    loss, grads, state = model.loss_and_grads(x, y, state=state, return_state=True)
                else:
                    x, y = random_batch(data.train, args.batch_size, args.context_length, rng)
                    loss, grads = model.loss_and_grads(x, y)  # LSTM: each window from zero state
                extra = {}
                if args.grad_clip > 0:
                    # g <- g * min(1, clip / ||g||); ||g|| before clipping is logged as grad_norm
                    extra["grad_norm"] = clip_grad_norm(grads, args.grad_clip)
                last["grads"] = grads
                optimizer.step(grads)
                done = step + 1
                loss_value = float(loss)
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"training loss became {loss_value} at step {done}; "
                                             f"try a lower --lr")
                losses.append(loss_value)
                rep.step(done, loss_value, lr, **extra)
                if callback is not None:
                    callback(done, loss_value)
                if done % args.eval_interval == 0 or done == args.steps:
                    _evaluate(model, data, args, rep, done, lr, result, params, gradients)
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
        _evaluate(model, data, args, rep, done, lr, result, params)
    result.step = done
    result.seconds = time.perf_counter() - t0
    result.evals = rep.records
    result.loss_plot = rep.loss_plot
    return result


def _title(args: TrainArgs) -> str:
    return f"{args.model} ({args.impl}) on {Path(args.corpus).name}"


def _evaluate(model: Any, data: Data, args: TrainArgs, rep: Reporter, done: int, lr: float,
              result: TrainResult, params: Callable[[], dict[str, np.ndarray]],
              grads: Callable[[], dict[str, np.ndarray]] | None = None) -> None:
    acc = TopKCounter()  # next-token and top-5 accuracy beside the loss
    m = lm_metrics(estimate_loss(model, data.val, args, accuracy=acc), data.chars_per_token)
    m.update(acc.result())
    text = sample(model, data, args)
    rep.evaluation(done, m, lr, text, params, grads)
    result.val_loss = m["val_loss"]
    result.val_perplexity = m["val_perplexity"]
    result.bits_per_char = m["val_bits_per_char"]
    result.sample = text
    result.val_over = eval_description(args, len(data.val))
