"""Question 4 of the study: the trained net's test error against NTK kernel regression with the
empirical kernel at init, after the run's own steps and step size (finite time) and at infinite
time, and with the analytic kernel where the net has one. Means over the replicates (data
splits) with 95% t-intervals; the net's gap to the finite-time predictor is paired per
replicate (same split, same net), so its interval is not inflated by how hard a split is."""

from __future__ import annotations

import pandas as pd

from .stats import mean_ci, pm
from .tables import markdown_table

# (header, column): test error (fraction of wrong signs) and mean squared error.
_COLUMNS = [
    ("err net", "final_test_error"), ("err NTK t", "ntk_emp_steps_test_error"),
    ("err NTK inf", "ntk_emp_test_error"), ("err analytic inf", "ntk_inf_test_error"),
    ("mse net", "final_test_mse"), ("mse NTK t", "ntk_emp_steps_test_mse"),
    ("mse NTK inf", "ntk_emp_test_mse"),
]


def _cell(values: pd.Series) -> str:
    mean, half, _ = mean_ci(values)
    return pm(mean, half)


def _count_gap_cell(g: pd.DataFrame) -> str:
    """err net - NTK t, averaged as counts of test points: errors are counts over n_test, and
    a mean of cancelling float fractions would print a residue (1.39e-18) instead of 0."""
    n_test = g["n_test"].astype(float)
    counts = ((g["final_test_error"] - g["ntk_emp_steps_test_error"]) * n_test).round()
    mean, half, _ = mean_ci(counts)
    n = float(n_test.iloc[0])  # one dataset per row of the table: the same n_test
    return pm(None if mean is None else mean / n, None if half is None else half / n)


def has_heldout(df: pd.DataFrame) -> bool:
    """Whether any trial measured the finite-time predictor (a held-out split and full-batch
    GD)."""
    return bool(df["ntk_emp_steps_test_error"].notna().any())


def heldout_table(df: pd.DataFrame) -> str:
    """One row per (dataset, series, m) with a finite-time measure: replicates, each error
    column as mean ± 95% interval, and the paired gaps net - NTK t (error and mse)."""
    df = df[df["ntk_emp_steps_test_error"].notna()]
    rows = []
    for key, g in df.groupby(["dataset", "series", "m"], sort=True):
        gap_mse = g["final_test_mse"] - g["ntk_emp_steps_test_mse"]
        rows.append([*key, g["replicate"].nunique(), *(_cell(g[c]) for _, c in _COLUMNS),
                     _count_gap_cell(g), _cell(gap_mse)])
    header = ["dataset", "series", "m", "replicates", *(h for h, _ in _COLUMNS),
              "err net - NTK t", "mse net - NTK t"]
    return markdown_table(header, rows)


def heldout_section(df: pd.DataFrame) -> list[str]:
    """The report's section for question 4 (empty when nothing measured it)."""
    if not has_heldout(df):
        return []
    return [
        "## Test error against NTK regression", "",
        "The trained net's test error against kernel regression with its own empirical "
        "kernel at init H(0): `NTK t` after the run's steps with its step size "
        "(kernel_predict(eta, steps), the linearised net where the trained one stops), "
        "`NTK inf` at infinite time; `analytic inf` the infinite-width kernel where the net "
        "has one. `err` is the fraction of wrong signs, `mse` the mean squared error, on the "
        "held-out rows. Mean ± 95% t-interval over the replicates; the last two columns are "
        "the per-replicate differences (same split, same net).", "",
        heldout_table(df), "",
    ]
