"""Width-scaling studies: sweeps of trials on Ray, their results table, plots and report."""

from .config import SweepConfig, Trial, load_sweep
from .report import write_report
from .sweep import run_sweep

__all__ = ["SweepConfig", "Trial", "load_sweep", "run_sweep", "write_report"]
