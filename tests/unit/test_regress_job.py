"""`fntk regress`: the run folder against a direct solve, resuming from the saved CG state,
Ctrl-C / SIGTERM (one line, exit 130, the same command continues), and bad inputs (exit 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from fntk_dist.cli.main import main
from fntk_dist.config import build_config
from fntk_dist.data import load_dataset
from fntk_dist.ntk import empirical_ntk
from fntk_dist.regress.job import run_regress_job

F64 = torch.float64
RAW = {
    "model": {"mode": "sketch_in", "m": 256, "k": 8, "sketch": "srht", "dtype": "float64",
              "train_output": True},
    "data": {"source": "sphere", "n": 250, "d": 16, "test_fraction": 0.2},
    "regress": {"ridge": 1e-3, "rank": 60, "rtol": 1e-11, "save_every_s": 0},
    "tracking": {"wandb": False},
}


def _write(tmp_path: Path, raw: dict, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _alpha(out: Path) -> np.ndarray:
    return pq.read_table(out / "coefficients.parquet").column("alpha").to_numpy()


def _direct(raw: dict) -> tuple[np.ndarray, float]:
    """alpha and the test MSE from the whole float64 Gram: solve, then the cross-Gram."""
    cfg = build_config(raw, source="test")
    data = load_dataset(cfg.data)
    net = cfg.model.build(data.d)
    x, xt = torch.as_tensor(data.x), torch.as_tensor(data.x_test)
    with torch.no_grad():
        f0, f0t = net(x), net(xt)
    h = empirical_ntk(net, x)
    ridge = cfg.regress.ridge
    alpha = torch.linalg.solve(h + ridge * torch.eye(data.n, dtype=F64),
                               torch.as_tensor(data.y) - f0)
    pred = f0t + empirical_ntk(net, xt, x) @ alpha
    return alpha.numpy(), float(((pred - torch.as_tensor(data.y_test)) ** 2).mean())


def test_the_run_folder_holds_the_direct_solution(tmp_path):
    out = tmp_path / "run"
    cfg = {**RAW, "tracking": {"wandb": True}}
    assert main(["regress", str(_write(tmp_path, cfg)), "--out", str(out), "--quiet"]) == 0
    assert {p.name for p in out.iterdir()} >= {"coefficients.parquet", "metrics.parquet",
                                                "summary.json", "config.yaml", "cg_state.pt",
                                                "wandb"}
    summary = json.loads((out / "summary.json").read_text())
    alpha, mse = _direct(RAW)
    assert np.linalg.norm(_alpha(out) - alpha) / np.linalg.norm(alpha) < 1e-8
    assert summary["test_mse"] == pytest.approx(mse, rel=1e-8)
    assert summary["converged"] and summary["true_relative_residual"] < 1e-10
    assert summary["n"] == 200 and summary["n_test"] == 50 and summary["rank_kept"] <= 60
    metrics = pq.read_table(out / "metrics.parquet").to_pydict()
    assert metrics["step"] == list(range(summary["iterations"] + 1))
    assert metrics["relative_residual"][-1] == summary["relative_residual"]
    assert len(list((out / "wandb").glob("offline-run-*/run-*.wandb"))) == 1


def test_a_stopped_solve_resumes_to_the_same_result(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    ref = run_regress_job(build_config(RAW, source="test"), whole, progress=False)
    short = {**RAW, "regress": {**RAW["regress"], "maxiter": 6}}
    first = run_regress_job(build_config(short, source="test"), part, progress=False)
    assert first["iterations"] == 6 and not first["converged"]
    again = run_regress_job(build_config(RAW, source="test"), part, progress=False)
    assert again["iterations_resumed"] == 6 and again["iterations"] == ref["iterations"]
    np.testing.assert_array_equal(_alpha(part), _alpha(whole))
    steps = pq.read_table(part / "metrics.parquet").column("step").to_pylist()
    assert steps == list(range(ref["iterations"] + 1))
    # Another regression's state in the folder is refused, naming what differs.
    other = {**RAW, "regress": {**RAW["regress"], "ridge": 1e-2}}
    code = main(["regress", str(_write(tmp_path, other)), "--out", str(part), "--quiet"])
    assert code == 2


@pytest.mark.parametrize("override,match", [
    ("regress.ridge=-1", "regress.ridge: Input should be greater than or equal to 0"),
    ("regress.rank=201", "regress.rank: 201 columns of H asked for, but there are only n=200"),
    ("data.test_fraction=0", "regress.test_metrics: the data has no test rows"),
    ("regress.rtol=0", "regress.rtol"),
    ("dist.grid=[1,500]", "dist.grid: 500 row groups but only n="),
])
def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, override, match):
    code = main(["regress", str(_write(tmp_path, RAW)), override, "--out",
                 str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("overrides,match", [
    (["model.depth=2"], "model.depth: fntk regress on Ray splits the width of a depth-1 net"),
    (["model.m=4", "model.k=2"], "dist.workers: 5 width shards but only m=4 neurons"),
    (["dist.grid=[2,2]"], "dist.grid: 2 x 2 = 4 actors, but dist.workers = 5"),
])
def test_what_ray_does_not_split_is_refused_before_any_worker(tmp_path, capsys, overrides,
                                                              match):
    code = main(["regress", str(_write(tmp_path, RAW)), *overrides, "--workers", "5",
                 "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_iteration_and_the_same_command_continues(tmp_path, signum):
    # Unpreconditioned with a tiny ridge: it runs to maxiter, long enough to stop it midway.
    raw = {**RAW, "regress": {**RAW["regress"], "precondition": False, "ridge": 1e-9,
                              "rtol": 1e-14, "maxiter": 80}}
    cfg, out = _write(tmp_path, raw), tmp_path / "run"
    cmd = [sys.executable, "-m", "fntk_dist.cli.main", "regress", str(cfg), "--out", str(out),
           "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (out / "cg_state.pt").exists():
        assert proc.poll() is None, f"ended first: {proc.communicate()}"
        assert time.monotonic() - t0 < 120
        time.sleep(0.01)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 130, err
    assert len(lines) == 1 and "interrupted after CG iteration" in lines[0], err
    assert "rerun the same command" in lines[0]
    assert not (out / "summary.json").exists() and (out / "metrics.parquet").exists()
    done = int(lines[0].split("iteration ")[1].split()[0])
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations_resumed"] == done >= 1 and summary["iterations"] == 80
    ref = tmp_path / "ref"
    run_regress_job(build_config(raw, source="test"), ref, progress=False)
    np.testing.assert_array_equal(_alpha(out), _alpha(ref))
