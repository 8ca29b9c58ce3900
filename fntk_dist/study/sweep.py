"""`fntk sweep`: every trial of a grid as a Ray task, each in DIR/trials/<trial-id>/.

Finished trials (summary.json present) are skipped, so rerunning a killed sweep runs only what
is missing. A trial that raises is recorded with its error and the others go on. After every
trial the whole DIR/results.parquet is rewritten atomically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..atomic import write_json, write_text
from ..distributed.cluster import connect
from .config import SweepConfig, Trial
from .results import trial_row, write_results
from .trial import SUMMARY, is_finished, read_trial, run_trial

RESULTS = "results.parquet"


def _error_line(err: BaseException) -> str:
    """One line, 'Type: message', of the trial's own exception rather than Ray's wrapper."""
    cause = getattr(err, "cause", None) or err  # RayTaskError.cause: what the task raised
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"


def run_sweep(sweep: SweepConfig, trials: list[Trial], out: Path, address: str | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Run the trials not yet finished under out; returns counts and the results path."""
    import ray

    out = Path(out)
    done = {t.id: read_trial(out / "trials" / t.id) for t in trials
            if is_finished(out / "trials" / t.id)}
    # A finished trial counts only if it ran on the data the sweep names now (by content).
    rows = {t.id: trial_row(t, done[t.id], None) for t in trials
            if t.id in done and done[t.id].get("data_fingerprint") == t.data_fingerprint}
    todo = [t for t in trials if t.id not in rows]
    if todo:  # before anything is written: a cluster that does not answer leaves no folder
        connect(address, min_cpus=sweep.trial_cpus)
    (out / "trials").mkdir(parents=True, exist_ok=True)
    write_text(out / "sweep.json", sweep.model_dump_json(indent=1) + "\n")
    write_results(out / RESULTS, [rows[t.id] for t in trials if t.id in rows])
    counts = {"trials": len(trials), "skipped": len(rows), "ran": 0, "failed": 0}
    t0 = time.perf_counter()
    if todo:
        # No retries: a trial that fails (or whose worker dies) is recorded, not rerun.
        task = ray.remote(run_trial).options(num_cpus=sweep.trial_cpus, max_retries=0)
        for t in todo:  # a stale trial reads as unfinished until it has run again
            (out / "trials" / t.id / SUMMARY).unlink(missing_ok=True)
        pending = {task.remote(t.config.model_dump(mode="json"), str(out / "trials" / t.id),
                               sweep.regression, sweep.trial_cpus, sweep.kind): t for t in todo}
        bar = tqdm(total=len(trials), initial=len(rows), desc=f"sweep {sweep.name}",
                   unit="trial", disable=not progress)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            trial = pending.pop(ref)
            folder = out / "trials" / trial.id
            try:
                ray.get(ref)
                rows[trial.id] = trial_row(trial, read_trial(folder), None)
                counts["ran"] += 1
            except Exception as err:  # any failure of one trial is its result
                line = _error_line(err)
                write_text(folder / "error.txt", line + "\n")
                rows[trial.id] = trial_row(trial, None, line)
                counts["failed"] += 1
            write_results(out / RESULTS, [rows[t.id] for t in trials if t.id in rows])
            bar.update(1)
            bar.set_postfix(failed=counts["failed"], refresh=False)
        bar.close()
    counts.update(seconds=round(time.perf_counter() - t0, 2), results=str(out / RESULTS))
    write_json(out / "sweep_status.json", counts)
    return counts
