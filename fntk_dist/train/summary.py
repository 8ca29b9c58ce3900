"""The end of a training run, single-process or distributed: the summary, loss.png, and the
tracker's final write (metrics.parquet, summary.json, W&B summary).

The run against theory: the loss against the curve H(0) predicts (largest log gap, steps to
the target both ways, the tail rate over the last decade of loss against the prediction's over
the same steps), and laziness on theory's scale (drift / lambda_min(H(0)) and the first step it
passes 1/2; weight moves relative to ||w_r(0)||; flipped signs).
"""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..models.network import Network
from ..track import Tracker
from .diagnostics import Diagnostics
from .plots import plot_loss
from .prediction import LinearPrediction, max_log_gap, tail_rates


def _largest(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return max(vals) if vals else None


def _against_prediction(rows: list[dict], lin: LinearPrediction | None, floor: float,
                        ratio: float, gram_formed: bool) -> dict:
    """The summary's comparison of the loss with L_lin (why it is absent, where it is)."""
    logged = [r for r in rows if r.get("loss") is not None]
    steps, losses = [r["step"] for r in logged], [r["loss"] for r in logged]
    pred = [r["loss_lin"] for r in logged] if lin is not None else None
    tail, tail_pred = tail_rates(steps, losses, pred, floor)
    out = {"tail_rate": tail, "predicted_tail_rate": tail_pred, "max_log_loss_gap": None,
           "predicted_steps_to_target": None, "loss_prediction": "computed"}
    if lin is None:
        out["loss_prediction"] = ("skipped: n > train.gram_max_n, H(0) not formed"
                                  if not gram_formed else "skipped: not full-batch gd")
        return out
    out["max_log_loss_gap"] = max_log_gap(losses, pred, floor)
    out["predicted_steps_to_target"] = lin.steps_to(ratio)
    return out


def finish_run(cfg: RunConfig, out_dir: Path, tracker: Tracker, *, rows: list[dict],
               step_seconds: list[float], target_step: int | None, diag: Diagnostics,
               net: Network, n: int, d: int, eta: float, batch: int,
               lin: LinearPrediction | None = None, final: dict | None = None,
               extra: dict | None = None) -> dict:
    """rows: what the tracker logged (each with its step); lin: the loss curve H(0) predicts
    (rows then carry loss_lin); final: extra end-of-run numbers."""
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
    half = [r["step"] for r in rows if (r.get("drift_over_lmin") or 0) > 0.5]
    floor = tc.target_ratio * losses[0]  # below it round-off sets the loss, not the dynamics
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
        "max_drift_over_lmin": _largest(rows, "drift_over_lmin"),
        "drift_half_lmin_step": half[0] if half else None,
        "max_rel_weight_change": _largest(rows, "max_rel_weight_change"),
        "max_flip_fraction": _largest(rows, "flip_fraction"),
        "initial_loss": losses[0], "final_loss": losses[-1],
        "loss_reduction": losses[0] / losses[-1] if losses[-1] > 0 else float("inf"),
        "steps_to_target": target_step, "target_ratio": tc.target_ratio,
        **_against_prediction(rows, lin, floor, tc.target_ratio, diag.forms_gram),
        "predicted_rate": rates["predicted (1 - eta lambda_min(H0))^2"],
        "predicted_rate_du": rates["Du et al. 1 - eta lambda_inf / 2"],
        "seconds_per_step": mean_step,
        "samples_per_s": batch / mean_step if mean_step else None,
        "gflops": cost.train_step_flops * batch / mean_step / 1e9 if mean_step else None,
        "dtype": cfg.model.dtype, **(final or {}), **(extra or {}),
    }
    predicted = [r["loss_lin"] for r in rows if r.get("loss") is not None] if lin else None
    plot_loss(out_dir / "loss.png", steps, losses, rates,
              f"{net.mode} m={net.m} k={net.k} sketch={net.sketch} n={n} d={d}", predicted)
    tracker.finish(summary)
    return summary
