"""Synthetic data: points uniform on the unit sphere, random sign labels, a random ReLU teacher.

Each purpose draws from its own stream, np.random.SeedSequence([seed, purpose]), so the points
and the labels of one seed are independent and each is reproducible on its own.
"""

from __future__ import annotations

import numpy as np

_POINTS, _SIGNS, _TEACHER = 0, 1, 2


def _rng(seed: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), purpose]))


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def sphere_points(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) float64 points i.i.d. uniform on the unit sphere S^{d-1} (normalised Gaussians)."""
    _check_positive("n", n)
    _check_positive("d", d)
    g = _rng(seed, _POINTS).standard_normal((int(n), int(d)))
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    return g / norms


def sign_labels(n: int, seed: int) -> np.ndarray:
    """(n,) float64 labels, each +1 or -1 with probability 1/2."""
    _check_positive("n", n)
    return _rng(seed, _SIGNS).choice(np.array([-1.0, 1.0]), size=int(n))


def teacher_labels(x: np.ndarray, seed: int, width: int = 32) -> np.ndarray:
    """(n,) labels of a random two-layer ReLU teacher, centred and scaled to unit std.

    f(x) = sum_r a_r relu(<w_r, x>) / sqrt(width) with w_r ~ N(0, I_d), a_r ~ N(0, 1); if the
    outputs are all equal the centred (zero) labels are returned unscaled.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must be a 2-D array (n, d) with n, d >= 1, got shape {x.shape}")
    _check_positive("width", width)
    rng = _rng(seed, _TEACHER)
    w = rng.standard_normal((int(width), x.shape[1]))
    a = rng.standard_normal(int(width))
    f = np.maximum(x @ w.T, 0.0) @ a / np.sqrt(width)
    f = f - f.mean()
    std = f.std()
    return f / std if std > 0 else f
