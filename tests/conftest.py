"""Shared fixtures: small float64 problems and the grid of every net configuration."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# CI runs the same examples every time; locally hypothesis explores new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

SKETCHED = ("sketch_in", "sketch_out")
SKETCHES = ("gaussian", "rademacher", "srht", "countsketch")


def net_grid():
    """(mode, sketch) for every mode and, where the mode has a fixed factor, every sketch."""
    out = [("dense", None), ("lowrank", None)]
    out += [(mode, s) for mode in SKETCHED for s in SKETCHES]
    return out


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
