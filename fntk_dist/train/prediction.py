"""The loss curve that H(0) predicts for gradient descent, and the measures that compare a run
with it.

Linearised at initialisation, full-batch GD on L = 1/2 ||f - y||^2 moves the residual as
r(t + 1) = (I - eta H(0)) r(t), so with H(0) = sum_i lambda_i v_i v_i^T

    L_lin(t) = 1/2 sum_i (1 - eta lambda_i)^(2t) <v_i, r(0)>^2,

exact for a model linear in its parameters and the kernel-regime prediction for a wide net.
Comparing log L with log L_lin step by step tests the theory mode by mode; a single rate fitted
to the whole curve cannot (it leans to the fast modes, which dominate early).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Past this many steps a predicted target is reported as not reached (None), not searched for.
MAX_PREDICTED_STEPS = 10**12


class LinearPrediction:
    """L_lin(t) from H(0) (symmetric n x n) and r(0) = f_0(X) - y, for step size eta."""

    def __init__(self, h0: torch.Tensor | np.ndarray, r0: torch.Tensor | np.ndarray,
                 eta: float) -> None:
        h = h0.detach().cpu().double().numpy() if isinstance(h0, torch.Tensor) else h0
        r = r0.detach().cpu().double().numpy() if isinstance(r0, torch.Tensor) else r0
        lam, vec = np.linalg.eigh((np.asarray(h, float) + np.asarray(h, float).T) / 2)
        self.eta = float(eta)
        self.factors = (1.0 - self.eta * lam) ** 2  # per-mode loss factor per step
        self.weights = 0.5 * (vec.T @ np.asarray(r, float).reshape(-1)) ** 2  # mode's L(0) share

    def loss(self, t: int) -> float:
        """L_lin(t); float64 powers underflow to 0 for spent modes, which is their value."""
        return float(np.sum(self.weights * self.factors ** t))

    def steps_to(self, ratio: float) -> int | None:
        """The first step t with L_lin(t) <= ratio * L_lin(0); None where the prediction never
        gets there: a mode that grows (|1 - eta lambda| > 1, eta above 2 / lambda_max), or a
        target past MAX_PREDICTED_STEPS (a null mode holding more than the target). With every
        mode contracting L_lin is non-increasing, so doubling then bisection finds it."""
        goal = ratio * self.loss(0)
        if np.any((self.factors > 1.0 + 1e-12) & (self.weights > 0)):
            return None
        if self.loss(0) <= goal:
            return 0
        hi = 1
        while self.loss(hi) > goal:
            hi *= 2
            if hi > MAX_PREDICTED_STEPS:
                return None
        lo = hi // 2  # loss(lo) > goal (lo = 0 checked above)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.loss(mid) > goal else (lo, mid)
        return hi


def last_decade(steps: list[int], losses: list[float], floor: float) -> list[int]:
    """Indices of the last decade of the loss above floor: the logged points from the last one
    above floor back to where the loss was 10x that (the slow tail, after the fast modes)."""
    above = [i for i, v in enumerate(losses) if v > floor and v > 0]
    if not above:
        return []
    end = above[-1]
    top = 10.0 * losses[end]
    start = end
    while start > 0 and 0 < losses[start - 1] <= top:
        start -= 1
    return list(range(start, end + 1))


def log_slope_rate(steps: list[int], values: list[float]) -> float | None:
    """Per-step factor exp(slope) of the least-squares line through log values; None with
    fewer than two distinct steps."""
    pts = [(s, math.log(v)) for s, v in zip(steps, values) if v > 0]
    if len({s for s, _ in pts}) < 2:
        return None
    ms = sum(s for s, _ in pts) / len(pts)
    ml = sum(v for _, v in pts) / len(pts)
    var = sum((s - ms) ** 2 for s, _ in pts)
    return math.exp(sum((s - ms) * (v - ml) for s, v in pts) / var)


def tail_rates(steps: list[int], losses: list[float], predicted: list[float] | None,
               floor: float) -> tuple[float | None, float | None]:
    """(measured, predicted) per-step loss factors fitted over the same last decade of the
    measured loss above floor; predicted is None without a prediction."""
    idx = last_decade(steps, losses, floor)
    sub = [steps[i] for i in idx]
    measured = log_slope_rate(sub, [losses[i] for i in idx])
    pred = None if predicted is None else log_slope_rate(sub, [predicted[i] for i in idx])
    return measured, pred


def max_log_gap(losses: list[float], predicted: list[float], floor: float) -> float | None:
    """max_t |log L(t) - log L_lin(t)| over the logged steps where both are above floor (below
    it round-off, not the dynamics, sets the measured loss)."""
    gaps = [abs(math.log(a) - math.log(b)) for a, b in zip(losses, predicted)
            if a > floor and b > floor]
    return max(gaps) if gaps else None
