"""Generation with the KV cache vs without, in the NumPy reference and the PyTorch twin.

Without a cache every new token re-runs the model over the whole sequence so far:
step t costs a forward pass over t tokens, so n new tokens cost O(n^2) token-passes (and the
attention inside, O(n^3)). With the cache each step runs one token through the model and
attends over the cached keys/values: O(n) token-passes. This script measures the ratio.

Before timing anything it checks that cached and uncached generation sample the same tokens
(same seed) in each twin, and that the two twins sample the same tokens as each other. Then it
times ``--repeats`` runs of each (after one warm-up) and reports medians.

Run from the repository root:

    python benchmarks/bench_generate.py                      # 4 layers, C=128, T_max=512
    python benchmarks/bench_generate.py --new-tokens 64 --twins numpy
    python benchmarks/bench_generate.py --strict             # exit 1 if the target is missed
    minilm bench generate -- --help

Target: the cache makes 256-token generation at least 3x faster in each twin.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

# One BLAS thread for NumPy unless the environment says otherwise. Batch-1 generation runs
# many small matrix products, and a BLAS thread pool on a busy machine makes them 10-25x
# slower (its threads wait for cores), which would time the machine, not the algorithm.
# This only works if NumPy has not been imported yet; main() says which case it is.
_BLAS_ENV_SET = "numpy" not in sys.modules
if _BLAS_ENV_SET:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

TARGET_SPEEDUP = 3.0  # the target: the cache makes 256-token generation >= 3x faster


def _parse(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog,  # minilm bench NAME passes its own name
        description="Time generation with and without the KV cache (NumPy and PyTorch twins).",
    )
    p.add_argument("--n-layer", type=int, default=4, help="Transformer blocks (default 4)")
    p.add_argument("--d-model", type=int, default=128, help="width C (default 128)")
    p.add_argument("--n-head", type=int, default=4, help="attention heads H (default 4)")
    p.add_argument("--context", type=int, default=512, help="context length T_max (default 512)")
    p.add_argument("--vocab", type=int, default=256, help="vocabulary size V (default 256)")
    p.add_argument("--batch", type=int, default=1, help="prompts B (default 1)")
    p.add_argument("--prompt", type=int, default=16, help="prompt length T (default 16)")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens to generate (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case (default 3)")
    p.add_argument("--twins", default="numpy,torch", help="comma list of numpy, torch")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1; NumPy's BLAS follows "
                        "OPENBLAS_NUM_THREADS, set to 1 by this script if unset)")
    p.add_argument("--seed", type=int, default=0, help="weights, prompt and sampling seed")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 if a twin misses the 3x speed-up target (a failed check always exits 1)")
    ns = p.parse_args(argv)
    twins = [t.strip() for t in ns.twins.split(",") if t.strip()]
    bad = sorted(set(twins) - {"numpy", "torch"})
    if bad or not twins:
        p.error(f"--twins must list numpy and/or torch, got {ns.twins!r}")
    ns.twins = twins
    for name in ("n_layer", "d_model", "n_head", "context", "vocab", "batch", "prompt",
                 "new_tokens", "repeats", "threads"):
        if getattr(ns, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(ns, name)}")
    if ns.d_model % ns.n_head:
        p.error(f"--d-model {ns.d_model} is not divisible by --n-head {ns.n_head}")
    return ns


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of fn (the caller has already warmed it up)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ns = _parse(argv, prog)

    from minilm.config import TransformerConfig
    from minilm.numpy.generate import generate as np_generate
    from minilm.numpy.transformer import TransformerLM as NpTransformerLM

    config = TransformerConfig(vocab_size=ns.vocab, context_length=ns.context,
                               d_model=ns.d_model, n_layer=ns.n_layer, n_head=ns.n_head)
    prompt = np.random.default_rng(ns.seed).integers(0, ns.vocab, size=(ns.batch, ns.prompt))
    n_new = ns.new_tokens
    sample = dict(temperature=1.0, seed=ns.seed)
    print(f"TransformerLM: n_layer={ns.n_layer} d_model={ns.d_model} n_head={ns.n_head} "
          f"context={ns.context} vocab={ns.vocab}, float32; batch {ns.batch}, prompt "
          f"{ns.prompt}, {n_new} new tokens, median of {ns.repeats} runs")
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    print(f"NumPy {np.__version__}, OPENBLAS_NUM_THREADS={blas}"
          + ("" if _BLAS_ENV_SET else " (NumPy was imported before this script: its BLAS "
             "thread count is whatever it was then)"))
    if ns.prompt + n_new > ns.context:
        print(f"note: {ns.prompt + n_new} tokens exceed the context of {ns.context}: past it "
              "the window slides and the cache is re-prefilled every step")

    np_model = NpTransformerLM(config, seed=ns.seed, dtype=np.float32)
    runners: dict[str, Callable[[bool], np.ndarray]] = {}
    if "numpy" in ns.twins:
        runners["numpy"] = lambda use_cache: np_generate(np_model, prompt, n_new,
                                                         use_cache=use_cache, **sample)
    if "torch" in ns.twins:
        import torch

        from minilm.torch.generate import generate as t_generate
        from minilm.torch.transformer import TransformerLM as TTransformerLM

        torch.set_num_threads(ns.threads)
        t_model = TTransformerLM(config, seed=ns.seed).to(ns.device).eval()
        t_model.load_state_dict(np_model.state_dict())
        t_prompt = torch.from_numpy(prompt).to(ns.device)

        def run_torch(use_cache: bool) -> np.ndarray:
            out = t_generate(t_model, t_prompt, n_new, use_cache=use_cache, **sample)
            return out.cpu().numpy()

        runners["torch"] = run_torch
        print(f"torch {torch.__version__} on {ns.device}, {torch.get_num_threads()} threads")

    # 1. correctness first: cached == uncached in each twin, and the twins agree
    # (this also serves as the warm-up run of every case)
    tokens = {}
    for twin, run in runners.items():
        cached, plain = run(True), run(False)
        if not np.array_equal(cached, plain):
            bad = np.argwhere(cached != plain)[0]
            print(f"FAIL {twin}: cached and uncached generation differ first at row {bad[0]}, "
                  f"position {bad[1]}", file=sys.stderr)
            return 1
        tokens[twin] = cached
    if len(tokens) == 2 and not np.array_equal(tokens["numpy"], tokens["torch"]):
        bad = np.argwhere(tokens["numpy"] != tokens["torch"])[0]
        print(f"FAIL: the NumPy and PyTorch twins differ first at row {bad[0]}, position "
              f"{bad[1]}", file=sys.stderr)
        return 1
    print("check: cached == uncached tokens" + (", NumPy == PyTorch tokens" if len(tokens) == 2
                                                else ""))

    # 2. timing
    print(f"{'twin':<7}{'no cache (s)':>14}{'cache (s)':>12}{'tok/s no cache':>16}"
          f"{'tok/s cache':>13}{'speed-up':>10}")
    worst = float("inf")
    for twin, run in runners.items():
        t_plain = _median_time(lambda: run(False), ns.repeats)
        t_cached = _median_time(lambda: run(True), ns.repeats)
        speedup = t_plain / t_cached
        worst = min(worst, speedup)
        n_tok = ns.batch * n_new
        print(f"{twin:<7}{t_plain:>14.3f}{t_cached:>12.3f}{n_tok / t_plain:>16.1f}"
              f"{n_tok / t_cached:>13.1f}{speedup:>9.1f}x")
    verdict = "meets" if worst >= TARGET_SPEEDUP else "MISSES"
    print(f"smallest speed-up {worst:.1f}x: {verdict} the {TARGET_SPEEDUP:g}x target")
    if ns.strict and worst < TARGET_SPEEDUP:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
