#!/usr/bin/env bash
# Sets up .venv from nothing and runs the quickstart: a factorized net on generated sphere data,
# single process, W&B offline. Extra arguments go to `fntk train` (e.g. --out DIR, key=value).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tools/bootstrap.sh"
cd "$root"
exec "$root/.venv/bin/fntk" train configs/quickstart.yaml "$@"
