"""The tiled Cholesky's tasks on a real local Ray cluster: the same factor as threads, a killed
run resumed to the same bits, a failed pivot reported as on threads, and `fntk gram --workers`
putting its factorization there when asked (by default only on a cluster of several nodes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fntk_dist.config import build_config
from fntk_dist.distributed.cluster import connect, shutdown
from fntk_dist.distributed.factor_tasks import RayTasks
from fntk_dist.gram import TileStore
from fntk_dist.gram.cholesky import CholeskyFailed, DenseFactor, TiledFactor
from fntk_dist.gram.job import run_gram_job


@pytest.fixture(scope="module")
def ray_cluster():
    connect(None, min_cpus=4)
    yield
    shutdown()


def spd_store(path: Path, n: int = 70, tile: int = 16) -> tuple[np.ndarray, TileStore]:
    x = np.random.default_rng(0).standard_normal((n, 4 * n))
    h = x @ x.T / n  # lambda_min about 0.9
    store = TileStore.create_or_open(path, config_hash="h", n=n, tile=tile)
    for i, j in store.all_tiles():
        (r0, r1), (c0, c1) = store.bounds(i), store.bounds(j)
        store.write(i, j, h[r0:r1, c0:c1])
    return h, store


class Stop(Exception):
    pass


def test_ray_tasks_give_the_factor_of_threads_and_resume_to_the_same_bits(ray_cluster,
                                                                          tmp_path):
    h, store = spd_store(tmp_path / "g")  # 5 x 5 blocks, the last of 6 rows: 15 tasks
    threads = TiledFactor(store, tmp_path / "threads", 0.25)
    threads.run(2)
    whole = TiledFactor(store, tmp_path / "whole", 0.25)
    whole.run(3, tasks=RayTasks)
    r = DenseFactor(h, 0.25).r
    assert np.abs(whole.dense() - r).max() <= 1e-12 * np.abs(r).max()
    assert np.abs(whole.dense() - threads.dense()).max() <= 1e-12 * np.abs(r).max()

    seen = []

    def stop_after_7(tile, flops):
        seen.append(tile)
        if len(seen) == 7:
            raise Stop

    part = TiledFactor(store, tmp_path / "part", 0.25)
    with pytest.raises(Stop):
        part.run(3, stop_after_7, tasks=RayTasks)
    again = TiledFactor(store, tmp_path / "part", 0.25)
    assert len(again.missing()) == len(store.all_tiles()) - 7
    again.run(3, tasks=RayTasks)  # the finished tiles come from disk, the rest from Ray
    for i, j in store.all_tiles():
        assert np.array_equal(again.store.read(i, j), whole.store.read(i, j))


def test_a_pivot_that_fails_on_ray_raises_as_on_threads(ray_cluster, tmp_path):
    h, store = spd_store(tmp_path / "g", n=40)
    with pytest.raises(CholeskyFailed):
        TiledFactor(store, tmp_path / "f", np.linalg.eigvalsh(h)[0] * 1.01).run(
            2, tasks=RayTasks)


def test_fntk_gram_on_ray_factors_on_ray_and_brackets_lambda_min(ray_cluster, tmp_path):
    cfg = build_config({
        "model": {"mode": "sketch_in", "m": 300, "k": 6, "sketch": "srht", "dtype": "float64"},
        "data": {"source": "sphere", "n": 37, "d": 10},
        "dist": {"workers": 2},
        "gram": {"tile": 10, "assemble_max_n": 10, "factor_tasks": "ray"},
        "tracking": {"wandb": False},
    }, source="test")
    s = run_gram_job(cfg, tmp_path / "g", progress=False)
    assert "(2 Ray tasks at a time)" in s["lambda_min_method"]
    auto = run_gram_job(cfg.model_copy(update={"gram": cfg.gram.model_copy(
        update={"factor_tasks": "auto"})}), tmp_path / "auto", progress=False)
    assert "(1 thread at a time)" in auto["lambda_min_method"]  # one node: threads
    assert auto["lambda_min_lower"] == pytest.approx(s["lambda_min_lower"], rel=1e-12)
    lam = np.linalg.eigvalsh(TileStore.open(tmp_path / "g").assemble())[0]
    assert s["lambda_min_lower"] <= lam <= s["lambda_min_upper"]
    assert s["lambda_min_rel_width"] <= 1e-3
