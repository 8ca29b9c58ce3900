"""The Gram job on a real local Ray cluster and in one process, against the closed form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fntk_dist import empirical_ntk
from fntk_dist.cli.main import main
from fntk_dist.config import build_config
from fntk_dist.data import load_dataset
from fntk_dist.distributed.cluster import connect, shutdown
from fntk_dist.distributed.gram_actors import RayExecutor
from fntk_dist.distributed.shards import placement
from fntk_dist.errors import ConfigError
from fntk_dist.gram import TileStore, iter_tiles, load_gram
from fntk_dist.gram.job import run_gram_job
from fntk_dist.gram.tile_store import JOURNAL
from fntk_dist.gram.tiles import PHASES

MODELS = {
    "dense": {"mode": "dense", "m": 300},
    "sketch_in": {"mode": "sketch_in", "m": 300, "k": 6, "sketch": "srht", "train_output": True},
    "sketch_out": {"mode": "sketch_out", "m": 300, "k": 6, "sketch": "countsketch"},
    "lowrank": {"mode": "lowrank", "m": 300, "k": 6, "train_output": True},
}


def config(model: dict, workers: int | None = 2, grid: tuple[int, int] | None = None, **gram):
    return build_config({
        "model": {"dtype": "float64", **model},
        "data": {"source": "sphere", "n": 37, "d": 10},
        "dist": {"workers": workers, "grid": grid},
        "gram": {"tile": 10, **gram},
        "tracking": {"wandb": False},
    }, source="test")


def reference(cfg) -> np.ndarray:
    data = load_dataset(cfg.data)
    net = cfg.model.build(data.d)
    return empirical_ntk(net, torch.from_numpy(data.x)).numpy()


@pytest.fixture(scope="module")
def ray_cluster():
    connect(None, min_cpus=4)
    yield
    shutdown()


def test_a_deep_net_on_any_worker_count_gives_the_closed_form(ray_cluster, tmp_path):
    """Depth 3, mixed layers: the shards split the last layer, and their partials (with its
    backprop signal, summed like G) add up to the one-process Gram."""
    layers = [{"m": 24, "mode": "sketch_in", "k": 4, "sketch": "srht"},
              {"m": 30, "mode": "lowrank", "k": 5}, {"m": 41, "mode": "dense"}]
    ref = None
    for grid in (None, (2, 1), (3, 1), (2, 2)):
        cfg = config({"layers": layers, "train_output": True}, workers=None, grid=grid)
        ref = reference(cfg) if ref is None else ref
        summary = run_gram_job(cfg, tmp_path / f"g{grid}", progress=False)
        assert summary["depth"] == 3 and summary["grid"] == (None if grid is None else list(grid))
        np.testing.assert_allclose(load_gram(tmp_path / f"g{grid}"), ref, rtol=0,
                                   atol=1e-10 * np.abs(ref).max())


# (width shards, row groups): None in this process; 3 x 2 sums 3 partials by a two-level tree
# in each of two row groups.
GRIDS = (None, (1, 1), (2, 1), (1, 2), (2, 2), (3, 2))


@pytest.mark.parametrize("mode", MODELS)
def test_any_grid_gives_the_single_process_gram(ray_cluster, tmp_path, mode):
    ref = None
    for grid in GRIDS:
        cfg = config(MODELS[mode], workers=None, grid=grid)
        ref = reference(cfg) if ref is None else ref
        summary = run_gram_job(cfg, tmp_path / f"g{grid}", progress=False)
        h = load_gram(tmp_path / f"g{grid}")
        assert np.abs(h - ref).max() <= 1e-10 * np.abs(ref).max()
        assert summary["workers"] == (1 if grid is None else grid[0] * grid[1])
        assert summary["tiles"] == 10 and summary["tiles_computed"] == 10
        assert summary["lambda_min"] == pytest.approx(np.linalg.eigvalsh(ref)[0], rel=1e-8)
        phases = summary["tile_phase_seconds"]
        assert tuple(phases) == PHASES and min(phases.values()) >= 0 and phases["partial"] > 0
        # Only a width-split root waits for the other shards' sum.
        assert (phases["wait"] > 0) == (grid is not None and grid[0] > 1)


def test_roots_write_beside_the_store_or_send_tiles_they_cannot_store(ray_cluster, tmp_path,
                                                                      monkeypatch):
    """On one host every row group's root stages its finished tiles beside the store; a root
    on another node (played here by saying so) sends them, and the driver writes them: the
    same Gram either way, and no staged file is left behind."""
    seen = []
    start = RayExecutor.__init__

    def far(self, *args, **kwargs):
        start(self, *args, **kwargs)
        seen.append(list(self.root_local))
        self.root_local = [False] * len(self.groups)

    cfg = config(MODELS["lowrank"], workers=None, grid=(2, 2))
    ref = reference(cfg)
    run_gram_job(cfg, tmp_path / "near", progress=False)
    monkeypatch.setattr(RayExecutor, "__init__", far)
    run_gram_job(cfg, tmp_path / "far", progress=False)
    assert seen == [[True, True]]
    for run in ("near", "far"):
        assert np.abs(load_gram(tmp_path / run) - ref).max() <= 1e-10 * np.abs(ref).max()
        assert sorted(p.name for p in (tmp_path / run / "tiles").iterdir()) == sorted(
            f"t_{i}_{j}.arrow" for i in range(4) for j in range(i, 4))


def test_rerun_resumes_and_recomputes_a_corrupt_tile(ray_cluster, tmp_path):
    cfg = config(MODELS["sketch_out"])
    out = tmp_path / "g"
    run_gram_job(cfg, out, progress=False)
    again = run_gram_job(cfg, out, progress=False)
    assert again["tiles_computed"] == 0 and again["tiles_resumed"] == 10
    flip_a_byte(out / "tiles" / "t_1_2.arrow")
    fixed = run_gram_job(cfg, out, progress=False)
    assert fixed["tiles_computed"] == 1
    assert np.abs(load_gram(out) - reference(cfg)).max() <= 1e-10


def flip_a_byte(f: Path) -> None:
    raw = bytearray(f.read_bytes())
    raw[-40] ^= 0xFF
    f.write_bytes(bytes(raw))


def test_local_and_ray_executors_write_the_same_store_and_summary(ray_cluster, tmp_path):
    cfg = config(MODELS["sketch_in"], workers=None)
    local = run_gram_job(cfg, tmp_path / "local", progress=False)
    on_ray = run_gram_job(config(MODELS["sketch_in"]), tmp_path / "ray", progress=False)
    here, there = list(iter_tiles(tmp_path / "local")), list(iter_tiles(tmp_path / "ray"))
    assert [t[:2] for t in here] == [t[:2] for t in there] and len(here) == 10
    for (_, _, a), (_, _, b) in zip(here, there):
        assert np.abs(a - b).max() <= 1e-10 * np.abs(a).max()
    assert local.keys() == on_ray.keys()
    assert local["workers"] == 1 and local["shard_nodes"] == [] and local["device"] == "cpu"
    assert on_ray["workers"] == 2 and on_ray["shard_nodes"] == ["127.0.0.1"]
    for s in (local, on_ray):  # sketch_in: the analytic kernel applies, in both
        assert s["lambda_inf"] > 0 and 0 < s["gram_rel_err_inf"] < 1
        assert s["tiles_computed"] == 10 and s["tiles_per_s"] > 0 and s["gflops"] > 0
        assert s["worker_peak_rss_bytes"] >= s["worker_base_rss_bytes"] > 0
    # One process, one tile at a time: its phases fall within the tiles' wall time.
    phases = local["tile_phase_seconds"]
    assert sum(phases[p] for p in PHASES if p != "commit") <= local["tile_seconds"]
    assert local["gram_rel_err_inf"] == pytest.approx(on_ray["gram_rel_err_inf"], rel=1e-8)
    # Either executor resumes the other's store: the key is the net, data and tiling.
    flip_a_byte(tmp_path / "ray" / "tiles" / "t_0_3.arrow")
    resumed = run_gram_job(cfg, tmp_path / "ray", progress=False)
    assert resumed["tiles_computed"] == 1 and resumed["tiles_resumed"] == 9
    np.testing.assert_allclose(load_gram(tmp_path / "ray"), reference(cfg), rtol=0, atol=1e-10)


def test_a_resumed_summary_reports_the_whole_runs_rates(tmp_path):
    cfg = config(MODELS["dense"], workers=None)
    out = tmp_path / "g"
    first = run_gram_job(cfg, out, progress=False)
    assert not (out / JOURNAL).exists()  # the job folded its journal into manifest.json
    again = run_gram_job(cfg, out, progress=False)
    assert again["tiles_computed"] == 0 and again["tiles_resumed"] == 10
    assert again["tile_phase_seconds"] is None  # this run computed no tile
    for key in ("tile_seconds", "tiles_per_s", "gflops"):  # from the tiles' manifest entries
        assert again[key] == pytest.approx(first[key], rel=1e-12) and again[key] > 0
    flip_a_byte(out / "tiles" / "t_2_3.arrow")
    fixed = run_gram_job(cfg, out, progress=False)
    assert fixed["tiles_computed"] == 1
    tiles, seconds, _ = TileStore.open(out).work()
    assert tiles == 10 and fixed["tile_seconds"] == pytest.approx(seconds)
    assert fixed["tiles_per_s"] == pytest.approx(10 / seconds)


def test_ray_actors_honour_gram_device(ray_cluster, tmp_path):
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    cpu = run_gram_job(config(MODELS["dense"], device="cpu"), tmp_path / "cpu", progress=False)
    assert cpu["device"] == "cpu"
    auto = run_gram_job(config(MODELS["dense"], device="auto"), tmp_path / "auto",
                        progress=False)
    assert auto["device"] == ("cuda" if gpus >= 2 else "cpu")
    if gpus < 2:
        with pytest.raises(ConfigError, match="gram.device: cuda needs a GPU"):
            run_gram_job(config(MODELS["dense"], device="cuda"), tmp_path / "cuda",
                         progress=False)


def test_placement_of_actors_by_the_device_setting():
    one_gpu = {"CPU": 8.0, "GPU": 1.0}
    assert placement("cpu", 2, one_gpu, "gram.device") == ("cpu", {"num_cpus": 1.0})
    assert placement("cpu", 16, one_gpu, "gram.device") == ("cpu", {"num_cpus": 0.5})
    assert placement("auto", 2, one_gpu, "gram.device") == ("cpu", {"num_cpus": 1.0})
    assert placement("auto", 1, one_gpu, "gram.device") == ("cuda", {"num_gpus": 1})
    assert placement("cuda", 1, one_gpu, "gram.device") == ("cuda", {"num_gpus": 1})
    with pytest.raises(ConfigError, match="each of the 2 workers, but the Ray cluster has 1$"):
        placement("cuda", 2, one_gpu, "gram.device")
    with pytest.raises(ConfigError, match="^regress.device: cuda needs"):  # the job's own field
        placement("cuda", 2, one_gpu, "regress.device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_local_cuda_without_a_gpu_is_one_line_before_any_file(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config(MODELS["dense"], workers=None).model_dump(mode="json")))
    argv = ["gram", str(path), "gram.device=cuda", "--out", str(tmp_path / "g"), "--quiet"]
    assert main(argv) == 2
    assert "gram.device: cuda" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_another_config_in_the_same_folder_is_refused(ray_cluster, tmp_path, capsys):
    cfg = config(MODELS["dense"])
    run_gram_job(cfg, tmp_path / "g", progress=False)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    assert main(["gram", str(path), "model.seed=1", "--out", str(tmp_path / "g"), "--quiet"]) == 2
    assert "another config" in capsys.readouterr().err


def test_iterative_spectrum_streams_tiles(ray_cluster, tmp_path):
    cfg = config(MODELS["dense"], assemble_max_n=10, eig_block=4)
    s = run_gram_job(cfg, tmp_path / "g", progress=False)
    ev = np.linalg.eigvalsh(reference(cfg))
    assert s["spectrum_from"] == "Lanczos on tiles (top), certified bracket (lambda_min)"
    assert s["lambda_min"] == pytest.approx(ev[0], rel=1e-5)
    assert s["lambda_max"] == pytest.approx(ev[-1], rel=1e-8)
    assert s["lambda_min_residual"] < 1e-5


@pytest.mark.parametrize("args,needle", [
    (["--workers", "0"], "dist.workers"),
    (["--grid", "400x1", "--workers", "400"], "dist.grid: 400 width shards but only m=300"),
    (["--grid", "2x2", "--workers", "3"], "dist.grid: 2 x 2 = 4 actors, but dist.workers = 3"),
    (["--grid", "1x0"], "dist.grid.1"),
    (["--workers", "2", "--tile", "0"], "gram.tile"),
    (["--workers", "2", "--tile", "38"], "gram.tile: 38 rows per tile exceeds the n=37"),
    (["--tile", "38"], "gram.tile: 38 rows per tile exceeds the n=37"),
    (["gram.device=gpu"], "gram.device"),
])
def test_bad_input(tmp_path, capsys, args, needle):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config(MODELS["dense"]).model_dump(mode="json")))
    assert main(["gram", str(path), *args, "--out", str(tmp_path / "g"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_out_that_is_a_file_and_silent_address(tmp_path, capsys):
    import socket
    import time

    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config(MODELS["dense"]).model_dump(mode="json")))
    (tmp_path / "file").write_text("x")
    assert main(["gram", str(path), "--out", str(tmp_path / "file"), "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    argv = ["gram", str(path), "--address", f"127.0.0.1:{port}", "dist.connect_timeout_s=3",
            "--out", str(tmp_path / "g"), "--quiet"]
    assert main(argv) == 2
    assert time.monotonic() - t0 < 30
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()  # refused before anything was written
