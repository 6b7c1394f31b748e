"""The PyTorch training loop: the twin of ``minilm.numpy.train``, plus GPUs and torchrun.

One step, as in the NumPy loop::

    lr_t        = cosine_schedule(t, lr, min_lr, warmup_steps, steps)
    x, y        = batch(t)                               # (B, T) int64 each, y = x shifted by one
    loss        = cross_entropy(model(x), y)             # mean, nats
    g           = autograd(loss)                         # DDP averages g over ranks
    g          <- g * min(1, clip / ||g||_2)             # torch.nn.utils.clip_grad_norm_
    theta      <- AdamW(theta, g, lr_t)                  # torch.optim.AdamW, decay on >= 2-D only

The batches, the validation windows, the samples, the schedule, the LSTM's truncated BPTT,
the run folder and the checkpoint are the NumPy loop's (both import them from
``minilm.training``; the schedule from ``minilm.numpy.optim``), so from the same seed in
float64 both loops give the same losses, and either loop's ``checkpoint/model.safetensors``
loads into the other's model. The code below reads as a translation of the NumPy loop,
section by section.

What the twin adds:

- ``device``: "auto" picks CUDA when present. On a GPU, ``amp`` runs the forward pass under
  ``torch.autocast`` in bfloat16 ("auto" when supported) or float16 (with a ``GradScaler``);
  parameters and optimiser state stay float32.
- Distributed data parallel: under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in
  the environment) the model is wrapped in ``DistributedDataParallel`` (NCCL on GPUs, gloo on
  CPUs). Every rank draws the same global batch of ``batch_size`` rows from the same generator
  and keeps its ``batch_size / world_size`` rows; DDP averages the gradients, so W ranks take
  exactly the step one process would take on the whole batch. Rank 0 alone evaluates, prints
  and writes files; the LSTM's carried state is gathered from all ranks into the checkpoint.
- Dropout draws from torch's default generators (``nn.Dropout`` takes no generator): the CPU
  one, and on a GPU the CUDA one of that device. Both are seeded with ``seed + rank``
  (``torch.manual_seed`` seeds every device) and saved per rank in the checkpoint
  (``torch_rng``; ``cuda_rng`` when training on CUDA), so resuming stays exact.

Deliberately left out: gradient accumulation, ``torch.compile``, FSDP.
"""

from __future__ import annotations

import gc
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from minilm.checkpoint import CheckpointError, save_checkpoint
from minilm.numpy.lstm import LSTMLM as NumpyLSTMLM
from minilm.numpy.metrics import TopKCounter
from minilm.numpy.optim import cosine_schedule
from minilm.numpy.transformer import TransformerLM as NumpyTransformerLM
from minilm.presets import TrainArgs
from minilm.torch.generate import generate
from minilm.torch.lstm import LSTMLM
from minilm.torch.transformer import TransformerLM
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

__all__ = ["train", "TrainResult", "estimate_loss", "build_model", "sample", "resolve_device"]


# ---------------------------------------------------------------------------------------------
# Devices, precision, processes


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:LOCAL_RANK when CUDA is present, else cpu; any other name is checked.

    A name torch does not know, or a CUDA device this torch cannot use (built without CUDA,
    no GPU, an index past the last GPU), is a one-line ValueError, raised before any model is
    built or moved.
    """
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(name)!r}: expected auto, cpu, cuda, cuda:N, "
                         f"mps, ...") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU"
            raise ValueError(f"device {str(name)!r} asked for, but {why} (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(name)!r} asked for, but torch sees only "
                             f"{torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {str(name)!r} asked for, but torch has no MPS backend here")
    return device


def resolve_amp(args: TrainArgs, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: full precision)."""
    amp = args.amp
    if amp == "auto":
        if device.type == "cuda" and args.dtype == "float32":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if amp == "none":
        return None
    if args.dtype == "float64":
        raise ValueError(f"--amp {amp} makes no sense with --dtype float64")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device (on a CPU use --amp bf16 or none)")
    return torch.bfloat16 if amp == "bf16" else torch.float16


class Dist:
    """This process's place under torchrun: rank, world size, local rank (1 process: 0, 1, 0)."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owns_group = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def init(self, device: torch.device) -> None:
        if self.enabled and not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """All-reduce mean (gloo has no AVG: sum, then divide)."""
        if not self.enabled:
            return x
        x = x.clone()
        tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
        return x / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather_streams(self, t: torch.Tensor) -> torch.Tensor:
        """(n_layer, B/W, H) on every rank -> (n_layer, B, H), streams in rank order."""
        if not self.enabled:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        tdist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=1)  # (n_layer, B, H)

    def close(self) -> None:
        """Destroy the process group this process made (the DDP wrapper must be gone first).

        Two deadlocks lurk at teardown, both a gloo worker thread that needs the GIL (to free
        a Python-made tensor of a collective it ran) while the main thread, holding the GIL,
        waits for that worker in the group's destructor:
        - the barrier lets every worker finish (and drop) the earlier collectives first;
        - the group's last holder must be ``destroy_process_group``, which drops it with the
          GIL released. Were it DDP's reducer, the destructor would run with the GIL held when
          the wrapper is freed, so ``train`` frees the wrapper before calling this.
        """
        if self.owns_group:
            tdist.barrier()
            tdist.destroy_process_group()
            self.owns_group = False


# ---------------------------------------------------------------------------------------------
# Model, evaluation, sampling


def build_model(config: Any, args: TrainArgs, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The torch twin, initialised with the NumPy init of ``args.seed`` (so both loops start equal)."""
    if args.model == "transformer":
        model = TransformerLM(config, seed=args.seed, attention=args.attention)
    else:
        # fused: torch.nn.LSTM's recurrence (same keys, same maths as the explicit loop, faster)
        model = LSTMLM(config, seed=args.seed, fused=True)
    if args.dtype == "float64":
        # Load the NumPy init drawn in float64, not a float32 init cast up, so the weights are
        # exactly the NumPy loop's.
        Reference = NumpyTransformerLM if args.model == "transformer" else NumpyLSTMLM
        model = model.to(torch.float64)
        model.load_state_dict(Reference(config, seed=args.seed, dtype=np.float64).state_dict())
    return model.to(device)


def _logits(model: torch.nn.Module, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
    out = model(x, state=state) if state is not None else model(x)
    if isinstance(out, tuple):  # the LSTM returns (logits, state)
        return out
    return out, None


def _loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    V = logits.shape[-1]
    if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: the loss in float32
        logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction=reduction)  # (B*T, V), (B*T,)


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, val: np.ndarray, args: TrainArgs,
                  eval_iters: int | None = None, device: torch.device | str = "cpu",
                  amp: torch.dtype | None = None, whole_split: bool = False,
                  accuracy: TopKCounter | None = None) -> float:
    """Mean validation cross-entropy in nats per token; the same windows as the NumPy twin.
    ``accuracy`` (a ``TopKCounter``), if given, also counts next-token and top-k accuracy."""
    n = eval_iters or args.eval_iters
    B, T = args.batch_size, args.context_length
    carry = args.model == "lstm"
    device = torch.device(device)
    was_training = model.training
    model.eval()
    losses = []
    try:
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            if whole_split:
                total, count, state = 0.0, 0, None
                for x, y in split_windows(val, B, T):  # (B, T) each, y = IGNORE_INDEX past the end
                    logits, state = _logits(model, torch.from_numpy(x).to(device),
                                            state if carry else None)  # (B, T, V)
                    if accuracy is not None:
                        accuracy.update(logits, torch.from_numpy(y).to(device), IGNORE_INDEX)
                    total += _loss(logits, torch.from_numpy(y).to(device), "sum").item()  # sum of NLL
                    count += int((y != IGNORE_INDEX).sum())
                return total / count
            if carry and args.lstm_bptt == "carry":
                streams, windows = stream_windows(val, B, T, n)
                L = (len(val) - 1) // streams
                state = None
                for w in range(windows):
                    offsets = (np.arange(streams) * L + w * T)[:, None] + np.arange(T)[None, :]  # (B, T)
                    x = torch.from_numpy(val[offsets]).to(device)
                    y = torch.from_numpy(val[offsets + 1]).to(device)
                    logits, state = _logits(model, x, state)  # (B, T, V)
                    if accuracy is not None:
                        accuracy.update(logits, y)
                    losses.append(_loss(logits, y).item())
                return float(np.mean(losses))
            rng = np.random.default_rng(args.seed + 1)
            for _ in range(n):
                x, y = random_batch(val, B, T, rng)  # (B, T) each
                logits, _ = _logits(model, torch.from_numpy(x).to(device))  # (B, T, V)
                if accuracy is not None:
                    accuracy.update(logits, torch.from_numpy(y).to(device))
                losses.append(_loss(logits, torch.from_numpy(y).to(device)).item())
            return float(np.mean(losses))
    finally:
        model.train(was_training)


@torch.no_grad()
def sample(model: torch.nn.Module, data: Data, args: TrainArgs, device: torch.device | str = "cpu",
           n_tokens: int | None = None) -> str:
    """The same sample as the NumPy twin's (temperature 0.8, seed ``args.seed``)."""
    n = args.sample_tokens if n_tokens is None else n_tokens
    if n <= 0:
        return ""
    was_training = model.training
    model.eval()
    try:
        idx = generate(model, torch.from_numpy(sample_prompt(data)).to(device), n,
                       temperature=0.8, seed=args.seed)  # (1, 1 + n)
    finally:
        model.train(was_training)
    return data.tokenizer.decode(idx[0].tolist())


# ---------------------------------------------------------------------------------------------
# The loop


def train(args: TrainArgs, out: str | Path | None = None, *, resume: bool = False,
          overwrite: bool = False, progress: bool = True,
          callback: Callable[[int, float], None] | None = None,
          print_fn: Callable[[str], None] | None = None,
          observers: tuple[Observer, ...] | list[Observer] = ()) -> TrainResult:
    """Train a PyTorch model as ``args`` says; write the run folder ``out`` (rank 0, if given).

    Same contract as ``minilm.numpy.train.train``; under torchrun every rank calls it.
    """
    if args.impl != "torch":
        args = args.replace(impl="torch")
    dist = Dist()
    if args.batch_size % dist.world_size:
        raise ValueError(f"batch_size={args.batch_size} is not divisible by the "
                         f"{dist.world_size} ranks")
    device = resolve_device(args.device, dist.local_rank)
    if device.type == "cuda":
        if device.index is None:  # plain "cuda": this rank's GPU
            device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)  # NCCL collectives and all_gather_object use this GPU
    amp = resolve_amp(args, device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    is_main = dist.rank == 0
    run = open_run(out, resume=resume, overwrite=overwrite)  # every rank checks, before any writes
    ckpt = resume_checkpoint(run, args, "torch") if resume else None

    # --- data, model, optimiser ---
    tokenizer = tokenizer_from_meta(ckpt.meta, ckpt.path) if ckpt else None
    data = prepare_data(args, tokenizer)
    config = args.model_config(data.tokenizer.vocab_size)
    model = build_model(config, args, device)
    # weight decay on matrices (>= 2-D: embeddings, linear weights) only, as in nanoGPT
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(args.beta1, args.beta2), eps=1e-8)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    rng = np.random.default_rng(args.seed)  # the batch sampler's generator (same on every rank)
    torch.manual_seed(args.seed + dist.rank)  # dropout only (see the module docstring)
    state = None  # LSTM (h, c), each (n_layer, B/W, d_hidden), carried between windows
    start = 0
    if ckpt is not None:
        try:
            model.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.weights.items()})
            optimizer.load_state_dict(_tensors(ckpt.state["optim"]))
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{ckpt.path}: does not match the model ({e})") from None
        rng.bit_generator.state = ckpt.meta["numpy_rng"]
        # dropout's generators: each rank its own (the CPU one; on a GPU the CUDA one too)
        torch_rng = ckpt.state["torch_rng"]
        torch.set_rng_state(torch.from_numpy(torch_rng[dist.rank % len(torch_rng)]))
        cuda_rng = ckpt.state.get("cuda_rng")
        if cuda_rng and device.type == "cuda":  # (a run moved to the CPU has no CUDA state to set)
            torch.cuda.set_rng_state(torch.from_numpy(cuda_rng[dist.rank % len(cuda_rng)]), device)
        if ckpt.state.get("scaler"):
            scaler.load_state_dict(ckpt.state["scaler"])
        if ckpt.state.get("lstm_state") is not None:
            b = args.batch_size // dist.world_size
            state = tuple(torch.from_numpy(s[:, dist.rank * b:(dist.rank + 1) * b]).to(device)
                          for s in ckpt.state["lstm_state"])
        start = ckpt.step
    dist.init(device)
    raw_model = model
    if dist.enabled:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if run is not None and is_main:
        write_run_files(run, {"model": args.model, "config": config.to_dict(), "args": args.to_dict()},
                        data.tokenizer, start if resume else None)

    def save(done: int) -> Path | None:
        # every rank takes part (the LSTM state is gathered); rank 0 writes
        lstm_state = None
        if state is not None:
            lstm_state = [dist.gather_streams(s.detach()).cpu() for s in state]
        # dropout's generator state, per rank: (CPU state, CUDA state or None), CPU ByteTensors
        mine = (torch.get_rng_state(),
                torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
        rng_states = [mine]
        if dist.enabled:
            rng_states = [None] * dist.world_size
            tdist.all_gather_object(rng_states, mine)
        if run is None or not is_main:
            return None
        meta = run_meta(args, "torch", config, data.tokenizer, done, rng, model=args.model,
                        chars_per_token=data.chars_per_token)
        extra = {"optim": optimizer.state_dict(),
                 "torch_rng": [c for c, _ in rng_states],
                 "cuda_rng": [c for _, c in rng_states] if device.type == "cuda" else None,
                 "lstm_state": lstm_state,
                 "scaler": scaler.state_dict() if scaler.is_enabled() else None}
        return save_checkpoint(run.checkpoint, meta, raw_model.state_dict(), extra)

    def params() -> dict[str, np.ndarray]:
        return {k: v.detach().float().cpu().numpy() for k, v in raw_model.state_dict().items()}

    def gradients() -> dict[str, np.ndarray]:  # the last step's (for TensorBoard histograms)
        return {k: p.grad.detach().float().cpu().numpy() for k, p in raw_model.named_parameters()
                if p.grad is not None}

    # --- the loop ---
    rep = Reporter(args.steps, run, start=start, progress=progress, active=is_main,
                   print_fn=print_fn, title=_title(args), observers=observers)
    rep.say(describe_run(args, sum(p.numel() for p in raw_model.parameters()), start, len(data.val)))
    losses: list[float] = []
    result = TrainResult(out=run.root if run else None, step=start, first_step=start, losses=losses,
                         val_loss=float("nan"), val_perplexity=float("nan"),
                         bits_per_char=float("nan"), sample="")
    t0 = time.perf_counter()
    done = start
    lr = cosine_schedule(start, args.lr, args.min_lr, args.warmup_steps, args.steps)
    model.train()
    try:
        with StopFlag() as stop:
            for step in range(start, args.steps):
                if dist.any(stop.requested, device):
                    raise KeyboardInterrupt
                lr = cosine_schedule(step, args.lr, args.min_lr, args.warmup_steps, args.steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if args.model == "lstm" and args.lstm_bptt == "carry":
                    x, y, reset = stream_batch(data.train, step, args.batch_size,
                                               args.context_length, dist.rank, dist.world_size)
                    if reset:
                        state = None
                else:
                    x, y = random_batch(data.train, args.batch_size, args.context_length, rng,
                                        dist.rank, dist.world_size)
                x = torch.from_numpy(x).to(device, non_blocking=True)  # (B/W, T)
                y = torch.from_numpy(y).to(device, non_blocking=True)  # (B/W, T)
                with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                    logits, new_state = _logits(model, x, state)  # (B/W, T, V)
                    loss = _loss(logits, y)
                if args.model == "lstm" and args.lstm_bptt == "carry":
                    # truncated BPTT: the state goes on, its gradient stops at the window edge
                    state = tuple(s.detach() for s in new_state)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()  # DDP averages the gradients over ranks here
                extra = {}
                if args.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    # g <- g * min(1, clip / ||g||); ||g|| before clipping is logged as grad_norm
                    extra["grad_norm"] = torch.nn.utils.clip_grad_norm_(raw_model.parameters(),
                                                                        args.grad_clip).item()
                scaler.step(optimizer)
                scaler.update()
                done = step + 1
                loss_value = dist.mean(loss.detach()).item()  # the whole batch's mean loss
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"training loss became {loss_value} at step {done}; "
                                             f"try a lower --lr")
                losses.append(loss_value)
                rep.step(done, loss_value, lr, **extra)
                if callback is not None:
                    callback(done, loss_value)
                if done % args.eval_interval == 0 or done == args.steps:
                    if is_main:
                        _evaluate(raw_model, data, args, rep, done, lr, result, params, device, amp,
                                  gradients)
                    result.checkpoint = save(done)
    except ForcedStop:
        rep.close()  # (no dist.close(): the other ranks may be anywhere; the process is ending)
        raise
    except KeyboardInterrupt:
        rep.flush()
        rep.close()
        result.checkpoint = save(done)
        result.interrupted = True
    finally:
        rep.close()
    if not result.interrupted and not rep.records and is_main:  # nothing left to train
        _evaluate(raw_model, data, args, rep, done, lr, result, params, device, amp)
    if model is not raw_model:  # the DDP wrapper, freed while the process group lives on
        del model
        gc.collect()  # and now, should a reference cycle hold it
    dist.close()
    result.step = done
    result.seconds = time.perf_counter() - t0
    result.evals = rep.records
    result.loss_plot = rep.loss_plot
    return result


def _tensors(tree: Any) -> Any:
    """A checkpoint's tree with its NumPy arrays as tensors (torch.optim wants tensors)."""
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(tree)
    if isinstance(tree, dict):
        return {k: _tensors(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_tensors(v) for v in tree)
    return tree


def _title(args: TrainArgs) -> str:
    return f"{args.model} ({args.impl}) on {Path(args.corpus).name}"


def _evaluate(model: torch.nn.Module, data: Data, args: TrainArgs, rep: Reporter, done: int,
              lr: float, result: TrainResult, params: Callable[[], dict[str, np.ndarray]],
              device: torch.device, amp: torch.dtype | None,
              grads: Callable[[], dict[str, np.ndarray]] | None = None) -> None:
    acc = TopKCounter()  # next-token and top-5 accuracy beside the loss
    m = lm_metrics(estimate_loss(model, data.val, args, device=device, amp=amp, accuracy=acc),
                   data.chars_per_token)
    m.update(acc.result())
    text = sample(model, data, args, device)
    rep.evaluation(done, m, lr, text, params, grads)
    result.val_loss = m["val_loss"]
    result.val_perplexity = m["val_perplexity"]
    result.bits_per_char = m["val_bits_per_char"]
    result.sample = text
    result.val_over = eval_description(args, len(data.val))
