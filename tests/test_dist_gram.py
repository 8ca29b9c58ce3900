"""The Gram on a real local Ray cluster against the single-process closed form."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fntk_dist import empirical_ntk
from fntk_dist.cli.main import main
from fntk_dist.config import build_config
from fntk_dist.data import load_dataset
from fntk_dist.dist import load_gram
from fntk_dist.dist.cluster import connect, shutdown
from fntk_dist.dist.gram_job import run_gram_distributed

MODELS = {
    "dense": {"mode": "dense", "m": 300},
    "sketch_in": {"mode": "sketch_in", "m": 300, "k": 6, "sketch": "srht", "train_output": True},
    "sketch_out": {"mode": "sketch_out", "m": 300, "k": 6, "sketch": "countsketch"},
    "lowrank": {"mode": "lowrank", "m": 300, "k": 6, "train_output": True},
}


def config(model: dict, **dist):
    return build_config({
        "model": {"dtype": "float64", **model},
        "data": {"source": "sphere", "n": 37, "d": 10},
        "dist": {"workers": 2, "tile": 10, **dist},
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


@pytest.mark.parametrize("mode", MODELS)
def test_any_worker_count_gives_the_single_process_gram(ray_cluster, tmp_path, mode):
    ref = None
    for workers in (1, 2, 4):
        cfg = config(MODELS[mode], workers=workers)
        ref = reference(cfg) if ref is None else ref
        summary = run_gram_distributed(cfg, tmp_path / f"w{workers}", progress=False)
        h = load_gram(tmp_path / f"w{workers}")
        assert np.abs(h - ref).max() <= 1e-10 * np.abs(ref).max()
        assert summary["tiles"] == 10 and summary["tiles_computed"] == 10
        assert summary["lambda_min"] == pytest.approx(np.linalg.eigvalsh(ref)[0], rel=1e-8)


def test_rerun_resumes_and_recomputes_a_corrupt_tile(ray_cluster, tmp_path):
    cfg = config(MODELS["sketch_out"])
    out = tmp_path / "g"
    run_gram_distributed(cfg, out, progress=False)
    again = run_gram_distributed(cfg, out, progress=False)
    assert again["tiles_computed"] == 0 and again["tiles_resumed"] == 10
    tile = next((out / "tiles").glob("t_1_2.arrow"))
    raw = bytearray(tile.read_bytes())
    raw[-40] ^= 0xFF
    tile.write_bytes(bytes(raw))
    fixed = run_gram_distributed(cfg, out, progress=False)
    assert fixed["tiles_computed"] == 1
    assert np.abs(load_gram(out) - reference(cfg)).max() <= 1e-10


def test_another_config_in_the_same_folder_is_refused(ray_cluster, tmp_path, capsys):
    cfg = config(MODELS["dense"])
    run_gram_distributed(cfg, tmp_path / "g", progress=False)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    assert main(["gram", str(path), "model.seed=1", "--out", str(tmp_path / "g"), "--quiet"]) == 2
    assert "another config" in capsys.readouterr().err


def test_iterative_spectrum_streams_tiles(ray_cluster, tmp_path):
    cfg = config(MODELS["dense"], assemble_max_n=10, eig_block=4)
    s = run_gram_distributed(cfg, tmp_path / "g", progress=False)
    ev = np.linalg.eigvalsh(reference(cfg))
    assert s["spectrum_from"] == "block LOBPCG on tiles"
    assert s["lambda_min"] == pytest.approx(ev[0], rel=1e-5)
    assert s["lambda_max"] == pytest.approx(ev[-1], rel=1e-8)
    assert s["lambda_min_residual"] < 1e-5


@pytest.mark.parametrize("args,needle", [
    (["--workers", "0"], "dist.workers"),
    (["--workers", "400"], "dist.workers: 400 workers but only m=300"),
    (["--workers", "2", "--tile", "0"], "dist.tile"),
    (["--workers", "2", "--tile", "38"], "dist.tile: 38 rows per tile exceeds the n=37"),
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
