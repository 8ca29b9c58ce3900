"""One Ray Train worker of `fntk train --workers N`: its shard of the wide layer, its slice of
each batch, a DeepSpeed engine, and the same loop, diagnostics and run folder as
fntk_dist.train.loop.

Every rank runs the same steps in lockstep (the collectives need it). Rank 0 alone owns the
tracker (run folder and W&B). A checkpoint is DeepSpeed's (each rank writes its own shard)
plus the loop's history, reported to Ray Train, which restarts the group from the latest one
after a failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn

from ..config import RunConfig
from ..data import load_dataset
from ..models.validation import as_dtype
from ..track import make_tracker
from ..train.blocked import blocked_output
from ..train.diagnostics import Diagnostics
from ..train.summary import finish_run
from .deepspeed_ops import build_comm_op
from .gram_job import shard_ranges
from .mesh import Mesh

STATE = "fntk_state.json"
TAG = "ckpt"


class BlockedShard(nn.Module):
    """The module DeepSpeed wraps: forward is the shard's blocked output. The blocked autograd
    function reads the net's parameters directly (never calling net.forward), so under ZeRO-3
    they are registered as this module's external parameters: gathered around its forward and
    its backward."""

    def __init__(self, net: nn.Module, block: int | None) -> None:
        super().__init__()
        self.net, self.block = net, block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blocked_output(self.net, x, self.block)


def ds_config(cfg: RunConfig, micro_batch: int, data: int) -> dict:
    """DeepSpeed's config: batch bookkeeping, ZeRO stage, offload and precision."""
    dc = cfg.dist
    zero: dict = {"stage": dc.zero_stage}
    conf = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
            "train_batch_size": micro_batch * data, "zero_optimization": zero,
            # The optimizer is plain torch SGD/Adam: GD is the point of the study.
            "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
            # DeepSpeed clips gradients to norm 1 unless told not to: GD must take the
            # gradient as it is.
            "gradient_clipping": 0.0, "steps_per_print": 2**31 - 1}
    if dc.offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    if dc.precision == "bf16":
        conf["bf16"] = {"enabled": True}
    return conf


def _rss_mb() -> tuple[float, float]:
    """(peak, current) resident memory of this process in MiB, each the largest over all
    ranks (a collective). The peak includes building the whole shard before ZeRO partitions
    it; the current one shows what ZeRO keeps."""
    rss = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                        psutil.Process().memory_info().rss / 2**20], dtype=torch.float64)
    torch.distributed.all_reduce(rss, op=torch.distributed.ReduceOp.MAX)
    return float(rss[0]), float(rss[1])


def init_mesh(width: int, data: int) -> Mesh:
    """DeepSpeed's comm on the process group Ray Train made, and the mesh over it."""
    import deepspeed

    deepspeed.utils.logger.setLevel(logging.WARNING)
    build_comm_op()
    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    return Mesh(width, data, torch.distributed.get_rank())


def train_worker(config: dict) -> None:
    """Ray Train's loop function, on every rank."""
    import ray.train

    mesh = init_mesh(config["width"], config["data"])
    train_shard(RunConfig.model_validate(config["cfg"]), Path(config["out_dir"]), mesh,
                run_id=config["run_id"], restore=ray.train.get_checkpoint(),
                progress=config.get("progress", True))


def train_shard(cfg: RunConfig, out_dir: Path, mesh: Mesh, run_id: str | None = None,
                restore: Any = None, progress: bool = False) -> dict:
    """Train cfg's net on this rank's shard; rank 0 writes the run folder and returns the
    summary (other ranks return {}). restore: a Ray Train checkpoint to continue from."""
    import deepspeed
    import ray.train
    import ray.train.torch
    from ray.experimental.tqdm_ray import tqdm

    tc, dc = cfg.train, cfg.dist
    rank = mesh.rank
    device = ray.train.torch.get_device()
    data = load_dataset(cfg.data)
    dt = as_dtype(cfg.model.dtype)
    x = torch.as_tensor(data.x, dtype=dt, device=device)
    y = torch.as_tensor(data.y, dtype=dt, device=device)
    n = x.shape[0]
    net = cfg.model.build(d=data.d, neurons=shard_ranges(cfg.model.m, mesh.width)[mesh.width_rank],
                          device=device)
    diag = Diagnostics(net, x, tc.gram_max_n, tc.block, cfg.gram.top, width=mesh)
    eta = tc.lr if tc.lr is not None else tc.lr_scale / diag.spec0.lambda_max
    params = [p for p in net.parameters() if p.requires_grad]
    opt = (torch.optim.Adam(params, lr=eta) if tc.optimizer == "adam"
           else torch.optim.SGD(params, lr=eta))
    batch = n if tc.optimizer == "gd" or tc.batch_size is None else tc.batch_size
    r0, r1 = shard_ranges(batch, mesh.data)[mesh.data_rank]  # this rank's part of a batch
    module = BlockedShard(net, tc.block)
    engine, *_ = deepspeed.initialize(model=module, optimizer=opt, mpu=mesh,
                                      config=ds_config(cfg, r1 - r0, mesh.data))
    if dc.zero_stage == 3:
        for p in net.parameters():
            deepspeed.zero.register_external_parameter(module, p)
    if "V" in net.trained and mesh.width > 1:
        # V is shared by the shards of a replica: its gradient is the sum of theirs.
        net.V.register_hook(lambda g: mesh.sum_width(g.clone()))
    float64 = dt == torch.float64  # stage 0 only (checked by the driver)
    gen = torch.Generator().manual_seed(cfg.model.seed)
    step_flops = net.cost().train_step_flops  # per point, the whole net (all shards)

    hist = {"step": 0, "rows": [], "step_seconds": [], "target_step": None, "loss0": None,
            "restarts": 0}
    if restore is not None:
        with restore.as_directory() as d:
            engine.load_checkpoint(d, tag=TAG)
            hist = json.loads((Path(d) / STATE).read_text())
        gen.set_state(torch.tensor(hist.pop("gen"), dtype=torch.uint8))
        hist["restarts"] += 1
    tracker = None
    if rank == 0:
        if run_id is not None and hist["restarts"]:
            # W&B's service may still hold the stream of the attempt that failed ("run ID is
            # in use"): a restarted attempt logs to its own run, from its checkpoint's step on.
            run_id = f"{run_id}-r{hist['restarts']}"
        tracker = make_tracker(cfg.tracking, out_dir, cfg.name or out_dir.name,
                               cfg.model_dump(mode="json"), run_id=run_id, rows=hist["rows"])

    def forward(xb: torch.Tensor) -> torch.Tensor:
        return mesh.width_output(engine(xb))

    def full_loss() -> float:
        with torch.no_grad():
            local = 0.5 * ((forward(x[r0:r1]) - y[r0:r1]) ** 2).sum()
        return float(mesh.sum_data(local))

    def diagnostics() -> dict[str, float]:
        gathered = (deepspeed.zero.GatheredParameters(list(net.parameters()))
                    if dc.zero_stage == 3 else contextlib.nullcontext())
        with gathered:
            return {**diag.gram(net), **diag.weights(net)}

    def checkpoint(next_step: int, metrics: dict) -> None:
        state = {**hist, "step": next_step, "gen": gen.get_state().tolist()}
        with tempfile.TemporaryDirectory() as d:
            engine.save_checkpoint(d, tag=TAG)
            if rank == 0:
                (Path(d) / STATE).write_text(json.dumps(state))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    bar = None
    if rank == 0 and progress:
        bar = tqdm(total=tc.steps + 1, desc=f"train {cfg.name or out_dir.name}")
        bar.update(hist["step"])
    try:
        for t in range(hist["step"], tc.steps + 1):
            last, logging_ = t == tc.steps, t % tc.log_every == 0 or t == tc.steps
            row: dict[str, float] = {}
            t0 = time.perf_counter()
            if batch == n:
                xb, yb, scale = x[r0:r1], y[r0:r1], 1.0
            else:
                idx = torch.randperm(n, generator=gen)[:batch][r0:r1].to(device)
                xb, yb, scale = x[idx], y[idx], n / batch
            local = 0.5 * scale * ((forward(xb) - yb) ** 2).sum()
            if batch == n:
                loss_value = float(mesh.sum_data(local.detach().clone()))
            else:
                loss_value = full_loss() if logging_ else None
            seconds = time.perf_counter() - t0
            if loss_value is not None:
                hist["loss0"] = loss_value if hist["loss0"] is None else hist["loss0"]
                if hist["target_step"] is None and loss_value <= tc.target_ratio * hist["loss0"]:
                    hist["target_step"] = t
                if logging_:
                    row["loss"] = loss_value
            if tc.ntk_every and t % tc.ntk_every == 0 or t in (0, tc.steps):
                row.update(diagnostics())
            if not last:
                t0 = time.perf_counter()
                if float64:
                    # DeepSpeed's stage-0 all-reduce takes fp32/bf16/fp16 only: sum float64
                    # gradients over the data group here.
                    with engine.no_sync():
                        engine.backward(local)
                    for p in params:
                        mesh.sum_data(p.grad)
                else:
                    # DeepSpeed averages gradients over the data group; the loss is a sum.
                    engine.backward(local * mesh.data)
                engine.step()
                hist["step_seconds"].append(seconds + time.perf_counter() - t0)
                if logging_:
                    sec = hist["step_seconds"][-1]
                    row.update(step_seconds=sec, samples_per_s=batch / sec,
                               gflops=step_flops * batch / sec / 1e9,
                               worker_peak_rss_mb=_rss_mb()[0])
            if row and tracker is not None:
                tracker.log(row, step=t)
            if bar is not None:
                bar.update(1)
            if not last and dc.checkpoint_every and (t + 1) % dc.checkpoint_every == 0:
                checkpoint(t + 1, {"step": t + 1, "loss": loss_value})
        peak_mb, now_mb = _rss_mb()
        if tracker is None:
            return {}
        summary = finish_run(
            cfg, out_dir, tracker, rows=hist["rows"], step_seconds=hist["step_seconds"],
            target_step=hist["target_step"], diag=diag, net=net, n=n, d=data.d, eta=eta,
            batch=batch, final={"device": str(device), "worker_peak_rss_mb": peak_mb,
                                               "worker_end_rss_mb": now_mb},
            extra={"workers": mesh.width * mesh.data, "width": mesh.width, "data": mesh.data,
                   "zero_stage": dc.zero_stage, "offload": dc.offload,
                   "precision": dc.precision, "restarts_from_checkpoint": hist["restarts"]})
        tracker = None
        return summary
    except BaseException:
        if tracker is not None:
            tracker.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
