"""load_dataset: a DataConfig turned into train and test arrays, deterministic in its seed."""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DataConfig, DataError
from .digits import digits_dataset
from .parquet_io import read_dataset
from .synthetic import sign_labels, sphere_points, teacher_labels

# Streams of their own, apart from synthetic.py's (0, 1, 2), so changing n or test_fraction
# never changes which points are drawn.
_SUBSET, _SPLIT = 10, 11


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train rows (x, y) and held-out test rows (x_test, y_test), all float64."""

    name: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n(self) -> int:
        """Number of training rows."""
        return int(self.x.shape[0])

    @property
    def d(self) -> int:
        """Input dimension."""
        return int(self.x.shape[1])

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the rows themselves (train and test, x and y): what resumable results
        are keyed on, since a file's path says nothing about what it holds today."""
        h = hashlib.sha256()
        for a in (self.x, self.y, self.x_test, self.y_test):
            h.update(repr(a.shape).encode())
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        return h.hexdigest()


def _permutation(n: int, seed: int, purpose: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([int(seed), purpose])).permutation(n)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Build the dataset cfg describes; unusable data raises DataError."""
    if cfg.source == "sphere":
        name = "sphere"
        x = sphere_points(cfg.n, cfg.d, cfg.seed)
        if cfg.labels == "sign":
            y = sign_labels(cfg.n, cfg.seed)
        else:
            y = teacher_labels(x, cfg.seed, cfg.teacher_width)
    else:
        if cfg.source == "digits":
            name, (x, y) = "digits", digits_dataset()
        else:
            name, (x, y) = Path(cfg.path).name, read_dataset(cfg.path)
        if cfg.n is not None:
            if cfg.n > len(x):
                raise DataError(f"data.n: {cfg.n} rows asked for, but {name} has only "
                                f"{len(x)} rows available")
            # Sorted so that the kept rows stay in file order.
            keep = np.sort(_permutation(len(x), cfg.seed, _SUBSET)[: cfg.n])
            x, y = x[keep], y[keep]
    n = len(x)
    n_test = math.floor(cfg.test_fraction * n)
    if n - n_test < 1:
        raise DataError(f"data.test_fraction: {cfg.test_fraction} of {n} rows leaves no "
                        "training rows")
    if n_test == 0:
        return Dataset(name, x, y, x[:0].copy(), y[:0].copy())
    perm = _permutation(n, cfg.seed, _SPLIT)
    train, test = np.sort(perm[: n - n_test]), np.sort(perm[n - n_test:])
    return Dataset(name, x[train], y[train], x[test], y[test])
