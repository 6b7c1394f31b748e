"""Quality in a wall-time budget: the shakespeare-char presets against nanoGPT's laptop run.

nanoGPT's README trains a 4-layer, 4-head, width-128 character Transformer on tinyshakespeare
on a laptop CPU ("shakespeare-char on a laptop": 2000 steps of batch 12, context 64) and gets
a validation loss of about 1.88 nats/char in about 2 minutes on two CPU cores. This script
runs minilm's mirror of that run (preset ``shakespeare-char``, PyTorch twin: nanoGPT's settings
but twice its learning rate), the LSTM tuned to the same budget (preset
``shakespeare-char-lstm``) and, with ``--which nanogpt`` or ``all``, the run with nanoGPT's own
learning rate too (preset ``shakespeare-char-nanogpt``), and reports for each:

    final validation loss (nats/char)   vs target   (Transformer <= 1.88, LSTM <= 1.90)
    wall time of the whole run (s)      vs budget   (--budget, default 120 s: nanoGPT here)

Wall time depends on the machine and on what else runs on it, so the load average is
printed before and after; compare runs made under the same load.

    python benchmarks/bench_quality.py                  # both presets
    python benchmarks/bench_quality.py --which lstm --steps 500
    minilm bench quality --data /path/to/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"shakespeare-char": 1.88, "shakespeare-char-lstm": 1.90, "shakespeare-char-nanogpt": 1.88}
REPO_ROOT = Path(__file__).resolve().parents[1]
# a copy next to the checkout: <repo>/../shared/data/tinyshakespeare.txt
SHARED_COPY = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def _default_data() -> str:
    """The shared copy beside the repository if there is one, else the named corpus."""
    if SHARED_COPY.is_file():
        return str(SHARED_COPY)
    return "tinyshakespeare"  # ships with minilm, checked by its SHA-256


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=prog,  # minilm bench NAME passes its own name
        description="Validation loss and wall time of the shakespeare-char Transformer and LSTM "
                    "presets against nanoGPT's laptop run (val loss 1.88 in ~2 minutes).")
    p.add_argument("--data", default=None,
                   help="tinyshakespeare text file (default: ../shared/data/tinyshakespeare.txt "
                        "beside the repository, else the copy that ships with minilm)")
    p.add_argument("--which", choices=["transformer", "lstm", "both", "nanogpt", "all"], default="both",
                   help="both: the Transformer and LSTM presets; nanogpt: the run with nanoGPT's lr; "
                        "all: the three (default both)")
    p.add_argument("--budget", type=float, default=120.0,
                   help="wall-time budget in seconds: nanoGPT's run on this machine (default 120)")
    p.add_argument("--steps", type=int, default=None, help="override the presets' steps")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="auto", help="torch device (default auto)")
    p.add_argument("--out", default=None, help="keep the run folders here (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target or budget is missed")
    ns = p.parse_args(argv)

    try:
        import torch  # noqa: F401
    except ImportError:
        print("bench_quality: needs PyTorch (pip install 'minilm[torch]')", file=sys.stderr)
        return 1
    from minilm.presets import get_preset
    from minilm.torch.train import train

    data = ns.data or _default_data()
    presets = {"transformer": ["shakespeare-char"], "lstm": ["shakespeare-char-lstm"],
               "both": ["shakespeare-char", "shakespeare-char-lstm"],
               "nanogpt": ["shakespeare-char-nanogpt"],
               "all": ["shakespeare-char", "shakespeare-char-lstm", "shakespeare-char-nanogpt"]}[ns.which]
    out_root = Path(ns.out) if ns.out else Path(tempfile.mkdtemp(prefix="minilm-quality-"))
    print(f"data: {data}")
    print(f"load average before: {os.getloadavg()[0]:.2f} (cpus: {os.cpu_count()})")
    rows = []
    for name in presets:
        args = get_preset(name, corpus=data, steps=ns.steps, threads=ns.threads, device=ns.device)
        print(f"\n== {name}: {args.model}, {args.steps} steps of batch {args.batch_size} x "
              f"context {args.context_length} ==", flush=True)
        t0 = time.perf_counter()
        res = train(args, out_root / name, progress=False, print_fn=lambda s: print(s, flush=True))
        seconds = time.perf_counter() - t0
        target = TARGETS[name]
        rows.append({"preset": name, "model": args.model, "steps": res.step,
                     "val_loss": res.val_loss, "target": target, "seconds": seconds,
                     "budget": ns.budget, "loss_ok": res.val_loss <= target,
                     "time_ok": seconds <= ns.budget,
                     "load_after": os.getloadavg()[0]})
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    print(f"\n{'preset':<24}{'val loss':>10}{'target':>8}{'wall s':>9}{'budget':>8}  verdict")
    for r in rows:
        verdict = "PASS" if r["loss_ok"] and r["time_ok"] else (
            "MISS (loss)" if not r["loss_ok"] else "MISS (time)")
        print(f"{r['preset']:<24}{r['val_loss']:>10.4f}{r['target']:>8.2f}{r['seconds']:>9.1f}"
              f"{r['budget']:>8.0f}  {verdict}")
    if ns.json:
        Path(ns.json).write_text(json.dumps(rows, indent=2))
    print(f"\nrun folders: {out_root}")
    if ns.strict and not all(r["loss_ok"] and r["time_ok"] for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
