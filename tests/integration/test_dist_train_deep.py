"""Tensor-parallel training of deep nets on the width x data mesh against the single process:
real Ray Train worker groups on gloo, real DeepSpeed engines (ZeRO 0, float64), the worker
code of `fntk train --workers`, every hidden layer split by neurons over the width group.

The loss at every step and the diagnostics (measured on the whole net gathered from the
shards) equal the one-process run's to 1e-6, and the bytes the collectives carried per step
are those of the layout (models.width): n x k per factorized layer above the first and n x m
per dense one, each way, plus the readout's n, against every gradient for data parallelism.
A stopped width-sharded run resumes from its ranks' checkpoints onto the one-process curve.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mesh_fit import fit

from fntk_dist.config import RunConfig, build_config
from fntk_dist.distributed.cluster import connect, shutdown
from fntk_dist.distributed.train_job import last_checkpoint_step
from fntk_dist.train.job import run_train_job

N, D, K = 16, 5, 4
NETS = {
    # dense, then sketch_in and lowrank above it: Z of each factorized layer summed over shards
    "dense_sketch_in_lowrank": [{"m": 16, "mode": "dense"},
                                {"m": 16, "mode": "sketch_in", "k": K, "sketch": "srht"},
                                {"m": 32, "mode": "lowrank", "k": K}],
    # a shared V below (its gradient summed), a dense last layer gathering its input
    "lowrank_sketch_out_dense": [{"m": 16, "mode": "lowrank", "k": 3},
                                 {"m": 16, "mode": "sketch_out", "k": K, "sketch": "countsketch"},
                                 {"m": 16, "mode": "dense"}],
}
STEPS, NTK_EVERY = 40, 10


def config(layers: list[dict]) -> RunConfig:
    return build_config({
        "model": {"layers": layers, "dtype": "float64", "train_output": True},
        "data": {"source": "sphere", "n": N, "d": D, "labels": "teacher"},
        "train": {"steps": STEPS, "log_every": 1, "ntk_every": NTK_EVERY},
        "tracking": {"wandb": False},
    }, source="test")


def width_bytes(layers: list[dict]) -> int:
    """What one step's width-group all-reduces carry on a width of 2 (float64): forward and
    backward, n x k per factorized layer above the first, n x m_{l-1} per dense one; the
    first layer's V gradient (k x d); the readout's n forward."""
    total = N
    for below, layer in zip(layers, layers[1:]):
        total += 2 * N * (below["m"] if layer["mode"] == "dense" else layer["k"])
    if layers[0]["mode"] in ("lowrank", "sketch_out"):
        total += layers[0]["k"] * D
    return 8 * total


def data_bytes(cfg: RunConfig) -> int:
    """Every trained gradient, summed over the data group once per step (float64)."""
    net = cfg.model.build(D)
    return 8 * sum(p.numel() for p in net.parameters() if p.requires_grad)


def fit_nets(tmp_path: Path, width: int, data: int,
             cfgs: dict[str, RunConfig] | None = None) -> Path:
    return fit(tmp_path, cfgs or {k: config(v) for k, v in NETS.items()}, width, data)


def rows(run: Path) -> list[dict]:
    return pq.read_table(run / "metrics.parquet").to_pylist()


@pytest.fixture(scope="module")
def ray_cluster():
    connect(None, min_cpus=4)
    yield
    shutdown()


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("single")
    for name, layers in NETS.items():
        run_train_job(config(layers), root / name, progress=False)
    return {name: root / name for name in NETS}


@pytest.mark.parametrize("width,data", [(1, 1), (2, 1), (1, 2)])
def test_a_deep_net_on_the_mesh_trains_as_in_one_process(ray_cluster, single_process,
                                                         tmp_path, width, data):
    out = fit_nets(tmp_path, width, data)
    for name, layers in NETS.items():
        ref, got = rows(single_process[name]), rows(out / name)
        assert len(got) == len(ref) == STEPS + 1
        assert ref[-1]["loss"] < 0.1 * ref[0]["loss"]  # it trains: not a flat curve
        for step, (a, b) in enumerate(zip(got, ref, strict=True)):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-6), (name, step)
            if step % NTK_EVERY == 0:  # diagnostics of the whole net, gathered from shards
                for key in ("lambda_min", "gram_drift", "max_weight_change",
                            "flip_fraction/layer1", "max_weight_change/layer2"):
                    assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-12), \
                        (name, step, key)
        summary = json.loads((out / name / "summary.json").read_text())
        assert (summary["width"], summary["data"], summary["depth"]) == (width, data, 3)
        cfg = config(layers)
        assert summary["width_bytes_per_step"] == (width_bytes(layers) if width > 1 else 0)
        assert summary["data_bytes_per_step"] == (data_bytes(cfg) if data > 1 else 0)


def test_zero_stages_train_a_deep_net_on_a_2x2_mesh(ray_cluster, tmp_path):
    """ZeRO 1-3 over the data group of a width-sharded deep net (float32): each run trains to
    the same loss, and its diagnostics (on the whole net, gathered outside DeepSpeed's ZeRO-3
    hooks) are logged."""
    layers = NETS["dense_sketch_in_lowrank"]
    cfgs = {f"stage{z}": build_config({
        "model": {"layers": layers, "dtype": "float32"},
        "data": {"source": "sphere", "n": N, "d": D, "labels": "teacher"},
        "train": {"steps": 30, "optimizer": "adam", "lr": 0.01, "ntk_every": 10},
        "deepspeed": {"zero_stage": z}, "tracking": {"wandb": False}}, source="test")
        for z in (1, 2, 3)}
    out = fit_nets(tmp_path, 2, 2, cfgs)
    final = rows(out / "stage1")[-1]["loss"]
    for name in cfgs:
        got = rows(out / name)
        assert got[-1]["loss"] < got[0]["loss"] / 5, (name, got[0]["loss"], got[-1]["loss"])
        # the same steps, in float32 with other orders of summation
        assert got[-1]["loss"] == pytest.approx(final, rel=1e-3), name
        logged = [r for r in got if r["lambda_min"] is not None]
        assert [r["step"] for r in logged] == [0, 10, 20, 30]
        assert all(r["lambda_min"] > 0 and r["max_weight_change"] >= 0 for r in logged)


RESUMED = {  # long enough to stop between the first checkpoint and the end
    "model": {"layers": [{"m": 4096, "mode": "sketch_in", "k": 16, "sketch": "gaussian"},
                         {"m": 4096, "mode": "lowrank", "k": 16},
                         {"m": 4096, "mode": "sketch_in", "k": 16, "sketch": "srht"}],
              "dtype": "float64"},
    "data": {"source": "sphere", "n": 256, "d": 16},
    "train": {"steps": 80, "log_every": 1, "ntk_every": 0, "checkpoint_every": 4},
    "dist": {"width": 2, "data": 1},
    "tracking": {"wandb": False},
}


def test_a_stopped_deep_mesh_run_resumes_from_its_shards_checkpoints(tmp_path):
    """SIGINT to `fntk train --workers 2` of a width-sharded deep net after a checkpoint, then
    --resume: each rank reloads its own shards, and the run ends on the one-process curve."""
    path = tmp_path / "deep.yaml"
    path.write_text(yaml.safe_dump(RESUMED))
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "fntk_dist.cli.main", "train", str(path), "--workers", "2",
            "--out", str(out), "--quiet"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.monotonic()
    while not last_checkpoint_step(out):
        assert proc.poll() is None, f"run ended before a checkpoint: {proc.communicate()}"
        assert time.monotonic() - t0 < 300, "no checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    resumed = subprocess.run([*argv, "--resume"], stderr=subprocess.PIPE, text=True, env=env,
                             timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    single = tmp_path / "single"
    run_train_job(build_config({**RESUMED, "dist": {}}, source="test"), single, progress=False)
    got, ref = rows(out), rows(single)
    assert [r["step"] for r in got] == list(range(81))  # each step once
    for a, b in zip(got, ref, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-9)
    assert json.loads((out / "summary.json").read_text())["restarts_from_checkpoint"] == 1
