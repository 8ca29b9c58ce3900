"""One Ray Train worker of `fntk train --workers N`: the mesh, the DeepSpeed engine and Ray
Train's checkpoints plugged into the one training loop (fntk_dist.train.loop).

A checkpoint is DeepSpeed's (each rank writes its own shard) plus the loop's state, reported
to Ray Train, which restarts the group from the latest one after a failure.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..config import RunConfig
from ..data import load_dataset
from ..train.loop import train_loop
from .deepspeed_engine import DeepSpeedEngine
from .deepspeed_ops import build_comm_op
from .mesh import Mesh
from .run_logs import FileProgress, send_output_to_log


class RayTrainCheckpointer:
    """Checkpoints through ray.train.report; the latest is the one Ray Train restores."""

    def save(self, step: int, write: Callable[[Path], None], metrics: dict) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as d:
            write(Path(d))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        import ray.train

        restore = ray.train.get_checkpoint()
        if restore is None:
            yield None
            return
        with restore.as_directory() as d:
            yield Path(d)


def init_mesh(width: int, data: int) -> Mesh:
    """DeepSpeed's comm on the process group Ray Train made, and the mesh over it."""
    import deepspeed

    deepspeed.utils.logger.setLevel(logging.WARNING)
    build_comm_op()
    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    return Mesh(width, data, torch.distributed.get_rank())


def train_shard(cfg: RunConfig, out_dir: Path, mesh: Mesh, run_id: str | None = None,
                progress: bool = False) -> dict:
    """Train cfg's net on this rank's shard; rank 0 writes the run folder and returns the
    summary (other ranks return {})."""
    import ray.train.torch

    return train_loop(
        cfg, out_dir, load_dataset(cfg.data), mesh=mesh, device=ray.train.torch.get_device(),
        make_engine=lambda net, eta, rows: DeepSpeedEngine(net, cfg, eta, rows, mesh),
        checkpointer=RayTrainCheckpointer(), run_id=run_id, progress=progress,
        bar_class=functools.partial(FileProgress, out_dir=out_dir))


def train_worker(config: dict) -> None:
    """Ray Train's loop function, on every rank."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    if not config.get("verbose", False):  # DeepSpeed's and torch's lines go to RUN/logs
        send_output_to_log(Path(config["out_dir"]), rank)
    # Where each rank runs (Ray Train's own worker-group lines are not streamed any more).
    print(f"fntk: rank {rank} on {ray.util.get_node_ip_address()} (pid {os.getpid()})",
          flush=True)
    mesh = init_mesh(config["width"], config["data"])
    train_shard(RunConfig.model_validate(config["cfg"]), Path(config["out_dir"]), mesh,
                run_id=config["run_id"], progress=config.get("progress", True))
