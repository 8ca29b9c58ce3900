"""Question 4's measure: a trial's finite-time NTK predictor is the linearised net after the
training run's own steps with its own step size (against parameter-space gradient descent on
the linearised net, in float64), and the report's table of test errors with paired gaps."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.func import functional_call, jacrev

from fntk_dist.config import RunConfig
from fntk_dist.data import load_dataset
from fntk_dist.study.heldout_report import heldout_section
from fntk_dist.study.plots import with_labels
from fntk_dist.study.report import write_report
from fntk_dist.study.results import SCHEMA, read_results
from fntk_dist.study.trial import read_trial, regression_metrics, run_trial

F64 = torch.float64


def _config(mode: str, k: int | None, steps: int, **train) -> dict:
    return {"model": {"mode": mode, "m": 24, "k": k, "seed": 5, "dtype": "float64"},
            "data": {"source": "sphere", "n": 20, "d": 5, "seed": 2, "test_fraction": 0.25},
            "train": {"steps": steps, "ntk_every": 0, **train}, "tracking": {"wandb": False}}


def _linearised_gd_test_predictions(cfg: RunConfig) -> torch.Tensor:
    """Gradient descent in parameter space on f0 + J (theta - theta0), step 1 / lambda_max(J
    J^T) from the net's own Jacobian (torch.func): no Gram code and no closed form."""
    data = load_dataset(cfg.data)
    x, y, xt = (torch.as_tensor(a, dtype=F64) for a in (data.x, data.y, data.x_test))
    net = cfg.model.build(d=data.d)
    theta0 = {k: p.detach().clone() for k, p in net.named_parameters() if p.requires_grad}

    def flat_jac(inputs: torch.Tensor) -> torch.Tensor:
        jac = jacrev(lambda th: functional_call(net, th, (inputs,)))(theta0)
        return torch.cat([jac[k].reshape(inputs.shape[0], -1) for k in theta0], dim=1)

    j, jt = flat_jac(x), flat_jac(xt)
    eta = 1.0 / float(torch.linalg.eigvalsh(j @ j.T).max())
    with torch.no_grad():
        f0, f0t = net(x), net(xt)
    delta = torch.zeros(j.shape[1], dtype=F64)
    for _ in range(cfg.train.steps):
        delta -= eta * j.T @ (f0 + j @ delta - y)
    return f0t + jt @ delta


@pytest.mark.parametrize("mode,k", [("dense", None), ("sketch_out", 3)])
def test_finite_time_metric_is_linearised_gd_after_the_runs_steps(mode, k):
    cfg = RunConfig.model_validate(_config(mode, k, steps=6))
    out = regression_metrics(cfg)
    pred = _linearised_gd_test_predictions(cfg)
    yt = torch.as_tensor(load_dataset(cfg.data).y_test, dtype=F64)
    assert out["ntk_emp_steps_test_mse"] == pytest.approx(float(((pred - yt) ** 2).mean()),
                                                          rel=1e-9)
    assert out["ntk_emp_steps_test_error"] == float((pred.sign() != yt.sign()).double().mean())
    # Six steps are far from converged: the finite-time predictor is not the limit one.
    assert abs(out["ntk_emp_steps_test_mse"] - out["ntk_emp_test_mse"]) > 1e-3


def test_trial_uses_the_training_runs_eta_and_mini_batches_get_no_finite_time_metric(tmp_path):
    run_trial(_config("dense", None, steps=4), str(tmp_path / "t"), regression=True, threads=1)
    row = read_trial(tmp_path / "t")
    assert row["ntk_eta"] == pytest.approx(row["eta"], rel=1e-12) and row["steps"] == 4
    assert math.isfinite(row["ntk_emp_steps_test_error"])
    # SGD on mini-batches is not the full-batch GD that kernel_predict(eta, steps) models.
    sgd = RunConfig.model_validate(_config("dense", None, 4, optimizer="sgd", batch_size=5))
    out = regression_metrics(sgd)
    assert "ntk_emp_steps_test_error" not in out and "ntk_emp_test_error" in out


def _rows() -> list[dict]:
    """Three splits of one configuration: the net's error 1/16 above the finite-time
    predictor's on every split, whose errors differ from split to split (counts of the 16
    test points, as the table pairs them)."""
    base = {"source": "digits", "n": 820, "d": 64, "n_test": 16, "mode": "dense", "m": 256,
            "depth": 1, "train_output": False, "params": "{}", "seed_mode": "independent",
            "kind": "train", "lambda_min_0": 0.1, "lambda_max_0": 10.0}
    rows = []
    for r, e in enumerate((0.125, 0.25, 0.375)):
        rows.append(base | {"trial_id": f"t{r}", "seed": 10 + r, "replicate": r,
                            "final_test_error": e + 0.0625, "ntk_emp_steps_test_error": e,
                            "ntk_emp_test_error": 0.03125, "final_test_mse": 0.5,
                            "ntk_emp_steps_test_mse": 0.375, "ntk_emp_test_mse": 0.125})
    return rows


def test_heldout_table_pairs_the_gap_per_replicate(tmp_path):
    pq.write_table(pa.Table.from_pylist(_rows(), schema=SCHEMA), tmp_path / "results.parquet")
    text = "\n".join(heldout_section(with_labels(read_results(tmp_path / "results.parquet"))))
    # err NTK t: mean 0.25 over (1/8, 1/4, 3/8), t interval 4.303 * 0.125 / sqrt(3) = 0.31;
    # the net's gap to it is 1/16 on every split, so the paired interval is 0.
    assert ("| digits n=820 d=64 | dense | 256 | 3 | 0.312 ± 0.31 | 0.25 ± 0.31 | 0.0312 ± 0 "
            "| - | 0.5 ± 0 | 0.375 ± 0 | 0.125 ± 0 | 0.0625 ± 0 | 0.125 ± 0 |") in text
    assert "## Test error against NTK regression" in write_report(tmp_path).read_text()


def test_no_heldout_section_without_a_finite_time_measure(tmp_path):
    rows = [r | {"ntk_emp_steps_test_error": None} for r in _rows()]
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp_path / "results.parquet")
    assert "Test error against NTK" not in write_report(tmp_path).read_text()
