"""Randomized Nystrom preconditioner from r exact columns of a PSD matrix (Frangella, Tropp &
Udell, "Randomized Nystrom preconditioning", SIAM J. Matrix Anal. Appl. 2023, Algorithms 2.1
and 5.1), with column sampling as the test matrix.

With Omega = I[:, S] (r distinct indices S), the sketch Y = H Omega is the exact cross-Gram
H(X, X_S): r columns of H, no product with H needed. The stable construction:

    nu   = sqrt(n) eps ||Y||_F           a shift that makes the core positive definite
    Y_nu = Y + nu Omega,  L = chol(Omega^T Y_nu) = chol(H_SS + nu I)
    B    = Y_nu L^{-T},  U Sigma V^T = svd(B),  Lambda = max(0, Sigma^2 - nu)

gives H_nys = U Lambda U^T, and for (H + mu I) x = b

    P^{-1} = (lambda_r + mu) U (Lambda + mu I)^{-1} U^T + (I - U U^T)

with lambda_r the smallest eigenvalue kept. Eigenvalues that the shift leaves at zero are
dropped (with mu = 0 they would divide by zero); a core whose Cholesky fails (duplicate points
make H_SS singular, and rounding may leave it slightly indefinite) is retried with a tenfold
shift. Memory: U, n x r float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

F64 = torch.float64
EPS = torch.finfo(F64).eps


def sample_columns(n: int, r: int, seed: int) -> torch.Tensor:
    """r distinct indices of [0, n), uniformly at random, sorted (a pure function of seed)."""
    if not 1 <= r <= n:
        raise ValueError(f"r: expected 1 <= r <= n = {n}, got {r}")
    g = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(n, generator=g)[:r]).values


@dataclass
class NystromPreconditioner:
    """P^{-1} for H + mu I from H's Nystrom approximation U diag(lam) U^T."""

    u: torch.Tensor  # (n, r_kept), orthonormal columns
    lam: torch.Tensor  # (r_kept,), descending, > 0
    mu: float
    shift: float  # the nu the core was factored with

    @property
    def rank(self) -> int:
        return int(self.lam.shape[0])

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """P^{-1} v for v of shape (n,) or (n, p)."""
        v = v.to(F64)
        uv = self.u.T @ v
        scale = (self.lam[-1] + self.mu) / (self.lam + self.mu)
        scale = scale if v.dim() == 1 else scale[:, None]
        return v + self.u @ ((scale - 1.0) * uv)


def nystrom_preconditioner(cols: torch.Tensor, idx: torch.Tensor, mu: float,
                           max_tries: int = 8) -> NystromPreconditioner:
    """The preconditioner from cols = H[:, idx] (n, r) float64 and the ridge mu >= 0."""
    if mu < 0:
        raise ValueError(f"mu: expected >= 0, got {mu}")
    y = cols.to(F64)
    n, r = y.shape
    if idx.shape != (r,) or len(set(idx.tolist())) != r:
        raise ValueError(f"idx: expected {r} distinct row indices of the columns")
    cols_at = torch.arange(r)
    nu = max(n**0.5 * EPS * float(torch.linalg.matrix_norm(y)), torch.finfo(F64).tiny)
    for _ in range(max_tries):
        y_nu = y.clone()
        y_nu[idx, cols_at] += nu
        core = y_nu[idx]
        core = (core + core.T) / 2  # H_SS is symmetric; its computed columns may differ by ulps
        chol, info = torch.linalg.cholesky_ex(core)
        if int(info) == 0:
            break
        nu *= 10.0
    else:
        raise ArithmeticError(f"the Nystrom core H_SS + nu I did not factor up to nu = {nu:.3e}:"
                              " the sampled columns are not those of a PSD matrix")
    b = torch.linalg.solve_triangular(chol, y_nu.T, upper=False).T  # Y_nu L^{-T}
    u, s, _ = torch.linalg.svd(b, full_matrices=False)
    lam = (s**2 - nu).clamp_min(0.0)
    # Keep eigenvalues the shift did not swallow: below a few nu they are rounding.
    keep = lam > max(4.0 * nu, EPS * float(lam.max()) * r)
    if not bool(keep.any()):
        raise ArithmeticError("the Nystrom approximation is zero: the sampled columns vanish")
    return NystromPreconditioner(u[:, keep].contiguous(), lam[keep].contiguous(), float(mu), nu)
