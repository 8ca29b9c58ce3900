#!/usr/bin/env bash
# Sets up .venv from nothing (see tools/bootstrap.sh) and runs the test suite.
# Extra arguments go to pytest, e.g. `bash tools/test.sh -k gram -x`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tools/bootstrap.sh"
cd "$root"
export WANDB_MODE="${WANDB_MODE:-offline}"
# The slowest tests are listed at the end: where the suite's time goes, in every CI log.
exec "$root/.venv/bin/python" -m pytest -q --durations=25 "$@"
