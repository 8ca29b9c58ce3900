"""Ray and DeepSpeed on a GPU: Gram shard actors taking a GPU each, and `fntk train --workers 1`
with nccl and bf16 (world size 1). Skipped without CUDA; run them with
`bash tools/gpu_check.sh`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import yaml
from conftest import requires_cuda

from fntk_dist.cli.main import main
from fntk_dist.distributed.cluster import connect, shutdown
from fntk_dist.gram import load_gram

pytestmark = [pytest.mark.gpu, requires_cuda]

BASE = {
    "model": {"mode": "sketch_in", "m": 1024, "k": 16, "sketch": "srht", "dtype": "float64"},
    "data": {"source": "sphere", "n": 48, "d": 32},
    "train": {"steps": 40, "ntk_every": 0},
    "tracking": {"wandb": False},
}


@pytest.fixture(scope="module")
def ray_cluster():
    connect(None, min_cpus=2)
    yield
    shutdown()


def _config(tmp_path: Path, **sections) -> Path:
    raw = {k: dict(v) for k, v in BASE.items()}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@ray.remote(num_gpus=1)
def _probe() -> tuple[list, bool]:
    return ray.get_gpu_ids(), torch.cuda.is_available()


def test_ray_actors_take_a_gpu_and_compute_the_gram_there(ray_cluster, tmp_path):
    ids, visible = ray.get(_probe.remote())
    assert len(ids) == 1 and visible
    path = _config(tmp_path)
    local, shards = tmp_path / "local", tmp_path / "ray"
    assert main(["gram", str(path), "gram.device=cpu", "--out", str(local), "--quiet"]) == 0
    assert main(["gram", str(path), "gram.device=cuda", "--workers", "1", "--out", str(shards),
                 "--quiet"]) == 0
    assert json.loads((shards / "summary.json").read_text())["device"] == "cuda"
    want = load_gram(local)
    assert np.abs(load_gram(shards) - want).max() <= 1e-10 * np.abs(want).max()


def test_deepspeed_nccl_bf16_on_one_gpu_trains(ray_cluster, tmp_path):
    path = _config(tmp_path, model={"dtype": "float32"}, train={"device": "cuda", "steps": 60},
                   deepspeed={"precision": "bf16"})
    out = tmp_path / "ds"
    assert main(["train", str(path), "--workers", "1", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["engine"], summary["precision"], summary["workers"]) == ("deepspeed", "bf16", 1)
    assert summary["final_loss"] < summary["initial_loss"] / 10
