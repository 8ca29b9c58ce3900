"""`fntk train` on two real hosts (two network namespaces joined by a veth pair, one CPU each),
launched the ways launch/ documents:

- through the Ray Jobs API (launch/submit_job.sh) on a running cluster: the job succeeds, its
  two Ray Train workers run on the two hosts (width 2 x data 1: the wide layer is split
  across the hosts and the partial outputs are all-reduced over the veth pair), the final
  loss is the single-process trainer's, and a client with a wrong token is refused before
  anything runs;
- by launch/slurm.sbatch on two bare hosts, with stand-ins for `srun -w NODE` (runs the
  command in NODE's namespace) and `scontrol show hostnames`: it makes the token, starts the
  head and the worker node with it, trains width 1 x data 2 across them, and stops Ray.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import sys
import time
from pathlib import Path

import pytest
import yaml
from netns_cluster import dashboard_available, two_host_cluster
from netns_hosts import skip_without_netns

from fntk_dist.config import build_config
from fntk_dist.train.job import run_train_job

pytestmark = [pytest.mark.slow, skip_without_netns]
needs_jobs_api = pytest.mark.skipif(not dashboard_available(),
                                    reason="the Ray Jobs API needs ray[default] (the dashboard)")

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "launch" / "submit_job.sh"
SBATCH = REPO / "launch" / "slurm.sbatch"

RAW = {
    "model": {"mode": "sketch_out", "m": 64, "k": 4, "sketch": "gaussian", "dtype": "float64"},
    "data": {"source": "sphere", "n": 24, "d": 6},
    "train": {"steps": 10, "ntk_every": 5},
    "tracking": {"wandb": True},
    "dist": {"width": 2, "data": 1},
}
JOB_ID = "fntk-train-two-hosts"
# Each rank says where it runs in its log, RUN/logs/rank<r>.log:
#   fntk: rank 1 on 10.213.7.2 (pid 4602)
RANK_LINE = re.compile(r"^fntk: rank (\d+) on (\S+) \(pid \d+\)$", re.M)


def rank_hosts(run: Path) -> dict[int, str]:
    """Rank -> node IP, from the run folder's worker logs."""
    return {int(rank): ip for log in sorted((run / "logs").glob("rank*.log"))
            for rank, ip in RANK_LINE.findall(log.read_text())}

JOB_INFO = """
import json, sys
from ray.job_submission import JobSubmissionClient
client = JobSubmissionClient(sys.argv[1])
info = client.get_job_info(sys.argv[2])
print(json.dumps({"status": info.status.value, "message": info.message,
                  "submitted": sorted(j.submission_id for j in client.list_jobs()
                                      if j.submission_id is not None),
                  "logs": client.get_job_logs(sys.argv[2])}))
"""


def reference(raw: dict, out: Path) -> dict:
    """The single-process trainer's summary for the same net and data (tracking off: it does
    not touch the loss)."""
    single = {**raw, "dist": {}, "tracking": {"wandb": False}}  # no mesh in one process
    return run_train_job(build_config(single, source="test"), out, progress=False)


@needs_jobs_api
def test_train_job_on_two_hosts(tmp_path: Path) -> None:
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(RAW))
    out, refused_out = tmp_path / "run", tmp_path / "refused"
    with two_host_cluster(dashboard=True) as c:
        env = {"RAY_DASHBOARD": c.dashboard_url, "FNTK_WORKERS": "2",
               "FNTK_PYTHON": sys.executable}
        # A client with a wrong token (from the worker host) is refused by the Jobs server.
        bad = c.run(["bash", str(SUBMIT), str(cfg_path), str(refused_out)], ns=c.worker_ns,
                    token=secrets.token_hex(32), cwd=REPO, timeout=120,
                    env={**env, "FNTK_SUBMISSION_ID": "fntk-wrong-token"})
        assert bad.returncode != 0
        assert "authentication" in (bad.stdout + bad.stderr).lower(), bad.stderr[-3000:]

        # The right token: submitted from the worker host, the driver runs on the head.
        res = c.run(["bash", str(SUBMIT), str(cfg_path), str(out)], ns=c.worker_ns,
                    cwd=REPO, timeout=300, env={**env, "FNTK_SUBMISSION_ID": JOB_ID})
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:] + c.logs_tail()
        # RAY_ADDRESS: the Jobs client would otherwise take the GCS address from it.
        info = c.run([sys.executable, "-c", JOB_INFO, c.dashboard_url, JOB_ID], timeout=120,
                     env={"RAY_ADDRESS": c.dashboard_url})
        assert info.returncode == 0, info.stderr[-3000:]
        job = json.loads(info.stdout.strip().splitlines()[-1])
        ranks = rank_hosts(out)
        hosts = {c.head_ip, c.worker_ip}

    assert job["status"] == "SUCCEEDED", job["message"]
    # The refused submission left no job and ran nothing.
    assert job["submitted"] == [JOB_ID]
    assert not refused_out.exists()
    # One Ray Train worker on each host.
    assert sorted(ranks) == [0, 1], job["logs"][-3000:]
    assert set(ranks.values()) == hosts
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["workers"], summary["width"], summary["data"]) == (2, 2, 1)
    for name in ("config.yaml", "metrics.parquet", "loss.png", "wandb"):
        assert (out / name).exists(), name

    ref = reference(RAW, tmp_path / "ref")
    assert summary["final_loss"] == pytest.approx(ref["final_loss"], rel=1e-6)
    assert summary["initial_loss"] == pytest.approx(ref["initial_loss"], rel=1e-6)


# `srun --nodes=1 --ntasks=1 -w NODE CMD...`: CMD in NODE's namespace, with a Ray temp folder
# of the node's own (two "hosts" share this machine's /tmp).
FAKE_SRUN = """#!/usr/bin/env bash
node=
while [ $# -gt 0 ]; do
    case $1 in
        -w|--nodelist) node=$2; shift 2 ;;
        --nodelist=*) node=${1#*=}; shift ;;
        -*) shift ;;
        *) break ;;
    esac
done
case $node in
    hosta) ns=$FAKE_NS_hosta ;;
    hostb) ns=$FAKE_NS_hostb ;;
    *) echo "fake srun: no node '$node'" >&2; exit 1 ;;
esac
export RAY_TMPDIR=$FAKE_TMP/$node
mkdir -p "$RAY_TMPDIR"
exec ip netns exec "$ns" "$@"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] && tr , '\\n' <<< "$3"
"""


def test_slurm_script_on_two_hosts(tmp_path: Path) -> None:
    raw = {**RAW, "dist": {"width": 1, "data": 2}, "tracking": {"wandb": False}}
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    out, token_file = tmp_path / "run", tmp_path / "shared" / "token"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (fake_bin / name).write_text(text)
        (fake_bin / name).chmod(0o755)
    with two_host_cluster(start_ray=False) as c:
        env = c.env()
        env = {"PATH": f"{fake_bin}{os.pathsep}{env['PATH']}",
               "FAKE_NS_hosta": c.head_ns, "FAKE_NS_hostb": c.worker_ns,
               "FAKE_TMP": str(c.tmp_dir), "RAY_TMPDIR": str(c.tmp_dir / "hosta"),
               "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "hosta,hostb",
               "SLURMD_NODENAME": "hosta", "SLURM_CPUS_PER_TASK": "1",
               "FNTK_TOKEN_FILE": str(token_file), "FNTK_NODE_TIMEOUT": "120",
               "RAY_START_ARGS": "--num-gpus=0 --object-store-memory=268435456",
               "RAY_HEAD_ARGS": "--include-dashboard=false"}
        (c.tmp_dir / "hosta").mkdir()
        # The batch script runs on the first node, as SLURM runs it.
        res = c.run(["bash", str(SBATCH), str(cfg_path), str(out), "--quiet"], ns=c.head_ns,
                    cwd=REPO, timeout=300, env=env)
        log = res.stdout + res.stderr
        (tmp_path / "sbatch.log").write_text(log)
        assert res.returncode == 0, log[-5000:]
        # The trap stopped Ray on both hosts: nothing is left in the namespaces.
        deadline = time.monotonic() + 30
        while c.pids() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = c.pids()
        ranks = rank_hosts(out)
        hosts = {c.head_ip, c.worker_ip}
    assert left == [], log[-3000:]
    assert "2 Ray nodes up" in log
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}", token_file.read_text().strip())
    assert sorted(ranks) == [0, 1] and set(ranks.values()) == hosts, log[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["workers"], summary["width"], summary["data"]) == (2, 1, 2)
    ref = reference(raw, tmp_path / "ref")
    assert summary["final_loss"] == pytest.approx(ref["final_loss"], rel=1e-6)
