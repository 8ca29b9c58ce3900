"""results.parquet: one row per trial (finished or failed), with a fixed schema.

The file is rewritten whole, atomically, after every trial, so a killed sweep leaves the table
of every trial that had finished by then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_path
from .config import Trial

# The trial's parameters (from its resolved config) ...
_PARAMS = [
    ("trial_id", pa.string()), ("source", pa.string()), ("n", pa.int64()), ("d", pa.int64()),
    ("n_test", pa.int64()), ("mode", pa.string()), ("sketch", pa.string()), ("m", pa.int64()),
    ("depth", pa.int64()), ("k", pa.int64()), ("train_output", pa.bool_()), ("seed", pa.int64()),
    ("params", pa.string()),  # the grid values as JSON, for keys beyond the columns above
    ("replicate", pa.int64()),  # the grid's seed: model.seed unless seeds are independent
    ("seed_mode", pa.string()), ("kind", pa.string()),  # the sweep's (train or kernel)
]
# ... and what it measured (summary.json and regression.json; null where not measured).
_INTS = ["steps", "steps_to_target", "predicted_steps_to_target", "drift_half_lmin_step",
         "trainable_params"]
_FLOATS = [
    "lambda_inf", "lambda_min_0", "lambda_max_0", "gram_rel_err_inf", "lambda_min_final",
    "max_gram_drift", "max_drift_over_lmin", "max_rel_weight_change", "max_flip_fraction",
    "initial_loss", "final_loss", "max_log_loss_gap", "tail_rate", "predicted_tail_rate",
    "predicted_rate", "predicted_rate_du", "eta", "flops_per_step", "seconds_per_step",
    "final_test_mse", "final_test_error", "ntk_emp_test_mse", "ntk_emp_test_error",
    "ntk_inf_test_mse", "ntk_inf_test_error", "ntk_emp_steps_test_mse", "ntk_emp_steps_test_error",
    # kernel trials (study.kernel)
    "lambda_inf_dense", "lambda_inf_ratio", "lambda_max_inf", "condition_inf",
    "sketch_rel_err", "max_pair_distortion",
]
SCHEMA = pa.schema(_PARAMS + [(c, pa.int64()) for c in _INTS]
                   + [(c, pa.float64()) for c in _FLOATS] + [("error", pa.string())])


def _number(v: Any) -> float | None:
    """JSON numbers as floats; None stays None (inf stays inf: a loss reduced to exactly 0)."""
    return None if v is None else float(v)


def trial_row(trial: Trial, measured: dict[str, Any] | None, error: str | None) -> dict:
    """A results row: the trial's parameters, and its measurements or its error."""
    cfg = trial.config
    measured = measured or {}
    row = {
        "trial_id": trial.id, "source": cfg.data.source, "n": measured.get("n", cfg.data.n),
        "d": measured.get("d", cfg.data.d if cfg.data.source == "sphere" else None),
        "n_test": measured.get("n_test"), "mode": cfg.model.mode, "sketch": cfg.model.sketch,
        "m": cfg.model.m, "depth": cfg.model.hidden_layers, "k": cfg.model.k,
        "train_output": cfg.model.train_output,
        "seed": cfg.model.seed, "params": json.dumps(trial.params, sort_keys=True),
        "replicate": trial.replicate, "seed_mode": trial.seed_mode, "kind": trial.kind,
        "error": error,
    }
    row.update({c: None if measured.get(c) is None else int(measured[c]) for c in _INTS})
    row.update({c: _number(measured.get(c)) for c in _FLOATS})
    return row


def read_results(path: Path) -> pd.DataFrame:
    """The table as a DataFrame with every column of SCHEMA: a file written before a column
    existed reads it as null (replicate as the seed, a nested train sweep)."""
    df = pq.read_table(path).to_pandas()
    for name in SCHEMA.names:
        if name not in df:
            df[name] = {"replicate": df["seed"], "seed_mode": "nested", "kind": "train",
                        "depth": 1}.get(name, float("nan"))
    return df


def write_results(path: Path, rows: list[dict]) -> None:
    """Write the table atomically (a reader sees the old table or the new one, never half)."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
