"""`fntk regress`: kernel regression with the exact empirical NTK of the configured net at init.

Solves (H + ridge I) alpha = y - f0(X) by conjugate gradients, preconditioned by a randomized
Nystrom approximation from regress.rank exact columns of H (fntk_dist.ntk.nystrom), H never
stored: each iteration is one exact mat-vec (fntk_dist.ntk.ntk_matvec, in this process or
split over width-shard actors). Predicts the test rows by the cross-Gram mat-vec
f0(X_test) + H(X_test, X) alpha.

The CG state is written atomically after an iteration at most every regress.save_every_s
seconds (and on a stop request), with the run's identity (the net, the data by content, and
the settings that shape the iterates: ridge, rank, precondition, seed); the same command on
the same folder continues from it, a different run there is refused naming what differs.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from ..atomic import atomic_path, write_text
from ..checks import _naming_the_file, check_model, distributed
from ..config import RunConfig, dump_config
from ..data import Dataset, load_dataset
from ..errors import ConfigError
from ..identity import run_identity
from ..interrupts import Interrupted, stop_requests
from ..ntk.nystrom import nystrom_preconditioner, sample_columns
from ..ntk.pcg import CGState, cg_start, pcg
from ..ntk.regression import prediction_errors
from ..runtime import as_dtype, peak_rss_bytes, resolve_device
from ..track import make_tracker
from .operator import KernelOperator, LocalOperator
from .state import STATE, load_state, save_state

F64 = torch.float64
IDENTITY_KEYS = ("ridge", "rank", "precondition", "seed")  # what shapes the iterates


@_naming_the_file
def check_regress(cfg: RunConfig, data: Dataset) -> tuple[int, int]:
    """The actors of `fntk regress` on data: (width shards, row groups), dist.grid or
    dist.workers width shards ((1, 1) in one process); ConfigError for a broken rule."""
    rc = cfg.regress
    check_model(cfg, data.d)
    if rc.precondition and rc.rank > data.n:
        raise ConfigError(f"regress.rank: {rc.rank} columns of H asked for, but there are only "
                          f"n={data.n} training points")
    if rc.test_metrics and data.x_test.shape[0] == 0:
        raise ConfigError("regress.test_metrics: the data has no test rows; set "
                          "data.test_fraction > 0 or regress.test_metrics=false")
    if not distributed(cfg):
        return 1, 1
    width, rows = cfg.dist.grid or (cfg.dist.workers or 1, 1)
    if cfg.dist.workers is not None and width * rows != cfg.dist.workers:
        raise ConfigError(f"dist.grid: {width} x {rows} = {width * rows} actors, but "
                          f"dist.workers = {cfg.dist.workers}")
    field = "dist.workers" if cfg.dist.grid is None else "dist.grid"
    if width > cfg.model.m:
        raise ConfigError(f"{field}: {width} width shards but only m={cfg.model.m} neurons "
                          "to shard")
    if rows > data.n:
        raise ConfigError(f"dist.grid: {rows} row groups but only n={data.n} training points")
    if cfg.model.hidden_layers > 1:
        raise ConfigError("model.depth: fntk regress on Ray splits the width of a depth-1 net; "
                          "run a deeper net without --workers")
    return width, rows


def _operator(cfg: RunConfig, grid: tuple[int, int], x: torch.Tensor,
              placed) -> KernelOperator:
    rc = cfg.regress
    if placed is not None:
        from ..distributed.matvec_actors import RayOperator

        return RayOperator(cfg, grid, x, placed)
    device = resolve_device(rc.device, "regress.device")
    return LocalOperator(cfg.model.build(x.shape[1], device=device), x, rc.block, rc.tile)


def _write_coefficients(out_dir: Path, alpha: torch.Tensor) -> None:
    table = pa.table({"index": np.arange(alpha.shape[0], dtype=np.int64),
                      "alpha": alpha.numpy()})
    with atomic_path(out_dir / "coefficients.parquet") as tmp:
        pq.write_table(table, tmp)


class _Iterations:
    """on_iteration for pcg: logs the residual, saves the state when due, honours a stop."""

    def __init__(self, out_dir: Path, identity: dict, rows: list[dict], tracker, stop,
                 save_every_s: float, maxiter: int, progress: bool, start: int) -> None:
        self.out_dir, self.identity, self.rows, self.tracker = out_dir, identity, rows, tracker
        self.stop, self.save_every_s = stop, save_every_s
        self.saved = self.last = time.perf_counter()
        self.seconds: list[float] = []
        self.bar = tqdm(total=maxiter, initial=start, desc="regress CG", unit="it",
                        disable=not progress, mininterval=1.0)

    def __call__(self, st: CGState) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self.last)
        self.last = now
        self.tracker.log({"relative_residual": st.relative_residual,
                          "iteration_seconds": self.seconds[-1]}, step=st.iteration)
        self.bar.update(1)
        self.bar.set_postfix(residual=f"{st.relative_residual:.2e}", refresh=False)
        stopping = self.stop.requested()
        if stopping or now - self.saved >= self.save_every_s:
            save_state(self.out_dir, st, self.identity, self.rows)
            self.saved = time.perf_counter()
        if stopping:
            self.bar.close()
            self.tracker.interrupt()
            raise Interrupted(f"interrupted after CG iteration {st.iteration} (relative "
                              f"residual {st.relative_residual:.3e}); rerun the same command "
                              "to continue")


def run_regress_job(cfg: RunConfig, out_dir: Path, progress: bool = True) -> dict:
    """Solve, predict, write the run folder (coefficients.parquet, metrics.parquet,
    cg_state.pt, config.yaml, summary.json); returns the summary."""
    data = load_dataset(cfg.data)
    grid = check_regress(cfg, data)
    workers = grid[0] * grid[1]
    rc, n = cfg.regress, data.n
    out_dir = Path(out_dir)
    identity = run_identity(cfg, data, ("model", "data"),
                            regress=cfg.regress.model_dump(mode="json", include=set(IDENTITY_KEYS)))
    saved = load_state(out_dir, identity)  # refuses another run's state before anything starts
    placed = None
    if distributed(cfg):
        from ..distributed.matvec_actors import connect_for_regress

        placed = connect_for_regress(cfg, workers)
    dt = as_dtype(cfg.model.dtype)
    x = torch.as_tensor(data.x, dtype=dt)
    x_test = torch.as_tensor(data.x_test, dtype=dt)
    y = torch.as_tensor(data.y, dtype=F64)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").unlink(missing_ok=True)
    write_text(out_dir / "config.yaml", dump_config(cfg))
    state, rows = (None, []) if saved is None else saved
    t0 = time.perf_counter()
    with stop_requests() as stop, \
            contextlib.closing(_operator(cfg, grid, x, placed)) as op:
        f0 = op.outputs(x)
        b = y - f0
        precond, rank, t_pre = None, 0, time.perf_counter()
        if rc.precondition:
            idx = sample_columns(n, rc.rank, rc.seed)
            try:
                precond = nystrom_preconditioner(op.columns(idx), idx, rc.ridge)
            except ArithmeticError as err:  # vanishing or non-PSD columns: the data's doing
                raise ConfigError(f"regress.precondition: {err}") from None
            rank = precond.rank
        t_pre = time.perf_counter() - t_pre

        def apply_a(v: torch.Tensor) -> torch.Tensor:
            return op.matvec(v) + rc.ridge * v

        resumed = 0 if state is None else state.iteration
        tracker = make_tracker(cfg.tracking, out_dir, cfg.name or out_dir.name,
                               cfg.model_dump(mode="json"), rows=rows)
        try:
            if state is None:
                state = cg_start(b, apply_a, precond)
                tracker.log({"relative_residual": state.relative_residual}, step=0)
            watch = _Iterations(out_dir, identity, rows, tracker, stop, rc.save_every_s,
                                rc.maxiter, progress, state.iteration)
            t_cg = time.perf_counter()
            try:
                state = pcg(b, apply_a, precond, rc.rtol, rc.maxiter, state, watch)
            except ArithmeticError as err:  # H + ridge I singular in floating point
                raise ConfigError(f"regress.ridge: {err}; H + {rc.ridge:g} I is not "
                                  "numerically positive definite, raise regress.ridge") from None
            t_cg = time.perf_counter() - t_cg
            watch.bar.close()
            save_state(out_dir, state, identity, rows)
            alpha = state.x
            true_res = float(torch.linalg.vector_norm(b - apply_a(alpha))) / max(
                float(torch.linalg.vector_norm(b)), 1e-300)
            _write_coefficients(out_dir, alpha)
            test = {}
            if rc.test_metrics:
                pred = op.outputs(x_test) + op.cross_matvec(x_test, alpha)
                test = {f"test_{k}": v for k, v in prediction_errors(pred, data.y_test).items()}
            info = op.info()
        except Interrupted:  # the tracker has written the rows so far
            raise
        except BaseException:
            tracker.abort()
            raise
    net = cfg.model.build(data.d, neurons=(0, 1))
    per_it = watch.seconds
    summary = {
        "n": n, "n_test": int(x_test.shape[0]), "d": data.d, "depth": net.depth, "m": net.m,
        "mode": net.mode, "k": net.k, "sketch": net.sketch, "train_output": net.train_output,
        "dtype": cfg.model.dtype, "ridge": rc.ridge, "precondition": rc.precondition,
        "rank": rc.rank if rc.precondition else 0, "rank_kept": rank, "rtol": rc.rtol,
        "iterations": state.iteration, "iterations_resumed": resumed,
        "converged": state.relative_residual <= rc.rtol,
        "relative_residual": state.relative_residual, "true_relative_residual": true_res,
        **test, "workers": workers, "grid": list(grid) if placed is not None else None,
        **info,
        "seconds": time.perf_counter() - t0, "seconds_preconditioner": t_pre,
        "seconds_cg": t_cg,
        "seconds_per_iteration": float(np.median(per_it)) if per_it else None,
        "peak_rss_bytes": peak_rss_bytes(), "state_file": STATE,
    }
    tracker.finish(summary)
    return summary
