"""Ctrl-C and SIGTERM: one line, exit 130, nothing lost that can be kept.

`fntk train` (one process) stops after the step in progress, writes a checkpoint where
checkpoints are on and the metrics so far, and `--resume` ends on the uninterrupted curve;
`fntk gram` keeps the tiles it stored and the same command continues.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from fntk_dist.config import build_config
from fntk_dist.train.job import run_train_job

RAW = {
    "model": {"mode": "sketch_in", "m": 8192, "k": 16, "sketch": "srht", "dtype": "float64"},
    "data": {"source": "sphere", "n": 128, "d": 32},
    "train": {"steps": 150, "ntk_every": 0, "checkpoint_every": 5},
    "tracking": {"wandb": False},
}


def fntk(tmp_path: Path, raw: dict, *args: str) -> subprocess.Popen:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return subprocess.Popen([sys.executable, "-m", "fntk_dist.cli.main", args[0], str(cfg),
                             *args[1:], "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, files: Path, pattern: str, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not list(files.glob(pattern)):
        assert proc.poll() is None, f"ended first: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout
        time.sleep(0.01)


def losses(run: Path) -> list[float]:
    return [v for v in pq.read_table(run / "metrics.parquet").column("loss").to_pylist()
            if v is not None]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_train_stops_after_the_step_and_resumes_on_the_same_curve(tmp_path, signum):
    out = tmp_path / "run"
    proc = fntk(tmp_path, RAW, "train", "--out", str(out))
    wait_for(proc, out / "checkpoints", "checkpoint_*")
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted after step" in lines[0] and "--resume" in lines[0]
    assert not (out / "summary.json").exists()
    done = losses(out)  # the metrics of the steps done were written
    step = int(lines[0].split("after step ")[1].split()[0])
    assert len(done) == step + 1
    resumed = fntk(tmp_path, RAW, "train", "--out", str(out), "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    reference = tmp_path / "reference"
    run_train_job(build_config(RAW, source="test"), reference, progress=False)
    assert losses(out) == losses(reference)
    assert json.loads((out / "summary.json").read_text())["restarts_from_checkpoint"] == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_gram_keeps_its_tiles_and_the_same_command_continues(tmp_path, signum):
    out = tmp_path / "gram"
    raw = {**RAW, "model": {**RAW["model"], "m": 2048},
           "data": {"source": "sphere", "n": 600, "d": 32}}  # 120 tiles: a signal lands mid-job
    proc = fntk(tmp_path, raw, "gram", "--out", str(out), "--tile", "40")
    wait_for(proc, out / "tiles", "t_*.arrow")
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "rerun the same command" in lines[0], err
    again = fntk(tmp_path, raw, "gram", "--out", str(out), "--tile", "40")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiles_resumed"] >= 1 and summary["tiles"] == 120
