"""The report computes what the study quotes: exponents with intervals from the replicates,
singular trials set apart, the seed mode stated, plots at 150 dpi without empty panels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fntk_dist.study.report import _prepared, slopes_table, write_report
from fntk_dist.study.results import SCHEMA, read_results


def _rows() -> list[dict]:
    """A results table: dense at three widths and three nested seeds, its drift ~ m^-1/2 with
    per-seed offsets; one sketch_in trial whose H(0) is singular."""
    rows = []
    for seed, c in zip(range(3), (1.0, 2.0, 4.0)):
        for m in (100, 400, 1600):
            rows.append({"mode": "dense", "m": m, "seed": seed, "max_drift_over_lmin": c / m**0.5,
                         "gram_rel_err_inf": 0.1 * c * (100 / m) ** 0.5})
    rows.append({"mode": "sketch_in", "sketch": "gaussian", "k": 8, "m": 100, "seed": 0,
                 "lambda_min_0": 1e-14, "max_drift_over_lmin": -4e13})
    base = {"trial_id": "t", "source": "sphere", "n": 16, "d": 8, "n_test": 0, "depth": 1,
            "train_output": False, "params": "{}", "seed_mode": "nested", "kind": "train",
            "lambda_min_0": 0.5, "lambda_max_0": 10.0, "max_gram_drift": 1.0,
            "trainable_params": 100, "flops_per_step": 1e6, "steps_to_target": 20,
            "tail_rate": 0.8, "predicted_tail_rate": 0.79, "max_log_loss_gap": 0.1}
    return [base | r | {"trial_id": f"t{i}", "replicate": r["seed"]} for i, r in enumerate(rows)]


def _write(tmp_path, rows) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp_path / "results.parquet")


def test_width_exponent_with_its_interval_from_the_replicates(tmp_path):
    _write(tmp_path, _rows())
    from fntk_dist.study.plots import with_labels

    df = _prepared(with_labels(read_results(tmp_path / "results.parquet")))
    text = slopes_table(df, "m")
    # Every replicate's exponent is -1/2 exactly: the interval is 0 (three replicates).
    assert "| sphere n=16 d=8 | dense | 100-1600 | 3 | -0.500 ± 0.000 | -0.500 ± 0.000 |" in text
    assert "sketch_in" not in text  # one width only: no slope
    assert slopes_table(df, "k") == "No series varies k."


def test_report_sets_singular_trials_apart_and_states_the_seeds(tmp_path):
    _write(tmp_path, _rows())
    text = write_report(tmp_path).read_text()
    assert "Seeds: nested (seed_mode: nested)" in text
    sing = text.split("## Singular trials")[1].split("##")[0]
    assert "| sphere n=16 d=8 | sketch_in k=8 | 100 | 0 | 1.00e-14 | 10 |" in sing
    results = text.split("## Results")[1].split("##")[0]
    assert "-4e+13" not in results and "-4.00e+13" not in results  # its ratio is left out
    for png in (tmp_path / "report").glob("*.png"):
        assert Image.open(png).info["dpi"][0] >= 149, png.name


def test_an_old_results_file_reads_with_the_new_columns(tmp_path):
    """A results.parquet written before replicate, seed_mode and the new diagnostics."""
    old = pa.table({"trial_id": ["a"], "seed": [4], "m": [64], "lambda_min_0": [0.5],
                    "error": pa.array([None], pa.string())})
    pq.write_table(old, tmp_path / "results.parquet")
    df = read_results(tmp_path / "results.parquet")
    assert set(SCHEMA.names) <= set(df.columns)
    assert df["replicate"].tolist() == [4] and df["seed_mode"].tolist() == ["nested"]
    assert np.isnan(df["tail_rate"].iloc[0])
    assert json.dumps(pd.isna(df["max_log_loss_gap"]).tolist()) == "[true]"


def _rank_rows() -> list[dict]:
    """sketch_out at two widths and three ranks, two replicates: drift/lmin ~ k^-1/2 and
    ||H(t) - H(0)|| ~ k^(+1/4), max log L/L_lin ~ k^-1, none depending on m; steps to target
    1.5x L_lin's."""
    rows = []
    for seed, c in zip(range(2), (1.0, 3.0)):
        for m in (256, 1024):
            for k in (8, 32, 128):
                rows.append({"m": m, "k": k, "seed": seed, "replicate": seed,
                             "max_drift_over_lmin": c * k ** -0.5,
                             "max_gram_drift": c * k ** 0.25,
                             "max_log_loss_gap": c / k})
    base = {"source": "sphere", "n": 16, "d": 8, "n_test": 0, "depth": 1,
            "train_output": False, "params": "{}", "seed_mode": "independent",
            "kind": "train", "mode": "sketch_out", "sketch": "gaussian",
            "lambda_min_0": 0.5, "lambda_max_0": 10.0, "trainable_params": 100,
            "flops_per_step": 1e6, "steps_to_target": 30, "predicted_steps_to_target": 20}
    return [base | r | {"trial_id": f"r{i}"} for i, r in enumerate(rows)]


NOTHING_HEIGHT = 1.2 * 150  # pixels: plots._nothing's one-line figure, 1.2 inches at 150 dpi


def test_rank_exponents_of_the_scaled_and_the_raw_drift_and_their_plots(tmp_path):
    _write(tmp_path, _rank_rows())
    from fntk_dist.study.plots import with_labels

    df = _prepared(with_labels(read_results(tmp_path / "results.parquet")))
    text = slopes_table(df, "k")
    # Per width: drift/lmin's exponent -1/2, the raw drift's +1/4 and the loss gap's -1 (the
    # last two columns), exactly.
    for m in (256, 1024):
        row = next(r for r in text.splitlines() if r.startswith(f"| sphere n=16 d=8 | "
                                                               f"sketch_out | {m} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3:5] == ["8-128", "2"]
        assert cells[6] == "-0.500 ± 0.000"
        assert cells[-2:] == ["0.250 ± 0.000", "-1.000 ± 0.000"]
    write_report(tmp_path)
    for name in ("drift_vs_k", "steps_ratio_vs_m"):
        png = Image.open(tmp_path / "report" / f"{name}.png")
        assert png.info["dpi"][0] >= 149
        # a drawn figure, not the one-line "nothing to show" (4.2 x 1.2 inches)
        assert png.size[1] > 2 * NOTHING_HEIGHT


def test_ranks_that_differ_only_between_families_give_no_rank_panel(tmp_path):
    rows = [r for r in _rank_rows() if r["k"] == 8]
    rows += [r | {"mode": "lowrank", "k": 32, "trial_id": f"{r['trial_id']}b"} for r in rows]
    _write(tmp_path, rows)
    write_report(tmp_path)
    png = Image.open(tmp_path / "report" / "drift_vs_k.png")
    assert png.size[1] < 2 * NOTHING_HEIGHT  # the one-line figure that says so in words
