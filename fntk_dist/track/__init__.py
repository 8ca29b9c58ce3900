"""Experiment tracking: the run folder and Weights & Biases behind one interface."""

from .config import TrackingConfig
from .sinks import RunFolderSink, Tracker, WandbSink, make_tracker, wandb_mode

__all__ = ["RunFolderSink", "Tracker", "TrackingConfig", "WandbSink", "make_tracker", "wandb_mode"]
