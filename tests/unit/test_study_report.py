"""The report's width exponents: computed from the results table, not by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fntk_dist.study.report import loglog_slope, slopes_table


def test_loglog_slope_fits_the_median_over_seeds():
    m = pd.Series([64, 64, 64, 256, 256, 256, 1024, 1024, 1024])
    # Per width, seeds scattered around 3 m^-1/2 with the median exactly on it.
    y = pd.Series([3 * v ** -0.5 * f for v, f in zip(m, [0.5, 1.0, 4.0] * 3)])
    assert loglog_slope(m, y) == pytest.approx(-0.5, abs=1e-12)
    assert loglog_slope(m, 7 * m.astype(float) ** 1.25) == pytest.approx(1.25, abs=1e-12)


def test_loglog_slope_needs_two_widths_with_positive_values():
    assert loglog_slope(pd.Series([64, 64]), pd.Series([1.0, 2.0])) is None
    assert loglog_slope(pd.Series([64, 256]), pd.Series([1.0, np.nan])) is None
    assert loglog_slope(pd.Series([64, 256]), pd.Series([1.0, 0.0])) is None


def test_slopes_table_rows_per_dataset_and_series():
    df = pd.DataFrame({
        "dataset": ["a"] * 4, "series": ["dense"] * 2 + ["sketch_in k=8"] * 2,
        "m": [100, 10000, 100, 100],
        "gram_rel_err_inf": [0.1, 0.01, 0.2, 0.3], "max_gram_drift": [1.0, 0.1, 1.0, 1.0],
        "lambda_max_0": [10.0, 10.0, 10.0, 10.0], "lambda_min_0": [0.5, 0.5, 0.4, 0.4],
    })
    text = slopes_table(df)
    assert "| a | dense | 100-10000 | -0.5 | -0.5 | 0 |" in text
    assert "sketch_in" not in text  # one width only: no slope
