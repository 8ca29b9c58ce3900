"""Torch dtypes and devices by name, and this process's memory: shared by the numerical core
and every job."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator

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


def to_host(t: torch.Tensor) -> torch.Tensor:
    """t on the CPU (t itself when it is there). From a GPU, through page-locked memory from
    torch's caching host allocator, which keeps freed blocks for the next copy of that size: a
    job's tiles and partials reuse one. On an H100 host, 1 GB moved in 0.0195 s so, against
    0.82 s by .cpu() into freshly allocated pageable memory (page faults and the driver's
    staging; docs/gpu/README.md)."""
    if t.device.type == "cpu":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t)


@contextlib.contextmanager
def ieee_float32(device: torch.device) -> Iterator[None]:
    """float32 matrix products in IEEE float32 on CUDA while inside, whatever the process set
    (TF32 rounds their inputs to 10 bits of mantissa, which moves pre-activations enough to
    flip activation signs, so it must not reach the NTK's terms); restored on exit.

    Uses the backend's own flag (torch.backends.cuda.matmul.fp32_precision), which reads and
    restores any of the legacy, global and new TF32 settings without mixing them. A no-op on
    the CPU, whose float32 products are IEEE already.
    """
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = before


def free_device_bytes(device: torch.device) -> int:
    """Bytes a CUDA device can still give this process: what the driver reports free plus what
    torch's caching allocator holds unused (it keeps freed blocks reserved, so the driver's
    figure alone would shrink after every step that ran)."""
    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def rss_bytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far."""
    # The kernel updates its high-water mark lazily: it may lag the resident memory now.
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rss_bytes())
