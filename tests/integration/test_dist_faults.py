"""Fault tolerance of the distributed Gram (real processes, real SIGKILLs) and the embedded
cluster's network exposure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml

from fntk_dist import empirical_ntk
from fntk_dist.config import build_config
from fntk_dist.data import load_dataset
from fntk_dist.gram import TileStore, TileStoreError, load_gram

# 300 tiles of 100 x 100 over 20,000 neurons: a few seconds of work, long enough to kill
# something in the middle of it.
RAW = {
    "model": {"mode": "sketch_in", "m": 20000, "k": 8, "dtype": "float64"},
    "data": {"source": "sphere", "n": 2400, "d": 16},
    "gram": {"tile": 100, "in_flight": 1},
    "tracking": {"wandb": False},
}
TILES = 24 * 25 // 2


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    cfg = build_config(RAW)
    data = load_dataset(cfg.data)
    return empirical_ntk(cfg.model.build(data.d), torch.from_numpy(data.x)).numpy()


def start(tmp_path: Path, out: Path, layout: tuple[str, ...] = ("--workers", "2")
          ) -> subprocess.Popen:
    cfg = tmp_path / "gram.yaml"
    cfg.write_text(yaml.safe_dump(RAW))
    argv = [sys.executable, "-m", "fntk_dist.cli.main", "gram", str(cfg), *layout,
            "--out", str(out), "--quiet"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tiles_written(out: Path) -> int:
    """Tiles listed by the manifest and its journal (a torn last line does not count)."""
    try:
        return len(TileStore.open(out).listed())
    except TileStoreError:  # not created yet
        return 0


def wait_for_tiles(proc: subprocess.Popen, out: Path, count: int, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while tiles_written(out) < count:
        assert proc.poll() is None, f"job ended before {count} tiles: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, "no progress"
        time.sleep(0.02)


def shard_processes(job: subprocess.Popen | None = None) -> list[psutil.Process]:
    """The GramShard actor processes: of this job's embedded cluster (its descendants), or
    on the whole machine (None)."""
    procs = (psutil.process_iter(["cmdline"]) if job is None
             else psutil.Process(job.pid).children(recursive=True))
    return [p for p in procs
            if any("ray::GramShard" in part for part in (_cmdline(p) or []))]


def _cmdline(p: psutil.Process) -> list[str] | None:
    try:
        return p.cmdline()
    except psutil.Error:  # gone meanwhile
        return None


# A 2 x 2 grid: the victim is one of the four shards, a leaf or a root of its group's sum.
@pytest.mark.parametrize("layout, actors", [(("--workers", "2"), 2), (("--grid", "2x2"), 4)])
def test_killed_worker_is_replaced_and_the_result_is_exact(tmp_path, reference, layout, actors):
    out = tmp_path / "g"
    proc = start(tmp_path, out, layout)
    wait_for_tiles(proc, out, 10)
    victims = shard_processes(proc)  # not another job's on a shared machine
    assert len(victims) == actors, "not every shard actor found"
    os.kill(victims[-1].pid, signal.SIGKILL)
    assert tiles_written(out) < TILES, "the job finished before the kill: make it longer"
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiles_computed"] == TILES
    np.testing.assert_allclose(load_gram(out), reference, rtol=0, atol=1e-10)


def test_killed_driver_loses_only_tiles_in_flight_and_the_rerun_finishes(tmp_path, reference):
    out = tmp_path / "g"
    proc = start(tmp_path, out)
    wait_for_tiles(proc, out, 20)
    proc.kill()
    proc.wait()
    kept = tiles_written(out)
    assert 20 <= kept < TILES and not (out / "summary.json").exists()
    # The embedded cluster shares the driver's fate: its shard processes go too.
    deadline = time.monotonic() + 30
    while shard_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not shard_processes()
    rerun = start(tmp_path, out)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    # Nothing that looks like a failure on a run that went well (Ray's token and actor-argument
    # lines used to be printed by every run).
    assert "core_worker" not in stderr and "Token authentication" not in stderr, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiles_resumed"] >= kept - 1  # a tile renamed but not yet recorded is adopted
    assert summary["tiles_resumed"] + summary["tiles_computed"] == TILES
    assert summary["tile_seconds"] > 0 and summary["tiles_per_s"] > 0  # over both runs
    np.testing.assert_allclose(load_gram(out), reference, rtol=0, atol=1e-10)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_is_one_line_and_the_tiles_stay(tmp_path, signum):
    out = tmp_path / "g"
    proc = start(tmp_path, out)
    wait_for_tiles(proc, out, 5)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    ours = [line for line in stderr.splitlines() if line.startswith("fntk:")]
    assert ours == ["fntk: interrupted; the tiles stored so far are kept: rerun the same "
                    "command to continue"], stderr[-3000:]
    store = TileStore.open(out)
    done, corrupt = store.verify()
    assert corrupt == [] and 5 <= len(done) < TILES


def test_embedded_cluster_listens_on_loopback_only():
    code = """
import json, psutil, time
from fntk_dist.distributed.cluster import connect
import ray
connect(None)
time.sleep(2)
me = psutil.Process()
pids = {p.pid for p in me.children(recursive=True)} | {me.pid}
socks = [(c.laddr.ip, psutil.Process(c.pid).name()) for c in psutil.net_connections("inet")
         if c.status == psutil.CONN_LISTEN and c.pid in pids]
print(json.dumps({"node": ray.nodes()[0]["NodeManagerAddress"], "listen": socks}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["node"] == "127.0.0.1"
    assert len(report["listen"]) >= 2  # at least the GCS and the raylet
    loopback = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
    assert all(ip in loopback for ip, _ in report["listen"]), report["listen"]
