"""The infinite-width NTK of a ReLU MLP with L hidden layers (DESIGN section 4, "Infinite width").

The net: g^1 = W^1 x, g^l = sqrt(2 / m_{l-1}) W^l h^{l-1}, h^l = relu(g^l),
f(x) = (1/sqrt(m_L)) sum_r a_r h^L_r(x), all weights N(0, 1), every hidden layer trained.
Depth 1 is f(x) = (1/sqrt(m)) sum_r a_r relu(<w_r, x>).

Recursion. With theta the angle at a level: arccos of the correlation of the pre-activations
g^l(x), g^l(x'), jointly Gaussian with covariance Sigma^l,
    kappa1(S) = sqrt(S(x,x) S(x',x')) (sin theta + (pi - theta) cos theta) / (2 pi)
    kappa0(S) = (pi - theta) / (2 pi)
    Sigma^1 = <x, x'>
    Sigma^{l+1} = 2 kappa1(Sigma^l),  Sigmadot^{l+1} = 2 kappa0(Sigma^l)   for l + 1 <= L
    Sigma^{L+1} = kappa1(Sigma^L),    Sigmadot^{L+1} = kappa0(Sigma^L)     (the readout)
    Theta = sum_{l=1..L} Sigma^l prod_{l'=l+1..L+1} Sigmadot^{l'}  (+ Sigma^{L+1} if a trained)
The He scale keeps the diagonal: Sigma^l(x, x) = |x|^2 for l <= L. So every level's normalised
correlation is rho_{l+1} = J(theta_l) = (sin theta_l + (pi - theta_l) cos theta_l) / pi, and
Sigma^{l+1} = |x| |x'| rho_{l+1}, Sigmadot^{l+1} = (pi - theta_l) / pi (halved at the readout).
Depth 1: <x, x'> (pi - theta) / (2 pi) + [|x| |x'| (sin theta + (pi - theta) cos theta) / (2 pi)].

Why the angle is not arccos(rho): a rounding error eps in rho becomes an error sqrt(2 eps),
about 1e-8, in theta where rho is near +-1 (the diagonal, duplicate, parallel and antiparallel
points), and the kernel inherits it. Each level instead carries theta, sin theta, cos theta and
1 - cos theta, each to round-off at every angle (an absolute error of order eps in theta is
what the kernel can bear: its derivatives in theta are bounded), and exact at 0 and pi:
- Level 1, from the chords alpha = |u - v| and beta = |u + v| of the unit vectors u, v:
  theta = 2 atan2(alpha, beta), sin = alpha beta / 2, 1 - cos = alpha^2 / 2. Both chords are
  sqrt(2 -+ 2 cos) with cos = <x, x'> / (|x| |x'|) from the Gram product, accurate to within
  1 / sin theta < 2.3 times its round-off while |cos| <= 0.9; beyond, the small chord is
  recomputed from the differences u_i - v_j themselves (O(d) per such pair). The diagonal
  has alpha = 0 exactly, so theta = 0, sin = 0, cos = 1; x' = -x has beta = 0, so
  theta = pi and sin = 0; a zero row has kernel 0.
- Level l + 1 from level l, without dividing by Sigma(x, x) (the He scale makes it |x|^2):
  cos = rho = J(theta), 1 - rho = (pi (1 - cos theta) + theta cos theta - sin theta) / pi
  (error eps theta where the value is of order theta^2), sin = sqrt((1 - rho)(1 + rho)),
  theta = atan2(sin, rho). On the diagonal theta = 0 exactly again at every level.
Cost: the Gram product, O(n n' d), plus O(d) per pair with |cos| > 0.9 at pairwise-distance
speed (tens of times slower per pair than a GEMM; near the diagonal only on most data), then
O(n n') per level.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Pairs with |cos| above this get their small chord from the points' differences.
_NEAR = 0.9
# Rows per block of the direct chords.
_ROWS = 32


def _as_float64(x: object, name: str) -> torch.Tensor:
    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] < 1:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a 2-D array (n, d) with n >= 1, got {shape}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return t


def _unit(x: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """The rows of x scaled to unit norm; zero rows stay zero."""
    return torch.where(norm[:, None] > 0, x / norm.clamp_min(1e-300)[:, None], 0.0)


def _direct_chords(out: torch.Tensor, u: torch.Tensor, w: torch.Tensor,
                   near: torch.Tensor) -> None:
    """out[i, j] = |u_i - w_j| where near[i, j], from the differences themselves."""
    for lo in range(0, u.shape[0], _ROWS):
        rows = near[lo:lo + _ROWS]
        cols = rows.any(dim=0).nonzero().squeeze(1)
        if cols.numel() == 0:
            continue
        dist = torch.cdist(u[lo:lo + _ROWS], w[cols],
                           compute_mode="donot_use_mm_for_euclid_dist")
        block = out[lo:lo + _ROWS]
        block[:, cols] = torch.where(rows[:, cols], dist, block[:, cols])


def analytic_ntk(
    x1: torch.Tensor, x2: torch.Tensor | None = None, train_output: bool = False,
    depth: int = 1,
) -> torch.Tensor:
    """Theta(X1, X2) in float64 of the ReLU net with `depth` hidden layers, all trained, plus
    the readout's term when train_output (module docstring: formulas and the stable angle).

    x2=None gives the Gram of x1. Rows of zeros have kernel 0."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth: expected an integer >= 1, got {depth!r}")
    a = _as_float64(x1, "X")
    b = a if x2 is None else _as_float64(x2, "X2")
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"X2: expected {a.shape[1]} columns like X, got {b.shape[1]}")
    na, nb = a.norm(dim=1), b.norm(dim=1)
    norms = na[:, None] * nb[None, :]
    dots = a @ b.T
    cos = torch.where(norms > 0, dots / norms.clamp_min(1e-300), 0.0).clamp(-1.0, 1.0)
    # Level 1: the chords of unit vectors, |u - v| = alpha and |u + v| = beta (r2 = 4).
    alpha, beta = (2 - 2 * cos).sqrt(), (2 + 2 * cos).sqrt()
    u, v = _unit(a, na), _unit(b, nb)
    _direct_chords(alpha, u, v, cos > _NEAR)
    _direct_chords(beta, u, -v, cos < -_NEAR)
    theta = 2 * torch.atan2(alpha, beta)
    sin = alpha * beta / 2
    one_minus_cos = alpha * alpha / 2
    cos = 1 - one_minus_cos

    ntk = dots  # Sigma^1; each level multiplies the sum so far by its Sigmadot
    for level in range(2, depth + 2):
        rest = math.pi - theta
        rho = (sin + rest * cos) / math.pi  # Sigma^level / (|x| |x'|) before the readout's 1/2
        scale = 0.5 if level == depth + 1 else 1.0
        ntk = ntk * (rest / math.pi * scale)
        if level <= depth or train_output:
            ntk = ntk + norms * rho * scale
        if level <= depth:
            one_minus_cos = ((math.pi * one_minus_cos + theta * cos - sin) / math.pi).clamp(0, 1)
            sin = (one_minus_cos * (1 + rho)).sqrt()
            cos = rho
            theta = torch.atan2(sin, cos)
    return ntk
