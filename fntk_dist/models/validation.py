"""Argument checks shared by the models and the kernels: clear ValueErrors naming the argument."""

from __future__ import annotations

import numpy as np
import torch

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch.float32/float64, or their names."""
    dt = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dt not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected float32 or float64, got {dtype!r}")
    return dt


def check_inputs(x: object, d: int, name: str = "X") -> None:
    """x must be a finite (n, d) tensor with n >= 1."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != d or x.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (n, {d}) with n >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")
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
