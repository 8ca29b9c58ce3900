#!/usr/bin/env bash
# Submits `fntk train` to a running Ray cluster through the Ray Jobs API (the head's dashboard,
# port 8265 by default). The job's driver runs on the head node and joins the cluster with
# `--address auto`; its Ray Train workers are spread over the nodes.
#
# Usage:
#   RAY_DASHBOARD=http://HEAD:8265 launch/submit_job.sh CONFIG OUT_DIR [fntk train args...]
#
#   CONFIG   the run's YAML, as the head node sees it (a shared filesystem, or a path inside
#            FNTK_WORKING_DIR: the job runs in the uploaded copy of that folder)
#   OUT_DIR  the run folder; a path every node sees (shared filesystem): rank 0 writes the
#            run's files there and every rank writes its checkpoint shards
#   extra arguments go to `fntk train`, e.g. --resume, or deepspeed.zero_stage=2
#
# Environment:
#   RAY_DASHBOARD        the Jobs server, http://HEAD:8265 (required; `ray dashboard
#                        launch/cluster.yaml` forwards it to http://127.0.0.1:8265)
#   RAY_AUTH_TOKEN_PATH  the cluster's token file (default ~/.ray/auth_token): the same token
#                        every node was started with. A wrong or missing token is refused
#                        (HTTP 401/403) before anything runs.
#   FNTK_WORKERS         Ray Train workers, width * data of the config's mesh (default 2)
#   FNTK_WORKING_DIR     a folder to upload as the job's working dir (e.g. a checkout of this
#                        repository, for code changes not yet installed on the nodes); unset:
#                        fntk_dist must be installed on every node (launch/cluster.yaml does)
#   FNTK_PYTHON          the interpreter on the head node that has fntk_dist (default: python)
#   FNTK_SUBMISSION_ID   the job's id (default fntk-train-<date>-<random>)
#   FNTK_NO_WAIT=1       return once submitted, instead of following the logs to the end
#
# Follow or manage a job from anywhere with the token and RAY_ADDRESS=$RAY_DASHBOARD:
#   ray job logs --follow ID     ray job status ID     ray job stop ID     ray job list
# Without FNTK_NO_WAIT this script follows the logs and exits non-zero if the job failed.
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
fi
config=$1
out=$2
shift 2
: "${RAY_DASHBOARD:?set RAY_DASHBOARD=http://HEAD:8265 (the Jobs server on the head)}"

# Token authentication: the client sends the token with every request.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
unset RAY_AUTH_TOKEN  # it would win over RAY_AUTH_TOKEN_PATH
if [ ! -r "$RAY_AUTH_TOKEN_PATH" ]; then
    echo "submit_job.sh: no token file at $RAY_AUTH_TOKEN_PATH (set RAY_AUTH_TOKEN_PATH)" >&2
    exit 2
fi
# The Jobs CLI prefers RAY_ADDRESS over --address: point both at the Jobs server.
export RAY_ADDRESS="$RAY_DASHBOARD"

id="${FNTK_SUBMISSION_ID:-fntk-train-$(date +%Y%m%d-%H%M%S)-$RANDOM}"
args=(--address "$RAY_DASHBOARD" --submission-id "$id")
if [ -n "${FNTK_WORKING_DIR:-}" ]; then
    # Uploaded to the cluster (100 MiB at most): leave out environments, runs and history.
    excludes='[".venv", ".git", "runs", "wandb", "__pycache__"]'
    runtime_env=$(printf '{"working_dir": "%s", "excludes": %s}' "$FNTK_WORKING_DIR" "$excludes")
    args+=(--runtime-env-json "$runtime_env")
fi
if [ "${FNTK_NO_WAIT:-0}" = 1 ]; then
    args+=(--no-wait)
fi

echo "submitting job $id to $RAY_DASHBOARD" >&2
ray job submit "${args[@]}" -- \
    "${FNTK_PYTHON:-python}" -m fntk_dist.cli.main train "$config" \
    --workers "${FNTK_WORKERS:-2}" --address auto --out "$out" --quiet "$@"
