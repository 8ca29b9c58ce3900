"""`fntk report DIR`: the plots and a Markdown report (tables) of a sweep's results.parquet."""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..atomic import write_text
from ..errors import UserError
from .plots import plot_all, with_labels
from .sweep import RESULTS

# Columns of the per-configuration table: (header, how a group of seeds becomes one cell).
_TABLE = [
    ("seeds", lambda g: len(g)),
    ("lambda_inf", lambda g: g["lambda_inf"].mean()),
    ("lambda_min(H0)", lambda g: g["lambda_min_0"].mean()),
    ("rel err H0", lambda g: g["gram_rel_err_inf"].mean()),
    ("lambda_min end", lambda g: g["lambda_min_final"].mean()),
    ("drift/lmax", lambda g: (g["max_gram_drift"] / g["lambda_max_0"]).mean()),
    ("steps to 1e-6", lambda g: _steps(g["steps_to_target"])),
    ("rate", lambda g: g["measured_rate"].mean()),
    ("pred (1-eta lmin)^2", lambda g: g["predicted_rate"].mean()),
    ("pred Du", lambda g: g["predicted_rate_du"].mean()),
    ("params", lambda g: g["trainable_params"].median()),
    ("MFLOP/step", lambda g: g["flops_per_step"].median() / 1e6),
    ("s/step", lambda g: g["seconds_per_step"].median()),
    ("test err net", lambda g: g["final_test_error"].mean()),
    ("test err NTK H0", lambda g: g["ntk_emp_test_error"].mean()),
    ("test err NTK inf", lambda g: g["ntk_inf_test_error"].mean()),
]


def _steps(s: pd.Series) -> str:
    """Median steps over the seeds that reached the target, and how many did."""
    hit = s.dropna()
    if hit.empty:
        return f"- (0/{len(s)})"
    med = int(hit.median())
    return str(med) if len(hit) == len(s) else f"{med} ({len(hit)}/{len(s)})"


def _fmt(v: object) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, numbers.Real) and math.isnan(v)):
        return "-"
    if isinstance(v, numbers.Integral) or (float(v).is_integer() and abs(v) < 1e7):
        return str(int(v))
    return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.2e}"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def config_table(df: pd.DataFrame) -> str:
    """One row per (dataset, series, m): seeds pooled; empty columns left out."""
    keys = ["dataset", "series", "m"]
    rows = [[*key, *(f(g) for _, f in _TABLE)] for key, g in df.groupby(keys, sort=True)]
    header = [*keys, *(h for h, _ in _TABLE)]
    keep = [i for i, _ in enumerate(header) if any(_fmt(r[i]) != "-" for r in rows)]
    return markdown_table([header[i] for i in keep], [[r[i] for i in keep] for r in rows])


def savings_table(df: pd.DataFrame) -> str:
    """Per dataset and series, the cheapest width whose every seed reached 1e-6 of L(0), against
    the cheapest dense width that did: parameters and wall time to the target."""
    df = df.assign(time_to_target=df["steps_to_target"] * df["seconds_per_step"])
    agg = (df.groupby(["dataset", "series", "mode", "m"])
           .agg(hit=("steps_to_target", lambda s: s.notna().all()),
                params=("trainable_params", "median"), time=("time_to_target", "median"),
                steps=("steps_to_target", "median")).reset_index())
    best = agg[agg["hit"]].sort_values("time").groupby(["dataset", "series"]).head(1)
    rows = []
    for _, r in best.sort_values(["dataset", "series"]).iterrows():
        dense = best[(best["dataset"] == r["dataset"]) & (best["mode"] == "dense")]
        d = dense.iloc[0] if len(dense) else None
        rows.append([r["dataset"], r["series"], int(r["m"]), r["params"], r["steps"],
                     r["time"], None if d is None else d["params"] / r["params"],
                     None if d is None else d["time"] / r["time"]])
    if not rows:
        return "No configuration reached 1e-6 of its initial loss on every seed."
    return markdown_table(["dataset", "series", "cheapest m", "params", "steps", "seconds",
                           "dense params / these", "dense seconds / these"], rows)


# Log-log slopes against the width (theory: -1/2 for the distance to the limit; the drift
# of a lazy net falls like m^-1/2 too).
_SLOPES = [
    ("rel err H0", lambda g: g["gram_rel_err_inf"]),
    ("drift/lmax", lambda g: g["max_gram_drift"] / g["lambda_max_0"]),
    ("lambda_min(H0)", lambda g: g["lambda_min_0"]),
]


def loglog_slope(m: pd.Series, y: pd.Series) -> float | None:
    """Least-squares slope of log(median over seeds of y) against log m; None with fewer than
    two widths holding a positive median."""
    med = pd.DataFrame({"m": m, "y": y}).dropna().groupby("m")["y"].median()
    med = med[med > 0]
    if len(med) < 2:
        return None
    return float(np.polyfit(np.log(med.index.to_numpy(float)), np.log(med.to_numpy()), 1)[0])


def _rounded(slope: float | None) -> float | None:
    return None if slope is None else round(slope, 3)


def slopes_table(df: pd.DataFrame) -> str:
    """Per dataset and series, the width exponent of each quantity of _SLOPES."""
    rows = []
    for (ds, series), g in df.groupby(["dataset", "series"], sort=True):
        if g["m"].nunique() < 2:
            continue
        rows.append([ds, series, f"{int(g['m'].min())}-{int(g['m'].max())}",
                     *(_rounded(loglog_slope(g["m"], f(g))) for _, f in _SLOPES)])
    if not rows:
        return "No series varies the width."
    return markdown_table(["dataset", "series", "widths", *(h for h, _ in _SLOPES)], rows)


def write_report(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plots and report.md for the sweep folder; returns the report's path."""
    sweep_dir = Path(sweep_dir)
    results = sweep_dir / RESULTS
    if not results.is_file():
        raise UserError(f"{sweep_dir}: no {RESULTS} here; run `fntk sweep` into it first")
    out = Path(out) if out is not None else sweep_dir / "report"
    raw = pq.read_table(results).to_pandas()
    df = with_labels(raw)
    if df.empty:
        raise UserError(f"{results}: no finished trial to report on")
    plots = plot_all(df, out)
    failed = raw[raw["error"].notna()]
    parts = [
        f"# Sweep report: {sweep_dir.name}", "",
        f"{len(raw)} trials in {RESULTS}: {len(df)} finished, {len(failed)} failed. "
        "Values are means over seeds (medians for steps, parameters and seconds per step); "
        "`steps to 1e-6` counts how many seeds reached it when not all did; `drift/lmax` is "
        "max_t ||H(t) - H(0)||_2 / lambda_max(H(0)); `rel err H0` is "
        "||H(0) - H_inf||_2 / ||H_inf||_2 (dense and sketch_in only).", "",
        "## Results", "", config_table(df), "",
        "## Width exponents", "",
        "Slope of log(median over seeds) against log m, least squares over the widths.", "",
        slopes_table(df), "",
        "## Cheapest width reaching 1e-6 of the initial loss, against dense", "",
        savings_table(df), "",
        "## Plots", "",
        *[f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in plots], "",
    ]
    if len(failed):
        parts += ["## Failed trials", "",
                  markdown_table(["trial", "error"],
                                 [[r.trial_id, r.error] for r in failed.itertuples()]), ""]
    path = out / "report.md"
    write_text(path, "\n".join(parts))
    return path
