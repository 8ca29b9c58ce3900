"""Rigorous bounds on lambda_min(H) of a symmetric H from float64 computations.

Lower: a floating-point Cholesky of B = fl(H - sigma I) that runs to completion gives R with
R^T R = B + dB, |dB| <= gamma_{n+1} |R^T| |R| (Demmel 1989; Higham, Accuracy and Stability of
Numerical Algorithms, 2nd ed., Thm 10.3), for inner products evaluated in any order, so for
blocked LAPACK and the tiled factor alike. As Rump uses it ("Verification of positive
definiteness", BIT 46, 2006): ||R||_F^2 = tr(B + dB) <= tr(B) + gamma ||R||_F^2, so ||dB||_2 <=
|| |R^T||R| ||_2 gamma <= gamma / (1 - gamma) tr(B). R^T R is positive semidefinite, hence
lambda_min(B) >= -||dB||_2; the shift's own rounding is diagonal, |fl(h_ii - sigma) - (h_ii -
sigma)| <= u / (1 - u) |b_ii|; so

    lambda_min(H) >= sigma - gamma / (1 - gamma) tr(B) - u / (1 - u) max b_ii - underflow.

We take gamma = gamma_{2n+4} rather than Demmel's gamma_{n+1}: BLAS kernels that divide by
multiplying with a rounded reciprocal add one rounding per division (n + 2), and the factor 2
spares whatever else a kernel does differently; at n = 50,000 the term is still ~1e-11 tr(B).
The underflow term is Rump's form with the smallest subnormal, 4 (n + 1)(2 (n + 2) + max b_ii)
eta: negligible unless entries are near 1e-300.

Upper: the Rayleigh quotient v^T H v / v^T v of any vector v is >= lambda_min(H). Computed in
floating point it carries the error of the mat-vec (|fl(H v) - H v| <= gamma_n |H| |v|, any
summation order) and of the dot products (gamma_n each); one pass over the stored tiles
computes fl(H v) and fl(|H| |v|) together and the bound adds those errors, rounded upwards.

Every bound is rounded outwards (one ulp and 8 u of relative slack on each error term).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

U = 2.0 ** -53  # unit roundoff of float64
ETA = 2.0 ** -1074  # smallest positive subnormal

# A block of H: rows [r0, r1), cols [c0, c1), its float64 values, and whether it also stands
# for its transpose at (cols, rows) (an upper tile of a symmetric store).
Block = tuple[int, int, int, int, np.ndarray, bool]


def gamma(k: int) -> float:
    """gamma_k = k u / (1 - k u), rounded up."""
    ku = k * U
    if ku >= 0.5:
        raise ValueError(f"gamma_{k}: k u = {ku} is too large for a rounding-error bound")
    return float(np.nextafter(ku / (1 - ku), np.inf))


def _up(x: float) -> float:
    return float(np.nextafter(x, np.inf))


def _down(x: float) -> float:
    return float(np.nextafter(x, -np.inf))


def cholesky_error(diag_b: np.ndarray) -> float:
    """An upper bound on sigma - lambda_min(H) once fl-Cholesky of B = fl(H - sigma I), whose
    diagonal is diag_b, has run to completion (module docstring)."""
    d = np.asarray(diag_b, dtype=np.float64)
    n = d.size
    if n == 0 or not np.all(d > 0):  # R^T R = B + dB with |dB_ii| < b_ii: a pivot was <= 0
        raise ValueError("cholesky_error: a factored matrix has a positive diagonal")
    g = gamma(2 * n + 4)
    trace = _up(float(d.sum()) / (1 - gamma(n)))  # the float sum of n positive terms
    dmax = float(d.max())
    terms = (g / (1 - g) * trace + U / (1 - U) * dmax
             + 4 * (n + 1) * (2 * (n + 2) + dmax) * ETA)
    return _up(terms * (1 + 8 * U))


def cholesky_lower_bound(sigma: float, diag_b: np.ndarray) -> float:
    """lambda_min(H) >= this, given fl-Cholesky of fl(H - sigma I) (diagonal diag_b) ran to
    completion."""
    return _down(sigma - cholesky_error(diag_b))


def matvec_pass(blocks: Iterable[Block], v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fl(H v), fl(|H| |v|)) in float64, in one pass over the blocks of H."""
    v = np.asarray(v, dtype=np.float64)
    av = np.abs(v)
    w, a = np.zeros_like(v), np.zeros_like(v)
    for r0, r1, c0, c1, b, mirror in blocks:
        ab = np.abs(b)
        w[r0:r1] += b @ v[c0:c1]
        a[r0:r1] += ab @ av[c0:c1]
        if mirror:
            w[c0:c1] += b.T @ v[r0:r1]
            a[c0:c1] += ab.T @ av[r0:r1]
    return w, a


def rayleigh_upper_bound(v: np.ndarray, w: np.ndarray, a: np.ndarray) -> tuple[float, float]:
    """(theta, upper): the computed Rayleigh quotient of v and a bound above v^T H v / v^T v,
    hence above lambda_min(H), from w = fl(H v) and a = fl(|H| |v|) (matvec_pass)."""
    v = np.asarray(v, dtype=np.float64)
    n = v.size
    gn = gamma(n)
    num = float(v @ w)
    den = float(v @ v)
    if not den > 0:
        raise ValueError("rayleigh_upper_bound: v is zero")
    av = np.abs(v)
    s1 = float(av @ np.abs(w))  # >= (1 - gamma_n) |v|^T |fl(H v)|
    s2 = float(av @ a)  # >= (1 - gamma_n)^2 |v|^T |H| |v|
    err = gn / (1 - gn) * (s1 + s2 / (1 - gn))
    num_up = _up(num + _up(err * (1 + 8 * U)))
    den_bound = den * (1 - gn) if num_up >= 0 else den / (1 - gn)
    q = num_up / den_bound
    return num / den, _up(q + abs(q) * 4 * U)  # the rounding of den_bound and of q
