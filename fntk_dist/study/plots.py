"""The report's plots: one panel per dataset, one line per (mode, sketch, rank), seeds pooled.

Each line is the median over seeds at each width, with the seeds' range as error bars. A panel
is drawn only for a dataset with something to show (a figure with nothing says so in words);
plots of ratios to lambda_min(H(0)) leave singular trials out and say how many in the panel.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402

from ..atomic import atomic_path  # noqa: E402

_MARKERS = "os^vD<>ph*"


def dataset_label(r: pd.Series) -> str:
    d = "" if pd.isna(r["d"]) else f" d={int(r['d'])}"
    return f"{r['source']} n={int(r['n'])}{d}"


def series_label(r: pd.Series, sketches: bool, depth: bool = True, rank: bool = True) -> str:
    """'sketch_in/srht k=32 +a L=3' (the sketch named only when the sweep varies it; the
    depth, of the mode's last layer, only when above 1; the rank unless rank is False)."""
    s = r["mode"] + (f"/{r['sketch']}" if sketches and isinstance(r["sketch"], str) else "")
    s += "" if pd.isna(r["k"]) or not rank else f" k={int(r['k'])}"
    s += " +a" if r["train_output"] else ""
    return s + (f" L={int(r['depth'])}" if depth and r["depth"] > 1 else "")


def with_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Finished trials with their dataset and series labels added."""
    df = df[df["error"].isna()].copy()
    if "depth" not in df:  # results.parquet written before depth was a column
        df["depth"] = 1
    sketches = df["sketch"].dropna().nunique() > 1
    df["dataset"] = df.apply(dataset_label, axis=1)
    df["series"] = df.apply(lambda r: series_label(r, sketches), axis=1)
    return df


def _styles(df: pd.DataFrame) -> dict[str, tuple]:
    colours = plt.get_cmap("tab10").colors
    return {s: (colours[i % 10], _MARKERS[i % len(_MARKERS)])
            for i, s in enumerate(sorted(df["series"].unique()))}


DPI = 150


def _panels(df: pd.DataFrame, rows: int = 1):
    datasets = sorted(df["dataset"].unique())
    fig, axes = plt.subplots(rows, len(datasets), figsize=(4.2 * len(datasets), 3.4 * rows),
                             dpi=DPI, squeeze=False)
    return fig, axes, datasets


def _nothing(path: Path, text: str) -> None:
    """A figure that says in words why it has no panel."""
    fig, ax = plt.subplots(figsize=(4.2, 1.2), dpi=DPI)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    """One legend for the figure: every panel's entries, each label once."""
    entries: dict[str, object] = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(lab, h)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="center left",
                   bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", dpi=DPI)
    plt.close(fig)


def _lines(ax, df: pd.DataFrame, y: Callable[[pd.DataFrame], pd.Series], styles: dict,
           x: str = "m", **kw) -> None:
    """Median over seeds with the seeds' range, one line per series."""
    for s, g in df.groupby("series"):
        vals = pd.DataFrame({"x": g[x], "y": y(g)}).dropna()
        vals = vals[np.isfinite(vals["y"])]
        if vals.empty:
            continue
        st = vals.groupby("x")["y"].agg(["median", "min", "max"]).sort_index()
        colour, marker = styles[s]
        ax.errorbar(st.index, st["median"], yerr=[st["median"] - st["min"],
                    st["max"] - st["median"]], color=colour, marker=marker, ms=4, lw=1.2,
                    capsize=2, label=s, **kw)


def _finish(ax, title: str, ylabel: str, logy: bool = False, xlabel: str = "width m",
            logx: bool = True) -> None:
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # short ranges would label every minor tick
    if logy:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.tick_params(labelsize=7)


def _per_dataset(df: pd.DataFrame, path: Path, ylabel: str, y, logy: bool = False,
                 extra=None, skip_singular: bool = False, hline: float | None = None) -> None:
    """One panel per dataset holding a finite y; skip_singular: leave singular trials out
    (a ratio to a round-off lambda_min) and count them in the panel's corner."""
    styles = _styles(df)
    left_out = df["singular"] if skip_singular else pd.Series(False, index=df.index)
    vals = y(df[~left_out]).astype(float)
    shown = df[~left_out][np.isfinite(vals) & (vals > 0 if logy else True)]
    if shown.empty:
        _nothing(path, f"no trial has a value of: {ylabel}")
        return
    fig, axes, datasets = _panels(shown)
    for ax, ds in zip(axes[0], datasets):
        _lines(ax, shown[shown["dataset"] == ds], y, styles)
        if extra:
            extra(ax, shown[shown["dataset"] == ds], styles)
        if hline is not None:
            ax.axhline(hline, color="k", lw=0.8, ls="--")
        dropped = int((left_out & (df["dataset"] == ds)).sum())
        if dropped:
            ax.text(0.02, 0.02, f"{dropped} singular trial(s) not shown", fontsize=7,
                    transform=ax.transAxes, color="firebrick")
        _finish(ax, ds, ylabel, logy)
    _save(fig, path)


def _lambda_inf(ax, sub: pd.DataFrame, styles: dict) -> None:
    """lambda_inf dotted in each series' colour (dense: one value; sketch_in: per sketch)."""
    for s, g in sub.dropna(subset=["lambda_inf"]).groupby("series"):
        st = g.groupby("m")["lambda_inf"].median().sort_index()
        ax.plot(st.index, st.values, ":", color=styles[s][0], lw=1.5)
    ax.plot([], [], "k:", label="lambda_inf (dotted)")


def _sqrt_guide(ax, sub: pd.DataFrame, styles: dict) -> None:
    g = sub.dropna(subset=["gram_rel_err_inf"])
    if g.empty:
        return
    m = np.array(sorted(g["m"].unique()), dtype=float)
    c = float(g[g["m"] == m[0]]["gram_rel_err_inf"].median()) * np.sqrt(m[0])
    ax.plot(m, c / np.sqrt(m), "k--", lw=1, label="~ 1/sqrt(m)")


def plot_all(df: pd.DataFrame, out: Path) -> list[Path]:
    """Write every plot for the finished trials in df under out; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.png" for name in (
        "lambda0_vs_m", "gram_err_vs_m", "drift_vs_m", "steps_vs_m", "rate_vs_m",
        "loss_gap_vs_m", "steps_ratio_vs_m", "cost_vs_m", "cost_vs_lambda", "test_error_vs_m")}
    if "singular" not in df:
        df = df.assign(singular=False)
    _per_dataset(df, paths["lambda0_vs_m"], "lambda_min(H(0))", lambda g: g["lambda_min_0"],
                 logy=True, extra=_lambda_inf, skip_singular=True)
    _per_dataset(df, paths["gram_err_vs_m"], "||H(0) - H_inf|| / ||H_inf||",
                 lambda g: g["gram_rel_err_inf"], logy=True, extra=_sqrt_guide)
    _per_dataset(df, paths["drift_vs_m"], "max_t ||H(t) - H(0)|| / lambda_min(H(0))",
                 lambda g: g["max_drift_over_lmin"], logy=True, skip_singular=True, hline=0.5)
    _per_dataset(df, paths["steps_vs_m"], "steps to target (missing: not reached)",
                 lambda g: g["steps_to_target"].astype(float), logy=True)
    _per_dataset(df, paths["rate_vs_m"], "log(tail rate) / log(L_lin's tail rate)",
                 lambda g: np.log(g["tail_rate"]) / np.log(g["predicted_tail_rate"]),
                 skip_singular=True, hline=1.0)
    _per_dataset(df, paths["loss_gap_vs_m"], "max_t |log L(t) - log L_lin(t)|",
                 lambda g: g["max_log_loss_gap"], logy=True)
    _per_dataset(df, paths["steps_ratio_vs_m"], "steps to target / L_lin's steps",
                 lambda g: g["steps_to_target"].astype(float)
                 / g["predicted_steps_to_target"].astype(float), hline=1.0)
    _cost(df, paths["cost_vs_m"])
    _cost_vs_lambda(df, paths["cost_vs_lambda"])
    _test_error(df, paths["test_error_vs_m"])
    if df["depth"].nunique() > 1:
        paths["lambda0_vs_depth"] = out / "lambda0_vs_depth.png"
        _vs_depth(df, paths["lambda0_vs_depth"])
    if df["k"].dropna().nunique() > 1:
        paths["drift_vs_k"] = out / "drift_vs_k.png"
        _drift_vs_k(df, paths["drift_vs_k"])
    return list(paths.values())


def _vs_depth(df: pd.DataFrame, path: Path) -> None:
    """lambda_min(H(0)) and the distance to the analytic kernel against the number of hidden
    layers, one line per mode and width."""
    sketches = df["sketch"].dropna().nunique() > 1
    df = df.assign(series=df.apply(lambda r: f"{series_label(r, sketches, depth=False)} "
                                             f"m={int(r['m'])}", axis=1))
    fig, axes, datasets = _panels(df, rows=2)
    styles = _styles(df)
    for j, ds in enumerate(datasets):
        sub = df[df["dataset"] == ds]
        _lines(axes[0][j], sub, lambda g: g["lambda_min_0"], styles, x="depth")
        _finish(axes[0][j], ds, "lambda_min(H(0))", logy=True, xlabel="hidden layers L",
                logx=False)
        _lines(axes[1][j], sub, lambda g: g["gram_rel_err_inf"], styles, x="depth")
        _finish(axes[1][j], ds, "||H(0) - H_inf|| / ||H_inf||", logy=True,
                xlabel="hidden layers L", logx=False)
        for ax in (axes[0][j], axes[1][j]):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _save(fig, path)


def _drift_vs_k(df: pd.DataFrame, path: Path) -> None:
    """Gram drift against the rank: a column per dataset and family (mode and sketch), a line
    per width; drift / lambda_min(H(0)) on top (singular trials left out), ||H(t) - H(0)||
    below. Where the drift is set by k rather than m (the shared V of sketch_out and lowrank)
    the widths' lines lie on each other."""
    sketches = df["sketch"].dropna().nunique() > 1
    ranked = df[df["k"].notna()]
    widths = sorted(ranked["m"].unique())
    # categorical, so that lines and legend go by width, not by the label's text
    series = pd.Categorical(ranked["m"].map(lambda m: f"m={int(m)}"),
                            categories=[f"m={int(m)}" for m in widths], ordered=True)
    ranked = ranked.assign(family=ranked.apply(lambda r: series_label(r, sketches, rank=False),
                                               axis=1), series=series)
    cells = [c for c, g in ranked.groupby(["dataset", "family"]) if g["k"].nunique() > 1]
    if not cells:  # ranks differ only between families: no line to draw
        _nothing(path, "no family (mode and sketch) has more than one rank k")
        return
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(widths)))
    styles = {f"m={int(m)}": (colours[i], _MARKERS[i % len(_MARKERS)])
              for i, m in enumerate(widths)}
    fig, axes = plt.subplots(2, len(cells), figsize=(4.2 * len(cells), 6.8), dpi=DPI,
                             squeeze=False)
    for j, (ds, fam) in enumerate(cells):
        sub = ranked[(ranked["dataset"] == ds) & (ranked["family"] == fam)]
        _lines(axes[0][j], sub[~sub["singular"]], lambda g: g["max_drift_over_lmin"], styles,
               x="k")
        axes[0][j].axhline(0.5, color="k", lw=0.8, ls="--")
        _finish(axes[0][j], f"{ds}, {fam}", "max_t ||H(t) - H(0)|| / lambda_min(H(0))",
                logy=True, xlabel="rank k")
        _lines(axes[1][j], sub, lambda g: g["max_gram_drift"], styles, x="k")
        _finish(axes[1][j], f"{ds}, {fam}", "max_t ||H(t) - H(0)||_2", logy=True,
                xlabel="rank k")
    _save(fig, path)


def _cost(df: pd.DataFrame, path: Path) -> None:
    """FLOPs per step and trainable parameters (wall-clock ratios are for benchmarks run side
    by side, not for a sweep's trials under whatever load they met)."""
    fig, axes, datasets = _panels(df, rows=2)
    styles = _styles(df)
    for j, ds in enumerate(datasets):
        sub = df[df["dataset"] == ds]
        _lines(axes[0][j], sub, lambda g: g["flops_per_step"].astype(float), styles)
        _finish(axes[0][j], ds, "FLOPs per GD step", logy=True)
        _lines(axes[1][j], sub, lambda g: g["trainable_params"].astype(float), styles)
        _finish(axes[1][j], ds, "trainable parameters", logy=True)
    _save(fig, path)


def _cost_vs_lambda(df: pd.DataFrame, path: Path) -> None:
    """Dense and factorized side by side: FLOPs per step for a given lambda_min(H(0)) (singular
    trials left out: their lambda_min is round-off)."""
    lam, flops = df["lambda_min_0"].astype(float), df["flops_per_step"].astype(float)
    shown = df[~df["singular"] & (lam > 0) & (flops > 0)]
    if shown.empty:
        _nothing(path, "no trial has both lambda_min(H(0)) > 0 and its FLOPs per step")
        return
    fig, axes, datasets = _panels(shown)
    styles = _styles(df)
    for ax, ds in zip(axes[0], datasets):
        sub = shown[shown["dataset"] == ds]
        for s, g in sub.groupby("series"):
            colour, marker = styles[s]
            ax.scatter(g["lambda_min_0"], g["flops_per_step"], color=colour, marker=marker,
                       s=18, label=s)
        _finish(ax, ds, "FLOPs per GD step", logy=True, xlabel="lambda_min(H(0))")
    _save(fig, path)


def _test_error(df: pd.DataFrame, path: Path) -> None:
    """Trained net (solid), empirical-NTK regression (dashed), analytic NTK regression (dotted)."""
    tested = df[df["n_test"].fillna(0) > 0]
    if tested.empty:  # no held-out split anywhere: say so rather than draw empty axes
        _nothing(path, "no trial has a held-out split")
        return
    fig, axes, datasets = _panels(tested)
    styles = _styles(tested)
    for ax, ds in zip(axes[0], datasets):
        sub = tested[tested["dataset"] == ds]
        _lines(ax, sub, lambda g: g["final_test_error"], styles)
        for s, g in sub.groupby("series"):
            colour = styles[s][0]
            for col, ls in (("ntk_emp_test_error", "--"), ("ntk_inf_test_error", ":")):
                st = g.dropna(subset=[col]).groupby("m")[col].median().sort_index()
                ax.plot(st.index, st.values, ls, color=colour, lw=1)
        ax.plot([], [], "k--", label="NTK regression, H(0)")
        ax.plot([], [], "k:", label="NTK regression, H_inf")
        _finish(ax, ds, "test sign error (solid: trained net)")
    _save(fig, path)
