"""`fntk regress` on a real local Ray cluster: width-shard actors answer the mat-vecs, the
preconditioner's columns and the predictions, and the run equals the one-process run."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from fntk_dist.config import build_config
from fntk_dist.distributed.cluster import connect, shutdown
from fntk_dist.regress.job import run_regress_job


def config(model: dict, workers: int | None) -> object:
    return build_config({
        "model": {"dtype": "float64", **model},
        "data": {"source": "sphere", "n": 160, "d": 12, "test_fraction": 0.25},
        "regress": {"ridge": 1e-3, "rank": 40, "rtol": 1e-10, "tile": 50},
        "dist": {"workers": workers},
        "tracking": {"wandb": False},
    }, source="test")


@pytest.fixture(scope="module")
def ray_cluster():
    connect(None, min_cpus=3)
    yield
    shutdown()


@pytest.mark.parametrize("model", [
    {"mode": "sketch_in", "m": 300, "k": 6, "sketch": "srht", "train_output": True},
    {"mode": "dense", "m": 301},
    {"mode": "lowrank", "m": 300, "k": 5, "train_output": True},  # V's term from G summed
    {"mode": "sketch_out", "m": 300, "k": 6, "sketch": "countsketch"},  # V's term alone
])
def test_workers_equal_one_process(ray_cluster, tmp_path, model):
    one = run_regress_job(config(model, None), tmp_path / "one", progress=False)
    alpha = pq.read_table(tmp_path / "one" / "coefficients.parquet").column("alpha").to_numpy()
    for workers in (2, 3):
        out = tmp_path / f"w{workers}"
        dist = run_regress_job(config(model, workers), out, progress=False)
        got = pq.read_table(out / "coefficients.parquet").column("alpha").to_numpy()
        assert np.linalg.norm(got - alpha) / np.linalg.norm(alpha) < 1e-10
        # The shards' sums round differently; CG's path near rtol may take a few more or fewer
        # iterations to the same solution.
        assert dist["workers"] == workers and abs(dist["iterations"] - one["iterations"]) <= 5
        assert dist["test_mse"] == pytest.approx(one["test_mse"], rel=1e-10)
        assert dist["test_error"] == one["test_error"]
        assert json.loads((out / "summary.json").read_text())["shard_nodes"] == ["127.0.0.1"]
