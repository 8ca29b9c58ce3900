"""The report of a kernel sweep (study.kernel): what sketch_in's fixed V costs the
infinite-width kernel, per dataset, sketch kind and rank, seeds pooled with their spread and a
95% interval, plus the exponents in k and the plots that show them."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .plots import DPI, _finish, _nothing, _save, _styles, series_label
from .stats import mean_ci, pm, pm_slope, slope_ci, spread
from .tables import markdown_table

_PER_RANK = [  # (header, column, how the seeds become one cell)
    ("lambda_inf / dense ± 95%", "lambda_inf_ratio", "ci"),
    ("sd", "lambda_inf_ratio", "sd"),
    ("min-max", "lambda_inf_ratio", "range"),
    ("lambda_inf", "lambda_inf", "mean"),
    ("lambda_max_inf", "lambda_max_inf", "mean"),
    ("cond", "condition_inf", "median"),
    ("||ZZ'-XX'||/||XX'|| ± 95%", "sketch_rel_err", "ci"),
    ("max pair distortion ± 95%", "max_pair_distortion", "ci"),
]


def _cell(g: pd.DataFrame, col: str, how: str) -> object:
    v = g[col].astype(float).dropna()
    if v.empty:
        return None
    if how == "ci":
        mu, half, _ = mean_ci(v)
        return pm(mu, half)
    if how == "sd":
        return spread(v)[1]
    if how == "range":
        return f"{v.min():.3g}-{v.max():.3g}"
    return v.median() if how == "median" else v.mean()


def _prepared(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(family=df.apply(lambda r: series_label(r, True, rank=False), axis=1))
    return df.assign(k_per_d=df["k"] / df["d"], k_per_n=df["k"] / df["n"],
                     ratio_loss=1.0 - df["lambda_inf_ratio"])


def rank_table(df: pd.DataFrame) -> str:
    rows = []
    for (ds, fam, k), g in df.dropna(subset=["k"]).groupby(["dataset", "family", "k"]):
        rows.append([ds, fam, int(k), g["k_per_d"].iloc[0], g["k_per_n"].iloc[0], len(g),
                     *(_cell(g, col, how) for _, col, how in _PER_RANK)])
    if not rows:
        return "No factorized trial."
    return markdown_table(["dataset", "sketch", "k", "k/d", "k/n", "seeds",
                           *(h for h, _, _ in _PER_RANK)], rows)


def dense_table(df: pd.DataFrame) -> str:
    rows = [[ds, len(g), *(_cell(g, "lambda_inf_dense", how) for how in ("mean", "sd"))]
            for ds, g in df.groupby("dataset")]
    return markdown_table(["dataset", "trials", "lambda_inf(dense)", "sd"], rows)


EXACT = 1e-10  # below it a sketch is exact to round-off (srht with k = d a power of two)
_K_SLOPES = [("1 - lambda_inf/dense", "ratio_loss"), ("||ZZ'-XX'||/||XX'||", "sketch_rel_err"),
             ("max pair distortion", "max_pair_distortion")]


def k_slopes_table(df: pd.DataFrame) -> str:
    """Exponents in k per dataset and sketch kind, fitted per replicate (mean ± 95%)."""
    rows = []
    for (ds, fam), g in df.dropna(subset=["k"]).groupby(["dataset", "family"]):
        if g["k"].nunique() < 2:
            continue
        fits = [slope_ci(g["k"], g[col], g["replicate"], EXACT) for _, col in _K_SLOPES]
        rows.append([ds, fam, f"{int(g['k'].min())}-{int(g['k'].max())}",
                     max(n for _, _, n in fits), *(pm_slope(mu, half) for mu, half, _ in fits)])
    if not rows:
        return "No sketch kind varies k."
    return markdown_table(["dataset", "sketch", "k range", "replicates",
                           *(h for h, _ in _K_SLOPES)], rows)


def _mean_lines(ax, df: pd.DataFrame, col: str, styles: dict) -> None:
    """Mean over seeds against k/d with the 95% interval as error bars, a line per kind."""
    for fam, g in df.groupby("family"):
        st = [(x, *mean_ci(v[col])) for x, v in g.groupby("k_per_d")]
        st = [(x, mu, half or 0.0) for x, mu, half, _ in st if mu is not None]
        if not st:
            continue
        x, mu, half = (np.array(c, float) for c in zip(*st))
        colour, marker = styles[fam]
        ax.errorbar(x, mu, yerr=half, color=colour, marker=marker, ms=4, lw=1.2, capsize=2,
                    label=fam)


def plot_kernel(df: pd.DataFrame, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    sk = df.dropna(subset=["k", "lambda_inf_ratio"])
    paths = [out / "kernel_lambda_vs_k_per_d.png", out / "kernel_sketch_err_vs_k_per_d.png"]
    if sk.empty:
        for p in paths:
            _nothing(p, "no sketch_in trial with an analytic kernel")
        return paths
    styles = _styles(sk.assign(series=sk["family"]))
    datasets = sorted(sk["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 3.6), dpi=DPI,
                             squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        _mean_lines(ax, sk[sk["dataset"] == ds], "lambda_inf_ratio", styles)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        _finish(ax, ds, "lambda_inf(Z) / lambda_inf(X)", xlabel="k / d")
    _save(fig, paths[0])
    fig, axes = plt.subplots(2, len(datasets), figsize=(4.6 * len(datasets), 7.0), dpi=DPI,
                             squeeze=False)
    for j, ds in enumerate(datasets):
        sub = sk[sk["dataset"] == ds]
        _mean_lines(axes[0][j], sub, "sketch_rel_err", styles)
        _finish(axes[0][j], ds, "||ZZ' - XX'|| / ||XX'||", logy=True, xlabel="k / d")
        _mean_lines(axes[1][j], sub, "max_pair_distortion", styles)
        _finish(axes[1][j], ds, "max pairwise distortion", logy=True, xlabel="k / d")
    _save(fig, paths[1])
    return paths


def kernel_sections(df: pd.DataFrame, out: Path) -> list[str]:
    """The kernel report's sections (after its title and seeds line)."""
    df = _prepared(df)
    plots = plot_kernel(df, out)
    return [
        "Analytic-only trials: no training. Z = X V^T is sketch_in's sketched input; "
        "`lambda_inf / dense` is lambda_min of the analytic NTK on Z over that on X (same "
        "depth and readout); `± 95%` is the Student-t interval of the mean over seeds, `sd` "
        "the seeds' standard deviation; distortion is max_{i<j} |(||z_i - z_j||^2 / "
        "||x_i - x_j||^2) - 1|.", "",
        "## lambda_inf against the rank", "", rank_table(df), "",
        "## Dense reference", "", dense_table(df), "",
        "## Exponents in k", "",
        "Slope of log(quantity) against log k, fitted per replicate over the values above "
        "1e-10 (below: exact to round-off); mean ± 95% over them.", "",
        k_slopes_table(df), "",
        "## Plots", "",
        *[f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in plots], "",
    ]
