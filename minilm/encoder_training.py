"""Pre-training and fine-tuning an encoder (``minilm pretrain``, ``minilm finetune``), in either twin.

Pre-training (objective ``mlm``, ``mlm+nsp`` or ``causal``) on a corpus::

    mlm:      rows [CLS] w [SEP], w a random window of T - 2 tokens of the training text;
              BERT's masking (``minilm.data.mlm.mask_tokens``); loss = masked-LM cross-entropy
    mlm+nsp:  rows [CLS] A [SEP] B [SEP] from consecutive / random lines (``nsp_pairs``),
              masked the same way; loss = masked-LM + next-sentence cross-entropy
    causal:   the same encoder with causal attention (``EncoderConfig(causal=True)``) predicting
              the next token of [CLS] w through the tied LM head; the pooler reads the last token

Fine-tuning (task ``speakers``, ``minilm.data.speakers``, or ``markov``, the quick synthetic task
of ``minilm.data.markov_task`` that CI runs): the pre-trained encoder plus a new
classification head (``EncoderConfig(n_classes=K)``, loaded with ``strict=False``), trained on
``[CLS] speech [SEP]`` rows (cut to the context length) with the class cross-entropy; or the
same model from its random initialisation (``from_scratch``), for the comparison the
fine-tuning chapter makes. ``labelled`` keeps a fixed random subset of the training speeches
(the same subset for the same seed, fine-tuned or from scratch).

Both loops reuse the shared machinery of ``minilm.training`` (run folder, checkpoints in
safetensors, resume, Ctrl-C, progress, ``log.jsonl``, ``loss.png``, observers) and the
optimiser and schedule of ``minilm train``: AdamW with weight decay on matrices only, linear
warm-up then cosine decay (``minilm.numpy.optim.cosine_schedule``), global-norm clipping.
The NumPy twin uses ``minilm.numpy.optim.AdamW`` and ``loss_and_grads``; the PyTorch twin
``torch.optim.AdamW`` and autograd; from one seed both start from the same weights and see
the same batches.

Deliberately left out: distributed training, mixed precision, tasks other than ``speakers``,
an ``lstm`` encoder.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from minilm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minilm.config import EncoderConfig
from minilm.data import BPETokenizer, CharTokenizer, load_corpus, train_val_split
from minilm.data.mlm import ENCODER_SPECIALS, EncoderBatch, mask_tokens, nsp_pairs, single_segments, text_segments
from minilm.data.markov_task import markov_corpus, markov_task
from minilm.data.speakers import speaker_task
from minilm.numpy import metrics as M
from minilm.numpy.encoder import TransformerEncoder
from minilm.numpy.optim import AdamW, clip_grad_norm, cosine_schedule
from minilm.training import (
    ForcedStop,
    Observer,
    Reporter,
    StopFlag,
    open_run,
    resume_checkpoint,
    run_meta,
    tokenizer_from_meta,
    write_run_files,
)

__all__ = ["EncoderArgs", "EncoderResult", "OBJECTIVES", "TASKS", "pretrain", "finetune",
           "load_encoder", "evaluate_classifier", "evaluate_pretrained", "special_ids", "make_task",
           "is_encoder_run", "report_encoder_run"]

OBJECTIVES = ("mlm", "mlm+nsp", "causal")
TASKS = ("speakers", "markov")
IGNORE_INDEX = -100
# fields a resumed run may change (as minilm.training.RESUMABLE_CHANGES for `minilm train`)
RESUMABLE = {"steps", "eval_interval", "eval_iters", "device", "threads"}


@dataclass(frozen=True)
class EncoderArgs:
    """Everything ``pretrain`` and ``finetune`` read; the command-line flags have these names."""

    objective: str = "mlm"  # pre-training objective: "mlm", "mlm+nsp" or "causal"
    impl: str = "numpy"  # "numpy" (the reference loop) or "torch"
    corpus: str = "tinyshakespeare"  # pre-training text: a corpus name, a path, or "markov" (markov_corpus)
    tokenizer: str = "char"  # "char" or "bpe" (specials: ENCODER_SPECIALS)
    vocab_size: int = 512  # BPE only
    # the model (pre-training; fine-tuning takes them from the checkpoint)
    context_length: int = 64
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    d_ff: int | None = None
    norm: str = "post"
    dropout: float = 0.0  # PyTorch twin only
    # optimisation
    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mask_prob: float = 0.15
    seed: int = 0
    eval_interval: int = 100
    eval_iters: int = 10
    device: str = "cpu"  # PyTorch twin only
    threads: int = 0  # torch.set_num_threads when > 0
    # fine-tuning
    checkpoint: str | None = None  # the pre-training run (its config, tokenizer and weights)
    task: str = "speakers"  # "speakers" (minilm.data.speakers) or "markov" (minilm.data.markov_task)
    n_classes: int = 5  # speakers (the most frequent) or Markov sources
    labelled: int | None = None  # keep this many labelled training examples (None: all)
    from_scratch: bool = False  # same model, random initialisation (weights not loaded)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.impl not in ("numpy", "torch"):
            raise ValueError(f"impl must be 'numpy' or 'torch', got {self.impl!r}")
        if self.tokenizer not in ("char", "bpe"):
            raise ValueError(f"tokenizer must be 'char' or 'bpe', got {self.tokenizer!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        for name in ("steps", "batch_size", "eval_interval", "eval_iters", "context_length"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.context_length < 5:
            raise ValueError(f"context_length must be at least 5 ([CLS] A [SEP] B [SEP]), got {self.context_length}")
        if self.labelled is not None and self.labelled < 1:
            raise ValueError(f"labelled must be a positive int, got {self.labelled!r}")
        if not 0.0 < self.mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {self.mask_prob}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderArgs":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def model_config(self, vocab_size: int, n_classes: int | None = None) -> EncoderConfig:
        return EncoderConfig(vocab_size=vocab_size, context_length=self.context_length, d_model=self.d_model,
                             n_layer=self.n_layer, n_head=self.n_head, d_ff=self.d_ff, n_classes=n_classes,
                             dropout=self.dropout, norm=self.norm, causal=self.objective == "causal")


@dataclass
class EncoderResult:
    """What ``pretrain`` and ``finetune`` return."""

    out: Path | None
    step: int
    first_step: int
    losses: list[float]
    evals: list[dict[str, Any]] = field(default_factory=list)  # every evaluation record
    interrupted: bool = False
    checkpoint: Path | None = None
    loss_plot: Path | None = None
    seconds: float = 0.0
    test: dict[str, Any] = field(default_factory=dict)  # fine-tuning: test-split metrics
    model: Any = field(default=None, repr=False)  # the trained model (pre-training only)


def special_ids(tokenizer: Any) -> dict[str, int]:
    """{"pad": id, "cls": id, "sep": id, "mask": id} of a tokenizer holding ENCODER_SPECIALS."""
    missing = [s for s in ENCODER_SPECIALS if s not in tokenizer.special_tokens]
    if missing:
        raise ValueError(f"the tokenizer lacks the encoder's special tokens {missing}")
    return {s.strip("[]").lower(): tokenizer.special_tokens[s] for s in ENCODER_SPECIALS}


# ---------------------------------------------------------------------------------------------
# Pre-training


def pretrain(args: EncoderArgs, out: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
             progress: bool = True, print_fn: Callable[[str], None] | None = None,
             observers: tuple[Observer, ...] | list[Observer] = (),
             callback: Callable[[int, float], None] | None = None) -> EncoderResult:
    """Pre-train an encoder on ``args.corpus`` with ``args.objective``; write the run ``out``.

    As ``minilm.numpy.train.train``: ``resume`` / ``overwrite`` an existing run,
    ``callback(step, loss)`` after every step, ``observers`` on every step and evaluation;
    Ctrl-C stops after the step, saves a checkpoint and returns with ``interrupted=True``.
    """
    run = open_run(out, resume=resume, overwrite=overwrite)
    ckpt = resume_checkpoint(run, args, args.impl, RESUMABLE) if resume else None
    text = _corpus(args.corpus)
    if ckpt is not None:
        tokenizer = tokenizer_from_meta(ckpt.meta, ckpt.path)
    elif args.tokenizer == "char":
        tokenizer = CharTokenizer.train(text, special_tokens=ENCODER_SPECIALS)
    else:
        tokenizer = BPETokenizer.train(text, args.vocab_size, special_tokens=ENCODER_SPECIALS)
    config = args.model_config(tokenizer.vocab_size)
    train_data, batch, evaluate = _pretraining_data(args, tokenizer, text)
    title = f"encoder {args.objective} ({args.impl}) on {Path(args.corpus).name}"
    return _loop(args, run, ckpt, config, tokenizer, "encoder", batch, train_data, evaluate, title,
                 progress, print_fn, observers, resume, callback=callback)


def _pretraining_data(args: EncoderArgs, tokenizer: Any, text: str) -> tuple[Any, Callable, Callable]:
    """``(train_data, batch(data, rng, B) -> kwargs of loss, evaluate(twin) -> metrics)``."""
    sp = special_ids(tokenizer)
    T = args.context_length
    if args.objective == "mlm+nsp":
        lines = text_segments(text)
        train_lines, val_lines = train_val_split(lines, 0.1)
        train_data = [tokenizer.encode(s) for s in train_lines]
        val_data = [tokenizer.encode(s) for s in val_lines]
    else:
        train_data, val_data = train_val_split(np.asarray(tokenizer.encode(text), dtype=np.int64), 0.1)
        if len(val_data) < T:
            raise ValueError(f"corpus {args.corpus!r} is too small for context_length={T}")

    def batch(data: Any, rng: np.random.Generator, B: int) -> dict[str, np.ndarray]:
        if args.objective == "mlm+nsp":
            b = nsp_pairs(data, rng, T, sp["cls"], sp["sep"], sp["pad"], n_pairs=B)
        else:
            starts = rng.integers(0, len(data) - (T - 1), B)  # (B,)
            windows = data[starts[:, None] + np.arange(T - 1)[None, :]]  # (B, T - 1)
            if args.objective == "causal":
                # [CLS] w_0 .. w_{T-2}: position t predicts w_t (the next token), the last nothing
                idx = np.concatenate([np.full((B, 1), sp["cls"]), windows], axis=1)  # (B, T)
                targets = np.concatenate([windows, np.full((B, 1), IGNORE_INDEX)], axis=1)  # (B, T)
                return {"idx": idx, "mlm_targets": targets}
            b = single_segments(windows[:, : T - 2], T, sp["cls"], sp["sep"], sp["pad"])
        inputs, targets = mask_tokens(b.idx, rng, tokenizer.vocab_size, sp["mask"], list(sp.values()),
                                      args.mask_prob, IGNORE_INDEX)
        kw = {"idx": inputs, "segment_ids": b.segment_ids, "attention_mask": b.attention_mask,
              "mlm_targets": targets}
        if b.nsp_labels is not None:
            kw["nsp_labels"] = b.nsp_labels
        return kw

    def evaluate(model: "_Twin") -> dict[str, float]:
        rng = np.random.default_rng(args.seed + 1)  # the same validation batches every time
        losses, hits, count, nsp_hits, nsp_count = [], 0, 0, 0, 0
        for _ in range(args.eval_iters):
            kw = batch(val_data, rng, args.batch_size)
            losses.append(model.loss(kw))
            logits = model.head_logits("mlm", kw)  # (B, T, V)
            chosen = kw["mlm_targets"] != IGNORE_INDEX
            hits += int((logits.argmax(-1) == kw["mlm_targets"])[chosen].sum())
            count += int(chosen.sum())
            if "nsp_labels" in kw:
                nsp_hits += int((model.head_logits("nsp", kw).argmax(-1) == kw["nsp_labels"]).sum())
                nsp_count += len(kw["nsp_labels"])
        name = "val_next_token_accuracy" if args.objective == "causal" else "val_mlm_accuracy"
        m = {"val_loss": float(np.mean(losses)), name: hits / max(count, 1)}
        if nsp_count:
            m["val_nsp_accuracy"] = nsp_hits / nsp_count
        return m

    return train_data, batch, evaluate


def evaluate_pretrained(model: Any, tokenizer: Any, args: EncoderArgs) -> dict[str, float]:
    """The validation metrics ``pretrain`` logs (loss, MLM or next-token accuracy, NSP accuracy)
    of a pre-trained encoder (either twin), on ``args.eval_iters`` batches of ``args.corpus``."""
    _, _, evaluate = _pretraining_data(args, tokenizer, _corpus(args.corpus))
    return evaluate(model if isinstance(model, _Twin) else _Twin.wrap(model))


# ---------------------------------------------------------------------------------------------
# Fine-tuning


def finetune(args: EncoderArgs, out: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
             progress: bool = True, print_fn: Callable[[str], None] | None = None,
             observers: tuple[Observer, ...] | list[Observer] = (),
             callback: Callable[[int, float], None] | None = None) -> EncoderResult:
    """Fine-tune the encoder of ``args.checkpoint`` on ``args.task`` (or train it from scratch)."""
    if args.checkpoint is None:
        raise ValueError("finetune needs --checkpoint RUN (a pre-training run: its model, tokenizer, weights)")
    run = open_run(out, resume=resume, overwrite=overwrite)
    ckpt = resume_checkpoint(run, args, args.impl, RESUMABLE) if resume else None
    pre = load_checkpoint(args.checkpoint)
    if pre.meta.get("model") != "encoder":
        raise CheckpointError(f"{pre.path}: not an encoder pre-training run (model "
                              f"{pre.meta.get('model')!r}); make one with `minilm pretrain`")
    tokenizer = tokenizer_from_meta(pre.meta, pre.path)
    sp = special_ids(tokenizer)
    task = make_task(args.task, args.n_classes)
    pre_config = EncoderConfig.from_dict(pre.meta["config"])
    config = replace(pre_config, n_classes=len(task.classes), dropout=args.dropout)
    T = config.context_length
    train_rows, train_y = _encode_examples(task.train, tokenizer, T, sp)
    val_rows, val_y = _encode_examples(task.val, tokenizer, T, sp)
    if args.labelled is not None:
        keep = np.sort(np.random.default_rng(args.seed).permutation(len(train_y))[: args.labelled])
        train_rows, train_y = train_rows.take(keep), train_y[keep]
    init = None if args.from_scratch else pre.weights
    def batch(data: Any, rng: np.random.Generator, B: int) -> dict[str, np.ndarray]:
        rows, y = data
        pick = rng.choice(len(y), size=B, replace=len(y) < B)  # (B,)
        b = rows.take(pick)
        return {"idx": b.idx, "segment_ids": b.segment_ids, "attention_mask": b.attention_mask,
                "labels": y[pick]}

    def evaluate(model: "_Twin") -> dict[str, float]:
        logits, loss = model.classify(val_rows, val_y)
        return {"val_loss": loss, "val_accuracy": M.accuracy(logits.argmax(-1), val_y)}

    how = "from scratch" if args.from_scratch else f"fine-tuned from {pre.path.parent.name}"
    title = f"encoder classifier ({args.impl}) on {args.task}, {how}"
    extra_meta = {"classes": task.classes, "task": args.task, "pretrained": str(pre.path)}
    result = _loop(args, run, ckpt, config, tokenizer, "encoder-classifier", batch, (train_rows, train_y),
                   evaluate, title, progress, print_fn, observers, resume, init=init, extra_meta=extra_meta,
                   callback=callback,
                   describe=f"{len(train_y)} labelled examples, {len(task.classes)} classes "
                            f"({', '.join(task.classes)}); validation {len(val_y)}, test {len(task.test)}")
    model, result.model = result.model, None
    if not result.interrupted:
        result.test = evaluate_classifier(model, tokenizer, task.classes, task.test,
                                          None if run is None else run.root / "confusion_test.png")
        if run is not None:
            from minilm.checkpoint import write_json

            write_json(run.root / "test_metrics.json", {k: v for k, v in result.test.items() if k != "report"})
        (print_fn or print)(f"test accuracy {result.test['accuracy']:.4f} on {len(task.test)} examples "
                            f"(chance {1 / len(task.classes):.2f})\n{result.test['report']}")
    return result


def make_task(name: str, n_classes: int) -> Any:
    """The labelled task ``name`` with ``n_classes`` classes (a ``SpeakerTask``: classes, splits)."""
    if name == "speakers":
        return speaker_task(n_classes)
    if name == "markov":
        return markov_task(n_classes)
    raise ValueError(f"task must be one of {TASKS}, got {name!r}")


def _corpus(name: str) -> str:
    """``load_corpus(name)``, or the Markov task's unlabelled text for "markov"."""
    return markov_corpus() if name == "markov" else load_corpus(name)


def _encode_examples(examples: list[tuple[str, int]], tokenizer: Any, T: int,
                     sp: dict[str, int]) -> tuple[EncoderBatch, np.ndarray]:
    """``[CLS] text [SEP]`` rows (text cut to T - 2 tokens), padded; labels (N,)."""
    rows = single_segments([tokenizer.encode(t) for t, _ in examples], T, sp["cls"], sp["sep"], sp["pad"])
    return rows, np.array([y for _, y in examples], dtype=np.int64)


def evaluate_classifier(model: Any, tokenizer: Any, classes: list[str], examples: list[tuple[str, int]],
                        plot: str | Path | None = None) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, the confusion matrix (and its plot at ``plot``)
    of a classifier (either twin) on ``examples``."""
    twin = model if isinstance(model, _Twin) else _Twin.wrap(model)
    T = twin.config.context_length
    rows, y = _encode_examples(examples, tokenizer, T, special_ids(tokenizer))
    logits, loss = twin.classify(rows, y)
    pred = logits.argmax(-1)
    K = len(classes)
    precision, recall, f1 = M.precision_recall_f1(y, pred, K)
    cm = M.confusion_matrix(y, pred, K)
    out = {"accuracy": M.accuracy(pred, y), "loss": loss, "n": int(len(y)), "classes": list(classes),
           "precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
           "macro_f1": float(f1.mean()), "confusion": cm.tolist(),
           "report": M.classification_report(y, pred, classes)}
    if plot is not None:
        try:
            M.plot_confusion_matrix(cm, classes, path=plot, title=f"speakers: accuracy {out['accuracy']:.3f}")
            out["confusion_plot"] = str(plot)
        except ImportError:
            pass
    return out


def load_encoder(path: str | Path, impl: str | None = None) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, ckpt)`` of an encoder run (pre-trained or classifier), in either twin."""
    ckpt = load_checkpoint(path)
    if ckpt.meta.get("model") not in ("encoder", "encoder-classifier"):
        raise CheckpointError(f"{ckpt.path}: not an encoder run (model {ckpt.meta.get('model')!r})")
    config = EncoderConfig.from_dict(ckpt.meta["config"])
    tokenizer = tokenizer_from_meta(ckpt.meta, ckpt.path)
    impl = impl or ckpt.framework
    twin = _Twin(impl, config, seed=0)
    twin.load(ckpt.weights)
    return twin.model, tokenizer, ckpt


# ---------------------------------------------------------------------------------------------
# minilm eval on encoder runs


def is_encoder_run(path: str | Path) -> bool:
    """Does ``path`` hold an encoder run (pre-trained or classifier)?"""
    try:
        return load_checkpoint(path).meta.get("model") in ("encoder", "encoder-classifier")
    except (CheckpointError, OSError, ValueError):
        return False  # let `minilm eval` report the problem its own way


def report_encoder_run(path: str | Path, impl: str | None = None, eval_iters: int | None = None,
                       print_fn: Callable[[str], None] = print) -> int:
    """``minilm eval`` of an encoder run: a classifier's test accuracy, P/R/F1, confusion matrix
    (plotted next to the checkpoint); a pre-trained encoder's validation loss and MLM accuracy."""
    model, tokenizer, ckpt = load_encoder(path, impl)
    meta = ckpt.meta
    print_fn(f"checkpoint: {ckpt.path} (step {ckpt.step})")
    if meta["model"] == "encoder":
        args = EncoderArgs.from_dict(meta["args"])
        if eval_iters is not None:
            args = EncoderArgs(**{**args.to_dict(), "eval_iters": eval_iters})
        print_fn(f"validation: {args.eval_iters} batches of {args.batch_size} rows of {args.corpus} "
              f"({args.objective})")
        for k, v in evaluate_pretrained(model, tokenizer, args).items():
            print_fn(f"{k.replace('_', ' ')}: {v:.4f}")
        return 0
    args = EncoderArgs.from_dict(meta["args"])
    task = make_task(args.task, args.n_classes)
    if task.classes != meta["classes"]:
        raise ValueError(f"the task's classes {task.classes} differ from the checkpoint's {meta['classes']}")
    plot = Path(ckpt.path).parent / "confusion_test.png"
    m = evaluate_classifier(model, tokenizer, task.classes, task.test, plot)
    print_fn(f"task: {meta['task']}, test split: {m['n']} examples, {len(task.classes)} classes "
          f"(chance {1 / len(task.classes):.3f})")
    print_fn(f"test accuracy: {m['accuracy']:.4f}")
    print_fn(f"test loss: {m['loss']:.4f}")
    print_fn(f"macro F1: {m['macro_f1']:.4f}")
    print_fn(m["report"])
    print_fn("confusion matrix (rows true, columns predicted):")
    for name, row in zip(task.classes, m["confusion"]):
        print_fn(f"  {name:<16} " + " ".join(f"{c:4d}" for c in row))
    if "confusion_plot" in m:
        print_fn(f"plot: {m['confusion_plot']}")
    return 0


# ---------------------------------------------------------------------------------------------
# The two twins behind one small interface, and the loop


class _Twin:
    """The NumPy or PyTorch encoder with its optimiser: what the loop needs, nothing more."""

    def __init__(self, impl: str, config: EncoderConfig, seed: int, args: EncoderArgs | None = None) -> None:
        self.impl, self.config = impl, config
        if impl == "numpy":
            self.model = TransformerEncoder(config, seed=seed)
        else:
            import torch

            from minilm.torch.encoder import TransformerEncoder as TorchEncoder
            from minilm.torch.train import resolve_device

            self.torch = torch
            self.device = resolve_device(args.device if args else "cpu")
            if args is not None and args.threads > 0:
                torch.set_num_threads(args.threads)
            torch.manual_seed(seed)  # dropout only
            self.model = TorchEncoder(config, seed=seed).to(self.device)
        self.optimizer = None
        if args is not None:
            self._make_optimizer(args)

    @classmethod
    def wrap(cls, model: Any) -> "_Twin":
        self = cls.__new__(cls)
        self.model, self.config, self.optimizer = model, model.config, None
        self.impl = "numpy" if isinstance(model, TransformerEncoder) else "torch"
        if self.impl == "torch":
            import torch

            self.torch, self.device = torch, next(model.parameters()).device
        return self

    def _make_optimizer(self, args: EncoderArgs) -> None:
        # weight decay on matrices (>= 2-D: embeddings, linear weights) only, as `minilm train`
        if self.impl == "numpy":
            P = self.model.params
            self.optimizer = AdamW([{"params": {k: v for k, v in P.items() if v.ndim >= 2},
                                     "weight_decay": args.weight_decay},
                                    {"params": {k: v for k, v in P.items() if v.ndim < 2}, "weight_decay": 0.0}],
                                   lr=args.lr, weight_decay=args.weight_decay)
        else:
            ps = list(self.model.parameters())
            self.optimizer = self.torch.optim.AdamW(
                [{"params": [p for p in ps if p.dim() >= 2], "weight_decay": args.weight_decay},
                 {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0}], lr=args.lr, eps=1e-8)

    def load(self, weights: dict[str, np.ndarray], strict: bool = True) -> None:
        try:
            self.model.load_state_dict(weights, strict=strict)
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"the weights do not fit the encoder ({e})") from None

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def params(self) -> dict[str, np.ndarray]:
        if self.impl == "numpy":
            return {k: v.copy() for k, v in self.model.params.items()}
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def num_params(self) -> int:
        if self.impl == "numpy":
            return self.model.num_params()
        return sum(p.numel() for p in self.model.parameters())

    def _kw(self, kw: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.impl == "numpy":
            return kw
        return {k: self.torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in kw.items()}

    def step(self, kw: dict[str, np.ndarray], lr: float, grad_clip: float) -> float:
        """One optimiser step on the batch ``kw``; returns its loss."""
        if self.impl == "numpy":
            loss, grads = self.model.loss_and_grads(**kw)
            if grad_clip > 0:
                clip_grad_norm(grads, grad_clip)  # g <- g * min(1, clip / ||g||)
            self.optimizer.lr = lr
            self.optimizer.step(grads)
            return float(loss)
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.model.loss(**self._kw(kw))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    def loss(self, kw: dict[str, np.ndarray]) -> float:
        if self.impl == "numpy":
            return float(self.model.loss(**kw))
        with self.torch.no_grad():
            self.model.eval()
            return float(self.model.loss(**self._kw(kw)))

    def head_logits(self, head: str, kw: dict[str, np.ndarray]) -> np.ndarray:
        """"mlm" (B, T, V) or "nsp" / "class" (B, K) logits as a NumPy array."""
        inputs = {k: kw[k] for k in ("idx", "segment_ids", "attention_mask") if k in kw}
        fn = getattr(self.model, f"{head}_logits")
        if self.impl == "numpy":
            return fn(**inputs)
        with self.torch.no_grad():
            self.model.eval()
            return fn(**self._kw(inputs)).float().cpu().numpy()

    def classify(self, rows: EncoderBatch, y: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, float]:
        """Class logits (N, K) of every row, and the mean cross-entropy against y (N,)."""
        out, total = [], 0.0
        for a in range(0, len(y), batch_size):
            kw = {"idx": rows.idx[a : a + batch_size], "segment_ids": rows.segment_ids[a : a + batch_size],
                  "attention_mask": rows.attention_mask[a : a + batch_size]}
            logits = self.head_logits("class", kw).astype(np.float64)  # (b, K)
            # mean cross-entropy = -mean log softmax(logits)[y]   (log-sum-exp with the row max)
            z = logits - logits.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            total += float(-logp[np.arange(len(z)), y[a : a + batch_size]].sum())
            out.append(logits)
        return np.concatenate(out), total / max(len(y), 1)

    def optimizer_state(self) -> Any:
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: Any) -> None:
        if self.impl == "numpy":
            self.optimizer.load_state_dict(state)
        else:
            from minilm.torch.train import _tensors

            self.optimizer.load_state_dict(_tensors(state))


def _loop(args: EncoderArgs, run: Any, ckpt: Any, config: EncoderConfig, tokenizer: Any, kind: str,
          batch: Callable[..., dict[str, np.ndarray]], train_data: Any,
          evaluate: Callable[[_Twin], dict[str, float]], title: str, progress: bool,
          print_fn: Callable[[str], None] | None, observers: Any, resume: bool,
          init: dict[str, np.ndarray] | None = None, extra_meta: dict[str, Any] | None = None,
          describe: str = "", callback: Callable[[int, float], None] | None = None) -> EncoderResult:
    """The training loop both commands share (the steps of ``minilm.training``'s recipe)."""
    twin = _Twin(args.impl, config, args.seed, args)
    if init is not None:
        twin.load(init, strict=False)  # the pre-trained body; a new head keeps its initialisation
    rng = np.random.default_rng(args.seed)  # the batch sampler's generator
    start = 0
    if ckpt is not None:
        twin.load(ckpt.weights)
        try:
            twin.load_optimizer_state(ckpt.state["optim"])
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{ckpt.path}: does not match the optimiser ({e})") from None
        rng.bit_generator.state = ckpt.meta["numpy_rng"]
        start = ckpt.step
    if run is not None:
        write_run_files(run, {"model": kind, "config": config.to_dict(), "args": args.to_dict()}, tokenizer,
                        start if resume else None)

    def save(done: int) -> Path | None:
        if run is None:
            return None
        meta = run_meta(args, args.impl, config, tokenizer, done, rng, model=kind, **(extra_meta or {}))
        return save_checkpoint(run.checkpoint, meta, twin.state_dict(), {"optim": twin.optimizer_state()})

    rep = Reporter(args.steps, run, start=start, progress=progress, print_fn=print_fn, title=title,
                   observers=observers)
    rep.say(f"{title}: {twin.num_params() / 1e6:.2f}M parameters, {args.steps - start} steps of "
            f"{args.batch_size} rows x {config.context_length}" + (f"; {describe}" if describe else ""))
    result = EncoderResult(out=run.root if run else None, step=start, first_step=start, losses=[])
    t0 = time.perf_counter()
    done = start
    lr = cosine_schedule(start, args.lr, args.min_lr, args.warmup_steps, args.steps)

    def evaluation() -> None:
        rep.evaluation(done, evaluate(twin), lr, "", twin.params)

    try:
        with StopFlag() as stop:
            for step in range(start, args.steps):
                if stop.requested:
                    raise KeyboardInterrupt
                lr = cosine_schedule(step, args.lr, args.min_lr, args.warmup_steps, args.steps)
                loss = twin.step(batch(train_data, rng, args.batch_size), lr, args.grad_clip)
                done = step + 1
                if not math.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss} at step {done}; try a lower --lr")
                result.losses.append(loss)
                rep.step(done, loss, lr)
                if callback is not None:
                    callback(done, loss)
                if done % args.eval_interval == 0 or done == args.steps:
                    evaluation()
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
        evaluation()
    result.step = done
    result.seconds = time.perf_counter() - t0
    result.evals = rep.records
    result.loss_plot = rep.loss_plot
    result.model = twin
    return result
