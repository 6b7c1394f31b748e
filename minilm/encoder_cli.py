"""``minilm pretrain`` and ``minilm finetune``: the encoder's commands (loops in
``minilm.encoder_training``). Imports nothing heavy at the top, so ``minilm --help`` stays fast.

``minilm eval --checkpoint RUN`` on an encoder run is answered by
``minilm.encoder_training.report_encoder_run`` (a classifier's accuracy, per-class precision /
recall / F1, the confusion matrix and its plot).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run_pretrain", "run_finetune"]

PRETRAIN_EXAMPLES = """examples:
  minilm pretrain --out runs/enc-mlm                           # masked LM on tinyshakespeare, NumPy
  minilm pretrain --objective mlm+nsp --impl torch --out runs/enc-nsp
  minilm pretrain --objective causal --steps 300 --out runs/enc-causal
  minilm pretrain --resume --out runs/enc-mlm --steps 1200     # continue, exactly
"""

FINETUNE_EXAMPLES = """examples:
  minilm finetune --checkpoint runs/enc-mlm --task speakers --out runs/speakers
  minilm finetune --checkpoint runs/enc-mlm --labelled 100 --out runs/speakers-100
  minilm finetune --checkpoint runs/enc-mlm --labelled 100 --from-scratch --out runs/scratch-100
  minilm eval --checkpoint runs/speakers                       # test accuracy, P/R/F1, confusion.png
"""

# EncoderArgs fields that are flags of both commands / of pretrain only / of finetune only
_COMMON = ["impl", "steps", "batch_size", "lr", "min_lr", "warmup_steps", "weight_decay", "grad_clip",
           "seed", "eval_interval", "eval_iters", "device", "threads", "dropout"]
_PRETRAIN = ["objective", "corpus", "tokenizer", "vocab_size", "context_length", "d_model", "n_layer",
             "n_head", "d_ff", "norm", "mask_prob"]
_FINETUNE = ["checkpoint", "task", "n_classes", "labelled", "from_scratch"]
_TORCH_ONLY = ["device", "threads", "dropout"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "pretrain", help="pre-train an encoder (masked LM, + next sentence, or causal)",
        description=_fill("Pre-train a BERT-style encoder (post-LN, bidirectional) on a corpus: masked "
                    "language modelling (15 % of tokens chosen; 80 % [MASK], 10 % random, 10 % kept), "
                    "optionally with next-sentence prediction on consecutive lines, or a causal "
                    "objective. Checkpoints, resume, Ctrl-C, progress, log.jsonl and loss.png as "
                    "`minilm train`."),
        epilog=PRETRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("objective and data")
    g.add_argument("--objective", choices=["mlm", "mlm+nsp", "causal"], help="default mlm")
    g.add_argument("--corpus", help="tinyshakespeare (default), builtin, a text file, or markov "
                   "(the text of the markov task's sources)")
    g.add_argument("--tokenizer", choices=["char", "bpe"], help="default char")
    g.add_argument("--vocab-size", type=int, help="BPE vocabulary size")
    g.add_argument("--mask-prob", type=float, help="fraction of tokens chosen for the MLM loss (0.15)")
    g = p.add_argument_group("model")
    g.add_argument("--context-length", type=int, help="T: tokens per row, [CLS] and [SEP] included (64)")
    g.add_argument("--d-model", type=int, help="C: width (64)")
    g.add_argument("--n-layer", type=int, help="blocks (2)")
    g.add_argument("--n-head", type=int, help="attention heads (4)")
    g.add_argument("--d-ff", type=int, help="MLP width (4 * d_model)")
    g.add_argument("--norm", choices=["post", "pre"], help="LayerNorm placement (post, as BERT)")
    _common_flags(p)
    p.set_defaults(handler=run_pretrain)

    f = sub.add_parser(
        "finetune", help="fine-tune a pre-trained encoder on a labelled task (speakers)",
        description=_fill("Fine-tune the encoder of a `minilm pretrain` run on a labelled task, or train "
                    "the same model from scratch (--from-scratch) for comparison. Task 'speakers': "
                    "which of the N most frequent tinyshakespeare speakers says a speech, split "
                    "so that no line is in two splits. Reports validation accuracy while training "
                    "and test accuracy, per-class P/R/F1 and a confusion matrix at the end."),
        epilog=FINETUNE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = f.add_argument_group("task")
    g.add_argument("--checkpoint", required=True, metavar="RUN", help="the pre-training run")
    g.add_argument("--task", choices=["speakers", "markov"],
                   help="speakers (default) or markov (which of N Markov sources wrote a string: a quick check)")
    g.add_argument("--n-classes", "--n-speakers", type=int, dest="n_classes",
                   help="classes: the N most frequent speakers, or N sources (default 5)")
    g.add_argument("--labelled", type=int, help="keep N labelled training examples (default all)")
    g.add_argument("--from-scratch", action="store_true", default=None,
                   help="same model, random initialisation (do not load the pre-trained weights)")
    _common_flags(f)
    f.set_defaults(handler=run_finetune)


def _fill(text: str) -> str:
    return textwrap.fill(text, width=88)


def _common_flags(p: argparse.ArgumentParser) -> None:
    from minilm.tensorboard import add_tensorboard_argument

    g = p.add_argument_group("optimisation and run")
    g.add_argument("--impl", choices=["numpy", "torch"], help="NumPy reference (default) or PyTorch twin")
    g.add_argument("--steps", type=int, help="optimiser steps")
    g.add_argument("--batch-size", type=int, help="rows per step")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--min-lr", type=float, help="final learning rate of the cosine decay")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up steps")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (>= 2-D weights only)")
    g.add_argument("--grad-clip", type=float, help="max gradient norm (0: off)")
    g.add_argument("--seed", type=int, help="seed for weights, batches, masking")
    g.add_argument("--eval-interval", type=int, help="evaluate and checkpoint every N steps")
    g.add_argument("--eval-iters", type=int, help="validation batches per evaluation (pre-training)")
    g.add_argument("--device", help="torch device (torch only)")
    g.add_argument("--threads", type=int, help="torch CPU threads (torch only)")
    g.add_argument("--dropout", type=float, help="dropout probability (torch only)")
    g.add_argument("--out", metavar="DIR", help="run folder")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace the run --out already holds")
    add_tensorboard_argument(g)  # --tensorboard, exactly as `minilm train` has it
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _args(ns: argparse.Namespace, names: list[str], default_out: str) -> tuple[Any, Path]:
    from minilm.checkpoint import load_checkpoint
    from minilm.cli import UsageError
    from minilm.encoder_training import EncoderArgs

    out = Path(ns.out or default_out)
    if ns.resume and ns.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it: give one")
    overrides = {k: getattr(ns, k) for k in _COMMON + names if getattr(ns, k, None) is not None}
    base = EncoderArgs.from_dict(load_checkpoint(out).meta["args"]) if ns.resume else EncoderArgs()
    args = EncoderArgs(**{**base.to_dict(), **overrides})
    given = [f"--{k.replace('_', '-')}" for k in _TORCH_ONLY if getattr(ns, k) is not None]
    if args.impl == "numpy" and given:
        raise UsageError(f"{', '.join(given)}: --impl torch only (the NumPy loop runs on the CPU, "
                         f"without dropout)")
    return args, out


def _observers(ns: argparse.Namespace, out: Path) -> list[Any]:
    """TensorBoard writers when --tensorboard is given (minilm.tensorboard; [] otherwise)."""
    from minilm.tensorboard import tensorboard_observers

    return tensorboard_observers(ns, out)


def run_pretrain(ns: argparse.Namespace) -> int:
    from minilm.encoder_training import pretrain

    args, out = _args(ns, _PRETRAIN, "runs/encoder")
    print(f"minilm: pre-training an encoder ({args.objective}, {args.impl}) on {args.corpus} for "
          f"{args.steps} steps -> {out}", flush=True)
    result = pretrain(args, out, resume=ns.resume, overwrite=ns.overwrite, progress=not ns.quiet,
                      observers=_observers(ns, out))
    return _finish(result, out, "pretrain")


def run_finetune(ns: argparse.Namespace) -> int:
    from minilm.encoder_training import finetune

    args, out = _args(ns, _FINETUNE, "runs/speakers")
    how = "from scratch" if args.from_scratch else f"from {args.checkpoint}"
    print(f"minilm: fine-tuning ({args.impl}) on {args.task} {how} for {args.steps} steps -> {out}", flush=True)
    result = finetune(args, out, resume=ns.resume, overwrite=ns.overwrite, progress=not ns.quiet,
                      observers=_observers(ns, out))
    return _finish(result, out, "finetune")


def _finish(result: Any, out: Path, command: str) -> int:
    from minilm.cli import EXIT_INTERRUPTED

    if result.interrupted:
        sys.stderr.write(f"minilm: interrupted after step {result.step}: checkpoint saved to "
                         f"{result.checkpoint} (continue with: minilm {command} --resume --out {out})\n")
        return EXIT_INTERRUPTED
    last = result.evals[-1] if result.evals else {}
    shown = " | ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in last.items()
                       if k.startswith("val_") and isinstance(v, float))
    print(f"\ndone: {result.step} steps ({result.step - result.first_step} in this run, "
          f"{result.seconds:.1f}s); {shown}")
    files = "checkpoint/, config.json, tokenizer.json, log.jsonl" + (", loss.png" if result.loss_plot else "")
    if result.test:
        files += ", test_metrics.json" + (", confusion_test.png" if "confusion_plot" in result.test else "")
    print(f"run folder: {out} ({files})")
    return 0
