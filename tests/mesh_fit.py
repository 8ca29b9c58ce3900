"""Training configs on one real Ray Train worker group (gloo) with the worker code of
`fntk train --workers` (train_shard on every rank), shared by the distributed training tests:
one group trains several configs in turn, so a test pays Ray Train's start-up once per mesh."""

from __future__ import annotations

import sys
from pathlib import Path

import ray
import ray.cloudpickle
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from fntk_dist.config import RunConfig

# The loop function below is shipped by value: workers cannot import this test helper.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def train_configs(loop_config: dict) -> None:
    from fntk_dist.distributed.train_worker import init_mesh, train_shard

    mesh = init_mesh(loop_config["width"], loop_config["data"])
    for name, raw in loop_config["cfgs"].items():
        train_shard(RunConfig.model_validate(raw), Path(loop_config["out"]) / name, mesh)


def fit(tmp_path: Path, cfgs: dict[str, RunConfig], width: int, data: int) -> Path:
    """Train every config on one width x data worker group; returns the folder of their runs
    (one subfolder per config name)."""
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
    assert trainer.fit().error is None
    return out
