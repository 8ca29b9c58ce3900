"""Input checks shared by the models and the kernels: clear ValueErrors naming the argument.

Two levels, because a network's forward must stay traceable: check_shape looks at the shape and
dtype only (no data-dependent branch, so torch.func.vmap/jacrev and compilers see one graph),
while the public entry points (Grams, mat-vecs) call prepare_inputs once per call, which also
scans the values for NaN and Inf.
"""

from __future__ import annotations

import numpy as np
import torch


def check_shape(x: object, d: int, name: str = "X") -> None:
    """x must be a floating-point (n, d) tensor with n >= 1 (its values are not read)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != d or x.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (n, {d}) with n >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")


def check_inputs(x: object, d: int, name: str = "X") -> None:
    """x must be a finite (n, d) tensor with n >= 1."""
    check_shape(x, d, name)
    bad = ~torch.isfinite(x)
    if bad.any():
        row = int(bad.any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{name}: contains NaN or Inf (first at row {row})")


def prepare_inputs(
    x: object, d: int, dtype: torch.dtype, device: torch.device, name: str = "X"
) -> torch.Tensor:
    """A checked (n, d) tensor (numpy accepted) in the given dtype and device."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    check_inputs(x, d, name)
    return x.to(dtype=dtype, device=device)
