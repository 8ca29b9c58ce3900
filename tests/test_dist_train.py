"""Ray Train + DeepSpeed on a width x data mesh against the single-process trainer: real Ray
Train worker groups on gloo, real DeepSpeed engines, the worker code of `fntk train --workers`.

One worker group trains several configs in turn (train_shard is what every rank of a
`fntk train` run executes), so the suite pays Ray Train's start-up once per mesh.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import ray.cloudpickle
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from fntk_dist.config import RunConfig, build_config
from fntk_dist.dist.cluster import connect, shutdown
from fntk_dist.train.loop import train

# The loop function below is shipped by value: workers cannot import this test module.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

MODELS = {
    "dense": {"mode": "dense"},
    "sketch_in": {"mode": "sketch_in", "k": 4, "sketch": "srht"},
    "sketch_out": {"mode": "sketch_out", "k": 4, "sketch": "gaussian"},
}


def config(model: dict, steps: int = 50, **over) -> RunConfig:
    raw = {
        "model": {"m": 32, "dtype": "float64", **model},
        "data": {"source": "sphere", "n": 16, "d": 5},
        "train": {"steps": steps, "log_every": 1, "ntk_every": 0},
        "tracking": {"wandb": False},
    }
    for section, values in over.items():
        raw.setdefault(section, {}).update(values)
    return build_config(raw, source="test")


def train_configs(loop_config: dict) -> None:
    from fntk_dist.dist.train_worker import init_mesh, train_shard

    mesh = init_mesh(loop_config["width"], loop_config["data"])
    for name, raw in loop_config["cfgs"].items():
        train_shard(RunConfig.model_validate(raw), Path(loop_config["out"]) / name, mesh)


def fit(tmp_path: Path, cfgs: dict[str, RunConfig], width: int, data: int) -> Path:
    """Train every config on one width x data worker group; returns the folder of their runs."""
    out = tmp_path / f"mesh_{width}x{data}"
    trainer = TorchTrainer(
        train_configs,
        train_loop_config={"width": width, "data": data, "out": str(out),
                           "cfgs": {k: c.model_dump(mode="json") for k, c in cfgs.items()}},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=width * data,
                                               resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="t", storage_path=str(tmp_path / "ray")),
    )
    result = trainer.fit()
    assert result.error is None
    return out


def losses(run: Path) -> list[float]:
    table = pq.read_table(run / "metrics.parquet").to_pydict()
    return [v for v in table["loss"] if v is not None]


@pytest.fixture(scope="module")
def ray_cluster():
    connect(None, min_cpus=4)
    yield
    shutdown()


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> dict[str, list[float]]:
    root = tmp_path_factory.mktemp("single")
    out = {}
    for name, model in MODELS.items():
        train(config(model), root / name, progress=False)
        out[name] = losses(root / name)
    return out


@pytest.mark.parametrize("width,data", [(1, 1), (2, 1), (1, 2)])
def test_mesh_matches_the_single_process_trainer(ray_cluster, single_process, tmp_path,
                                                  width, data):
    out = fit(tmp_path, {name: config(model) for name, model in MODELS.items()}, width, data)
    for name, ref in single_process.items():
        got = losses(out / name)
        assert len(got) == len(ref) == 51
        assert ref[-1] < 0.9 * ref[0]  # it trains: the comparison is not of flat curves
        for step, (a, b) in enumerate(zip(got, ref, strict=True)):
            assert a == pytest.approx(b, rel=1e-6), (name, step)


ZERO = {
    "stage0": {"zero_stage": 0},
    "stage1": {"zero_stage": 1},
    "stage2": {"zero_stage": 2},
    "stage3": {"zero_stage": 3},
    "stage2_offload": {"zero_stage": 2, "offload": True},
    "stage3_offload": {"zero_stage": 3, "offload": True},
}


def test_every_zero_stage_and_offload_trains(ray_cluster, tmp_path):
    cfgs = {name: config({"mode": "dense", "m": 64, "dtype": "float32"}, steps=20,
                         dist=dist, data={"n": 8, "d": 8})
            for name, dist in ZERO.items()}
    out = fit(tmp_path, cfgs, width=1, data=2)
    for name in ZERO:
        got = losses(out / name)
        assert got[-1] < got[0] / 100, (name, got[0], got[-1])
