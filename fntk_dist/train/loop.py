"""The training loop, one for a single process and for every rank of a distributed run.

Loss L = 1/2 sum_i (f(x_i) - y_i)^2. Full-batch gradient descent by default (SGD and Adam on
mini-batches as options); the step size is given or eta = lr_scale / lambda_max(H(0)). Every
step walks the neurons in blocks (train.blocked), so memory stays O(n * block + parameters).

What differs between one process and a mesh of Ray Train workers is plugged in (train.parts):
the mesh's collectives, the engine (a torch optimizer or DeepSpeed) and the checkpointer. Every
rank runs the same steps in lockstep (the collectives need it); rank 0 alone owns the tracker
(run folder and W&B).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..checks import batch_size
from ..config import RunConfig
from ..data import Dataset
from ..distributed.parallelize import (
    gather_whole,
    shard_ranges,
    sum_output,
    sum_shared_gradients,
    width_shard,
)
from ..interrupts import Interrupted
from ..memory import keep_freed_memory
from ..models.network import Network
from ..runtime import as_dtype, peak_rss_bytes, rss_bytes, synchronize
from ..track import make_tracker
from .diagnostics import Diagnostics
from .parts import Checkpointer, Engine, Mesh
from .summary import finish_run

STATE = "fntk_state.json"  # the loop's own state inside a checkpoint (rank 0 writes it)


@dataclass
class LoopState:
    """What the loop carries from step to step, and so what a checkpoint restores."""

    step: int = 0
    rows: list[dict] = field(default_factory=list)  # what the tracker logged
    step_seconds: list[float] = field(default_factory=list)
    target_step: int | None = None
    loss0: float | None = None
    restarts: int = 0
    gen: list[int] | None = None  # the mini-batch generator's state


def _rss_mb(mesh: Mesh) -> tuple[float, float]:
    """(peak, current) resident memory of this process in MiB, each the largest over all ranks
    (a collective). The peak includes building the whole shard before ZeRO partitions it."""
    rss = torch.tensor([peak_rss_bytes() / 2**20, rss_bytes() / 2**20], dtype=torch.float64)
    mesh.max_all(rss)
    return float(rss[0]), float(rss[1])


def _moved(mesh: Mesh) -> list[int]:
    """Bytes this rank has summed so far over the width and the data group."""
    return [mesh.moved["width"], mesh.moved["data"]]


def train_loop(
    cfg: RunConfig, out_dir: Path, data: Dataset, *, mesh: Mesh, device: torch.device,
    make_engine: Callable[[Network, float, int], Engine], checkpointer: Checkpointer,
    run_id: str | None = None, progress: bool = True, bar_class: type = tqdm,
    stop_requested: Callable[[], bool] = lambda: False,
) -> dict:
    """Train cfg's net (this rank's shard of it) on data; rank 0 writes the run folder and
    returns the summary (other ranks return {}).

    make_engine(net, eta, rows): the engine for this rank's shard, which sees `rows` points of
    each batch. checkpointer.latest() is restored first, if there is one. stop_requested():
    polled after every step; when true the run stops there (a checkpoint where checkpoints
    are on, the metrics so far written) and raises Interrupted.
    """
    tc = cfg.train
    keep_freed_memory()  # each step's temporaries reuse the last step's pages (fntk_dist.memory)
    batch = batch_size(cfg, data.n)  # the driver has checked the run (fntk_dist.checks)
    dt = as_dtype(cfg.model.dtype)
    x = torch.as_tensor(data.x, dtype=dt, device=device)
    y = torch.as_tensor(data.y, dtype=dt, device=device)
    x_test = torch.as_tensor(data.x_test, dtype=dt, device=device)
    y_test = torch.as_tensor(data.y_test, dtype=dt, device=device)
    n = data.n
    net = cfg.model.build(d=data.d, width=width_shard(mesh), device=device)
    # A width shard of a deep net holds part of every layer: its diagnostics measure the whole
    # net, gathered from the shards (a depth-1 shard's Gram finishes from reduced partials). On
    # any mesh a deep net is measured on that plain copy, outside the engine's module, whose
    # ZeRO-3 hooks would partition a layer's parameters again after its forward.
    distributed = mesh.width * mesh.data > 1
    whole = cfg.model.build(d=data.d, device=device) if distributed and net.depth > 1 else None

    def measured() -> Network:
        return net if whole is None else gather_whole(whole, net, mesh)

    diag = Diagnostics(measured(), x, tc.gram_max_n, tc.block, cfg.gram.top,
                       width=mesh if mesh.width > 1 and whole is None else None)
    eta = tc.lr if tc.lr is not None else tc.lr_scale / diag.spec0.lambda_max
    r0, r1 = shard_ranges(batch, mesh.data)[mesh.data_rank]  # this rank's part of a batch
    f0, f1 = shard_ranges(n, mesh.data)[mesh.data_rank]  # ... and of all n points
    engine = make_engine(net, eta, r1 - r0)
    # GD's loss curve as H(0) predicts it, logged beside the loss (train.prediction).
    lin = diag.linear_prediction(y, eta) if tc.optimizer == "gd" else None
    sum_shared_gradients(net, mesh)
    gen = torch.Generator().manual_seed(cfg.model.seed)
    cost = net.cost()  # per point, the whole net (all shards)

    state = LoopState()
    with checkpointer.latest() as folder:
        if folder is not None:
            engine.load(folder)
            state = LoopState(**json.loads((folder / STATE).read_text()))
            gen.set_state(torch.tensor(state.gen, dtype=torch.uint8))
            state.restarts += 1
    tracker = None
    if mesh.rank == 0:
        if run_id is not None and state.restarts:
            # W&B's service may still hold the stream of the attempt that stopped ("run ID is
            # in use"): a restarted attempt logs to its own run, from its checkpoint's step on.
            run_id = f"{run_id}-r{state.restarts}"
        tracker = make_tracker(cfg.tracking, out_dir, cfg.name or out_dir.name,
                               cfg.model_dump(mode="json"), run_id=run_id, rows=state.rows)

    def output(xb: torch.Tensor) -> torch.Tensor:
        return sum_output(engine.forward(xb), mesh)

    def full_loss() -> float:
        with torch.no_grad():
            local = 0.5 * ((output(x[f0:f1]) - y[f0:f1]) ** 2).sum()
        return float(mesh.sum_data(local))

    def test_metrics() -> dict[str, float]:
        if y_test.numel() == 0:
            return {}
        with torch.no_grad():
            pred = output(x_test)
        return {"test_mse": float(((pred - y_test) ** 2).mean()),
                "test_error": float((torch.sign(pred) != torch.sign(y_test)).double().mean())}

    def checkpoint(next_step: int, loss_value: float | None) -> None:
        snapshot = asdict(state) | {"step": next_step, "gen": gen.get_state().tolist()}

        def write(folder: Path) -> None:
            engine.save(folder)
            if mesh.rank == 0:
                (folder / STATE).write_text(json.dumps(snapshot))

        checkpointer.save(next_step, write, {"step": next_step, "loss": loss_value})

    step_bytes = [0, 0]  # what the last step's collectives carried, width and data group
    bar = None
    if mesh.rank == 0 and progress:
        bar = bar_class(total=tc.steps + 1, desc=f"train {cfg.name or out_dir.name}")
        bar.update(state.step)
    try:
        for t in range(state.step, tc.steps + 1):
            last, logging = t == tc.steps, t % tc.log_every == 0 or t == tc.steps
            row: dict[str, float] = {}
            synchronize(device)
            t0 = time.perf_counter()
            start = _moved(mesh)
            if batch == n:
                xb, yb, scale = x[r0:r1], y[r0:r1], 1.0
            else:
                idx = torch.randperm(n, generator=gen)[:batch][r0:r1].to(device)
                xb, yb, scale = x[idx], y[idx], n / batch
            loss = 0.5 * scale * ((output(xb) - yb) ** 2).sum()
            synchronize(device)
            seconds = time.perf_counter() - t0
            forward_bytes = [b - a for a, b in zip(start, _moved(mesh))]
            # Everything measured at step t is measured before the update of step t.
            if batch == n:
                loss_value = float(mesh.sum_data(loss.detach().clone()))
            else:
                loss_value = full_loss() if logging else None
            if loss_value is not None:
                state.loss0 = loss_value if state.loss0 is None else state.loss0
                if state.target_step is None and loss_value <= tc.target_ratio * state.loss0:
                    state.target_step = t
                if logging:
                    row["loss"] = loss_value
                    if lin is not None:
                        row["loss_lin"] = lin.loss(t)
            if tc.ntk_every and t % tc.ntk_every == 0 or t in (0, tc.steps):
                with engine.gathered():
                    seen = measured()
                    row.update(diag.gram(seen))
                    row.update(diag.weights(seen))
                row.update(test_metrics())
            if not last:
                t0 = time.perf_counter()
                before = _moved(mesh)
                engine.backward(loss)
                engine.step()
                synchronize(device)
                step_bytes = [f + b - a for f, a, b in zip(forward_bytes, before, _moved(mesh))]
                state.step_seconds.append(seconds + time.perf_counter() - t0)
                if logging:
                    sec = state.step_seconds[-1]
                    row.update(step_seconds=sec, samples_per_s=batch / sec,
                               gflops=cost.train_step_flops * batch / sec / 1e9,
                               worker_peak_rss_mb=_rss_mb(mesh)[0])
            if row and tracker is not None:
                tracker.log(row, step=t)
            if bar is not None:
                bar.update(1)
                if loss_value is not None:
                    bar.set_postfix(loss=f"{loss_value:.3e}", refresh=False)
            if not last and tc.checkpoint_every and (t + 1) % tc.checkpoint_every == 0:
                checkpoint(t + 1, loss_value)
            if not last and stop_requested():
                if tc.checkpoint_every and (t + 1) % tc.checkpoint_every:
                    checkpoint(t + 1, loss_value)
                if tracker is not None:
                    tracker.interrupt()
                    tracker = None
                raise Interrupted(
                    f"interrupted after step {t} of {tc.steps}; " + (
                        "continue with --resume" if tc.checkpoint_every else
                        "train.checkpoint_every is 0, so there is no checkpoint to continue "
                        "from (metrics.parquet holds the steps done)"))
        peak_mb, now_mb = _rss_mb(mesh)
        final_test = test_metrics()
        if tracker is None:
            return {}
        summary = finish_run(
            cfg, out_dir, tracker, rows=state.rows, step_seconds=state.step_seconds,
            target_step=state.target_step, diag=diag, net=net, n=n, d=data.d, eta=eta,
            batch=batch, lin=lin,
            final={"n_test": int(y_test.numel()), "device": str(device),
                   "data_fingerprint": data.fingerprint,
                   **{f"final_{k}": v for k, v in final_test.items()},
                   "worker_peak_rss_mb": peak_mb, "worker_end_rss_mb": now_mb},
            extra={"workers": mesh.width * mesh.data, "width": mesh.width, "data": mesh.data,
                   "width_bytes_per_step": step_bytes[0], "data_bytes_per_step": step_bytes[1],
                   **engine.describe(), "restarts_from_checkpoint": state.restarts})
        tracker = None
        return summary
    except BaseException:
        if tracker is not None:
            tracker.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
