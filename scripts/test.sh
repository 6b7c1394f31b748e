#!/usr/bin/env bash
# Every test of minilm on a fresh machine: make the environment, then run pytest
# (arguments are passed on, e.g. `bash scripts/test.sh tests/test_attention.py -x`).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/env.sh" || exit 1
set +e  # env.sh sets -e; pytest's exit code is handled below
cd "$root"
# The Triton kernels run under the interpreter on a machine without a CUDA GPU.
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export TRITON_INTERPRET=1
fi
workers=${MINILM_TEST_WORKERS:-$(python -c "import os; print(min(4, os.cpu_count() or 1))")}
python -m pytest -n "$workers" --timeout 900 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  # pytest's "no tests collected": a test run that tests nothing is a failure here.
  echo "minilm: pytest collected no tests (exit 5)" >&2
fi
exit "$rc"
