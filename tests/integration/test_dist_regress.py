"""`fntk regress` on a real local Ray cluster: a grid of actors (width shards x row groups)
answers the mat-vecs, the preconditioner's columns and the predictions, and the run equals the
one-process run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import torch

from fntk_dist.config import build_config
from fntk_dist.data import load_dataset
from fntk_dist.distributed.cluster import connect, shutdown
from fntk_dist.distributed.matvec_actors import RayOperator, connect_for_regress
from fntk_dist.ntk.nystrom import sample_columns
from fntk_dist.regress.job import run_regress_job
from fntk_dist.regress.operator import LocalOperator


def config(model: dict, workers: int | None, grid: tuple[int, int] | None = None) -> object:
    return build_config({
        "model": {"dtype": "float64", **model},
        "data": {"source": "sphere", "n": 160, "d": 12, "test_fraction": 0.25},
        "regress": {"ridge": 1e-3, "rank": 40, "rtol": 1e-10, "tile": 50},
        "dist": {"workers": workers, "grid": grid},
        "tracking": {"wandb": False},
    }, source="test")


@pytest.fixture(scope="module")
def ray_cluster():
    connect(None, min_cpus=3)
    yield
    shutdown()


MODELS = [
    {"mode": "sketch_in", "m": 300, "k": 6, "sketch": "srht", "train_output": True},
    {"mode": "dense", "m": 301},
    {"mode": "lowrank", "m": 300, "k": 5, "train_output": True},  # V's term from G summed
    {"mode": "sketch_out", "m": 300, "k": 6, "sketch": "countsketch"},  # V's term alone
]


@pytest.mark.parametrize("model", MODELS)
def test_any_grid_answers_the_one_process_operator(ray_cluster, model):
    """H v, H(X_test, X) v, the preconditioner's columns and the net's outputs of every grid
    shape against the one-process operator: each row group's pass-1 sums over its own points,
    added by a tree over the groups (3 x 2: shards of 100 neurons, groups of 60 points); each
    group's 60 rows of the columns in tiles of 50 and 10, each summed and finished by the
    group's first shard."""
    cfg = config(model, None)
    data = load_dataset(cfg.data)
    x, xt = torch.from_numpy(data.x), torch.from_numpy(data.x_test)
    local = LocalOperator(cfg.model.build(data.d), x, None, 50)
    g = torch.Generator().manual_seed(0)
    v, vt = (torch.randn(x.shape[0], generator=g, dtype=torch.float64) for _ in range(2))
    ref, ref_t = local.matvec(v), local.cross_matvec(xt, vt)
    ref_cols = local.columns(torch.tensor([3, 77, 110]))
    ref_out = local.outputs(xt)
    for grid in ((1, 1), (2, 1), (1, 2), (2, 2), (3, 2)):
        cfg = config(model, None, grid)
        op = RayOperator(cfg, grid, x, connect_for_regress(cfg, grid[0] * grid[1]))
        try:
            for got, want in ((op.matvec(v), ref), (op.cross_matvec(xt, vt), ref_t),
                              (op.columns(torch.tensor([3, 77, 110])), ref_cols),
                              (op.outputs(xt), ref_out)):
                assert float((got - want).norm() / want.norm()) < 1e-10, grid
        finally:
            op.close()


@pytest.mark.parametrize("model", MODELS)
def test_workers_equal_one_process(ray_cluster, tmp_path, model):
    one = run_regress_job(config(model, None), tmp_path / "one", progress=False)
    alpha = pq.read_table(tmp_path / "one" / "coefficients.parquet").column("alpha").to_numpy()
    for workers, grid in ((2, None), (None, (2, 2))):
        out = tmp_path / f"w{workers}{grid}"
        dist = run_regress_job(config(model, workers, grid), out, progress=False)
        workers = workers or grid[0] * grid[1]
        got = pq.read_table(out / "coefficients.parquet").column("alpha").to_numpy()
        assert np.linalg.norm(got - alpha) / np.linalg.norm(alpha) < 1e-10
        # The shards' sums round differently; CG's path near rtol may take a few more or fewer
        # iterations to the same solution.
        assert dist["workers"] == workers and abs(dist["iterations"] - one["iterations"]) <= 5
        assert dist["test_mse"] == pytest.approx(one["test_mse"], rel=1e-10)
        assert dist["test_error"] == one["test_error"]
        assert json.loads((out / "summary.json").read_text())["shard_nodes"] == ["127.0.0.1"]


def test_killed_shard_costs_a_retry_and_the_columns_are_unchanged(ray_cluster):
    """A 2 x 2 grid's shard SIGKILLed while the preconditioner's columns are computed: Ray
    rebuilds it and runs its calls again, and the columns equal the same grid's columns
    computed without the kill, bit for bit (each tile's sum has a fixed order)."""
    cfg = build_config({
        "model": {"mode": "sketch_in", "m": 20000, "k": 8, "dtype": "float64"},
        "data": {"source": "sphere", "n": 2400, "d": 16, "test_fraction": 0.0},
        "regress": {"tile": 50}, "dist": {"grid": [2, 2]}, "tracking": {"wandb": False},
    }, source="test")  # 48 tiles of 50 x 400 over 20,000 neurons: about 1.5 s of work
    x = torch.from_numpy(load_dataset(cfg.data).x)
    idx = sample_columns(x.shape[0], 400, 0)
    op = RayOperator(cfg, (2, 2), x, connect_for_regress(cfg, 4))
    try:
        want = op.columns(idx)
        got = {}

        def columns() -> None:
            try:
                got["cols"] = op.columns(idx)
            except Exception as err:  # reported by the assertion below
                got["error"] = err

        worker = threading.Thread(target=columns)
        worker.start()
        time.sleep(0.3)
        shards = [p for p in psutil.process_iter(["cmdline"])
                  if any("ray::MatvecShard" in part for part in (p.info["cmdline"] or []))]
        assert worker.is_alive(), "the columns were done before the kill: give them more work"
        os.kill(shards[-1].pid, signal.SIGKILL)
        worker.join(timeout=120)
        assert not worker.is_alive(), "the columns did not finish after the kill"
        assert "error" not in got, got.get("error")
        assert torch.equal(got["cols"], want)
    finally:
        op.close()
