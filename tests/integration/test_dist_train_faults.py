"""`fntk train --workers 2` under failures (real processes, real SIGKILLs): Ray Train restarts
the worker group from the last DeepSpeed checkpoint, and `--resume` continues a run whose
driver was killed; the run ends with the loss curve of an uninterrupted one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from fntk_dist.config import build_config
from fntk_dist.distributed.train_job import last_checkpoint_step
from fntk_dist.train.job import run_train_job
from fntk_dist.train.parts import FolderCheckpointer

# About 60 ms a step on two workers, a checkpoint every 4 steps: long enough to kill
# something between the first checkpoint and the end.
RAW = {
    "model": {"mode": "sketch_in", "m": 16384, "k": 16, "sketch": "gaussian",
              "dtype": "float64"},
    "data": {"source": "sphere", "n": 256, "d": 16},
    "train": {"steps": 24, "log_every": 1, "ntk_every": 0, "checkpoint_every": 4},
    "dist": {"width": 2, "data": 1, "max_failures": 2},
    "tracking": {"wandb": True},
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[float]:
    out = tmp_path_factory.mktemp("single") / "run"
    run_train_job(build_config({**RAW, "dist": {}, "tracking": {"wandb": False}}, source="test"),
                  out, progress=False)
    return losses(out)


def losses(run: Path) -> list[float]:
    table = pq.read_table(run / "metrics.parquet").to_pydict()
    assert table["step"] == sorted(set(table["step"])), "a step was logged twice"
    return [v for v in table["loss"] if v is not None]


def start(tmp_path: Path, out: Path, *extra: str, raw: dict = RAW) -> subprocess.Popen:
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    workers = ["--workers", "2"] if raw["dist"] else []
    argv = [sys.executable, "-m", "fntk_dist.cli.main", "train", str(cfg), *workers,
            "--out", str(out), "--quiet", *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_ADDRESS": ""})


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, after: int,
                        timeout: float = 240) -> int:
    """The step of the last checkpoint Ray Train registered (every rank reported it), once it
    is past `after`."""
    t0 = time.monotonic()
    while (step := last_checkpoint_step(out) or 0) <= after:
        assert proc.poll() is None, f"run ended before a checkpoint: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, "no checkpoint"
        time.sleep(0.05)
    return step


def train_workers(driver: subprocess.Popen) -> list[psutil.Process]:
    """The Ray Train workers of this driver's embedded cluster (its descendants)."""
    try:
        family = psutil.Process(driver.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in family:
        with contextlib.suppress(psutil.Error):
            if any("ray::RayTrainWorker" in part for part in p.cmdline()):
                out.append(p)
    return out


def test_killed_worker_and_killed_driver_both_recover_from_checkpoints(tmp_path, reference):
    out = tmp_path / "run"
    proc = start(tmp_path, out)
    first = wait_for_checkpoint(proc, out, after=0)
    victims = train_workers(proc)
    assert len(victims) == 2
    os.kill(victims[-1].pid, signal.SIGKILL)  # Ray Train restarts the group from `first`
    wait_for_checkpoint(proc, out, after=first)
    workers = train_workers(proc)
    assert workers and not set(workers) & set(victims), "the group was not restarted"
    proc.kill()  # then the driver: the run stops, its checkpoints stay
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=60)  # the embedded cluster goes too
    assert not alive and not (out / "summary.json").exists(), "the run finished before the kill"
    again = start(tmp_path, out)  # without --resume: refused, the folder holds a started run
    _, stderr = again.communicate(timeout=120)
    assert again.returncode == 2 and "--resume" in stderr
    resumed = start(tmp_path, out, "--resume")
    _, stderr = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    got = losses(out)  # each step once: rows after a checkpoint are not logged twice
    assert len(got) == len(reference) == RAW["train"]["steps"] + 1
    for a, b in zip(got, reference, strict=True):
        assert a == pytest.approx(b, rel=1e-9)
    assert summary["restarts_from_checkpoint"] == 2
    assert any((out / "wandb").glob("offline-run-*"))


def test_killed_single_process_run_resumes_from_its_checkpoint(tmp_path, reference):
    """One process checkpoints into RUN/checkpoints and --resume continues from there."""
    out, raw = tmp_path / "run", {**RAW, "dist": {}}
    proc = start(tmp_path, out, raw=raw)
    t0 = time.monotonic()
    while not list((out / "checkpoints").glob("checkpoint_*")):
        assert proc.poll() is None, f"run ended before a checkpoint: {proc.communicate()}"
        assert time.monotonic() - t0 < 240, "no checkpoint"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert not (out / "summary.json").exists(), "the run finished before the kill"
    with FolderCheckpointer(out).latest() as folder:
        assert folder is not None and folder.name.startswith("checkpoint_")
    again = start(tmp_path, out, raw=raw)
    assert again.wait(timeout=120) == 2  # a started run needs --resume
    resumed = start(tmp_path, out, "--resume", raw=raw)
    _, stderr = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, stderr[-3000:]
    got = losses(out)
    assert len(got) == len(reference)
    for a, b in zip(got, reference, strict=True):
        assert a == pytest.approx(b, rel=1e-12)
    assert json.loads((out / "summary.json").read_text())["restarts_from_checkpoint"] == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_on_a_distributed_run_is_one_line_and_resumes(tmp_path, signum):
    """SIGINT or SIGTERM (a scheduler's) to `fntk train --workers 2`: Ray Train aborts the run,
    fntk says so in one line and exits 130, and --resume ends on the one-process curve."""
    raw = {**RAW, "train": {**RAW["train"], "steps": 80}, "tracking": {"wandb": False}}
    out = tmp_path / "run"
    proc = start(tmp_path, out, raw=raw)
    wait_for_checkpoint(proc, out, after=0)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    ours = [line for line in stderr.splitlines() if line.startswith("fntk:")]
    assert ours == ["fntk: interrupted; continue with --resume where checkpoints were written "
                    "(train.checkpoint_every)"]
    resumed = start(tmp_path, out, "--resume", raw=raw)
    _, stderr = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, stderr[-3000:]
    single = tmp_path / "single"
    run_train_job(build_config({**raw, "dist": {}}, source="test"), single, progress=False)
    got, ref = losses(out), losses(single)
    assert len(got) == len(ref) == 81
    for a, b in zip(got, ref, strict=True):
        assert a == pytest.approx(b, rel=1e-9)


def test_the_terminal_shows_one_bar_and_the_workers_write_to_the_run_folder(tmp_path):
    """Without --quiet: the driver draws one progress bar (from rank 0's progress file); Ray's,
    DeepSpeed's and the workers' own lines go to RUN/logs, and --verbose streams them."""
    raw = {**RAW, "train": {**RAW["train"], "steps": 6, "checkpoint_every": 0},
           "tracking": {"wandb": False}}
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    runs = {}
    for name, extra in (("plain", []), ("verbose", ["--verbose"])):
        out = tmp_path / name
        proc = subprocess.run(
            [sys.executable, "-m", "fntk_dist.cli.main", "train", str(cfg), "--workers", "2",
             "--out", str(out), *extra], capture_output=True, text=True, timeout=400,
            env={**os.environ, "RAY_ADDRESS": ""})
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = (out, [line for line in proc.stderr.replace("\r", "\n").splitlines()
                            if line.strip()])
    out, lines = runs["plain"]
    assert lines and all(line.startswith("train ") for line in lines), lines[:20]
    assert "7/7" in lines[-1] and "loss=" in lines[-1]
    assert {p.name for p in (out / "logs").iterdir()} == {"rank0.log", "rank1.log",
                                                          "progress.json"}
    assert "accelerator" in (out / "logs" / "rank0.log").read_text()  # DeepSpeed's banner
    _, lines = runs["verbose"]
    assert any("RayTrainWorker" in line for line in lines)
