"""The infinite-width NTK of f(x) = (1/sqrt(m)) sum a_r relu(<w_r, x>), w_r ~ N(0, I).

With theta_ij the angle between x_i and x_j (DESIGN section 3):
    W part: <x_i, x_j> (pi - theta_ij) / (2 pi)
    a part: |x_i| |x_j| (sin theta_ij + (pi - theta_ij) cos theta_ij) / (2 pi)
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _as_float64(x: object, name: str) -> torch.Tensor:
    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] < 1:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a 2-D array (n, d) with n >= 1, got {shape}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return t


def analytic_ntk(
    x1: torch.Tensor, x2: torch.Tensor | None = None, train_output: bool = False
) -> torch.Tensor:
    """H_inf(X1, X2) in float64: the W part, plus the a part when train_output."""
    a = _as_float64(x1, "X")
    b = a if x2 is None else _as_float64(x2, "X2")
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"X2: expected {a.shape[1]} columns like X, got {b.shape[1]}")
    dots = a @ b.T
    norms = a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :]
    cos = torch.where(norms > 0, dots / norms.clamp_min(1e-300), torch.zeros_like(dots))
    cos = cos.clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    h = dots * (math.pi - theta) / (2 * math.pi)
    if train_output:
        h = h + norms * (torch.sin(theta) + (math.pi - theta) * cos) / (2 * math.pi)
    return h
