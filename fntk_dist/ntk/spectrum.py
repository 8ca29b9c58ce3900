"""Extreme eigenvalues of a PSD Gram: from the matrix, or from mat-vecs when it is too large."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh


@dataclass(frozen=True)
class Spectrum:
    lambda_min: float
    lambda_max: float
    top: list[float]  # the largest eigenvalues, descending
    condition: float  # lambda_max / lambda_min (inf when lambda_min <= 0)

    def as_dict(self) -> dict:
        return asdict(self)


def _make(lmin: float, top: list[float]) -> Spectrum:
    lmax = top[0]
    return Spectrum(lmin, lmax, top, lmax / lmin if lmin > 0 else float("inf"))


def spectrum(h: torch.Tensor | np.ndarray, top: int = 5) -> Spectrum:
    """All eigenvalues of a symmetric matrix (float64 eigvalsh), summarised."""
    a = h.detach().cpu().double().numpy() if isinstance(h, torch.Tensor) else np.asarray(h, float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"H: expected a square matrix, got shape {a.shape}")
    ev = np.linalg.eigvalsh((a + a.T) / 2)
    return _make(float(ev[0]), [float(e) for e in ev[::-1][:top]])


def spectrum_from_matvec(
    matvec: Callable[[np.ndarray], np.ndarray], n: int, top: int = 5, tol: float = 1e-10,
    maxiter: int | None = None,
) -> Spectrum:
    """Top eigenvalues and lambda_min of a PSD operator given by H @ v (Lanczos, ARPACK).

    lambda_min comes from the largest eigenvalue of lambda_max I - H, which ARPACK finds far
    faster than the smallest of H itself.
    """
    if n < 3:
        eye = np.eye(n)
        return spectrum(np.stack([matvec(eye[:, i]) for i in range(n)], axis=1), top)
    op = LinearOperator((n, n), matvec=lambda v: np.asarray(matvec(v), float), dtype=float)
    kt = max(1, min(top, n - 2))
    vals = eigsh(op, k=kt, which="LA", tol=tol, maxiter=maxiter, return_eigenvectors=False)
    vals = sorted((float(x) for x in vals), reverse=True)
    shift = vals[0]
    flipped = LinearOperator((n, n), matvec=lambda v: shift * v - np.asarray(matvec(v), float),
                             dtype=float)
    mu = eigsh(flipped, k=1, which="LA", tol=tol, maxiter=maxiter, return_eigenvectors=False)
    return _make(shift - float(mu[0]), vals)
