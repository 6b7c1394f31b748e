"""Compression measured: quantise and prune a trained Transformer, then weigh each variant.

For every variant of a trained model this measures what it costs and what it keeps::

    params        scalar parameters of the model (nonzero: those not pruned)
    bytes         the compressed weights file on disk (safetensors, header included)
    val ppl       exp(mean cross-entropy) on the run's validation windows
    accuracy      next-token accuracy: mean over the counted tokens of [argmax logits == target]
    tokens/s      greedy generation with the KV cache, batch 1, best of 3 runs after a warm-up

``measure(run)`` returns one row (a dict) per variant; ``format_table(rows)`` prints them and
``plot_rows(rows, path)`` draws perplexity against bytes. From Python::

    from minilm.compress import Variant, format_table, measure
    rows = measure("runs/shakespeare-char")                      # the whole sweep
    rows = measure("runs/shakespeare-char", [Variant("float32"), Variant("int8", bits=8)])
    print(format_table(rows))
    [(r["variant"], r["val_perplexity"], r["bytes"]) for r in rows]

The variants (``sweep``): float32, and float32 fine-tuned as long as the pruned models are
(the control: the run may simply not have converged); int8 per tensor, int8 per channel, int8
weights + activations (per-channel weights, per-token dynamic activation scales,
``minilm.torch.quantize.QuantizedTransformerLM``); int4 weight-only with groups of 32, 64,
128; torch's own ``quantize_dynamic`` (the peer); magnitude pruning to 25 / 50 / 75 %
sparsity (global, unstructured) with and without fine-tuning; a quarter of the attention
heads and half of the MLP neurons pruned (structured), with and without fine-tuning.

The compressed weights (``minilm.compressed``: int8/int4 values and scales, pruned matrices as
a bitmask plus the kept values) load back dequantised: the model then runs dense in float32
(integer arithmetic is measured by the "int8 w+a" variant, which runs
``QuantizedTransformerLM``).

Deliberately left out: LSTM runs (they have no heads; this module takes Transformers),
sparse kernels (a pruned model is stored sparse but runs dense, so it is not faster),
quantisation of the KV cache, timing on accelerators.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from minilm import compressed
from minilm.compressed import FORMAT, decode, load_compressed, save_compressed
from minilm.numpy import prune as npr
from minilm.numpy import quantize as nq
from minilm.numpy.metrics import next_token_accuracy

__all__ = ["Variant", "sweep", "variant_from_options", "compress_state", "encode", "decode",
           "save_compressed", "load_compressed", "evaluate", "measure",
           "format_table", "plot_rows", "FORMAT"]

STRUCTURED = ("heads", "neurons")


@dataclass(frozen=True)
class Variant:
    """One way to compress a model."""

    name: str  # the label in the table and plot
    bits: int | None = None  # None: float32 weights; 8 or 4
    per_channel: bool = True  # one scale per output channel (else per tensor); ignored with groups
    group_size: int | None = None  # group-wise scales along the input axis (int4)
    activations: bool = False  # int8 activations too (per token, dynamic): integer matmuls
    prune: float = 0.0  # unstructured: sparsity; structured: fraction of heads / neurons
    structured: str | None = None  # None (unstructured, global magnitude), "heads", "neurons"
    finetune_steps: int = 0  # AdamW steps under the masks after pruning
    peer: bool = False  # torch.ao.quantization.quantize_dynamic instead of ours

    def __post_init__(self) -> None:
        if self.bits is not None:
            nq.check_bits(self.bits)
        npr.check_sparsity(self.prune, "fraction" if self.structured else "sparsity")
        if self.structured not in (None, *STRUCTURED):
            raise ValueError(f"structured must be one of {list(STRUCTURED)}, got {self.structured!r}")
        if self.activations and self.bits != 8:
            raise ValueError("int8 activations need int8 weights (bits=8)")
        if self.group_size is not None and self.bits is None:
            raise ValueError("group_size needs a bit width (quantise to int8 or int4)")
        if self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0, got {self.finetune_steps}")


def sweep(finetune_steps: int = 300, config: Any = None) -> list[Variant]:
    """The variants of the report (module docstring), in table order. With ``config``, int4
    group sizes that do not divide every Linear's input width (d_model, d_ff) are left out."""
    ft = finetune_steps
    widths = [] if config is None else [config.d_model, config.d_ff]
    out = [Variant("float32")]
    if ft:  # the control: does fine-tuning help the unpruned model as much?
        out.append(Variant(f"float32 + ft{ft}", finetune_steps=ft))
    out += [
        Variant("int8 per-tensor", bits=8, per_channel=False),
        Variant("int8 per-channel", bits=8),
        Variant("int8 w+a", bits=8, activations=True),
        *[Variant(f"int4 g{g}", bits=4, group_size=g) for g in (32, 64, 128)
          if all(w % g == 0 for w in widths)],
        Variant("torch dynamic int8", peer=True),
    ]
    for s in (0.25, 0.5, 0.75):
        out.append(Variant(f"prune {s:.0%}", prune=s))
        if ft:
            out.append(Variant(f"prune {s:.0%} + ft{ft}", prune=s, finetune_steps=ft))
    for kind, frac in (("heads", 0.25), ("neurons", 0.5)):
        out.append(Variant(f"{kind} {frac:.0%}", prune=frac, structured=kind))
        if ft:
            out.append(Variant(f"{kind} {frac:.0%} + ft{ft}", prune=frac, structured=kind, finetune_steps=ft))
    return out


def variant_from_options(quantize: str | None = None, per_channel: bool = False,
                         group_size: int | None = None, activations: bool = False,
                         prune: float = 0.0, structured: str | None = None,
                         finetune_steps: int = 0) -> Variant:
    """The variant the ``minilm compress`` flags describe, named after them."""
    bits = {None: None, "int8": 8, "int4": 4}.get(quantize, -1)
    if bits == -1:
        raise ValueError(f"unknown bit width {quantize!r}: use int8 or int4")
    parts = []
    if bits:
        parts.append(f"int{bits} " + (f"g{group_size}" if group_size else
                                      "per-channel" if per_channel else "per-tensor"))
        if activations:
            parts.append("w+a")
    if prune:
        parts.append(f"{structured or 'prune'} {prune:.0%}")
    if finetune_steps:
        parts.append(f"ft{finetune_steps}")
    return Variant(" + ".join(parts) or "float32", bits=bits, per_channel=per_channel or bool(group_size),
                   group_size=group_size, activations=activations, prune=prune,
                   structured=structured, finetune_steps=finetune_steps)


# ---------------------------------------------------------------------------------------------
# Compress a state dict; store and load it


def compress_state(state: Mapping[str, Any], config: Any, variant: Variant,
                   batches: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
                   lr: float = 5e-4) -> tuple[dict[str, np.ndarray], npr.Masks]:
    """Prune (and fine-tune) the float state dict: ``(pruned float32 state, masks)``.

    Masks come from the NumPy twin (``minilm.numpy.prune``); fine-tuning runs in the torch
    twin (``minilm.torch.prune.finetune``) on ``batches(step) -> (x, y)``. Quantisation
    happens in ``encode``.
    """
    state = {k: np.array(nq.to_numpy(v), dtype=np.float32) for k, v in state.items()}
    if not variant.prune and not variant.finetune_steps:
        return state, npr.Masks()
    if not variant.prune:
        masks = npr.Masks()  # fine-tuning alone: the control for "prune + fine-tune"
    elif variant.structured == "heads":
        masks = npr.prune_heads(state, config, variant.prune)
    elif variant.structured == "neurons":
        masks = npr.prune_neurons(state, config, variant.prune)
    else:
        masks = npr.magnitude_masks(state, variant.prune)
    masks.apply(state)
    if variant.finetune_steps:
        if batches is None:
            raise ValueError("fine-tuning needs training batches")
        import torch

        from minilm.torch import prune as tpr
        from minilm.torch.transformer import TransformerLM

        model = TransformerLM(config, seed=0)
        model.load_state_dict(state)
        tpr.finetune(model, tpr.Masks({k: torch.from_numpy(v) for k, v in masks.items()}),
                     batches, variant.finetune_steps, lr=lr)
        state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
        masks.apply(state)
    return state, masks


def encode(state: Mapping[str, np.ndarray], variant: Variant,
           masks: Mapping[str, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``minilm.compressed.encode`` with the variant's settings, the variant in the metadata."""
    return compressed.encode(state, variant.bits, variant.per_channel, variant.group_size, masks,
                             extra={"variant": asdict(variant)})


# ---------------------------------------------------------------------------------------------
# Measuring


def evaluate(logits_fn: Callable[[np.ndarray], Any], val: np.ndarray, batch_size: int,
             context_length: int, eval_iters: int, seed: int) -> dict[str, float]:
    """Validation loss, perplexity and next-token accuracy of ``logits_fn(x) -> (B, T, V)``
    on ``eval_iters`` random windows drawn from ``default_rng(seed + 1)``: the windows the
    training loops evaluate on, so the float32 row matches the run's own val loss."""
    from minilm.data import get_batch
    from minilm.numpy.functional import cross_entropy

    rng = np.random.default_rng(seed + 1)
    losses, hits = [], []
    for _ in range(eval_iters):
        x, y = get_batch(val, batch_size, context_length, rng)  # (B, T) each
        logits = nq.to_numpy(logits_fn(x)).astype(np.float64)  # (B, T, V)
        losses.append(float(cross_entropy(logits, y)))
        hits.append(next_token_accuracy(logits, y))
    loss = float(np.mean(losses))
    return {"val_loss": loss, "val_perplexity": math.exp(loss), "accuracy": float(np.mean(hits))}


def tokens_per_second(model: Any, prompt: np.ndarray, n_tokens: int, repeats: int = 3) -> float:
    """Greedy generation speed of a torch model (KV cache): n_tokens / the fastest of
    ``repeats`` timed runs, after a 4-token warm-up."""
    import torch

    from minilm.torch.generate import generate

    idx = torch.from_numpy(np.asarray(prompt, dtype=np.int64).reshape(1, -1))
    best = math.inf
    with torch.no_grad():
        generate(model, idx, 4, temperature=0)
        for _ in range(repeats):  # the fastest of a few: least disturbed by other processes
            t0 = time.perf_counter()
            generate(model, idx, n_tokens, temperature=0)
            best = min(best, time.perf_counter() - t0)
    return n_tokens / best


def measure(run: str | os.PathLike, variants: Sequence[Variant] | None = None, *,
            eval_iters: int = 50, gen_tokens: int = 200, lr: float = 5e-4,
            out: str | os.PathLike | None = None,
            progress: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """One row per variant of the Transformer run at ``run`` (a run folder or checkpoint).

    Each row: ``variant``, ``params``, ``nonzero_params``, ``bytes`` (the weights file on
    disk), ``weight_bytes`` (the arrays alone), ``val_loss``, ``val_perplexity``,
    ``accuracy``, ``tokens_per_s``, ``ppl_vs_float`` (ratio to the float32 row),
    ``bytes_vs_float``, and the variant's settings. Weights files go to ``out`` (a temporary
    folder when None). ``variants`` defaults to ``sweep()``.
    """
    import tempfile

    import torch

    from minilm.torch import quantize as tq
    from minilm.torch.transformer import TransformerLM

    model, tokenizer, info = load_transformer_run(run)
    config, args = model.config, info["args"]
    variants = list(sweep(config=config) if variants is None else variants)
    base = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    train_ids, val_ids = run_data(info, tokenizer)
    B, T, seed = int(args["batch_size"]), int(args["context_length"]), int(args.get("seed", 1337))
    ft_rng: list[np.random.Generator] = []

    def batches(step: int) -> tuple[np.ndarray, np.ndarray]:
        """Fine-tuning batch ``step``: every fine-tuned variant sees the same batches."""
        from minilm.data import get_batch

        if step == 0:
            ft_rng[:] = [np.random.default_rng(seed + 2)]
        return get_batch(train_ids, B, T, ft_rng[0])

    pruned: dict[tuple, tuple[dict[str, np.ndarray], npr.Masks]] = {}  # pruning shared by variants

    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="minilm-compress-")
        out = tmp.name
    out = Path(out)
    rows: list[dict[str, Any]] = []
    try:
        for v in variants:
            t0 = time.perf_counter()
            key = (v.prune, v.structured, v.finetune_steps)
            if key not in pruned:
                pruned[key] = compress_state(base, config, v, batches, lr=lr)
            state, masks = pruned[key]
            if v.peer:
                m = tq.dynamic_quantize(_torch_model(TransformerLM, config, state))
                import io

                buf = io.BytesIO()
                torch.save(m.state_dict(), buf)
                nbytes = weight_bytes = buf.tell()
                (out / "variants").mkdir(parents=True, exist_ok=True)
                (out / "variants" / (slug(v.name) + ".pt")).write_bytes(buf.getvalue())
            else:
                arrays, meta = encode(state, v, masks)
                nbytes = save_compressed(out / "variants" / (slug(v.name) + ".safetensors"), arrays, meta)
                weight_bytes = nq.state_dict_bytes(arrays)
                decoded = decode(arrays, meta)
                if v.activations:
                    m = tq.QuantizedTransformerLM(config, state, activations="int8",
                                                  per_channel=v.per_channel)
                else:
                    m = _torch_model(TransformerLM, config, decoded)
            m.eval()

            def logits_fn(x: np.ndarray, m=m) -> np.ndarray:
                with torch.no_grad():
                    return m(torch.from_numpy(x)).float().numpy()

            ev = evaluate(logits_fn, val_ids, B, T, eval_iters, seed)
            tps = tokens_per_second(m, val_ids[:1], gen_tokens)
            row = {"variant": v.name, "params": int(sum(a.size for a in state.values())),
                   "nonzero_params": int(sum(np.count_nonzero(a) for a in state.values())),
                   "bytes": int(nbytes), "weight_bytes": int(weight_bytes), **ev,
                   "tokens_per_s": tps, "seconds": time.perf_counter() - t0, **asdict(v)}
            rows.append(row)
            if progress:
                progress(f"  {v.name:<24} ppl {ev['val_perplexity']:.4f}  acc {ev['accuracy']:.4f}  "
                         f"{nbytes / 1e6:.3f} MB  {tps:.0f} tok/s")
    finally:
        if tmp is not None:
            tmp.cleanup()
    ref = next((r for r in rows if r["variant"] == "float32"), rows[0] if rows else None)
    for r in rows:
        r["ppl_vs_float"] = r["val_perplexity"] / ref["val_perplexity"]
        r["bytes_vs_float"] = r["bytes"] / ref["bytes"]
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a Markdown table (readable on screen, pasteable into notes)."""
    head = ("| variant | params (nonzero) | bytes on disk | vs float | val ppl | vs float | "
            "accuracy | tokens/s |")
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['params']:,} ({r['nonzero_params']:,}) | {r['bytes']:,} | "
            f"{r.get('bytes_vs_float', float('nan')):.3f} | {r['val_perplexity']:.4f} | "
            f"{r.get('ppl_vs_float', float('nan')):.4f} | {r['accuracy']:.4f} | {r['tokens_per_s']:.0f} |")
    return "\n".join(lines)


def plot_rows(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path | None:
    """Perplexity against bytes on disk, one marker per family of variants; None without
    matplotlib."""
    try:
        # the object-oriented API: no pyplot state and no global backend switched
        import matplotlib.ticker
        from matplotlib.figure import Figure
    except ImportError:
        return None
    families = {"float32": [], "quantised": [], "pruned": [], "pruned + fine-tuned": [],
                "structured": [], "torch dynamic": []}
    for r in rows:
        if not r.get("bits") and not r.get("prune") and not r.get("peer"):
            fam = "float32"  # and float32 fine-tuned (the control)
        elif r.get("peer"):
            fam = "torch dynamic"
        elif r.get("structured"):
            fam = "structured"
        elif r.get("prune"):
            fam = "pruned + fine-tuned" if r.get("finetune_steps") else "pruned"
        else:
            fam = "quantised"
        families[fam].append(r)
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for (fam, rs), marker in zip(families.items(), "*osD^v"):
        if rs:
            rs = sorted(rs, key=lambda r: r["bytes"])
            ax.plot([r["bytes"] / 1e6 for r in rs], [r["val_perplexity"] for r in rs],
                    marker=marker, label=fam, markersize=8,
                    linestyle=":" if fam in ("quantised", "pruned", "pruned + fine-tuned") else "")
            for j, r in enumerate(rs):
                ax.annotate(r["variant"], (r["bytes"] / 1e6, r["val_perplexity"]), fontsize=7,
                            xytext=(4, 6 if j % 2 else -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.set_tick_params(which="minor", labelsize=7)
    ax.set_xlabel("weights on disk (MB, log scale)")
    ax.set_ylabel("validation perplexity (log scale)")
    ax.set_title("perplexity against size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------------------------------------
# Runs: loading the trained model and its data


def load_transformer_run(run: str | os.PathLike):
    """``(torch model in float32 eval mode, tokenizer, info)`` of a Transformer run, where
    info holds ``args`` (training arguments) and ``path``; ValueError for another kind."""
    from minilm.runs import load_run

    path = Path(run)
    if not path.exists():
        raise FileNotFoundError(f"no run folder or checkpoint at {path}")
    model, tokenizer, ckpt = load_run(path, impl="torch")
    kind = ckpt.meta.get("model")
    if kind != "transformer":
        raise ValueError(f"{path}: minilm compress takes Transformer runs; this checkpoint holds "
                         f"a {kind!r} model")
    return model.float().eval(), tokenizer, {"args": dict(ckpt.meta["args"]), "path": ckpt.path,
                                             "meta": ckpt.meta}


def run_data(info: Mapping[str, Any], tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, validation ids) of the run's corpus, split as the training loop split it."""
    from minilm.data import load_corpus, train_val_split

    args = info["args"]
    ids = np.asarray(tokenizer.encode(load_corpus(args["corpus"])), dtype=np.int64)  # (N,)
    return train_val_split(ids, float(args.get("val_fraction", 0.1)))


def _torch_model(cls: Any, config: Any, state: Mapping[str, np.ndarray]):
    m = cls(config, seed=0)
    m.load_state_dict({k: np.asarray(v) for k, v in state.items()})
    return m.eval()


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()



