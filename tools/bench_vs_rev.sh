#!/usr/bin/env bash
# Speed against an earlier revision, measured side by side in one run:
#   bash tools/bench_vs_rev.sh REV [ROUNDS]
# checks REV out into a temporary worktree and runs tools/bench_gram.py and tools/bench_step.py
# of REV and of the working tree alternately, ROUNDS times (default 3), each in a fresh
# process (the blocked step is bimodal between processes on this machine: compare medians).
# BENCH_ARGS, if set, is passed to both benchmarks (e.g. BENCH_ARGS="--repeats 2").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rev="${1:?usage: bash tools/bench_vs_rev.sh REV [ROUNDS]}"
rounds="${2:-3}"
python="$root/.venv/bin/python"
base="$(mktemp -d)"
trap 'git -C "$root" worktree remove --force "$base" >/dev/null 2>&1 || rm -rf "$base"' EXIT
git -C "$root" worktree add --detach "$base" "$rev" >/dev/null 2>&1
for round in $(seq 1 "$rounds"); do
  for side in "$rev" "working tree"; do
    dir="$root"
    [ "$side" = "$rev" ] && dir="$base"
    for bench in bench_gram bench_step; do
      echo "=== round $round, $side, $bench"
      # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
      (cd "$dir" && PYTHONPATH="$dir:$dir/tools" "$python" "tools/$bench.py" ${BENCH_ARGS:-})
    done
  done
done
