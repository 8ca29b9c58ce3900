"""The loss curve H(0) predicts (train.prediction) and laziness on theory's scale."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from fntk_dist.config import build_config
from fntk_dist.data import load_dataset
from fntk_dist.train.diagnostics import Diagnostics
from fntk_dist.train.job import run_train_job
from fntk_dist.train.prediction import (
    LinearPrediction,
    last_decade,
    log_slope_rate,
    max_log_gap,
    tail_rates,
)


def _linear_gd(n: int = 12, p: int = 30, steps: int = 60, seed: int = 0):
    """GD on the linear model f(w) = Phi w, L = 1/2 ||Phi w - y||^2, eta = 1 / lambda_max:
    its NTK is H = Phi Phi^T at every step, so L_lin is its loss."""
    g = np.random.default_rng(seed)
    phi, y, w = g.normal(size=(n, p)), g.normal(size=n), g.normal(size=p) * 0.3
    h = phi @ phi.T
    eta = 1.0 / np.linalg.eigvalsh(h)[-1]
    r0, losses = phi @ w - y, []
    for _ in range(steps + 1):
        r = phi @ w - y
        losses.append(0.5 * float(r @ r))
        w = w - eta * phi.T @ r
    return h, r0, eta, losses


def test_the_prediction_is_the_loss_of_a_linear_model():
    h, r0, eta, losses = _linear_gd()
    lin = LinearPrediction(h, r0, eta)
    pred = [lin.loss(t) for t in range(len(losses))]
    np.testing.assert_allclose(pred, losses, rtol=1e-10, atol=0)
    assert max_log_gap(losses, pred, 0.0) < 1e-10
    # Its steps to the target are the model's own, found by search without running it.
    ratio = 1e-3
    assert lin.steps_to(ratio) == next(t for t, v in enumerate(losses) if v <= ratio * losses[0])


def test_a_narrow_relu_net_leaves_the_prediction_and_a_wide_one_follows_it(tmp_path):
    """The same data and step size rule: at m = 16 the features move and the loss departs
    from L_lin by more than a factor 1.6 somewhere; at m = 4096 it stays within 20%."""
    gaps = {}
    for m in (16, 4096):
        c = build_config({"model": {"mode": "dense", "m": m, "dtype": "float64"},
                          "data": {"source": "sphere", "n": 16, "d": 12, "labels": "teacher"},
                          "train": {"steps": 80, "ntk_every": 20}, "tracking": {"wandb": False}},
                         source="test")
        s = run_train_job(c, tmp_path / f"m{m}", progress=False)
        rows = pq.read_table(tmp_path / f"m{m}" / "metrics.parquet").to_pylist()
        # Step 0: the same residual, so the same loss (to rounding).
        assert rows[0]["loss_lin"] == pytest.approx(rows[0]["loss"], rel=1e-12)
        assert s["loss_prediction"] == "computed"
        gaps[m] = s["max_log_loss_gap"]
    assert gaps[16] > 0.5 and gaps[4096] < 0.3  # measured: 0.75 and 0.18
    assert gaps[16] > 3 * gaps[4096]


def test_the_prediction_is_skipped_and_said_so_above_gram_max_n(tmp_path):
    c = build_config({"model": {"mode": "dense", "m": 64, "dtype": "float64"},
                      "data": {"source": "sphere", "n": 16, "d": 12, "labels": "teacher"},
                      "train": {"steps": 5, "gram_max_n": 8, "lr": 0.1},
                      "tracking": {"wandb": False}}, source="test")
    s = run_train_job(c, tmp_path / "run", progress=False)
    assert s["max_log_loss_gap"] is None and s["predicted_steps_to_target"] is None
    assert s["loss_prediction"].startswith("skipped: n > train.gram_max_n")
    assert s["tail_rate"] is not None  # measured from the loss alone


def test_steps_to_refuses_a_growing_mode_and_a_null_mode_above_the_target():
    h = np.diag([1.0, 0.25])
    assert LinearPrediction(h, np.array([1.0, 1.0]), 2.5).steps_to(1e-6) is None  # 1 - 2.5 < -1
    # A zero eigenvalue holding half the loss: the target 1e-6 is never reached.
    assert LinearPrediction(np.diag([1.0, 0.0]), np.array([1.0, 1.0]), 0.5).steps_to(1e-6) is None
    # ... but a target above its share is: L(t) = (0.25^t + 1) / 2 is 0.625 at t = 1, 0.53 at 2.
    assert LinearPrediction(np.diag([1.0, 0.0]), np.array([1.0, 1.0]), 0.5).steps_to(0.6) == 2


def test_the_tail_rate_measures_the_slow_mode_where_a_whole_run_fit_does_not():
    # A fast mode holding most of L(0) and a slow one (0.95 per step) that sets the tail.
    steps = list(range(0, 60))
    losses = [0.5 * (1e3 * 0.6**t + 0.95**t) for t in steps]
    whole = log_slope_rate(steps, losses)
    tail, pred = tail_rates(steps, losses, losses, 0.0)
    assert tail == pytest.approx(0.95, abs=2e-3) and tail == pred  # measured: 0.9487
    assert whole < 0.9  # measured: 0.878, leaning to the fast mode
    idx = last_decade(steps, losses, 0.0)
    assert losses[idx[0]] <= 10 * losses[-1] < losses[idx[0] - 1]
    # A floor cuts the round-off tail off: the decade ends at the last loss above it.
    idx = last_decade(steps, losses, losses[50])
    assert idx[-1] == 49 and losses[idx[0]] <= 10 * losses[49] < losses[idx[0] - 1]


def test_laziness_on_theory_scale_of_a_moved_net():
    """Diagnostics against hand-computed values: a dense net's rows moved by a known amount."""
    c = build_config({"model": {"mode": "dense", "m": 32, "dtype": "float64"},
                      "data": {"source": "sphere", "n": 10, "d": 6}}, source="test")
    data = load_dataset(c.data)
    x = torch.as_tensor(data.x)
    net = c.model.build(d=data.d)
    diag = Diagnostics(net, x, gram_max_n=64, block=7)
    w0 = net.layers[0].W.detach().clone()
    # Row r moves by grow_r ||w_r(0)|| in a random direction.
    grow = torch.linspace(0.0, 0.3, 32, dtype=torch.float64)
    u = torch.randn(32, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dw = u / u.norm(dim=1, keepdim=True) * (grow * w0.norm(dim=1))[:, None]
    with torch.no_grad():
        net.layers[0].W.add_(dw)
    out = diag.weights(net) | diag.gram(net)
    assert out["max_rel_weight_change"] == pytest.approx(0.3, rel=1e-12)  # row 31
    assert out["max_weight_change"] == pytest.approx(float(dw.norm(dim=1).max()), rel=1e-12)
    lam0 = float(np.linalg.eigvalsh(diag.h0.numpy())[0])
    assert out["drift_over_lmin"] == pytest.approx(out["gram_drift"] / lam0, rel=1e-12)
    assert out["gram_drift"] > 0 and math.isfinite(out["drift_over_lmin"])
    flips = ((x @ net.layers[0].W.T > 0) != (x @ w0.T > 0)).double().mean()
    assert out["flip_fraction"] == pytest.approx(float(flips), rel=1e-12) and flips > 0


def test_the_summary_reports_when_the_drift_passes_half_lambda_min(tmp_path):
    c = build_config({"model": {"mode": "sketch_out", "m": 256, "k": 8, "dtype": "float64"},
                      "data": {"source": "sphere", "n": 16, "d": 12, "labels": "teacher"},
                      "train": {"steps": 40, "ntk_every": 5}, "tracking": {"wandb": False}},
                     source="test")
    s = run_train_job(c, tmp_path / "run", progress=False)
    rows = [r for r in pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
            if r.get("drift_over_lmin") is not None]
    ratios = {r["step"]: r["drift_over_lmin"] for r in rows}
    assert s["max_drift_over_lmin"] == max(ratios.values()) > 0.5  # a shared V: not lazy
    first = s["drift_half_lmin_step"]
    assert ratios[first] > 0.5 and all(v <= 0.5 for t, v in ratios.items() if t < first)
    assert s["max_rel_weight_change"] > 0 and 0 < s["max_flip_fraction"] < 1
