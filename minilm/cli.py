"""The ``minilm`` command: ``train``, ``generate``, ``eval`` and ``bench`` here; ``pretrain``
and ``finetune`` (``minilm.encoder_cli``), ``compress`` (``minilm.compress_command``),
``assignment`` (``minilm.classroom.command``) and ``tutorials`` (``minilm.tutorials``) in
modules of their own, listed in ``COMMAND_MODULES``.

``minilm`` and ``python -m minilm`` are the same program; with no arguments it prints its help.
``minilm train`` with no arguments is the main job: the ``shakespeare-char`` preset, a small
character-level Transformer trained on tinyshakespeare (val loss about 1.80 in about a minute
and a half on two CPU cores), leaving ``runs/shakespeare-char/``.

Errors a user can make (bad flags, missing or corrupt files, an unknown preset or corpus, a
missing optional dependency such as triton) end in ONE line on stderr and a non-zero exit:
2 for usage errors, 1 for the rest, 130 after Ctrl-C (a checkpoint is saved first). Anything
else is a bug and keeps its traceback. ``--debug`` (or ``MINILM_DEBUG=1``) shows the
traceback of user errors too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser"]

EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED = 2, 1, 130


class UsageError(Exception):
    """A bad combination of flags (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (plus a pointer to --help), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_USAGE)


def _fmt(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=88)


# ---------------------------------------------------------------------------------------------
# Parser


TRAIN_EXAMPLES = _fmt("""
    examples:
      minilm train                                   # the main job: shakespeare-char, ~70 s on 2 CPU cores
      minilm train --preset tiny --out runs/tiny     # a few seconds
      minilm train --preset pydoc-char               # the same model on Python's own documentation
      minilm train --model lstm --preset shakespeare-char-lstm
      minilm train --impl numpy --steps 300 --corpus my.txt --tokenizer bpe --vocab-size 512
      minilm train --resume --out runs/shakespeare-char       # continue a stopped run exactly
      minilm train --overwrite --out runs/shakespeare-char    # start it again from scratch
      torchrun --nproc_per_node 2 -m minilm train --batch-size 24   # data parallel (DDP)

    Ctrl-C stops after the current step, saves a checkpoint and exits with code 130.
    The run folder gets checkpoint/ (model.safetensors, state.safetensors, meta.json),
    config.json, tokenizer.json, log.jsonl, and loss.png when matplotlib is installed.
    A folder that already holds a run is never overwritten unless --overwrite is given.
""")

GENERATE_EXAMPLES = _fmt("""
    examples:
      minilm generate --checkpoint runs/shakespeare-char --prompt "ROMEO:"
      minilm generate --checkpoint runs/shakespeare-char --temperature 0 --max-new-tokens 100   # greedy
      minilm generate --checkpoint runs/shakespeare-char --top-k 40 --num-samples 3 --seed 1
""")

EVAL_EXAMPLES = _fmt("""
    examples:
      minilm eval --checkpoint runs/shakespeare-char                   # the whole validation split
      minilm eval --checkpoint runs/shakespeare-char --eval-iters 20   # 20 random batches, as in training
      minilm eval --checkpoint runs/shakespeare-char --corpus other.txt   # another text's split
""")

# Commands defined in a module of their own: each module has ``add_parser(sub)``, which adds
# its subparser to ``sub`` (built with ``parser_class=_Parser``) and sets
# ``handler=<function(ns) -> int>`` as a default; errors are reported as for the commands here.
# Such a module imports nothing heavy at the top (torch, matplotlib) so that ``minilm --help``
# stays fast.
COMMAND_MODULES: list[str] = [
    "minilm.encoder_cli",  # minilm pretrain, minilm finetune
    "minilm.compress_command",  # minilm compress
    "minilm.classroom.command",  # minilm assignment list|make|grade|gradescope
    "minilm.tutorials",  # minilm tutorials list|build
]

BENCHMARKS: dict[str, tuple[str | None, str, str]] = {
    # name: (module with main(argv, prog) -- or "module:function" -- or None, script under
    # benchmarks/, what it measures)
    "compile": ("minilm.kernels.compile", "compile_kernels.py",
                "compile the Triton kernels for sm_80/sm_90 (no GPU needed) and report "
                "registers, spills, shared memory and wgmma use"),
    "attention": ("minilm.attention_bench", "bench_attention.py",
                  "every attention implementation side by side, CPU or GPU (NumPy, PyTorch "
                  "twins, torch sdpa backends, Triton, plug-ins --impl MODULE:FUNCTION): time, "
                  "GFLOP/s or TFLOP/s, % of a GEMM, peak bytes; JSON and plots"),
    "compare": ("minilm.attention_bench:compare_main", "bench_attention.py",
                "row-by-row ratios of two 'bench attention' JSON files: compare A.json B.json"),
    "train-step": (None, "bench_train_step.py",
                   "one training step: NumPy reference vs PyTorch twin vs a plain-PyTorch GPT "
                   "(torch.nn pieces, fused QKV, SDPA)"),
    "generate": (None, "bench_generate.py", "generation with and without the KV cache"),
    "quality": (None, "bench_quality.py",
                "shakespeare-char Transformer and LSTM presets: val loss and wall time vs targets"),
    "tokenizer": (None, "bench_tokenizer.py", "tokenizer training and encoding speed"),
}
BENCHMARKS["finetune"] = (None, "bench_finetune.py",  # issue 10
                          "pre-trained and fine-tuned encoder vs the same model from scratch: "
                          "test accuracy against the number of labelled examples, plotted")


def build_parser() -> argparse.ArgumentParser:
    from minilm.presets import DEFAULT_PRESET, PRESETS
    from minilm.tensorboard import add_tensorboard_argument

    parser = _Parser(
        prog="minilm",
        description=_wrap("minilm: language models and their kernels, from scratch. "
                    "Train, sample from, evaluate and benchmark small language models."),
        epilog="run 'minilm COMMAND --help' for each command's flags and examples",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of errors (also MINILM_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # --- train ---
    t = sub.add_parser(
        "train", help="train a model (no arguments: the main job, preset shakespeare-char)",
        description=_wrap("Train a Transformer or LSTM language model with the NumPy reference loop or "
                    "its PyTorch twin. Flags override the preset; with no flags this is the "
                    "main job, preset 'shakespeare-char' (also called 'default'): a small "
                    "char-level Transformer on tinyshakespeare, about 70 seconds on 2 CPU cores, "
                    "ending near val loss 1.80. Prints validation perplexity and samples."),
        epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--preset", default=None, metavar="NAME",
                   help=f"settings to start from: {', '.join(sorted(PRESETS))} (default: {DEFAULT_PRESET})")
    t.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    g = t.add_argument_group("model")
    g.add_argument("--model", choices=["transformer", "lstm"], help="model kind")
    g.add_argument("--impl", choices=["numpy", "torch"], help="NumPy reference loop or PyTorch twin")
    g.add_argument("--attention", choices=["naive", "sdpa", "triton"],
                   help="torch Transformer attention: naive (twin of NumPy), sdpa, triton")
    g.add_argument("--context-length", type=int, help="T: training window / context")
    g.add_argument("--d-model", type=int, help="C: Transformer width")
    g.add_argument("--n-layer", type=int, help="Transformer blocks / LSTM layers")
    g.add_argument("--n-head", type=int, help="H: attention heads")
    g.add_argument("--n-kv-head", type=int, help="Hkv: key/value heads (grouped-query attention)")
    g.add_argument("--d-ff", type=int, help="Transformer MLP width (default 4 * d_model)")
    g.add_argument("--d-embed", type=int, help="LSTM embedding width")
    g.add_argument("--d-hidden", type=int, help="LSTM hidden width")
    g.add_argument("--dropout", type=float, help="dropout probability (torch only)")
    g = t.add_argument_group("data")
    g.add_argument("--corpus", help="tinyshakespeare, builtin (Python's reference documentation, "
                   "which ships with Python), or a path to a UTF-8 text file")
    g.add_argument("--tokenizer", choices=["char", "bpe"], help="character or byte-level BPE")
    g.add_argument("--vocab-size", type=int, help="BPE vocabulary size")
    g.add_argument("--lstm-bptt", choices=["carry", "random"],
                   help="LSTM windows: consecutive with carried state, or random from zero state")
    g = t.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, help="optimiser steps")
    g.add_argument("--batch-size", type=int, help="B: sequences per step (over all ranks)")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--min-lr", type=float, help="final learning rate of the cosine decay")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up steps")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (>= 2-D weights only)")
    g.add_argument("--beta1", type=float, help="AdamW beta1")
    g.add_argument("--beta2", type=float, help="AdamW beta2")
    g.add_argument("--grad-clip", type=float, help="max gradient norm (0: off)")
    g = t.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", help="run folder (default: runs/<preset>)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, exactly")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run that --out already holds (without it, it is refused)")
    g.add_argument("--seed", type=int, help="seed for weights, batches, dropout, samples")
    g.add_argument("--device", help="torch device: auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", choices=["float32", "float64"], help="parameter dtype")
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "none"],
                   help="torch mixed precision (auto: bf16 on a GPU that has it, none on CPU)")
    g.add_argument("--threads", type=int, help="torch CPU threads (0: torch's default)")
    g.add_argument("--eval-interval", type=int, help="evaluate and checkpoint every N steps")
    g.add_argument("--eval-iters", type=int, help="validation batches per evaluation")
    g.add_argument("--sample-tokens", type=int, help="tokens in each printed sample (0: none)")
    add_tensorboard_argument(g)  # --tensorboard (minilm.tensorboard; pretrain/finetune use it too)
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    # --- generate ---
    gen = sub.add_parser(
        "generate", help="sample text from a trained model",
        description=_wrap("Sample text from a checkpoint (a run folder or its checkpoint file). "
                    "Sampling is seeded: the same seed gives the same text, in either --impl."),
        epilog=GENERATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("--checkpoint", required=True, metavar="RUN", help="run folder or checkpoint file")
    gen.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    gen.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    gen.add_argument("--temperature", type=float, default=0.8,
                     help="softmax temperature; 0 is greedy (default 0.8)")
    gen.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep mass p")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    gen.add_argument("--num-samples", type=int, default=1, help="samples to draw (default 1)")
    gen.add_argument("--impl", choices=["numpy", "torch"], help="default: the checkpoint's")
    gen.add_argument("--device", default="cpu", help="torch device (default cpu)")
    gen.add_argument("--no-cache", action="store_true", help="recompute every step (no KV cache)")

    # --- eval ---
    ev = sub.add_parser(
        "eval", help="validation loss, perplexity and bits per character of a trained model",
        description=_wrap("Evaluate a checkpoint on the whole validation split, in order (the last "
                    "val_fraction of the corpus it was trained on, or of --corpus; the LSTM "
                    "carries its state along it): loss in nats per token, perplexity exp(loss), "
                    "bits per token and per character. Exact and deterministic."),
        epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--checkpoint", required=True, metavar="RUN", help="run folder or checkpoint file")
    ev.add_argument("--corpus", help="evaluate on this corpus's validation split instead")
    ev.add_argument("--eval-iters", type=int, default=None,
                    help="estimate on this many random batches, as training does (default: the "
                         "whole validation split, in order: exact)")
    ev.add_argument("--batch-size", type=int, help="default: the training batch size")
    ev.add_argument("--impl", choices=["numpy", "torch"], help="default: the checkpoint's")
    ev.add_argument("--device", default="cpu", help="torch device (default cpu)")

    # --- bench ---
    lines = "\n".join(textwrap.fill(v[2], width=88, initial_indent=f"  {k:<11} ",
                                   subsequent_indent=" " * 14) for k, v in BENCHMARKS.items())
    b = sub.add_parser(
        "bench", help="run a benchmark",
        description=_wrap("Run one of minilm's benchmarks; the arguments after its name go to it "
                    "('minilm bench attention --help')."),
        epilog=f"benchmarks:\n{lines}", formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("which", choices=list(BENCHMARKS), metavar="BENCHMARK",
                   help=f"one of: {', '.join(BENCHMARKS)}")
    b.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="...",
                   help="arguments for the benchmark")

    # --- commands that live in modules of their own ---
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(sub)
    return parser


# ---------------------------------------------------------------------------------------------
# Commands

_TRAIN_FIELDS = ["model", "impl", "attention", "context_length", "d_model", "n_layer", "n_head",
                 "n_kv_head", "d_ff", "d_embed", "d_hidden", "dropout", "corpus", "tokenizer",
                 "vocab_size", "lstm_bptt", "steps", "batch_size", "lr", "min_lr", "warmup_steps",
                 "weight_decay", "beta1", "beta2", "grad_clip", "seed", "device", "dtype", "amp",
                 "threads", "eval_interval", "eval_iters", "sample_tokens"]


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


# Options that only the PyTorch loop has: given with --impl numpy they are an error.
_TORCH_ONLY = ["device", "amp", "threads", "attention", "dropout"]


def cmd_train(ns: argparse.Namespace) -> int:
    from minilm.checkpoint import load_checkpoint
    from minilm.presets import DEFAULT_PRESET, EXPECTED, PRESETS, TrainArgs, get_preset
    from minilm.tensorboard import tensorboard_observers

    if ns.list_presets:
        for name, overrides in PRESETS.items():
            print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in overrides.items()))
        return 0
    overrides = {k: getattr(ns, k) for k in _TRAIN_FIELDS if getattr(ns, k) is not None}
    preset = ns.preset or DEFAULT_PRESET
    out = Path(ns.out) if ns.out else Path("runs") / preset
    if ns.resume and ns.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it: give one")
    if ns.resume:
        if ns.preset:
            raise UsageError("--resume takes its settings from the checkpoint; drop --preset")
        ckpt = load_checkpoint(out)
        impl = ns.impl or ckpt.meta["args"].get("impl")
    else:
        impl = ns.impl or PRESETS.get(preset, {}).get("impl", TrainArgs.impl)
    given = [f"--{k.replace('_', '-')}" for k in _TORCH_ONLY if getattr(ns, k) is not None]
    if impl == "numpy" and given:
        raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to "
                         f"--impl torch only; the NumPy loop runs on the CPU, in one process, "
                         f"in full precision, without dropout")
    if ns.resume:
        args = TrainArgs.from_dict(ckpt.meta["args"]).replace(**overrides)
    else:
        args = get_preset(preset, **overrides)
    if args.impl == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise ImportError("--impl torch needs PyTorch: pip install 'minilm[torch]', "
                              "or train with --impl numpy") from None
        from minilm.torch.train import resolve_device, train

        resolve_device(args.device)  # a device torch cannot use: one line, before anything runs
        if args.model == "transformer" and args.attention == "triton":
            _triton_on_cpu_needs_interpreter(args.device)
    else:
        from minilm.numpy.train import train
    if _is_rank0():
        what = f"{args.model} ({args.impl}) on {args.corpus}, {args.tokenizer} tokenizer"
        verb = f"resuming (from step {ckpt.step})" if ns.resume else "training"
        print(f"minilm: {verb} {what} for {args.steps} steps -> {out}", flush=True)
        if not ns.resume and preset in EXPECTED and args == get_preset(preset):
            print(f"minilm: expect {EXPECTED[preset]}", flush=True)
    observers = tensorboard_observers(ns, out) if _is_rank0() else []  # --tensorboard
    result = train(args, out, resume=ns.resume, overwrite=ns.overwrite, progress=not ns.quiet,
                   observers=observers)
    if not _is_rank0():
        return EXIT_INTERRUPTED if result.interrupted else 0
    if result.interrupted:
        sys.stderr.write(f"minilm: interrupted after step {result.step}: checkpoint saved to "
                         f"{result.checkpoint} (continue with: minilm train --resume --out {out})\n")
        return EXIT_INTERRUPTED
    unit = "char" if args.tokenizer == "char" else "token"
    ran = result.step - result.first_step
    print(f"\ndone: {result.step} steps ({ran} in this run, {result.seconds:.1f}s)")
    print(f"validation: loss {result.val_loss:.4f} nats/{unit} {result.val_over} | perplexity "
          f"{result.val_perplexity:.3f} | bits/char {result.bits_per_char:.4f} "
          f"(the whole split: minilm eval --checkpoint {out})")
    if result.sample:
        print(f"sample:\n{result.sample}")
    files = "checkpoint/, config.json, tokenizer.json, log.jsonl" + (", loss.png" if result.loss_plot else "")
    print(f"run folder: {out} ({files})")
    return 0


def _triton_on_cpu_needs_interpreter(device: str) -> None:
    """Without a GPU the Triton kernel can only run under its interpreter, which must be
    chosen before minilm.kernels is first imported: choose it here, and say so."""
    import torch

    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if on_cpu and "minilm.kernels" not in sys.modules and not os.environ.get("TRITON_INTERPRET"):
        os.environ["TRITON_INTERPRET"] = "1"
        if _is_rank0():
            print("minilm: no GPU: the Triton kernel runs under the Triton interpreter "
                  "(TRITON_INTERPRET=1), which is slow", flush=True)


def _check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise UsageError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def cmd_generate(ns: argparse.Namespace) -> int:
    import numpy as np

    from minilm.runs import load_run

    _check_positive("--max-new-tokens", ns.max_new_tokens)
    _check_positive("--num-samples", ns.num_samples)
    _check_positive("--temperature", ns.temperature, allow_zero=True)
    _check_positive("--top-k", ns.top_k)
    if ns.top_p is not None and not 0 < ns.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {ns.top_p}")
    model, tokenizer, ckpt = load_run(ns.checkpoint, impl=ns.impl, device=ns.device)
    ids = tokenizer.encode(ns.prompt)
    if not ids:
        raise UsageError("--prompt encodes to no tokens; give at least one character")
    idx = np.asarray([ids], dtype=np.int64)  # (1, T)
    # special tokens (<bos>, <pad>, ...) are never sampled: nobody asked for them
    kwargs = dict(temperature=ns.temperature, top_k=ns.top_k, top_p=ns.top_p,
                  num_return_sequences=ns.num_samples, seed=ns.seed, use_cache=not ns.no_cache,
                  suppress_ids=tokenizer.special_ids)
    if (ns.impl or ckpt.framework) == "torch":
        import torch

        from minilm.torch.generate import generate

        device = next(model.parameters()).device  # load_run checked and resolved --device
        with torch.no_grad():
            out = generate(model, torch.from_numpy(idx).to(device), ns.max_new_tokens, **kwargs)
        rows = out.cpu().tolist()
    else:
        from minilm.numpy.generate import generate

        rows = np.asarray(generate(model, idx, ns.max_new_tokens, **kwargs)).tolist()
    for i, row in enumerate(rows):
        if i:
            print("-" * 40)
        print(tokenizer.decode(row))
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    from minilm.encoder_training import is_encoder_run, report_encoder_run

    if is_encoder_run(ns.checkpoint):  # an encoder or a classifier: accuracy, P/R/F1, confusion
        return report_encoder_run(ns.checkpoint, ns.impl, ns.eval_iters)
    from minilm.numpy.metrics import TopKCounter
    from minilm.presets import TrainArgs
    from minilm.runs import load_run
    from minilm.training import eval_description, lm_metrics, prepare_data

    _check_positive("--eval-iters", ns.eval_iters)
    _check_positive("--batch-size", ns.batch_size)
    model, tokenizer, ckpt = load_run(ns.checkpoint, impl=ns.impl, device=ns.device)
    args = TrainArgs.from_dict(ckpt.meta["args"]).replace(
        batch_size=ns.batch_size, corpus=ns.corpus, eval_iters=ns.eval_iters)
    data = prepare_data(args, tokenizer)
    whole = ns.eval_iters is None  # the whole split, in order: exact
    acc = TopKCounter()
    if (ns.impl or ckpt.framework) == "torch":
        from minilm.torch.train import estimate_loss

        loss = estimate_loss(model, data.val, args, device=next(model.parameters()).device,
                             whole_split=whole, accuracy=acc)
    else:
        from minilm.numpy.train import estimate_loss

        loss = estimate_loss(model, data.val, args, whole_split=whole, accuracy=acc)
    m = lm_metrics(loss, data.chars_per_token)
    unit = "char" if args.tokenizer == "char" else "token"
    print(f"checkpoint: {ckpt.path} (step {ckpt.step})")
    print(f"corpus: {args.corpus} validation split ({len(data.val):,} tokens, "
          f"{data.chars_per_token:.3f} chars/token)")
    print(f"val loss: {m['val_loss']:.4f} nats/{unit} {eval_description(args, len(data.val), whole)}")
    print(f"perplexity: {m['val_perplexity']:.4f}")
    print(f"bits per token: {m['val_bits_per_token']:.4f}")
    print(f"bits per char: {m['val_bits_per_char']:.4f}")
    for k, v in acc.result().items():  # val_next_token_accuracy, val_top5_accuracy
        print(f"{k[4:].replace('_', ' ')}: {v:.4f}")
    return 0


def repo_benchmarks_dir() -> Path:
    """``benchmarks/`` of the checkout this minilm was installed from (editable installs)."""
    return Path(__file__).resolve().parents[1] / "benchmarks"


def cmd_bench(ns: argparse.Namespace) -> int:
    import runpy

    module_name, script, _ = BENCHMARKS[ns.which]
    argv = list(ns.bench_args)
    prog = f"minilm bench {ns.which}"  # what --help and usage errors show
    entry = "main"
    if module_name is not None and ":" in module_name:
        module_name, entry = module_name.split(":")
    if module_name is not None:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name) or e.name == module_name:
                module = None  # not written / not installed: try the script
            else:
                raise
        if module is not None and hasattr(module, entry):
            try:
                rc = getattr(module, entry)(argv, prog=prog)
            except SystemExit as e:  # argparse's --help (0) and usage errors (2)
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_ERROR)
            return int(rc or 0)
    path = repo_benchmarks_dir() / script
    if not path.is_file():
        raise FileNotFoundError(
            f"'minilm bench {ns.which}' runs benchmarks/{script}, which is not here: the "
            f"benchmarks ship with a checkout of the repository, not with the installed package")
    # the script's main(argv, prog) (its __main__ block is not run), so that its usage line
    # names the command the user typed
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [prog, *argv]
    sys.path.insert(0, str(path.parent))
    try:
        script_globals = runpy.run_path(str(path), run_name=f"minilm_bench_{ns.which.replace('-', '_')}")
        rc = script_globals["main"](argv, prog=prog)
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        sys.stderr.write(f"{code}\n")
        return EXIT_ERROR
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    return int(rc or 0)


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "eval": cmd_eval, "bench": cmd_bench}


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    first, *rest = text.splitlines()
    return first + (" ..." if rest else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``minilm`` / ``python -m minilm``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:  # `minilm` alone (or `minilm --debug`): the help, not a run
        parser.print_help()
        return 0
    debug = ns.debug or os.environ.get("MINILM_DEBUG", "") not in ("", "0")
    prog = f"minilm {ns.command}"
    handler = getattr(ns, "handler", None) or COMMANDS[ns.command]
    try:
        return handler(ns)
    except UsageError as e:
        if debug:
            raise
        sys.stderr.write(f"{prog}: error: {e} (see '{prog} --help')\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write(f"{prog}: interrupted\n")
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError, ImportError, OSError, FloatingPointError) as e:
        # user errors: bad values, missing/corrupt files, a missing optional dependency
        if debug:
            raise
        sys.stderr.write(f"{prog}: error: {_one_line(e)}\n")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover - use `python -m minilm`
    sys.exit(main())
