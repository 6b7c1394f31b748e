#!/usr/bin/env bash
# The GPU benchmark in one command (needs a CUDA GPU; written to finish in under 8 minutes on
# an H100, but not yet run on a GPU: the machine it was written on had none):
#
#     bash benchmarks/gpu.sh OUTDIR
#
# 1. the kernel tests, compiled on the GPU (not the Triton interpreter);
# 2. `minilm bench attention`: our Triton kernel against every SDPA backend torch offers on
#    the GPU (flash, efficient, cudnn; not math, whose (L, L) matrices at L = 16k would need
#    tens of GB) and flash-attn's package when it is installed,
#    L = 512 .. 16384, D = 64 and 128, fp16 and bf16, forward and forward+backward, causal and
#    not; outputs checked before anything is timed;
# 3. the target: forward within 0.9x of SDPA's flash backend at L >= 4096, D = 128, fp16.
#
# Writes OUTDIR/tests.txt, OUTDIR/attention.json, OUTDIR/attention_{throughput,memory}.png,
# OUTDIR/attention.txt and OUTDIR/target.txt. Exit status: 0 when all ran and the target is
# met, 1 when a step failed or the target was missed, 2 for bad usage or no GPU.
# Python: $PYTHON, else .venv/bin/python of this checkout, else python.
set -euo pipefail

if [ "$#" -ne 1 ]; then
  echo "usage: bash benchmarks/gpu.sh OUTDIR" >&2
  exit 2
fi
OUT=$1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then
  PY=$ROOT/.venv/bin/python
else
  PY=python
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); nothing was run" >&2
  exit 2
fi
unset TRITON_INTERPRET  # compiled kernels, never the interpreter
"$PY" -c "import torch; print('gpu:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

status=0
start=$SECONDS

echo "== 1/3 kernel tests on the GPU (tests/test_kernels.py, tests/test_flash_attention.py)"
if ! timeout 200 "$PY" -m pytest -q -p no:cacheprovider -n 4 \
    tests/test_kernels.py tests/test_flash_attention.py 2>&1 | tee "$OUT/tests.txt"; then
  echo "gpu.sh: the kernel tests failed or ran out of time (see $OUT/tests.txt)" >&2
  status=1
fi

echo "== 2/3 attention benchmark ($((SECONDS - start)) s so far)"
if ! timeout 330 "$PY" -m minilm bench attention \
    --lengths 512,1024,2048,4096,8192,16384 --head-dims 64,128 --dtypes float16,bfloat16 \
    --skip sdpa-math \
    --json "$OUT/attention.json" --plots "$OUT/attention" --no-progress 2>&1 | tee "$OUT/attention.txt"; then
  echo "gpu.sh: the benchmark failed, found a wrong output, or ran out of time (see $OUT/attention.txt)" >&2
  status=1
fi

echo "== 3/3 target: triton forward >= 0.9x sdpa-flash at L >= 4096, D = 128, fp16"
if [ -f "$OUT/attention.json" ]; then
  if ! "$PY" - "$OUT/attention.json" <<'PYEOF' 2>&1 | tee "$OUT/target.txt"; then
import sys

from minilm.attention_bench import load_rows

rows = [r for r in load_rows(sys.argv[1]) if r["status"] == "ok" and r["mode"] == "fwd"
        and r["dtype"] == "float16" and r["D"] == 128 and r["L"] >= 4096]
pairs = {}
for r in rows:
    pairs.setdefault((r["L"], r["causal"]), {})[r["impl"]] = r["flops_per_s"]
ok, seen = True, 0
for (L, causal), by_impl in sorted(pairs.items()):
    if "triton" in by_impl and "sdpa-flash" in by_impl:
        seen += 1
        ratio = by_impl["triton"] / by_impl["sdpa-flash"]
        verdict = "PASS" if ratio >= 0.9 else "MISS"
        ok = ok and ratio >= 0.9
        print(f"L={L:6d} causal={str(causal):5s} triton {by_impl['triton'] / 1e12:7.1f} TFLOP/s, "
              f"sdpa-flash {by_impl['sdpa-flash'] / 1e12:7.1f} TFLOP/s: {ratio:.2f}x {verdict}")
if not seen:
    print("no row has both triton and sdpa-flash at L >= 4096, D = 128, fp16")
sys.exit(0 if ok and seen else 1)
PYEOF
    status=1
  fi
else
  echo "gpu.sh: no $OUT/attention.json, no target check" >&2
  status=1
fi

echo "gpu.sh: done in $((SECONDS - start)) s; results in $OUT (exit $status)"
exit "$status"
