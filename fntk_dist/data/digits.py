"""scikit-learn's bundled 8x8 digits as a binary task on the unit sphere (no download)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits


def digits_dataset() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as (x, y): x (1797, 64) float64, y (1797,) float64.

    Each row of pixels is centred (its own mean subtracted) and scaled to unit Euclidean norm;
    a row that would be zero stays zero. The network has a scalar output, so the ten classes
    become a binary task: y = +1.0 for even digits, -1.0 for odd digits.
    """
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    y = np.where(np.asarray(bunch.target) % 2 == 0, 1.0, -1.0)
    return x, y
