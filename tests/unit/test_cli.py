"""The `fntk` command: runs, run folders, and one clear line (exit 2) for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from fntk_dist.cli.main import main
from fntk_dist.data import write_dataset

SMALL = {
    "model": {"mode": "sketch_in", "m": 512, "k": 8, "sketch": "srht", "dtype": "float64"},
    "data": {"source": "sphere", "n": 24, "d": 16},
    "train": {"steps": 30, "ntk_every": 10},
    "tracking": {"wandb": False},
}


def write_config(tmp_path: Path, cfg: dict, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_writes_the_run_folder(tmp_path):
    cfg = {**SMALL, "tracking": {"wandb": True, "group": "tests"}}
    out = tmp_path / "run"
    assert main(["train", str(write_config(tmp_path, cfg)), "--out", str(out), "--quiet"]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.parquet", "summary.json",
                                                "loss.png", "wandb"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_loss"] < summary["initial_loss"]
    assert summary["lambda_min_0"] > 0 and summary["lambda_inf"] > 0
    metrics = pq.read_table(out / "metrics.parquet").to_pydict()
    assert metrics["step"][0] == 0 and metrics["step"][-1] == 30
    assert metrics["gram_drift"][0] == 0.0 and metrics["flip_fraction"][0] == 0.0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["m"] == 512
    # W&B wrote an offline run holding the logged history.
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    # The same folder again is refused rather than overwritten.
    again = main(["train", str(write_config(tmp_path, cfg)), "--out", str(out), "--quiet"])
    assert again == 2


def test_overrides_and_gram(tmp_path):
    from fntk_dist.gram import load_gram

    out = tmp_path / "gram"
    argv = ["gram", str(write_config(tmp_path, SMALL)), "model.mode=dense", "model.k=null",
            "model.sketch=null", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    h = load_gram(out)
    summary = json.loads((out / "summary.json").read_text())
    assert h.shape == (24, 24) and summary["n"] == 24 and summary["mode"] == "dense"
    assert summary["lambda_min"] == pytest.approx(np.linalg.eigvalsh(h)[0])
    assert 0 < summary["gram_rel_err_inf"] < 1


def test_user_parquet_data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 6))
    write_dataset(tmp_path / "mine.parquet", x / np.linalg.norm(x, axis=1, keepdims=True),
                  rng.standard_normal(20))
    cfg = {**SMALL, "data": {"path": str(tmp_path / "mine.parquet")}}
    out = tmp_path / "run"
    assert main(["train", str(write_config(tmp_path, cfg)), "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["d"] == 6


BAD = [
    ({"model": {"mode": "sketch_in", "m": 8, "k": 0}}, [], "model.k"),
    ({"model": {"mode": "sketch_in", "m": 8, "k": 9}}, [], "model.k: must be <= m=8"),
    ({"model": {"mode": "dense", "k": 4}}, [], "model.k"),
    ({"model": {"mode": "lowrank", "k": 4, "sketch": "srht"}}, [], "model.sketch"),
    ({"model": {"mode": "sketch_in", "k": 4, "sketch": "fft"}}, [], "model.sketch"),
    ({"model": {"m": "wide"}}, [], "model.m"),
    ({"model": {"widht": 3}}, [], "model.widht: unknown key"),
    ({"trian": {}}, [], "trian: unknown key"),
    ({"train": {"steps": -1}}, [], "train.steps"),
    ({"data": {"test_fraction": 1.0}}, [], "data.test_fraction"),
    ({}, ["train.steps"], "expected key.sub=value"),
    ({}, ["train.lr=-1"], "train.lr"),
    ({}, ["dist.grid=[2,2]"], "dist.grid: shapes the actors of fntk gram"),
    ({}, ["model.bogus=1"], "model.bogus: unknown key"),
    ({"data": {"path": "/nonexistent/x.parquet"}}, [], "/nonexistent/x.parquet"),
    ({"model": {"mode": "sketch_in", "k": 64, "sketch": "srht"}, "data": {"d": 8}}, [],
     "model.k: srht"),
    ({"data": {"n": 8}, "train": {"optimizer": "sgd", "batch_size": 9}}, [],
     "train.batch_size"),
]


@pytest.mark.parametrize("cfg,overrides,needle", BAD)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, cfg, overrides, needle):
    cfg = {**cfg, "tracking": {"wandb": False}}
    path = write_config(tmp_path, cfg)
    out = tmp_path / "out"
    assert main(["train", str(path), *overrides, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (out / "summary.json").exists()


def test_bad_files(tmp_path, capsys):
    (tmp_path / "broken.yaml").write_text("model: [1, 2\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "afile").write_text("x")
    good = write_config(tmp_path, SMALL)
    for argv, needle in [
        (["train", str(tmp_path / "missing.yaml")], "no such config file"),
        (["train", str(tmp_path / "broken.yaml")], "not valid YAML"),
        (["gram", str(tmp_path / "list.yaml")], "expected a mapping"),
        (["train", str(good), "--out", str(tmp_path / "afile")], "--out"),
    ]:
        assert main(argv) == 2
        assert needle in capsys.readouterr().err


def test_console_script_exit_status(tmp_path):
    # The installed entry point, as users call it: no traceback, status 2.
    proc = subprocess.run([sys.executable, "-m", "fntk_dist.cli.main", "train",
                           str(tmp_path / "none.yaml")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("fntk: error:")


def test_degenerate_data_is_one_line_or_a_run_that_reports_it(tmp_path, capsys):
    """Every x zero: the NTK Gram and its analytic limit vanish. Without a step size training
    is refused in one line before anything is written; with one, and for `fntk gram`, the run
    finishes and reports the degeneracy (no relative distance to a zero kernel)."""
    write_dataset(tmp_path / "zeros.parquet", np.zeros((12, 6)), np.linspace(-1, 1, 12))
    cfg = {**SMALL, "data": {"path": str(tmp_path / "zeros.parquet")},
           "train": {"steps": 3, "ntk_every": 0}}
    path = write_config(tmp_path, cfg)
    assert main(["train", str(path), "--out", str(tmp_path / "t"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr: every training point is zero" in err[0]
    assert not (tmp_path / "t").exists()
    assert main(["train", str(path), "train.lr=0.1", "--out", str(tmp_path / "t2"),
                 "--quiet"]) == 0
    summary = json.loads((tmp_path / "t2" / "summary.json").read_text())
    assert summary["lambda_max_0"] == 0 and summary["gram_rel_err_inf"] is None
    assert main(["gram", str(path), "--out", str(tmp_path / "g"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert summary["lambda_max"] == 0 and summary["gram_rel_err_inf"] is None


def _points(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((20, 6))
    return x / np.linalg.norm(x, axis=1, keepdims=True), rng.standard_normal(20)


def test_results_are_keyed_on_the_data_not_its_path(tmp_path, capsys):
    """A Parquet file replaced under the same name is other data: the Gram store and a
    training checkpoint of the old file are refused, naming what differs, never reused."""
    data = tmp_path / "mine.parquet"
    write_dataset(data, *_points(0))
    cfg = {**SMALL, "data": {"path": str(data)},
           "train": {"steps": 4, "ntk_every": 0, "checkpoint_every": 2}}
    path = write_config(tmp_path, cfg)
    gram = ["gram", str(path), "--out", str(tmp_path / "g"), "--quiet"]
    train = ["train", str(path), "--out", str(tmp_path / "t"), "--quiet"]
    assert main(gram) == 0 and main(train) == 0
    assert main(gram) == 0  # the same data: the store is reused as it is
    write_dataset(data, *_points(1))
    assert main(gram) == 2
    assert "differs in data_fingerprint" in capsys.readouterr().err
    assert main([*train, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "data_fingerprint" in err
    write_dataset(data, *_points(0))
    assert main([*gram, "model.m=256"]) == 2
    assert "differs in model.m" in capsys.readouterr().err


@pytest.mark.parametrize("text,overrides,needle", [
    ("model: {mode: dense, m: 64}\ntrain: {steps: 2}\ntrain: {steps: 3}\n", [],
     "key 'train' given twice (line 3)"),
    ("model: {mode: dense, m: 64}\n", ["dist.width=2"], "dist.width: sets the mesh"),
    ("model: {mode: dense, m: 64}\n", ["dist.data=2"], "dist.data: sets the mesh"),
    ("model: {mode: dense, m: 64}\n", ["deepspeed.zero_stage=2"],
     "deepspeed.zero_stage: applies to distributed training only"),
])
def test_settings_that_would_be_ignored_are_refused(tmp_path, capsys, text, overrides, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["train", str(path), *overrides, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "r").exists()


def test_a_sketch_that_does_not_reduce_is_one_warning_line(tmp_path):
    path = write_config(tmp_path, {**SMALL, "model": {"mode": "sketch_in", "m": 64, "k": 20,
                                                      "dtype": "float64"},
                                   "train": {"steps": 2, "ntk_every": 0}})
    proc = subprocess.run([sys.executable, "-m", "fntk_dist.cli.main", "train", str(path),
                           "--out", str(tmp_path / "r"), "--quiet"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warned == ["fntk: warning: model.k: sketch_in maps the d=16 inputs to k=20 > d "
                      "features, a sketch that does not reduce"]


def test_rules_checked_after_loading_name_the_file(tmp_path, capsys):
    """An empty file is the default config, whose sketch_in net lacks a rank: the line names
    the file as well as the key, like every error found while loading it."""
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert main(["train", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fntk: error: {path}: model.k: mode 'sketch_in' needs a rank k "
                   "(1 <= k <= m)"]
