"""One trial of a sweep, in its own folder: kernel regression first, then `fntk train`; or,
in a kernel sweep, the analytic-only measures (study.kernel) alone.

The folder is finished exactly when summary.json exists: the training run writes it last,
atomically, so a trial killed at any point reads as unfinished and is run again. Nothing here
imports Ray; the sweep wraps run_trial in a Ray task.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from ..atomic import write_json
from ..config import RunConfig
from ..data import load_dataset
from ..ntk import empirical_ntk, spectrum
from ..ntk.regression import analytic_ntk_predict, kernel_predict, prediction_errors
from ..runtime import as_dtype, resolve_device
from ..train.job import run_train_job
from .kernel import kernel_metrics

SUMMARY, REGRESSION = "summary.json", "regression.json"


def is_finished(folder: Path) -> bool:
    return (Path(folder) / SUMMARY).is_file()


def regression_metrics(cfg: RunConfig) -> dict[str, float]:
    """Test error of NTK kernel regression with the empirical kernel at init, at infinite time
    (ntk_emp_test_*) and, for full-batch GD, after the training run's own steps with its own
    step size (ntk_emp_steps_test_*: the linearised net at the step the trained one stops);
    the analytic kernel where it applies. Empty when the data has no held-out split."""
    data = load_dataset(cfg.data)
    if len(data.y_test) == 0:
        return {}
    t0 = time.perf_counter()
    tc = cfg.train
    device, dt = resolve_device(tc.device, "train.device"), as_dtype(cfg.model.dtype)
    x, y, xt, yt = (torch.as_tensor(a, dtype=dt, device=device)
                    for a in (data.x, data.y, data.x_test, data.y_test))
    net = cfg.model.build(d=data.d, device=device)
    with torch.no_grad():
        f0, f0t = net(x), net(xt)
    h = empirical_ntk(net, x, block=tc.block)
    hc = empirical_ntk(net, xt, x, block=tc.block)
    out = {f"ntk_emp_test_{k}": v for k, v in
           prediction_errors(kernel_predict(h, hc, y, f0, f0t), yt).items()}
    if tc.optimizer == "gd" and (tc.batch_size is None or tc.batch_size >= len(data.y)):
        # The training loop's eta, from the same H(0) (train.loop: lr or lr_scale / lambda_max).
        eta = tc.lr if tc.lr is not None else tc.lr_scale / spectrum(h, 1).lambda_max
        pred = kernel_predict(h, hc, y, f0, f0t, eta=eta, steps=tc.steps)
        out.update({f"ntk_emp_steps_test_{k}": v for k, v in prediction_errors(pred, yt).items()})
        out["ntk_eta"] = eta
    pred_inf = analytic_ntk_predict(net, x, y, xt)
    if pred_inf is not None:
        out.update({f"ntk_inf_test_{k}": v for k, v in prediction_errors(pred_inf, yt).items()})
    out["regression_seconds"] = time.perf_counter() - t0
    return out


def run_trial(config: dict[str, Any], folder: str, regression: bool, threads: int,
              kind: str = "train") -> None:
    """Run one trial into folder (the config as a JSON-able dict, so it crosses processes);
    kind "kernel": the analytic-only measures, written as its summary (no training)."""
    # A trial's share of the machine is the CPUs Ray gave it: torch's threads and the BLAS
    # pool numpy's eigvalsh uses (oversubscribed, an n = 1024 eigvalsh runs 50x slower here).
    torch.set_num_threads(threads)
    cfg = RunConfig.model_validate(config)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(threads):
        if kind == "kernel":
            write_json(out / SUMMARY, kernel_metrics(cfg))  # atomic: finished when it exists
            return
        if regression:
            write_json(out / REGRESSION, regression_metrics(cfg))
        run_train_job(cfg, out, progress=False)


def read_trial(folder: Path) -> dict[str, Any]:
    """What a finished trial folder holds: its summary and regression metrics, merged."""
    folder = Path(folder)
    row = json.loads((folder / SUMMARY).read_text())
    reg = folder / REGRESSION
    if reg.is_file():
        row.update(json.loads(reg.read_text()))
    return row
