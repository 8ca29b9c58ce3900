"""The end of a training run, single-process or distributed: the summary, loss.png, and the
tracker's final write (metrics.parquet, summary.json, W&B summary)."""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..models.network import Network
from ..track import Tracker
from .diagnostics import Diagnostics, fitted_rate
from .plots import plot_loss


def finish_run(cfg: RunConfig, out_dir: Path, tracker: Tracker, *, rows: list[dict],
               step_seconds: list[float], target_step: int | None, diag: Diagnostics,
               net: Network, n: int, d: int, eta: float, batch: int,
               final: dict | None = None, extra: dict | None = None) -> dict:
    """rows: what the tracker logged (each with its step); final: extra end-of-run numbers."""
    tc = cfg.train
    logged = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    steps, losses = [s for s, _ in logged], [v for _, v in logged]
    drifts = [r["gram_drift"] for r in rows if r.get("gram_drift") is not None]
    last = rows[-1] if rows else {}
    cost = net.cost()
    spec0, spec_inf = diag.spec0, diag.spec_inf
    lam0 = spec0.lambda_min if spec0 else None
    lam_inf = spec_inf.lambda_min if spec_inf else None
    gd = tc.optimizer == "gd"
    rates = {
        "predicted (1 - eta lambda_min(H0))^2": (1 - eta * lam0) ** 2 if gd and lam0 else None,
        "Du et al. 1 - eta lambda_inf / 2": 1 - eta * lam_inf / 2 if gd and lam_inf else None,
    }
    mean_step = sum(step_seconds) / len(step_seconds) if step_seconds else None
    summary = {
        "name": cfg.name or out_dir.name, "n": n, "d": d,
        "depth": net.depth, "mode": net.mode, "m": net.m, "k": net.k, "sketch": net.sketch,
        "train_output": net.train_output, "optimizer": tc.optimizer, "eta": eta,
        "steps": tc.steps, "trainable_params": cost.trainable_params,
        "flops_per_step": cost.train_step_flops * batch,
        "lambda_min_0": lam0, "lambda_max_0": spec0.lambda_max if spec0 else None,
        "lambda_inf": lam_inf, "gram_rel_err_inf": diag.rel_err_inf,
        "lambda_min_final": last.get("lambda_min") if last.get("step") == tc.steps else None,
        "max_gram_drift": max(drifts) if drifts else None,
        "initial_loss": losses[0], "final_loss": losses[-1],
        "loss_reduction": losses[0] / losses[-1] if losses[-1] > 0 else float("inf"),
        "steps_to_target": target_step, "target_ratio": tc.target_ratio,
        "measured_rate": fitted_rate(steps, losses, tc.target_ratio * losses[0]),
        "predicted_rate": rates["predicted (1 - eta lambda_min(H0))^2"],
        "predicted_rate_du": rates["Du et al. 1 - eta lambda_inf / 2"],
        "seconds_per_step": mean_step,
        "samples_per_s": batch / mean_step if mean_step else None,
        "gflops": cost.train_step_flops * batch / mean_step / 1e9 if mean_step else None,
        "dtype": cfg.model.dtype, **(final or {}), **(extra or {}),
    }
    plot_loss(out_dir / "loss.png", steps, losses, rates,
              f"{net.mode} m={net.m} k={net.k} sketch={net.sketch} n={n} d={d}")
    tracker.finish(summary)
    return summary
