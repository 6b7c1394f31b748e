"""Does pre-training help? Fine-tuning a pre-trained encoder vs training the same model from
scratch, on the same few labelled examples, as the number of labelled examples grows.

One masked-LM pre-training run on tinyshakespeare (``minilm pretrain``), then, for each number
N of labelled speeches in ``--labelled``, two runs of ``minilm finetune`` on the speaker task
(``minilm.data.speakers``; or, with ``--task markov``, pre-training on the text of the Markov
sources and fine-tuning on which source wrote a string, ``minilm.data.markov_task``) with the
same N examples (the same subset: it depends on the seed
only), the same steps and the same hyper-parameters:

    fine-tuned:    the pre-trained weights plus a new classification head
    from scratch:  the same architecture from its random initialisation

Reported for each: test accuracy (the split no line of which is in the training or validation
split), macro F1 and wall time, written to ``--json`` and plotted (accuracy against N, log
scale) to ``--plot``. Chance is 1 / n_speakers; the majority class of the test split is printed
too. The test split has about 100 speeches, so an accuracy is known to about +-0.04 (one
binomial standard deviation at p = 0.3): differences smaller than ~0.1 are noise.

    python benchmarks/bench_finetune.py                           # defaults (~10 min on 2 cores)
    python benchmarks/bench_finetune.py --pretrain-steps 300 --finetune-steps 100 --labelled 50 200
    python benchmarks/bench_finetune.py --pretrained runs/enc-mlm  # reuse a pre-training run
    python benchmarks/bench_finetune.py --task markov --n-classes 3 --pretrain-steps 300 \
        --finetune-steps 100 --labelled 6 12 24 48 --context-length 48 --d-model 32   # ~2 min

BLAS threads: on a small shared machine NumPy's multi-threaded BLAS can be 10x slower than one
thread for these small matrices, so this script sets the thread count (``--blas-threads``,
default 1) before NumPy is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def parse(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", choices=["numpy", "torch"], default="numpy")
    p.add_argument("--objective", choices=["mlm", "mlm+nsp", "causal"], default="mlm")
    p.add_argument("--task", choices=["speakers", "markov"], default="speakers",
                   help="speakers (pre-training on tinyshakespeare) or markov (on the sources' text)")
    p.add_argument("--pretrained", help="a pre-training run to reuse (default: make one)")
    p.add_argument("--pretrain-steps", type=int, default=2000)
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--labelled", type=int, nargs="+", default=[25, 50, 100, 200, 400, 678],
                   help="numbers of labelled training speeches (678 = all)")
    p.add_argument("--n-speakers", "--n-classes", type=int, default=5, help="classes (speakers or sources)")
    p.add_argument("--context-length", type=int, default=64)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning / from-scratch peak lr")
    p.add_argument("--pretrain-lr", type=float, default=2e-3, help="pre-training peak lr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    p.add_argument("--json", default="bench_finetune.json")
    p.add_argument("--plot", default="bench_finetune.png")
    p.add_argument("--blas-threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ns = parse(argv, prog)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ns.blas_threads)
    # imported after the BLAS thread count is set
    from minilm.encoder_training import EncoderArgs, finetune, make_task, pretrain

    root = Path(ns.out) if ns.out else Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    print(f"load average {os.getloadavg()[0]:.1f}; runs in {root}", flush=True)
    quiet = dict(progress=False, print_fn=lambda s: None)
    record: dict = {"settings": vars(ns), "runs": []}
    pre_run = ns.pretrained
    if pre_run is None:
        pre_run = root / "pretrain"
        args = EncoderArgs(objective=ns.objective, impl=ns.impl, steps=ns.pretrain_steps,
                           corpus="markov" if ns.task == "markov" else "tinyshakespeare",
                           context_length=ns.context_length, d_model=ns.d_model, n_layer=ns.n_layer,
                           n_head=ns.n_head, batch_size=32, lr=ns.pretrain_lr, warmup_steps=100,
                           eval_interval=max(ns.pretrain_steps // 5, 1), seed=ns.seed,
                           threads=ns.blas_threads if ns.impl == "torch" else 0)
        t = time.perf_counter()
        res = pretrain(args, pre_run, overwrite=True, **quiet)
        record["pretrain"] = {"seconds": time.perf_counter() - t, **res.evals[-1]}
        print(f"pre-training ({ns.objective}, {ns.pretrain_steps} steps): "
              f"{record['pretrain']['seconds']:.0f} s, " +
              ", ".join(f"{k} {v:.3f}" for k, v in res.evals[-1].items() if k.startswith("val_")), flush=True)
    task = make_task(ns.task, ns.n_speakers)
    counts = [sum(1 for _, y in task.test if y == c) for c in range(len(task.classes))]
    record["chance"] = 1 / len(task.classes)
    record["majority"] = max(counts) / len(task.test)
    print(f"{ns.task} task: {len(task.classes)} classes, {len(task.train)} training examples, test "
          f"{len(task.test)}; chance {record['chance']:.3f}, majority class {record['majority']:.3f}")
    print(f"{'labelled':>8} {'fine-tuned':>10} {'scratch':>8} {'ft s':>6} {'scratch s':>9}", flush=True)
    for n in ns.labelled:
        row = {"labelled": min(n, len(task.train))}
        for name, scratch in (("finetuned", False), ("scratch", True)):
            args = EncoderArgs(impl=ns.impl, checkpoint=str(pre_run), task=ns.task, n_classes=ns.n_speakers,
                               labelled=min(n, len(task.train)), from_scratch=scratch, steps=ns.finetune_steps,
                               batch_size=32, lr=ns.lr, warmup_steps=ns.finetune_steps // 10,
                               eval_interval=ns.finetune_steps, seed=ns.seed,
                               threads=ns.blas_threads if ns.impl == "torch" else 0)
            t = time.perf_counter()
            res = finetune(args, root / f"{name}-{n}", overwrite=True, **quiet)
            row[name] = {"accuracy": res.test["accuracy"], "macro_f1": res.test["macro_f1"],
                         "seconds": time.perf_counter() - t}
        record["runs"].append(row)
        print(f"{row['labelled']:>8} {row['finetuned']['accuracy']:>10.3f} {row['scratch']['accuracy']:>8.3f} "
              f"{row['finetuned']['seconds']:>6.0f} {row['scratch']['seconds']:>9.0f}", flush=True)
    Path(ns.json).write_text(json.dumps(record, indent=1, default=str))
    _plot(record, ns.plot)
    print(f"wrote {ns.json}, {ns.plot}; load average {os.getloadavg()[0]:.1f}")
    return 0


def _plot(record: dict, path: str) -> None:
    try:
        from matplotlib.figure import Figure  # object-oriented: no global backend switched
    except ImportError:
        print("plot skipped: matplotlib is not installed", file=sys.stderr)
        return
    runs = record["runs"]
    n = [r["labelled"] for r in runs]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(n, [r["finetuned"]["accuracy"] for r in runs], "o-", label="fine-tuned (pre-trained)")
    ax.plot(n, [r["scratch"]["accuracy"] for r in runs], "s--", label="from scratch")
    ax.axhline(record["chance"], color="grey", lw=0.8, label="chance")
    ax.axhline(record["majority"], color="grey", lw=0.8, ls=":", label="majority class")
    ax.set_xscale("log")
    ax.set_xlabel("labelled training examples")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{record['settings']['task']} task: pre-trained and fine-tuned vs from scratch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
