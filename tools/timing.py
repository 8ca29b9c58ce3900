"""Timing helpers shared by the benchmarks in tools/ (run them as `python tools/bench_*.py`)."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable


def wall_times(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times of `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls, after one warm-up call."""
    return min(wall_times(fn, repeats))


def per_call(fn: Callable[[], object], repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(median wall time of `repeats` calls, minor page faults per call), after `warmup` calls.

    Faults are the whole process's (every thread), ru_minflt of getrusage."""
    for _ in range(warmup):
        fn()
    times = []
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    return statistics.median(times), faults / repeats


def spread(values: list[float], fmt: str = "{:.4f}") -> str:
    """'median [min-max]' of values."""
    return (f"{fmt.format(statistics.median(values))} "
            f"[{fmt.format(min(values))}-{fmt.format(max(values))}]")
