"""The scaling model's CPU check on this host (`python tools/scaling_model.py --calibrate`):
the rates of the grid plan (fntk_dist.gram.grid_plan.Rates) measured one by one, then real
`fntk gram` jobs on 1, 2 and 4 one-thread actors against the model fed those rates.

Measured: the tile kernel's seconds in a one-thread actor on off-diagonal tiles, against
neurons per block and against the tile's rows, and on diagonal tiles (fitted: peak, half-rate
width, seconds per pre-activation and per operand row of its products), the jobs' kernel again
on one actor per core at once (the rate each keeps then), the first tiles of fresh actors
beyond later ones (cold start), a Ray call's overhead and the bytes/s of a partial returned by
an actor, a root's finish of a tile, the bytes/s of writing a tile file and the driver's commit
of one against its bytes. The jobs run interleaved, --repeats times, on one embedded Ray
cluster; measured: median [min-max] of each job's tile seconds, and per tile the phases the job
times (its summary's tile_phase_seconds) beside the model's.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from gpu_scaling import stage_and_commit
from timing import spread, wall_times

from fntk_dist.config import build_config
from fntk_dist.gram.grid_plan import (
    CPU_RATES,
    TileCosts,
    kernel_seconds,
    phase_seconds,
    predict,
    tile_costs,
)
from fntk_dist.gram.tiles import PHASES
from fntk_dist.models.config import ModelConfig


def _median_seconds(fn, repeats: int) -> float:
    return statistics.median(wall_times(fn, repeats))


class KernelProbe:
    """A one-thread actor timing span_partial where a Gram shard runs it: its own process, with
    Ray's threads beside it and its freed memory kept, on tile x tile off-diagonal tiles."""

    def __init__(self, mode: str, k: int, d: int, tile: int) -> None:
        from fntk_dist.memory import keep_freed_memory

        keep_freed_memory()
        torch.set_num_threads(1)
        self.model = ModelConfig(mode=mode, m=1024, k=k)
        self.tile = tile
        self.x = torch.randn(4 * tile, d, dtype=torch.float64)

    def _seconds(self, net, span) -> float:
        from fntk_dist.gram.executor import span_partial

        start = time.perf_counter()
        span_partial(net, self.x, span, None)
        return time.perf_counter() - start

    def cold(self, m: int) -> float:
        """Seconds the first two tiles of this fresh process take beyond its later ones (a
        Gram job's first tiles fault their memory in as these do), at m neurons."""
        net = self.model.model_copy(update={"m": m}).build(self.x.shape[1])
        t = self.tile
        spans = [((i * t, (i + 1) * t), (j * t, (j + 1) * t))
                 for i, j in ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3))]
        seconds = [self._seconds(net, span) for span in spans]
        return seconds[0] + seconds[1] - 2 * statistics.median(seconds[2:])

    def kernel(self, cases: list[tuple[int, int, bool]], rounds: int) -> list[float]:
        """The median seconds of each (neurons, tile rows, diagonal) case's tile over `rounds`
        rounds, the cases taken in turn each round (so a slow spell of the host falls on all
        of them): an off-diagonal tile, or a diagonal one (the symmetric path)."""
        d = self.x.shape[1]
        nets = {w: self.model.model_copy(update={"m": w}).build(d) for w, _, _ in cases}
        seconds: list[list[float]] = [[] for _ in cases]
        for _ in range(rounds + 1):  # the first round warms every case's memory up
            for times, (w, t, diag) in zip(seconds, cases):
                times.append(self._seconds(nets[w], ((0, t), (0, t) if diag else (t, 2 * t))))
        return [statistics.median(times[1:]) for times in seconds]


def fit_kernel(samples: list[tuple[TileCosts, int, float]]
               ) -> tuple[float, float, float, float]:
    """(peak FLOP/s, half-rate width, seconds per pre-activation, seconds per operand row) of
    the plan's kernel_seconds fitted to (tile, neurons, seconds) samples: for each half-rate
    width on a grid, the three others by least squares in relative error (weights 1/t^2: thin
    kernels, which take milliseconds, count as much as wide ones), none negative (a term whose
    coefficient would be is left out); the half-rate width of least residual. On off-diagonal
    tiles the pre-activations and the operand rows grow alike: diagonal tiles tell them
    apart."""
    best = None
    for half in [0.0] + [4 * 1.25 ** i for i in range(40)]:
        unit = replace(CPU_RATES, peak_flops=1.0, half_width=half, call_s=0.0, activation_s=0.0,
                       operand_s=0.0, count_flops=None)
        # Each term of kernel_seconds alone, at a unit coefficient.
        terms = [unit, replace(unit, peak_flops=math.inf, activation_s=1.0),
                 replace(unit, peak_flops=math.inf, operand_s=1.0)]
        a = np.array([[kernel_seconds(c, w, r) / t for r in terms] for c, w, t in samples])
        for keep in ([0, 1, 2], [0, 1], [0, 2], [0]):
            coef = np.linalg.lstsq(a[:, keep], np.ones(len(a)), rcond=None)[0]
            if (coef < 0).any() or coef[0] == 0:
                continue
            full = np.zeros(3)
            full[keep] = coef
            residual = float(((a @ full - 1) ** 2).sum())
            if best is None or residual < best[0]:
                best = (residual, half, full)
    if best is None:
        raise SystemExit("cpu_calibration: no positive kernel rate fits the measured seconds "
                         f"{[round(t, 6) for _, _, t in samples]}")
    _, half, (inv_peak, act_s, operand_s) = best
    return float(1 / inv_peak), half, float(act_s), float(operand_s)


def calibrate_kernel(args: argparse.Namespace) -> tuple[float, ...]:
    """(peak FLOP/s, half-rate width, seconds per pre-activation, seconds per operand row, cold
    seconds, shared rate) of one thread's tile kernel, measured in one-thread actors:
    fit_kernel over off-diagonal tiles of job_tile rows for several neuron counts and of half
    and twice as many rows at the jobs' width, and diagonal tiles of those three sizes at the
    jobs' width; cold: the median over three fresh actors of their first tiles' seconds beyond
    later ones, at the jobs' width; shared: that kernel's rate on one actor per core at once
    against its rate alone (medians of three turns each, at most 1)."""
    import ray

    probe = ray.remote(num_cpus=1)(KernelProbe)
    colds = []
    for _ in range(3):
        actor = probe.remote(args.cal_mode, args.k, args.cal_d, args.job_tile)
        colds.append(ray.get(actor.cold.remote(args.job_m)))
        ray.kill(actor)
    cold = max(0.0, statistics.median(colds))
    model = ModelConfig(mode=args.cal_mode, m=1024, k=args.k)
    tile = args.job_tile
    cases = [(w, tile, False) for w in (2 ** i for i in range(4, 16))
             if args.k <= w <= args.job_m]
    cases += [(args.job_m, tile // 2, False), (args.job_m, 2 * tile, False)]
    cases += [(args.job_m, t, True) for t in (tile // 2, tile, 2 * tile)]
    actor = probe.remote(args.cal_mode, args.k, args.cal_d, tile)
    seconds = ray.get(actor.kernel.remote(cases, args.kernel_rounds))
    ray.kill(actor)
    # The jobs' kernel on one actor, then on one actor per core at once, in turn three
    # times: the rate each keeps when every core is busy (at most the rate alone).
    cores = CPU_RATES.cores or 1
    actors = [probe.remote(args.cal_mode, args.k, args.cal_d, tile) for _ in range(cores)]
    alone, together = [], []
    job = [(args.job_m, tile, False)]
    for _ in range(3):
        alone += ray.get(actors[0].kernel.remote(job, args.kernel_rounds))
        together += [s[0] for s in ray.get([a.kernel.remote(job, args.kernel_rounds)
                                            for a in actors])]
    for a in actors:
        ray.kill(a)
    shared_rate = min(1.0, statistics.median(alone) / statistics.median(together))
    shape = {(t, diag): next(c for c in tile_costs(model, args.cal_d, 2 * t, t)
                             if c.diagonal == diag) for _, t, diag in cases}
    samples = [(shape[t, diag], w, s) for (w, t, diag), s in zip(cases, seconds)]
    peak, half, act_s, operand_s = fit_kernel(samples)
    fitted = replace(CPU_RATES, peak_flops=peak, half_width=half, activation_s=act_s,
                     operand_s=operand_s, call_s=0.0, count_flops=None)
    print(f"kernel, a one-thread actor (seconds, median of {args.kernel_rounds} rounds):")
    for (w, t, diag), s in zip(cases, seconds):
        model_s = kernel_seconds(shape[t, diag], w, fitted)
        print(f"  {'diagonal' if diag else 'off-diagonal':>12}, {w:5d} neurons, {t:4d} rows: "
              f"{s:.4f} s  model {model_s:.4f} s ({100 * (model_s - s) / s:+.0f} %)")
    print(f"  {args.job_m} neurons, {tile} rows, alone, then on {cores} actors at once, three "
          f"times: {spread(alone)} s, {spread(together)} s: {shared_rate:.2f} of the rate "
          f"alone")
    print(f"cold start, m={args.job_m}, three fresh actors: "
          f"{', '.join(f'{1e3 * c:.1f}' for c in colds)} ms")
    return peak, half, act_s, operand_s, cold, shared_rate


def calibrate_ray(args: argparse.Namespace) -> tuple[float, float]:
    """(seconds per call, bytes/s of a returned partial) between a one-thread actor and this
    process: a GramPartial's sum as the job ships it."""
    import ray

    from fntk_dist.ntk import NeuronSum

    @ray.remote(num_cpus=1)
    class Echo:
        def __init__(self, nbytes: int) -> None:
            torch.set_num_threads(1)
            self.block = NeuronSum(("layer0", "U"), torch.ones(nbytes // 8, dtype=torch.float64))

        def noop(self) -> None:
            return None

        def partial(self) -> NeuronSum:
            return self.block

    nbytes = args.job_tile * args.job_tile * 8  # one ROWS term of a tile
    actor = Echo.remote(nbytes)
    ray.get(actor.noop.remote())
    call = _median_seconds(lambda: ray.get(actor.noop.remote()), 50)
    moved = _median_seconds(lambda: ray.get(actor.partial.remote()), 10)
    ray.kill(actor)
    return call, nbytes / max(moved - call, 1e-9)


def calibrate_root(args: argparse.Namespace) -> tuple[float, float, float, float, float]:
    """(seconds per tile, FLOP/s) of a root's finish (finish_span, fitted on two tile sizes),
    bytes/s of staging a tile file beside a store (those two sizes), and (seconds, bytes/s) of
    the driver's commit, fitted over them and a tile of four times the rows (its journal's
    fsync writes the staged tile to disk first)."""
    from fntk_dist.gram.executor import finish_span, span_partial
    from fntk_dist.gram.grid_plan import _finish_flops
    from fntk_dist.gram.tile_file import warm_up
    from fntk_dist.gram.tile_store import TileStore

    warm_up()
    model = ModelConfig(mode=args.cal_mode, m=64, k=args.k)
    net = model.build(args.cal_d)
    points, stored, commits = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for tile in (args.job_tile // 2, args.job_tile, 4 * args.job_tile):
            store = TileStore.create_or_open(Path(tmp) / f"s{tile}", config_hash="calibrate",
                                             n=2 * tile, tile=tile)
            block = np.full((tile, tile), 0.5)
            if tile <= args.job_tile:
                x = torch.randn(2 * tile, args.cal_d, dtype=torch.float64)
                span = ((0, tile), (tile, 2 * tile))
                part = span_partial(net, x, span, None)
                flops = _finish_flops(net, tile, tile, tile_costs(
                    model, args.cal_d, 2 * tile, tile)[0].fixed_flops)
                away = store.target(0, 1, reachable=False)  # the finish alone, no file
                seconds = _median_seconds(
                    lambda part=part, x=x, span=span, away=away: finish_span(
                        net, x, part, span, away), 5)
                points.append((flops, seconds))
            # The file (its own rate: bytes), then the driver's commit of it.
            for stage_s, commit_s in stage_and_commit(store, [(0, 0), (0, 1), (1, 1)], block):
                if tile <= args.job_tile:
                    stored.append(block.nbytes / stage_s)
                commits.append((block.nbytes, commit_s))
    (f1, t1), (f2, t2) = points
    rate = (f2 - f1) / max(t2 - t1, 1e-9)
    # commit = commit_s + bytes / flush, least squares over the three sizes
    slope, intercept = statistics.linear_regression([b for b, _ in commits],
                                                    [t for _, t in commits])
    flush = 1 / slope if slope > 0 else math.inf
    commit = max(0.0, intercept) if slope > 0 else statistics.median(t for _, t in commits)
    return (max(0.0, t1 - f1 / rate), rate, statistics.median(stored), commit, flush)


def job_config(model: dict, n: int, d: int, tile: int, workers: int,
               grid: tuple[int, int] | None = None) -> object:
    return build_config({
        "model": {"dtype": "float64", **model},
        "data": {"source": "sphere", "n": n, "d": d},
        "dist": {"workers": workers, **({"grid": list(grid)} if grid else {})},
        "gram": {"tile": tile, "device": "cpu", "certify": False},
        "tracking": {"wandb": False},
    }, source="scaling_model")


def run_job(cfg) -> tuple[float, tuple[int, int] | None, dict[str, float]]:
    """A real `fntk gram` job into a fresh store: (its tile seconds, the grid it ran, where
    its tiles' seconds went: the summary's tile_phase_seconds, per tile). Tile seconds: the
    wall time from the first tile submitted to the last stored (the store's tile_seconds),
    without starting and stopping the actors."""
    from fntk_dist.gram.job import run_gram_job

    with tempfile.TemporaryDirectory() as tmp:
        summary = run_gram_job(cfg, Path(tmp) / "gram", progress=False)
    grid = summary.get("grid")
    tiles = summary["tiles_computed"]
    phases = {name: s / tiles for name, s in summary["tile_phase_seconds"].items()}
    return summary["tile_seconds"], (tuple(grid) if grid else None), phases


def calibrate(args: argparse.Namespace) -> None:
    import os

    from fntk_dist.distributed.cluster import connect

    load = os.getloadavg()[0]
    print(f"load average before: {load:.2f} (cores: {os.cpu_count()})")
    connect(None, min_cpus=max(args.workers))
    peak, half, act_s, operand_s, cold, shared_rate = calibrate_kernel(args)
    call, link = calibrate_ray(args)
    finish_s, finish_rate, store_rate, commit, flush = calibrate_root(args)
    rates = replace(CPU_RATES, peak_flops=peak, half_width=half, call_s=call,
                    link_bytes_s=link, finish_flops=finish_rate, finish_s=finish_s,
                    store_bytes_s=store_rate, commit_s=commit, cold_s=cold,
                    shared_rate=shared_rate, activation_s=act_s, operand_s=operand_s,
                    flush_bytes_s=flush)
    print(f"calibrated: {rates}")
    model = {"mode": args.cal_mode, "m": args.job_m, "k": args.k}
    if args.cal_mode == "sketch_in":
        model["sketch"] = "gaussian"
    measured: dict[int, list[float]] = {w: [] for w in args.workers}
    went: dict[int, list[dict[str, float]]] = {w: [] for w in args.workers}
    shapes: dict[int, tuple[int, int] | None] = {}
    for _ in range(args.repeats):  # interleaved: 1, 2, 4, 1, 2, 4, ...
        for workers in args.workers:
            seconds, grid, phases = run_job(job_config(model, args.job_n, args.cal_d,
                                                       args.job_tile, workers))
            measured[workers].append(seconds)
            went[workers].append(phases)
            shapes[workers] = grid
    mc = ModelConfig(**model)
    costs = tile_costs(mc, args.cal_d, args.job_n, args.job_tile)
    print(f"\n`fntk gram` jobs: n={args.job_n} d={args.cal_d} m={args.job_m} k={args.k} "
          f"{args.cal_mode}, tile={args.job_tile}, float64, one thread per actor, "
          f"{args.repeats} repeats; load average after: {os.getloadavg()[0]:.2f}")
    print(f"{'actors':>6} {'grid':>5} {'measured s (median [min-max])':>32} {'predicted s':>12} "
          f"{'error':>7}")
    for workers in args.workers:
        grid = shapes[workers] or (workers, 1)  # an executor without grids: the width split
        p = predict(costs, mc.m, grid[0], grid[1], rates)
        med = statistics.median(measured[workers])
        print(f"{workers:6d} {grid[0]:>2}x{grid[1]:<2} {spread(measured[workers]):>32} "
              f"{p.total_s:12.4f} {100 * (p.total_s - med) / med:+6.1f}%")
    print("per tile, ms: the jobs' tile_phase_seconds (medians) and the model's (in parentheses)")
    for workers in args.workers:
        grid = shapes[workers] or (workers, 1)
        model_ms = phase_seconds(costs, mc.m, grid, rates)
        print(f"{workers:6d} {grid[0]:>2}x{grid[1]:<2} " + "  ".join(
            f"{name} {1e3 * statistics.median(w[name] for w in went[workers]):.1f} "
            f"({1e3 * model_ms[name]:.1f})" for name in PHASES))
