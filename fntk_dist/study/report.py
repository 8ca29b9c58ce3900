"""`fntk report DIR`: the plots and a Markdown report (tables) of a sweep's results.parquet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..atomic import write_text
from ..errors import UserError
from .heldout_report import heldout_section
from .kernel_report import kernel_sections
from .plots import plot_all, series_label, with_labels
from .results import read_results
from .stats import pm, pm_slope, singular, slope_ci, spread
from .sweep import RESULTS
from .tables import fmt, markdown_table


def _mean(col: str):
    return lambda g: g[col].mean()


def _median(col: str):
    return lambda g: g[col].median()


# Columns of the per-configuration table: (header, how a group of seeds becomes one cell).
# Ratios to lambda_min(H(0)) leave out singular trials (stats.singular), counted apart.
_TABLE = [
    ("seeds", lambda g: len(g)),
    ("singular", lambda g: int(g["singular"].sum())),
    ("lambda_inf", _mean("lambda_inf")),
    ("lambda_min(H0) ± sd", lambda g: pm(*spread(g["lambda_min_0"]))),
    ("lambda_max(H0)", _mean("lambda_max_0")),
    ("cond(H0)", lambda g: g.loc[~g["singular"], "cond_0"].median()),
    ("rel err H0", _mean("gram_rel_err_inf")),
    ("drift/lmin ± sd", lambda g: pm(*spread(g["drift_lmin"]))),
    ("step drift>lmin/2", lambda g: _steps(g.loc[~g["singular"], "drift_half_lmin_step"])),
    ("rel w move", _mean("max_rel_weight_change")),
    ("flips", _mean("max_flip_fraction")),
    ("steps to target", lambda g: _steps(g["steps_to_target"])),
    ("predicted steps", lambda g: _steps(g["predicted_steps_to_target"])),
    ("max log L/L_lin", _mean("max_log_loss_gap")),
    ("tail rate ± sd", lambda g: pm(*spread(g["tail_rate"]))),
    ("predicted tail", _mean("predicted_tail_rate")),
    ("params", _median("trainable_params")),
    ("FLOPs/step", _median("flops_per_step")),
    ("test err net", _mean("final_test_error")),
    ("test err NTK H0", _mean("ntk_emp_test_error")),
    ("test err NTK inf", _mean("ntk_inf_test_error")),
]


def _steps(s: pd.Series) -> str:
    """Median steps over the seeds that reached the target, and how many did."""
    hit = s.dropna()
    if hit.empty:
        return f"- (0/{len(s)})"
    med = int(hit.median())
    return str(med) if len(hit) == len(s) else f"{med} ({len(hit)}/{len(s)})"


def config_table(df: pd.DataFrame) -> str:
    """One row per (dataset, series, m): seeds pooled; empty columns left out (df as
    _prepared gives it)."""
    keys = ["dataset", "series", "m"]
    rows = [[*key, *(f(g) for _, f in _TABLE)] for key, g in df.groupby(keys, sort=True)]
    header = [*keys, *(h for h, _ in _TABLE)]
    keep = [i for i, _ in enumerate(header) if any(fmt(r[i]) != "-" for r in rows)]
    return markdown_table([header[i] for i in keep], [[r[i] for i in keep] for r in rows])


def savings_table(df: pd.DataFrame) -> str:
    """Per dataset and series, the width whose every seed reached the target with the fewest
    FLOPs, against the cheapest dense width that did: parameters and FLOPs to the target
    (wall-clock ratios belong to side-by-side benchmarks, not to a sweep under load)."""
    df = df.assign(flops_to_target=df["steps_to_target"] * df["flops_per_step"])
    agg = (df.groupby(["dataset", "series", "mode", "m"])
           .agg(hit=("steps_to_target", lambda s: s.notna().all()),
                params=("trainable_params", "median"), flops=("flops_to_target", "median"),
                steps=("steps_to_target", "median")).reset_index())
    best = agg[agg["hit"]].sort_values("flops").groupby(["dataset", "series"]).head(1)
    rows = []
    for _, r in best.sort_values(["dataset", "series"]).iterrows():
        dense = best[(best["dataset"] == r["dataset"]) & (best["mode"] == "dense")]
        d = dense.iloc[0] if len(dense) else None
        rows.append([r["dataset"], r["series"], int(r["m"]), r["params"], r["steps"],
                     r["flops"], None if d is None else d["params"] / r["params"],
                     None if d is None else d["flops"] / r["flops"]])
    if not rows:
        return "No configuration reached the target on every seed."
    return markdown_table(["dataset", "series", "cheapest m", "params", "steps", "FLOPs",
                           "dense params / these", "dense FLOPs / these"], rows)


# Log-log slopes (theory: -1/2 in m for the distance to the limit and a lazy net's drift;
# the shared factor of sketch_out and lowrank makes their drift a matter of k).
_SLOPES = [
    ("rel err H0", lambda g: g["gram_rel_err_inf"]),
    ("drift/lmin", lambda g: g["drift_lmin"]),
    ("drift/lmax", lambda g: g["max_gram_drift"] / g["lambda_max_0"]),
    ("rel w move", lambda g: g["max_rel_weight_change"]),
    ("lambda_min(H0)", lambda g: g["lambda_min_0"]),
    ("drift", lambda g: g["max_gram_drift"]),  # ||H(t) - H(0)||_2 itself, no scale
    # the loss's largest log distance to L_lin: a lazy net's falls with m
    ("max log L/L_lin", lambda g: g["max_log_loss_gap"]),
]


def slopes_table(df: pd.DataFrame, x: str = "m") -> str:
    """Per dataset and series (x = "m") or per dataset, family and width (x = "k"): the
    exponent of each quantity of _SLOPES in x, mean ± 95% interval over the replicates' own
    fits (the replicates counted in the header's last column)."""
    keys = ["dataset", "series"] if x == "m" else ["dataset", "family", "m"]
    rows = []
    for key, g in df.dropna(subset=[x]).groupby(keys, sort=True):
        if g[x].nunique() < 2:
            continue
        fits = [slope_ci(g[x], f(g), g["replicate"]) for _, f in _SLOPES]
        reps = max(n for _, _, n in fits)
        span = f"{int(g[x].min())}-{int(g[x].max())}"
        rows.append([*key, span, reps, *(pm_slope(mu, half) for mu, half, _ in fits)])
    if not rows:
        return f"No series varies {x}."
    return markdown_table([*keys, f"{x} range", "replicates", *(h for h, _ in _SLOPES)], rows)


def _prepared(df: pd.DataFrame) -> pd.DataFrame:
    """Columns the tables share: singular flags, and the ratios to lambda_min(H0) blanked on
    singular trials (round-off there, not a measurement)."""
    df = df.assign(singular=singular(df))
    df["drift_lmin"] = df["max_drift_over_lmin"].where(~df["singular"])
    df["cond_0"] = df["lambda_max_0"] / df["lambda_min_0"]
    df["family"] = df.apply(lambda r: series_label(r, df["sketch"].dropna().nunique() > 1,
                                                   rank=False), axis=1)
    return df


def seeds_line(df: pd.DataFrame) -> str:
    """The report's statement of how the seeds were drawn."""
    modes = sorted(df["seed_mode"].dropna().unique()) or ["nested"]
    if modes == ["independent"]:
        return ("Seeds: independent (seed_mode: independent): every width and rank draws its "
                "own net; `replicate` is the grid's seed, and a slope's replicates pair "
                "independent draws.")
    text = ("Seeds: nested (seed_mode: nested): a seed's nets share their sketch and first "
            "rows across widths, so a width trend rests on paired draws")
    return text + (f" (this table mixes modes: {', '.join(modes)})." if len(modes) > 1 else ".")


def singular_table(df: pd.DataFrame) -> str:
    sing = df[df["singular"]]
    if sing.empty:
        return "None: every H(0) has lambda_min above 1e-10 lambda_max."
    return markdown_table(["dataset", "series", "m", "seed", "lambda_min(H0)", "lambda_max(H0)"],
                          [[r.dataset, r.series, r.m, r.seed, r.lambda_min_0, r.lambda_max_0]
                           for r in sing.itertuples()])


def write_report(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plots and report.md for the sweep folder (a kernel sweep's own, study.kernel_report);
    returns the report's path."""
    sweep_dir = Path(sweep_dir)
    results = sweep_dir / RESULTS
    if not results.is_file():
        raise UserError(f"{sweep_dir}: no {RESULTS} here; run `fntk sweep` into it first")
    out = Path(out) if out is not None else sweep_dir / "report"
    raw = read_results(results)
    df = with_labels(raw)
    if df.empty:
        raise UserError(f"{results}: no finished trial to report on")
    failed = raw[raw["error"].notna()]
    head = [f"# Sweep report: {sweep_dir.name}", "",
            f"{len(raw)} trials in {RESULTS}: {len(df)} finished, {len(failed)} failed. "
            + seeds_line(df), ""]
    if (df["kind"] == "kernel").all():
        parts = head + kernel_sections(df, out)
    else:
        parts = head + _train_sections(_prepared(df), out)
    if len(failed):
        parts += ["## Failed trials", "",
                  markdown_table(["trial", "error"],
                                 [[r.trial_id, r.error] for r in failed.itertuples()]), ""]
    path = out / "report.md"
    write_text(path, "\n".join(parts))
    return path


def _train_sections(df: pd.DataFrame, out: Path) -> list[str]:
    plots = plot_all(df, out)
    return [
        "Values are means over seeds (`± sd`: the seeds' standard deviation; medians for "
        "steps, condition numbers, parameters and FLOPs). `drift/lmin` is "
        "max_t ||H(t) - H(0)||_2 / lambda_min(H(0)) (Du et al. need it below 1/2), `step "
        "drift>lmin/2` the first logged step past 1/2 (`-`: never); `rel w move` is "
        "max_t max_r ||w_r(t) - w_r(0)|| / ||w_r(0)||, `flips` the largest fraction of ReLU "
        "signs flipped; `predicted steps` are those of L_lin, the GD curve H(0) predicts, and "
        "`max log L/L_lin` its largest log gap to the loss above the target; `tail rate` is "
        "the per-step factor fitted over the last decade of loss, `predicted tail` L_lin's over "
        "the same steps. Step counts note how many seeds reached the target when not all did. "
        "`rel err H0` is ||H(0) - H_inf||_2 / ||H_inf||_2 (dense and sketch_in only). Singular "
        "trials (lambda_min(H0) <= 1e-10 lambda_max) are left out of ratios to lambda_min.", "",
        "## Results", "", config_table(df), "",
        "## Width exponents", "",
        "Slope of log(quantity) against log m, fitted per replicate; mean ± 95% t-interval "
        "over the replicates (no interval with one).", "",
        slopes_table(df, "m"), "",
        "## Rank exponents", "",
        "The same against log k, per family (mode and sketch) and width.", "",
        slopes_table(df, "k"), "",
        *heldout_section(df),
        "## Singular trials", "", singular_table(df), "",
        "## Cheapest width reaching the target, against dense", "",
        savings_table(df), "",
        "## Plots", "",
        *[f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in plots], "",
    ]
