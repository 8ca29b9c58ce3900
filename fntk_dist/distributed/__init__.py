"""Distribution on Ray: the Gram over width shards and input tiles, into a resumable store.

Importing this package does not import Ray; the job does, when it runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import DistConfig
from .tile_store import TileStore, TileStoreError, iter_tiles
from .tile_store import load_gram as _assemble_store


def load_gram(path: str | Path) -> np.ndarray:
    """The (n, n) Gram of a `fntk gram` run folder: a tile store, or a single-process gram.npy."""
    path = Path(path)
    if not (path / "manifest.json").exists() and (path / "gram.npy").exists():
        return np.load(path / "gram.npy")
    return _assemble_store(path)


def __getattr__(name: str):
    # The job imports the run config, which imports DistConfig from here: load it on first use.
    if name == "run_gram_distributed":
        from .gram_job import run_gram_distributed

        return run_gram_distributed
    raise AttributeError(name)


__all__ = ["DistConfig", "TileStore", "TileStoreError", "iter_tiles", "load_gram",
           "run_gram_distributed"]
