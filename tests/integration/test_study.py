"""Width-scaling sweeps: the smoke sweep on a real local Ray cluster, killed mid-way and resumed,
its results.parquet and report; failed trials recorded; bad grids refused before any trial."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from fntk_dist.cli.main import main
from fntk_dist.study import load_sweep

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "sweep_smoke.yaml"
PLOTS = ("lambda0_vs_m", "gram_err_vs_m", "drift_vs_m", "steps_vs_m", "rate_vs_m", "cost_vs_m",
         "cost_vs_lambda", "test_error_vs_m", "loss_gap_vs_m", "drift_vs_k", "steps_ratio_vs_m")
# Measured in every trial (test metrics: the smoke data hold out a split).
ALWAYS = ("lambda_min_0", "lambda_max_0", "lambda_min_final", "max_gram_drift", "initial_loss",
          "final_loss", "tail_rate", "predicted_rate", "eta", "trainable_params",
          "flops_per_step", "seconds_per_step", "final_test_error", "ntk_emp_test_error")
ANALYTIC = ("lambda_inf", "gram_rel_err_inf", "predicted_rate_du", "ntk_inf_test_error")


def _finished(out: Path) -> dict[str, float]:
    """Trial id -> mtime of its summary.json, for the trials finished under out."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "trials").glob("*/summary.json")}


def _kill_session(sid: int) -> None:
    """SIGKILL every process of the session the sweep started in: the driver, the embedded
    cluster and its workers (each worker has a process group of its own), until none is left."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:  # the process ended meanwhile
                continue
            # Fields after the name: state, ppid, pgrp, session. Zombies are dead already.
            if int(fields[3]) == sid and fields[0] != "Z":
                left.append(int(stat.parent.name))
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise AssertionError(f"processes of session {sid} survived SIGKILL")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke sweep killed (SIGKILL, Ray's processes too) once a trial has finished, then
    rerun with `fntk sweep` in this process. Returns the folder, the trials finished before
    the rerun (id -> summary mtime) and the rerun's printed counts."""
    out = tmp_path_factory.mktemp("sweep") / "smoke"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fntk_dist.cli.main", "sweep", str(SMOKE), "--out", str(out),
         "--quiet"], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _finished(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        _kill_session(proc.pid)
        proc.wait()
    before = _finished(out)
    table_before = (pq.read_table(out / "results.parquet").column("trial_id").to_pylist()
                    if (out / "results.parquet").exists() else [])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["sweep", str(SMOKE), "--out", str(out), "--quiet"]) == 0
    return out, before, table_before, json.loads(printed.getvalue())


def test_kill_and_rerun_finishes_only_missing_trials(smoke, capsys):
    out, before, table_before, counts = smoke
    _, trials = load_sweep(SMOKE)
    assert 0 < len(before) < len(trials), "the kill came after the last trial"
    assert set(table_before) <= set(before)  # the table only ever holds finished trials
    assert counts["skipped"] == len(before)
    assert counts["ran"] == len(trials) - len(before) and counts["failed"] == 0
    after = _finished(out)
    assert set(after) == {t.id for t in trials}
    assert all(after[t] == before[t] for t in before), "a finished trial was run again"
    # A second rerun has nothing left to do.
    assert main(["sweep", str(SMOKE), "--out", str(out), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] == 0


def test_results_one_finite_row_per_trial(smoke):
    out = smoke[0]
    _, trials = load_sweep(SMOKE)
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted(r["trial_id"] for r in rows) == sorted(t.id for t in trials)
    for r in rows:
        assert r["error"] is None
        for c in ALWAYS + (ANALYTIC if r["mode"] in ("dense", "sketch_in") else ()):
            assert r[c] is not None and math.isfinite(r[c]), (r["trial_id"], c, r[c])
        assert r["n_test"] > 0 and r["m"] in (64, 128, 256)
        # W&B: one offline run per trial, in the trial's folder.
        assert list((out / "trials" / r["trial_id"] / "wandb").glob("offline-run-*"))


def test_report_writes_every_plot(smoke, capsys):
    out = smoke[0]
    assert main(["report", str(out)]) == 0
    report = out / "report" / "report.md"
    text = report.read_text()
    for name in PLOTS:
        png = out / "report" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name}.png)" in text
    assert "| sphere n=32 d=16 | sketch_out k=8 | 256 |" in text


def test_failed_trial_is_recorded_and_sweep_goes_on(tmp_path, capsys):
    # gram_max_n below n without a step size: train() refuses at run time, in the trial.
    spec = {"name": "fails", "base": {"data": {"n": 12, "d": 4}, "train": {"steps": 5},
                                      "tracking": {"wandb": False}},
            "grid": {"mode": ["dense"], "m": [16], "train.gram_max_n": [64, 4]}}
    cfg = tmp_path / "fails.yaml"
    cfg.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["ran"] == 1 and counts["failed"] == 1
    rows = {json.loads(r["params"])["train.gram_max_n"]: r
            for r in pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()}
    assert rows[64]["error"] is None and math.isfinite(rows[64]["final_loss"])
    assert rows[4]["error"].startswith("ConfigError: train.lr: required when n=12")
    assert main(["report", str(tmp_path / "out")]) == 0
    assert "## Failed trials" in (tmp_path / "out" / "report" / "report.md").read_text()


BAD_GRIDS = [
    ({"m": []}, "grid.m: empty list"),
    ({"mode": ["dense", "wide"]}, "grid.mode: Input should be"),
    ({"mode": ["sketch_in"], "m": [8], "k": [16]}, "grid.k: must be <= m=8, got 16"),
    ({"width": [8]}, "grid.width: unknown key"),
    ({"data.nn": [8]}, "grid.data.nn: unknown key"),
    ([], "grid: empty list"),
    ({"m": 64}, "grid.m: Input should be a valid list"),
    ({"source": ["digits"], "n": [5000]}, "data.n: 5000 rows asked for"),
]


@pytest.mark.parametrize("grid,message", BAD_GRIDS)
def test_bad_grid_refused_before_any_trial(tmp_path, capsys, grid, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"base": {"model": {"m": 64, "k": 8}}, "grid": grid}))
    out = tmp_path / "out"
    assert main(["sweep", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fntk: error: ") and len(err.splitlines()) == 1
    assert message in err, err
    assert not out.exists()


def test_bad_sweep_file_and_report_folder(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({"grid": {"m": [8]}, "basis": {}}))
    assert main(["sweep", str(cfg)]) == 2
    assert "basis: unknown key" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "no such sweep file" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.parquet" in capsys.readouterr().err


def test_a_trial_on_replaced_data_runs_again(tmp_path, capsys):
    """Finished trials are keyed on their data's contents: after the Parquet file is replaced
    under the same name, a rerun runs every trial again instead of reporting stale results."""
    from fntk_dist.data import write_dataset

    data = tmp_path / "points.parquet"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 6))
    write_dataset(data, x / np.linalg.norm(x, axis=1, keepdims=True), rng.standard_normal(24))
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "stale", "regression": False,
        "base": {"data": {"path": str(data)}, "train": {"steps": 5, "ntk_every": 0},
                 "tracking": {"wandb": False}, "model": {"dtype": "float64"}},
        "grid": {"mode": ["dense", "sketch_in"], "m": [64], "k": [4]}}))
    argv = ["sweep", str(sweep), "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["ran"] == 2
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["ran"] == 0
    y = x[::-1]  # other points, same file name
    write_dataset(data, y / np.linalg.norm(y, axis=1, keepdims=True), rng.standard_normal(24))
    assert main(argv) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["ran"], counts["skipped"]) == (2, 0)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_on_a_sweep_is_one_line_and_keeps_finished_trials(tmp_path, signum):
    out = tmp_path / "smoke"
    # The smoke sweep four times over (seeds 0-3): the signal lands after the first trial and
    # long before the last, however loaded the machine (10 trials could all end together).
    raw = yaml.safe_load(SMOKE.read_text())
    for axes in raw["grid"]:
        axes["seed"] = [0, 1, 2, 3]
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fntk_dist.cli.main", "sweep", str(sweep), "--out", str(out),
         "--quiet"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    deadline = time.monotonic() + 120
    while not _finished(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    ours = [line for line in stderr.splitlines() if line.startswith("fntk:")]
    assert ours == ["fntk: interrupted; finished trials are kept: rerun the same command to "
                    "run the rest"]
    assert _finished(out)


def test_depth_and_layers_are_grid_keys_and_the_report_plots_against_depth(tmp_path, capsys):
    sweep = tmp_path / "deep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "deep", "regression": False,
        "base": {"model": {"dtype": "float64", "m": 48},
                 "data": {"source": "sphere", "n": 16, "d": 6},
                 "train": {"steps": 10, "ntk_every": 5}, "tracking": {"wandb": False}},
        "grid": [{"mode": ["dense", "lowrank"], "k": [4], "depth": [1, 2, 3]},
                 {"layers": [[{"m": 48, "mode": "sketch_in", "k": 4, "sketch": "srht"},
                              {"m": 48, "mode": "dense"}]]}],
    }))
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] == 7
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted((r["mode"], r["depth"]) for r in rows) == sorted(
        [(mode, depth) for mode in ("dense", "lowrank") for depth in (1, 2, 3)]
        + [("dense", 2)])
    assert all(("-L" in r["trial_id"]) == (r["depth"] > 1) for r in rows)
    # The analytic limit exists for dense stacks (and a sketch_in first layer), not lowrank.
    assert all((r["lambda_inf"] is not None) == (r["mode"] == "dense") for r in rows)
    assert main(["report", str(out)]) == 0
    text = (out / "report" / "report.md").read_text()
    assert "(lambda0_vs_depth.png)" in text and "| dense L=3 |" in text
    png = out / "report" / "lambda0_vs_depth.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_kernel_sweep_measures_the_sketch_without_training(tmp_path, capsys):
    """kind: kernel on a real Ray cluster: no trial trains (no metrics.parquet), each row holds
    the sketch's measures, srht at k = d is exact, and the report is the kernel report."""
    sweep = tmp_path / "kernel.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "kernel", "kind": "kernel", "seed_mode": "independent",
        "base": {"data": {"source": "sphere", "n": 16, "d": 16}, "tracking": {"wandb": False}},
        "grid": [{"mode": ["sketch_in"], "sketch": ["gaussian", "srht"], "k_per_d": [0.25, 1],
                  "seed": [0, 1, 2]}, {"mode": ["dense"]}]}))
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] == 13
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert not list((out / "trials").glob("*/metrics.parquet"))
    for r in rows:
        assert r["error"] is None and r["kind"] == "kernel" and r["seed_mode"] == "independent"
        for c in ("lambda_inf", "lambda_inf_dense", "lambda_inf_ratio", "lambda_max_inf",
                  "condition_inf", "sketch_rel_err", "max_pair_distortion"):
            assert r[c] is not None and math.isfinite(r[c]), (r["trial_id"], c)
    exact = [r for r in rows if r["sketch"] == "srht" and r["k"] == 16]
    assert len(exact) == 3 and all(abs(r["lambda_inf_ratio"] - 1) < 1e-12 for r in exact)
    # A seed per (grid seed, width, rank): 3 x 2 draws, each sketch kind its own streams.
    assert len({r["seed"] for r in rows if r["mode"] == "sketch_in"}) == 6
    assert main(["report", str(out)]) == 0
    text = (out / "report" / "report.md").read_text()
    assert "Seeds: independent" in text and "## lambda_inf against the rank" in text
    assert "| sphere n=16 d=16 | sketch_in/srht | 16 | 1 | 1 | 3 | 1 ± " in text
    for name in ("kernel_lambda_vs_k_per_d", "kernel_sketch_err_vs_k_per_d"):
        assert (out / "report" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
