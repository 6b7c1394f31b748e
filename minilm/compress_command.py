"""``minilm compress``: quantise and/or prune a trained Transformer run, and measure it.

    minilm compress --checkpoint runs/shakespeare-char --quantize int8 --per-channel --out runs/sc-int8
    minilm compress --checkpoint runs/shakespeare-char --prune 0.5 --finetune-steps 300 --out runs/sc-p50
    minilm compress --checkpoint runs/shakespeare-char --quantize int4 --group-size 64 \\
        --prune 0.25 --structured heads --out runs/sc-small --quick

writes into ``--out``:

- ``checkpoint/``: the compressed model (``minilm.compressed``: int8/int4 values and scales,
  pruned matrices as bitmask + kept values) in the run format, so ``minilm generate
  --checkpoint OUT`` and ``minilm eval --checkpoint OUT`` take it (dequantised at load);
- ``report.json`` (one row per variant), ``report.md`` (the table) and ``compress.png``
  (perplexity against bytes on disk); ``variants/``: every measured variant's weights file.

The report holds the float32 model, the variant the flags ask for and, unless ``--quick``,
the whole sweep of ``minilm.compress.sweep`` (int8/int4, torch's dynamic quantisation,
sparsities with and without fine-tuning, heads and neurons). This module imports nothing
heavy at the top (``minilm --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

__all__ = ["add_parser", "run"]

EXAMPLES = """examples:
  minilm compress --checkpoint runs/shakespeare-char --quantize int8 --per-channel --out runs/sc-int8
  minilm compress --checkpoint runs/shakespeare-char --prune 0.5 --finetune-steps 300 --out runs/sc-p50
  minilm compress --checkpoint runs/shakespeare-char --quantize int4 --group-size 64 --out runs/sc-int4 --quick
  minilm generate --checkpoint runs/sc-int8 --prompt "ROMEO:"
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compress", help="quantise / prune a trained Transformer and measure size, perplexity, speed",
        description="Quantise (int8, int4) and/or prune (unstructured, heads, neurons) a trained "
                    "Transformer run; write the compressed checkpoint (loadable by generate and "
                    "eval) and a report: parameters, bytes on disk, validation perplexity, "
                    "next-token accuracy and generation tokens/s of every variant.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run folder of a trained Transformer")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the compressed run and the report")
    p.add_argument("--quantize", choices=["int8", "int4"], help="bit width of the weights")
    p.add_argument("--per-channel", action="store_true",
                   help="one scale per output channel (default: one per tensor; implied by --group-size)")
    p.add_argument("--group-size", type=int, metavar="N",
                   help="group-wise scales along the input axis (32, 64, 128: int4's usual choice)")
    p.add_argument("--activations", action="store_true",
                   help="report the int8 weights+activations model too (per-token activation scales)")
    p.add_argument("--prune", type=float, default=0.0, metavar="S",
                   help="sparsity in [0, 1): unstructured magnitude pruning; with --structured the "
                        "fraction of heads / neurons removed")
    p.add_argument("--structured", choices=["heads", "neurons"],
                   help="prune whole attention heads or MLP neurons (L2-norm importance)")
    p.add_argument("--finetune-steps", type=int, default=0, metavar="N",
                   help="AdamW steps under the pruning masks (default 0; the sweep uses 300)")
    p.add_argument("--lr", type=float, default=5e-4, help="fine-tuning learning rate (default 5e-4)")
    p.add_argument("--quick", action="store_true",
                   help="measure only float32 and the asked variant, not the whole sweep")
    p.add_argument("--eval-iters", type=int, default=50, metavar="N",
                   help="validation batches per variant (default 50)")
    p.add_argument("--gen-tokens", type=int, default=200, metavar="N",
                   help="tokens generated to time each variant (default 200)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(handler=run)


def run(ns: argparse.Namespace) -> int:
    from minilm.cli import UsageError

    if ns.quantize is None and not ns.prune:
        raise UsageError("nothing to compress: give --quantize int8|int4 and/or --prune S")
    if ns.group_size is not None and ns.quantize is None:
        raise UsageError("--group-size needs --quantize")
    if ns.group_size is not None and ns.group_size < 1:
        raise UsageError(f"--group-size must be a positive int, got {ns.group_size}")
    if ns.activations and ns.quantize != "int8":
        raise UsageError("--activations needs --quantize int8")
    if not 0.0 <= ns.prune < 1.0:
        raise UsageError(f"--prune (sparsity) must be in [0, 1), got {ns.prune}")
    if ns.structured and not ns.prune:
        raise UsageError("--structured needs --prune S (the fraction of heads / neurons to remove)")
    if ns.finetune_steps < 0 or (ns.finetune_steps and not ns.prune):
        raise UsageError("--finetune-steps N >= 0 fine-tunes a pruned model: give --prune too"
                         if ns.finetune_steps > 0 else f"--finetune-steps must be >= 0, got {ns.finetune_steps}")
    for flag, v in (("--eval-iters", ns.eval_iters), ("--gen-tokens", ns.gen_tokens)):
        if v < 1:
            raise UsageError(f"{flag} must be > 0, got {v}")
    out = Path(ns.out)
    if out.exists() and any(out.iterdir()) and not ns.overwrite:
        raise UsageError(f"{out} exists and is not empty: give another --out, or --overwrite")
    return _compress(ns, out)


def _compress(ns: argparse.Namespace, out: Path) -> int:
    from dataclasses import replace

    from minilm import compress as mc
    from minilm.checkpoint import save_checkpoint
    from minilm.compressed import load_compressed

    model, _, info = mc.load_transformer_run(ns.checkpoint)  # one line for a wrong kind of run
    config = model.config
    asked = mc.variant_from_options(ns.quantize, ns.per_channel, ns.group_size, False, ns.prune,
                                    ns.structured, ns.finetune_steps)
    variants = [mc.Variant("float32"), replace(asked, name=f"asked: {asked.name}")]
    if ns.activations:
        variants.append(replace(asked, name=f"asked: {asked.name} w+a", activations=True))
    if not ns.quick:
        variants += [v for v in mc.sweep(ns.finetune_steps or 300, config) if v.name != "float32"]
    if out.exists() and ns.overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"minilm compress: {info['path']} -> {out} ({len(variants)} variants)", flush=True)
    rows = mc.measure(ns.checkpoint, variants, eval_iters=ns.eval_iters, gen_tokens=ns.gen_tokens,
                      lr=ns.lr, out=out)

    # the asked variant becomes the run's checkpoint (its arrays as stored, not decoded)
    arrays, cmeta = load_compressed(out / "variants" / (mc.slug(variants[1].name) + ".safetensors"), raw=True)
    meta = {k: v for k, v in info["meta"].items() if k not in ("format", "version")}
    meta["compressed"] = cmeta
    save_checkpoint(out / "checkpoint", meta, arrays)
    src = Path(info["path"]).parent
    for name in ("config.json", "tokenizer.json"):
        if (src / name).is_file():
            shutil.copy(src / name, out / name)

    table = mc.format_table(rows)
    (out / "report.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "report.md").write_text(table + "\n")
    plot = mc.plot_rows(rows, out / "compress.png")
    print()
    print(table)
    print(f"\ncompressed checkpoint: {out / 'checkpoint'} ({asked.name}); report: report.json, "
          f"report.md" + (", compress.png" if plot else "") + f" in {out}")
    print(f"try: minilm generate --checkpoint {out} --prompt \"...\"; minilm eval --checkpoint {out}")
    return 0
