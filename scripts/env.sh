#!/usr/bin/env bash
# Creates minilm's virtual environment and installs minilm into it, editable, with extras.
#
#   source scripts/env.sh EXTRAS      (EXTRAS like "torch,triton,dev")
#
# The environment is $MINILM_VENV (default: .venv at the repo root). It is made once and
# reinstalled only when pyproject.toml or the extras change. On a machine without an NVIDIA
# GPU, torch comes from the CPU builds (the wheel on disk, or PyTorch's CPU index), never the
# multi-GB CUDA build that a plain `pip install torch` pulls on Linux.
set -euo pipefail
extras=${1:-torch,triton}
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
want="$(cat "$root/pyproject.toml" | cksum) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  if [[ ",$extras," == *",torch,"* || ",$extras," == *",triton,"* ]] \
      && ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      echo "minilm: installing torch (CUDA build: a GPU is present)" >&2
      "${pip[@]}" install "torch==$torch_version" 2>&1 | grep -v "is ignored" >&2 || true
    else
      echo "minilm: installing torch $torch_version (CPU build: no GPU here)" >&2
      "${pip[@]}" install --retries 1 "torch==$torch_version" \
        --extra-index-url https://download.pytorch.org/whl/cpu 2>&1 \
        | grep -v -e "is ignored" -e "Retrying" -e "Could not fetch URL" >&2 || true
    fi
    "$venv/bin/python" -c "import torch" || { echo "minilm: torch failed to install" >&2; exit 1; }
  fi
  echo "minilm: installing minilm[$extras] into $venv" >&2
  "${pip[@]}" install -e "$root[$extras]" 2>&1 | grep -v "is ignored" >&2 || true
  "$venv/bin/python" -c "import minilm" || { echo "minilm: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
