#!/usr/bin/env bash
# minilm's main job on a fresh machine: make the environment, then run `minilm train`
# (arguments are passed on, e.g. `bash scripts/run.sh --help`).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/env.sh"
cd "$root"
exec minilm train "$@"
