#!/usr/bin/env bash
# Creates minilm's virtual environment and installs minilm into it, editable, with ALL its
# extras (torch, triton, tensorboard, tutorials, dev): one environment that scripts/run.sh and
# scripts/test.sh share, so alternating them never reinstalls anything.
#
#   source scripts/env.sh
#
# The environment is $MINILM_VENV (default: .venv at the repo root). It is made once and
# reinstalled only when pyproject.toml changes ($MINILM_EXTRAS narrows the extras, say
# "torch,dev" on a machine without Triton). On a machine without an NVIDIA
# GPU, torch comes from the CPU builds (the wheel on disk, or PyTorch's CPU index), never the
# multi-GB CUDA build that a plain `pip install torch` pulls on Linux.
set -euo pipefail
extras=${MINILM_EXTRAS:-all}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MINILM_VENV:-$root/.venv}
py=${PYTHON:-python3}
torch_version=${MINILM_TORCH_VERSION:-2.13.0}

if [ ! -x "$venv/bin/python" ]; then
  echo "minilm: creating virtual environment $venv" >&2
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

stamp="$venv/.minilm-installed"
want="$(cksum < "$root/pyproject.toml") $extras"
log="$venv/.minilm-install.log"

quiet_pip() {  # pip, its output kept in $log and shown only when it fails
  if ! "${pip[@]}" "$@" >"$log" 2>&1; then
    grep -v -e "is ignored" -e "Retrying" "$log" >&2
    echo "minilm: 'pip $*' failed (full log: $log)" >&2
    exit 1
  fi
}

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  if [[ ",$extras," == *",all,"* || ",$extras," == *",torch,"* || ",$extras," == *",triton,"* ]] \
      && ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      echo "minilm: installing torch $torch_version (CUDA build: a GPU is present)" >&2
      quiet_pip install "torch==$torch_version" numpy
    else
      echo "minilm: installing torch $torch_version (CPU build: no GPU here)" >&2
      # PyTorch's CPU index is tried first-class; where it cannot be reached (offline
      # machines with the CPU wheel on disk) pip goes on with what it finds locally.
      quiet_pip install --retries 1 "torch==$torch_version" numpy \
        --extra-index-url https://download.pytorch.org/whl/cpu
    fi
  fi
  # the build tools pyproject.toml names (a venv's own setuptools can be older), so that
  # building minilm's wheel works here too (tests/test_package.py builds one, offline)
  quiet_pip install "setuptools>=68" wheel
  echo "minilm: installing minilm[$extras] into $venv (once)" >&2
  quiet_pip install -e "$root[$extras]"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
