"""`fntk train --workers N`: Ray Train workers on a width x data mesh, DeepSpeed engines.

The driver (fntk_dist.train.job, which has checked the config and the run folder) joins or
starts the cluster and hands the run to a TorchTrainer whose storage is the run folder itself:
Ray Train keeps the checkpoints in RUN/checkpoints, restarts the worker group from the latest
one after a failure (dist.max_failures), and `--resume` starts a stopped run again from it.
Rank 0 writes the same files as a one-process run.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..checks import TrainPlan
from ..config import RunConfig
from ..errors import ConfigError
from ..train.parts import CHECKPOINTS
from .cluster import connect
from .run_logs import LOGS, driver_progress


class TrainingFailed(RuntimeError):
    """The worker group failed more often than dist.max_failures allows."""


def failure_line(err: BaseException) -> str:
    """One line saying why training failed: the first failed worker's own error (its last
    line, 'RuntimeError: ...') where Ray Train reports one, else the error's first line."""
    for rank, exc in sorted((getattr(err, "worker_failures", None) or {}).items()):
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return f"worker {rank}: {lines[-1] if lines else type(exc).__name__}"
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def last_checkpoint_step(out_dir: Path) -> int | None:
    """The step of the checkpoint Ray Train registered for this run (what it restores from)."""
    try:
        snapshot = json.loads((Path(out_dir) / CHECKPOINTS /
                               "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return None
    latest = snapshot.get("latest_checkpoint_result")
    if not isinstance(latest, dict):
        return None
    return int((latest.get("metrics") or {}).get("step", 0))


def has_checkpoint(out_dir: Path) -> bool:
    return last_checkpoint_step(out_dir) is not None


@dataclass(frozen=True)
class TrainCluster:
    """The Ray cluster a run was checked against: what each worker gets."""

    use_gpu: bool
    cpus: float


def connect_for_training(cfg: RunConfig, plan: TrainPlan, verbose: bool = False) -> TrainCluster:
    """Join (or start) the cluster and check that it can hold the run, before anything else.

    verbose: stream every worker's output here, as Ray does by default; otherwise the workers
    write it to RUN/logs (fntk_dist.distributed.run_logs)."""
    import ray

    workers = plan.workers
    connect(cfg.dist.address, cfg.dist.connect_timeout_s, min_cpus=workers,
            log_to_driver=verbose)
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.train.device == "cuda" and gpus < workers:
        raise ConfigError(f"train.device: cuda needs a GPU per worker; the cluster has "
                          f"{gpus:g} GPUs for {workers} workers")
    use_gpu = gpus >= workers and cfg.train.device != "cpu"
    cpus = 1.0 if use_gpu else min(1.0, ray.cluster_resources().get("CPU", 1) / workers)
    return TrainCluster(use_gpu, cpus)


def run_train_distributed(cfg: RunConfig, out_dir: Path, plan: TrainPlan, cluster: TrainCluster,
                          run_id: str, progress: bool = True, verbose: bool = False) -> dict:
    """Train cfg's net on Ray Train + DeepSpeed; returns the summary rank 0 wrote."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from .train_worker import train_worker

    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "out_dir": str(out_dir),
                           "width": plan.width, "data": plan.data, "run_id": run_id,
                           "progress": progress, "verbose": verbose},
        torch_config=TorchConfig(backend="nccl" if cluster.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=plan.workers,
                                               use_gpu=cluster.use_gpu,
                                               resources_per_worker={"CPU": cluster.cpus}),
        run_config=ray.train.RunConfig(
            name=CHECKPOINTS, storage_path=str(out_dir),
            failure_config=ray.train.FailureConfig(max_failures=cfg.dist.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    follow = (driver_progress(out_dir, cfg.train.steps + 1, f"train {cfg.name or out_dir.name}")
              if progress and not verbose else contextlib.nullcontext())
    try:
        with follow:
            trainer.fit()
    except SystemExit:  # Ray Train's own Ctrl-C handler aborts the run, then exits
        raise KeyboardInterrupt from None
    except Exception as err:  # Ray Train's TrainingFailedError, after max_failures restarts
        again = ("continue it with --resume from its last checkpoint"
                 if has_checkpoint(out_dir) else "no checkpoint was written")
        logs = "" if verbose else f" (worker output: {out_dir / LOGS})"
        raise TrainingFailed(
            f"training failed (dist.max_failures = {cfg.dist.max_failures}): "
            f"{failure_line(err)}; {again}{logs}") from err
    if not (out_dir / "summary.json").exists():  # aborted by Ctrl-C before the end
        raise KeyboardInterrupt
    return json.loads((out_dir / "summary.json").read_text())
