"""Where metrics go: the run folder (always) and W&B (unless turned off).

One small interface; the tracking library is imported only when used, configured from its own
environment variables (WANDB_MODE, WANDB_DIR, ...), and offline unless the user says otherwise.
Only one process of a distributed run should own a Tracker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_path, write_json
from .config import TrackingConfig


class Sink(Protocol):
    def log(self, row: dict[str, Any], step: int) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...
    def abort(self) -> None: ...
    def interrupt(self) -> None: ...


class RunFolderSink:
    """metrics.parquet (one row per logged step) and summary.json, each written whole at the end."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir, self.rows = Path(out_dir), []

    def log(self, row: dict[str, Any], step: int) -> None:
        self.rows.append({"step": step, **row})

    def finish(self, summary: dict[str, Any]) -> None:
        self.interrupt()
        write_json(self.out_dir / "summary.json", summary)

    def interrupt(self) -> None:
        """The rows so far in metrics.parquet, and no summary: the folder reads unfinished."""
        # step is an integer; every metric is a float, missing where not measured that step.
        names = sorted({k for r in self.rows for k in r} - {"step"})
        schema = pa.schema([("step", pa.int64())] + [(k, pa.float64()) for k in names])
        table = pa.Table.from_pylist(self.rows, schema=schema)
        with atomic_path(self.out_dir / "metrics.parquet") as tmp:
            pq.write_table(table, tmp)

    def abort(self) -> None:
        """A failed run leaves no metrics.parquet or summary.json: its folder reads unfinished."""


def wandb_mode(cfg: TrackingConfig) -> str:
    """The config's mode, else WANDB_MODE, else offline: never the network unless asked."""
    return cfg.mode or os.environ.get("WANDB_MODE") or "offline"


class WandbSink:
    def __init__(self, cfg: TrackingConfig, out_dir: Path, name: str, config: dict,
                 run_id: str | None = None) -> None:
        import wandb  # lazily: runs with tracking.wandb false never import it

        # A run_id lets a restarted process (a recovered distributed run) continue the W&B run.
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, name=cfg.name or name, group=cfg.group,
            tags=cfg.tags or None, config=config, dir=str(out_dir), mode=wandb_mode(cfg),
            reinit="finish_previous", id=run_id, resume="allow" if run_id else None,
        )

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log({k: v for k, v in row.items() if v is not None}, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        for k, v in summary.items():
            if isinstance(v, int | float | str | bool):
                self.run.summary[k] = v
        self.run.finish()

    def abort(self) -> None:
        self.run.finish(exit_code=1)

    def interrupt(self) -> None:
        self.run.finish(exit_code=130)  # the shell's code for a run stopped by a signal


class Tracker:
    """Fans each row out to every sink."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def log(self, row: dict[str, Any], step: int) -> None:
        for s in self.sinks:
            s.log(row, step)

    def finish(self, summary: dict[str, Any]) -> None:
        for s in self.sinks:
            s.finish(summary)

    def abort(self) -> None:
        for s in self.sinks:
            s.abort()

    def interrupt(self) -> None:
        for s in self.sinks:
            s.interrupt()


def make_tracker(cfg: TrackingConfig, out_dir: Path, name: str, config: dict,
                 run_id: str | None = None, rows: list[dict] | None = None) -> Tracker:
    """rows: metrics already logged (by a run resumed from a checkpoint)."""
    folder = RunFolderSink(out_dir)
    if rows is not None:
        folder.rows = rows  # shared: the caller reads what was logged
    sinks: list[Sink] = [folder]
    if cfg.wandb and wandb_mode(cfg) != "disabled":
        sinks.append(WandbSink(cfg, out_dir, name, config, run_id))
    return Tracker(sinks)
