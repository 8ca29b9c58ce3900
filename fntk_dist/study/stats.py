"""The report's statistics: seed spread, slopes with a confidence interval from the seeds, and
which trials are singular. Every number the study quotes comes from these, never by hand.

A slope is fitted per replicate (the grid's seed: the same draw at every x when seeds are
nested, an arbitrary pairing of independent draws otherwise), and the replicates' slopes give
the mean and a 95% Student-t interval; with one replicate there is no interval.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

# lambda_min(H(0)) at or below this times lambda_max(H(0)) is float64 round-off: the Gram is
# singular, and every ratio to lambda_min (drift / lambda_min, log rate ratios) is noise.
SINGULAR = 1e-10


def singular(df: pd.DataFrame) -> pd.Series:
    """Trials whose H(0) is singular to float64 (False where it was not formed)."""
    lmin, lmax = df["lambda_min_0"].astype(float), df["lambda_max_0"].astype(float)
    return (lmin <= SINGULAR * lmax) & lmin.notna() & lmax.notna()


def mean_ci(values: pd.Series | list[float]) -> tuple[float | None, float | None, int]:
    """(mean, half-width of its 95% t interval, count) of the finite values; the half-width is
    None with fewer than two."""
    v = np.asarray(pd.Series(values, dtype=float).dropna(), float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return None, None, 0
    if len(v) == 1:
        return float(v[0]), None, 1
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(half), len(v)


def spread(values: pd.Series) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation over seeds) of the finite values."""
    v = pd.Series(values, dtype=float).dropna()
    v = v[np.isfinite(v)]
    if v.empty:
        return None, None
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None


def replicate_slopes(x: pd.Series, y: pd.Series, replicate: pd.Series,
                     floor: float = 0.0) -> list[float]:
    """Per replicate, the least-squares slope of log y against log x over its finite points
    above floor (a value at round-off is exact, not a point of a power law); replicates with
    fewer than two distinct x give none."""
    df = pd.DataFrame({"x": x.astype(float), "y": y.astype(float), "r": replicate})
    df = df[np.isfinite(df["y"]) & (df["y"] > floor) & (df["x"] > 0)]
    out = []
    for _, g in df.groupby("r"):
        if g["x"].nunique() >= 2:
            out.append(float(np.polyfit(np.log(g["x"]), np.log(g["y"]), 1)[0]))
    return out


def slope_ci(x: pd.Series, y: pd.Series, replicate: pd.Series,
             floor: float = 0.0) -> tuple[float | None, float | None, int]:
    """(mean slope, 95% half-width, replicates) of log y against log x (y above floor)."""
    return mean_ci(replicate_slopes(x, y, replicate, floor))


def pm(mean: float | None, half: float | None, digits: int = 3) -> str:
    """'0.512 ± 0.031' (or the mean alone, or '-'), for a table cell: significant digits."""
    if mean is None:
        return "-"
    text = f"{mean:.{digits}g}"
    return text if half is None else f"{text} ± {half:.2g}"


def pm_slope(mean: float | None, half: float | None) -> str:
    """'-0.497 ± 0.012': an exponent to three decimals (round-off reads as 0.000)."""
    if mean is None:
        return "-"
    return f"{mean:.3f}" if half is None else f"{mean:.3f} ± {half:.3f}"
