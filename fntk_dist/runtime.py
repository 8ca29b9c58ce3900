"""Torch dtypes and devices by name, and this process's memory: shared by the numerical core
and every job."""

from __future__ import annotations

import os
import resource

import torch

from .errors import ConfigError

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch.float32/float64, or their names; ValueError naming `dtype` otherwise."""
    dt = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dt not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected float32 or float64, got {dtype!r}")
    return dt


def resolve_device(name: str, key: str) -> torch.device:
    """'auto' (CUDA when present), 'cpu' or 'cuda'; key names the config field in errors."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: cuda asked for, but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timers around GPU work need it; a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far."""
    # The kernel updates its high-water mark lazily: it may lag the resident memory now.
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rss_bytes())
