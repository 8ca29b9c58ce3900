"""`fntk train --workers N`: Ray Train workers on a width x data mesh, DeepSpeed engines.

The driver checks the mesh, joins (or starts) the cluster and hands the run to a TorchTrainer
whose storage is the run folder itself: Ray Train keeps the checkpoints there, restarts the
worker group from the latest one after a failure (dist.max_failures), and `--resume` starts
a stopped run again from it. Rank 0 writes the same files as a single-process run.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from ..atomic import write_text
from ..config import ConfigError, RunConfig, dump_config
from .cluster import connect

RAY_RUN = "ray_train"  # Ray Train's folder inside the run folder


class TrainingFailed(RuntimeError):
    """The worker group failed more often than dist.max_failures allows."""


def mesh_shape(cfg: RunConfig) -> tuple[int, int]:
    """(width, data) from dist.workers/width/data; ConfigError naming the key if inconsistent."""
    dc = cfg.dist
    workers = dc.workers or 1
    width = dc.width or (workers // dc.data if dc.data else 1)
    data = dc.data or max(1, workers // width)
    if width * data != workers:
        raise ConfigError(f"dist: width * data = {width} * {data} = {width * data} must equal "
                          f"dist.workers = {workers}")
    if cfg.model.m % width:
        raise ConfigError(f"dist.width: {width} does not divide model.m = {cfg.model.m}")
    if dc.offload and dc.zero_stage == 0:
        raise ConfigError("dist.offload: needs dist.zero_stage >= 1 (ZeRO offloads its "
                          "partitioned optimizer state)")
    if dc.zero_stage > 0 and cfg.model.dtype == "float64":
        raise ConfigError(f"dist.zero_stage: ZeRO stage {dc.zero_stage} keeps float32 master "
                          "weights, so a float64 model would train in float32; use "
                          "model.dtype float32, or dist.zero_stage 0 for float64")
    if dc.precision == "bf16" and cfg.train.device == "cpu":
        raise ConfigError("dist.precision: bf16 needs GPUs; train.device is cpu")
    if dc.precision == "bf16" and cfg.model.dtype != "float32":
        raise ConfigError("dist.precision: bf16 mixed precision keeps float32 master weights; "
                          f"set model.dtype float32 (it is {cfg.model.dtype})")
    return width, data


def _has_checkpoint(out_dir: Path) -> bool:
    """Ray Train registered a checkpoint of this run (what it restores from)."""
    try:
        snapshot = json.loads((out_dir / RAY_RUN / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return False
    return snapshot.get("latest_checkpoint_result") is not None


def run_train_distributed(cfg: RunConfig, out_dir: Path, resume: bool = False,
                          progress: bool = True) -> dict:
    """Train cfg's net on Ray Train + DeepSpeed; returns the summary rank 0 wrote."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from .train_worker import train_worker

    width, data = mesh_shape(cfg)
    out_dir = out_dir.resolve()
    if resume and not _has_checkpoint(out_dir):
        raise ConfigError(f"--resume: {out_dir} holds no checkpoint to resume from")
    if not resume and _has_checkpoint(out_dir):
        raise ConfigError(f"--out: {out_dir} holds a started run; pass --resume to continue it "
                          "or choose another folder")
    connect(cfg.dist.address, cfg.dist.connect_timeout_s, min_cpus=width * data,
            log_to_driver=True)
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.dist.precision == "bf16" and gpus < width * data:
        raise ConfigError(f"dist.precision: bf16 needs a GPU per worker; the cluster has "
                          f"{gpus:g} GPUs for {width * data} workers")
    use_gpu = gpus >= width * data and cfg.train.device != "cpu"
    cpus = 1.0 if use_gpu else min(1.0, ray.cluster_resources().get("CPU", 1) / (width * data))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "config.yaml", dump_config(cfg))
    id_file = out_dir / "wandb_run_id"
    if not id_file.exists():
        write_text(id_file, secrets.token_hex(8))
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "out_dir": str(out_dir),
                           "width": width, "data": data,
                           "run_id": id_file.read_text().strip(), "progress": progress},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=width * data, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus}),
        run_config=ray.train.RunConfig(
            name=RAY_RUN, storage_path=str(out_dir),
            failure_config=ray.train.FailureConfig(max_failures=cfg.dist.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        trainer.fit()
    except Exception as err:  # Ray Train's TrainingFailedError, after max_failures restarts
        first = str(err).strip().splitlines()
        again = ("continue it with --resume from its last checkpoint"
                 if _has_checkpoint(out_dir) else "no checkpoint was written")
        raise TrainingFailed(
            f"training failed (dist.max_failures = {cfg.dist.max_failures}): "
            f"{first[0] if first else type(err).__name__}; {again}") from err
    return json.loads((out_dir / "summary.json").read_text())
