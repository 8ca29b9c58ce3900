"""Deep nets in one process: training (the loss falls, the diagnostics are finite and per
layer), the deep quickstart config, `fntk gram`, and the mesh refusing a width that does not
divide a layer in one line."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from fntk_dist import autograd_ntk
from fntk_dist.checks import check_train
from fntk_dist.cli.main import main
from fntk_dist.config import ConfigError, build_config, load_config
from fntk_dist.data import load_dataset
from fntk_dist.gram.tile_store import load_gram
from fntk_dist.train.job import run_train_job

CONFIGS = Path(__file__).parents[2] / "configs"
MIXED = {
    "model": {"layers": [{"m": 256, "mode": "dense"},
                         {"m": 256, "mode": "sketch_in", "k": 16, "sketch": "srht"},
                         {"m": 512, "mode": "lowrank", "k": 16}], "dtype": "float64"},
    "data": {"source": "sphere", "n": 32, "d": 12, "labels": "teacher"},
    "train": {"steps": 60, "ntk_every": 20},
    "tracking": {"wandb": False},
}


def test_a_deep_mixed_net_trains_with_finite_diagnostics(tmp_path):
    s = run_train_job(build_config(MIXED, source="test"), tmp_path / "run", progress=False)
    assert s["final_loss"] < 0.1 * s["initial_loss"]  # 24x here
    assert list(s["mode"]) == ["dense", "sketch_in", "lowrank"] and s["m"] == 512
    assert s["lambda_min_0"] > 0 and s["lambda_inf"] is None  # a lowrank layer: no limit
    assert s["predicted_rate"] < 1 and s["tail_rate"] < 1
    rows = pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
    logged = [r for r in rows if r["lambda_min"] is not None]
    assert [r["step"] for r in logged] == [0, 20, 40, 60]
    per_layer = [f"{key}/layer{i}" for key in ("max_weight_change", "flip_fraction")
                 for i in range(3)]
    for r in logged:
        values = [r[k] for k in ("lambda_min", "gram_drift", "max_weight_change",
                                 "flip_fraction", *per_layer)]
        assert all(math.isfinite(v) for v in values)
        assert r["max_weight_change"] == max(r[f"max_weight_change/layer{i}"] for i in range(3))
        assert r["flip_fraction"] == max(r[f"flip_fraction/layer{i}"] for i in range(3))
    assert logged[-1]["max_weight_change"] > 0 and logged[-1]["gram_drift"] > 0
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["model"]["layers"] == build_config(MIXED).model.model_dump()["layers"]


def test_deep_quickstart_is_a_deep_factorized_net():
    cfg = load_config(CONFIGS / "deep_quickstart.yaml", ["tracking.wandb=false"])
    data = load_dataset(cfg.data)
    assert not check_train(cfg, data).distributed
    net = cfg.model.build(data.d)
    assert net.depth == 3 and all(layer.mode != "dense" for layer in net.layers)


@pytest.mark.parametrize(("section", "key"), [
    ({"layers": [*MIXED["model"]["layers"][:2], {"m": 511, "mode": "lowrank", "k": 16}]},
     "model.layers.2.m = 511"),
    ({"mode": "lowrank", "m": 63, "k": 4, "depth": 2}, "model.m = 63")])
def test_the_training_mesh_refuses_a_width_that_does_not_divide_a_layer(tmp_path, capsys,
                                                                        section, key):
    raw = {**MIXED, "model": section}
    cfg = build_config(raw, ["dist.workers=2", "dist.width=2"])
    data = load_dataset(cfg.data)
    with pytest.raises(ConfigError, match=f"^dist.width: 2 does not divide {key}$"):
        check_train(cfg, data)
    path = tmp_path / "deep.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    argv = ["train", str(path), "--workers", "2", "--out", str(out), "--quiet", "dist.width=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fntk: error: {path}: dist.width: 2 does not divide {key}"
    assert not out.exists()
    assert check_train(build_config(raw, ["dist.workers=2"]), data).data == 2  # data parallel


def test_fntk_gram_of_a_deep_net_in_one_process(tmp_path):
    raw = {"model": {"layers": [{"m": 40, "mode": "dense"},
                                {"m": 30, "mode": "sketch_out", "k": 6, "sketch": "srht"},
                                {"m": 20, "mode": "lowrank", "k": 5}],
                     "train_output": True, "dtype": "float64"},
           "data": {"source": "sphere", "n": 30, "d": 8}, "gram": {"tile": 12},
           "tracking": {"wandb": False}}
    path = tmp_path / "gram.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["gram", str(path), "--out", str(tmp_path / "g"), "--quiet"]) == 0
    cfg = load_config(path)
    data = load_dataset(cfg.data)
    ref = autograd_ntk(cfg.model.build(data.d), torch.as_tensor(data.x)).numpy()
    h = load_gram(tmp_path / "g")  # 6 tiles, each finished by a net holding one neuron
    assert np.abs(h - ref).max() < 1e-12 * np.abs(ref).max()
