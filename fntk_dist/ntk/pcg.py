"""Preconditioned conjugate gradients with an explicit, resumable state.

Solves A x = b for a symmetric positive definite A given only as a product v -> A v, with an
optional preconditioner v -> P^{-1} v (symmetric positive definite too). Everything the
iteration carries lives in CGState, a plain dataclass of float64 tensors and numbers: a job
saves it after any iteration, and pcg(..., state=saved) continues exactly where the saved one
stopped (same iterates, bit for bit, given the same products).

Stopping rule: the relative residual ||b - A x|| / ||b||, tracked by the recurrence
r_{k+1} = r_k - alpha_k A p_k (one product per iteration), falls to rtol or below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Operator = Callable[[torch.Tensor], torch.Tensor]
F64 = torch.float64


@dataclass
class CGState:
    """x the iterate, r = b - A x, z = P^{-1} r, p the search direction, rz = <r, z>.

    iteration: iterations done; residuals: the relative residual before the first iteration
    and after each one (len = iteration + 1)."""

    x: torch.Tensor
    r: torch.Tensor
    z: torch.Tensor
    p: torch.Tensor
    rz: float
    b_norm: float
    iteration: int = 0
    residuals: list[float] = field(default_factory=list)

    @property
    def relative_residual(self) -> float:
        return self.residuals[-1]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"x": self.x, "r": self.r, "z": self.z, "p": self.p}


def _identity(v: torch.Tensor) -> torch.Tensor:
    return v


def cg_start(b: torch.Tensor, apply_a: Operator, precond: Operator | None = None,
             x0: torch.Tensor | None = None) -> CGState:
    """The state before the first iteration: x0 (default 0), r = b - A x0."""
    b = b.to(F64)
    if b.dim() != 1:
        raise ValueError(f"b: expected a vector, got shape {tuple(b.shape)}")
    x = torch.zeros_like(b) if x0 is None else x0.to(F64).clone()
    r = b - apply_a(x) if x0 is not None else b.clone()
    z = (precond or _identity)(r).to(F64)
    b_norm = float(torch.linalg.vector_norm(b))
    scale = b_norm if b_norm > 0 else 1.0
    return CGState(x, r, z, z.clone(), float(r @ z), b_norm, 0,
                   [float(torch.linalg.vector_norm(r)) / scale])


def cg_step(state: CGState, apply_a: Operator, precond: Operator | None = None) -> None:
    """One iteration, in place: one product with A and one with P^{-1}."""
    ap = apply_a(state.p).to(F64)
    pap = float(state.p @ ap)
    if not pap > 0:
        raise ArithmeticError(f"p^T A p = {pap:.3e} at iteration {state.iteration}: the operator "
                              "is not positive definite (or the iteration broke down)")
    alpha = state.rz / pap
    state.x += alpha * state.p
    state.r -= alpha * ap
    state.z = (precond or _identity)(state.r).to(F64)
    rz = float(state.r @ state.z)
    beta = rz / state.rz
    state.p = state.z + beta * state.p
    state.rz = rz
    state.iteration += 1
    scale = state.b_norm if state.b_norm > 0 else 1.0
    state.residuals.append(float(torch.linalg.vector_norm(state.r)) / scale)


def pcg(
    b: torch.Tensor, apply_a: Operator, precond: Operator | None = None, rtol: float = 1e-6,
    maxiter: int = 1000, state: CGState | None = None,
    on_iteration: Callable[[CGState], None] | None = None,
) -> CGState:
    """Iterate until the relative residual is at most rtol or maxiter iterations are done
    (counting those of a resumed state); returns the final state.

    state: a saved state of the same problem to continue from (else a fresh start at x = 0).
    on_iteration(state): called after every iteration (save it, log it, or raise to stop).
    """
    if rtol <= 0 or maxiter < 0:
        raise ValueError(f"rtol, maxiter: expected rtol > 0 and maxiter >= 0, got {rtol}, "
                         f"{maxiter}")
    st = cg_start(b, apply_a, precond) if state is None else state
    while st.relative_residual > rtol and st.iteration < maxiter and st.b_norm > 0:
        cg_step(st, apply_a, precond)
        if on_iteration is not None:
            on_iteration(st)
    return st
