"""Scaling model: the Gram tile sweep and a training step from 1 to 1,024 GPUs, and its CPU
version checked on this host.

    python tools/scaling_model.py                # GPU predictions (H100 figures, as parameters)
    python tools/scaling_model.py --calibrate    # CPU: measure the rates, then real `fntk gram`
                                                 # jobs on 1, 2 and 4 actors against the model

The Gram: fntk_dist.gram.grid_plan's model of a W x R actor grid (W width shards, R row groups),
for the width-only layout (W = N, R = 1) and the grid of least predicted time. A training step
(fntk_dist.distributed.mesh, W width shards x D data replicas, strong scaling at a fixed global
batch): each rank's share of the step's FLOPs (the net's own count, fntk_dist.models.cost,
split into what every width shard repeats and what it divides) at the GEMM rate, or its
activations through HBM if slower; then the per-step all-reduces, ring cost 2 (p - 1) / p of the
bytes over the link plus 2 (p - 1) latencies: every gradient over the data group, and over the
width group the readout's partial sums and a first-layer V's gradient (DESIGN section 7).
Nothing overlaps in the model (DeepSpeed overlaps some of the data all-reduce with backward:
the times are upper bounds on that account). GPU figures are predictions, never measured here.

--calibrate, on this CPU host (one thread per actor): the tile kernel's rate against neurons per
block (fitted peak and half-rate width), a Ray call's overhead and the bytes/s of a partial
returned by an actor, a root's finish of a tile, the bytes/s of writing a tile file and the
driver's commit of one; then `fntk gram` jobs (run_gram_job, one
embedded Ray cluster) on 1, 2 and 4 actors, interleaved, --repeats times, measured (median
[min-max] of the job's tile seconds) against predicted with the calibrated rates. The host's
cores are part of the model: 4 actors on 2 cores time-share them.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import spread, wall_times  # noqa: E402

from fntk_dist.config import build_config  # noqa: E402
from fntk_dist.gram.grid_plan import (  # noqa: E402
    CPU_RATES,
    factor_pairs,
    h100_rates,
    plan,
    predict,
    tile_costs,
)
from fntk_dist.gram.tile_file import stage_tile  # noqa: E402
from fntk_dist.models.blocks import BYTES_PER_ACTIVATION  # noqa: E402
from fntk_dist.models.config import ModelConfig  # noqa: E402

GPUS = [2 ** i for i in range(11)]  # 1 .. 1,024
HBM_BYTES_S = 3.35e12
COLLECTIVE_LATENCY_S = 20e-6  # one step of a ring all-reduce between nodes


# -- GPU predictions ------------------------------------------------------------------------
def gram_table(args: argparse.Namespace, shared_store: bool) -> None:
    model = ModelConfig(mode=args.mode, m=args.m, k=args.k, dtype=args.gram_dtype)
    rates = h100_rates(args.gram_dtype, args.link_gbs * 1e9, shared_store)
    where = ("each row group's root finishes its tiles on its GPU and writes them to a shared "
             "filesystem" if shared_store else "roots finish on their GPU and send each tile "
             "to the driver, which writes it")
    costs = tile_costs(model, args.d, args.n, args.tile)
    tiles = sum(c.count for c in costs)
    alone = predict(costs, model.m, 1, 1, rates).total_s
    print(f"\nGram sweep (predicted): n={args.n} d={args.d} m={args.m} k={args.k} {args.mode}, "
          f"tile={args.tile} ({tiles} tiles), {rates.name}, link {args.link_gbs:g} GB/s, "
          f"tile files {rates.store_bytes_s / 1e9:g} GB/s; {where}")
    print(f"{'GPUs':>5} | {'width-only s':>12} {'eff':>5} | {'grid':>8} {'s':>9} {'eff':>5} "
          f"{'GB/actor':>9} {'driver s':>9}")
    for n_gpus in args.gpus:
        width = predict(costs, model.m, n_gpus, 1, rates) if n_gpus <= model.m else None
        best = plan(model, args.n, args.d, args.tile, n_gpus, rates)[0]
        w_s = f"{width.total_s:12.4g} {alone / (n_gpus * width.total_s):5.2f}" if width \
            else f"{'-':>12} {'-':>5}"
        print(f"{n_gpus:5d} | {w_s} | {best.width:>4}x{best.rows:<3} {best.total_s:9.4g} "
              f"{best.efficiency:5.2f} {best.bytes_per_actor / 1e9:9.3g} {best.driver_s:9.3g}")


def _ring(bytes_: float, p: int, link: float) -> float:
    """Seconds of a ring all-reduce of `bytes_` over p ranks."""
    if p == 1:
        return 0.0
    return 2 * (p - 1) / p * bytes_ / link + 2 * (p - 1) * COLLECTIVE_LATENCY_S


def step_seconds(model: ModelConfig, d: int, batch: int, width: int, data: int,
                 flops_s: float, link: float, elem_bytes: int) -> tuple[float, float]:
    """(compute, communication) seconds of one training step on a width x data mesh."""
    net = model.build(d, neurons=(0, 1))
    wider = model.model_copy(update={"m": 2 * model.m}).build(d, neurons=(0, 1))
    cost, cost2 = net.cost(), wider.cost()
    per_neuron = (cost2.train_step_flops - cost.train_step_flops) / model.m
    fixed = cost.train_step_flops - per_neuron * model.m
    params_n = (cost2.trainable_params - cost.trainable_params) / model.m
    params_fixed = cost.trainable_params - params_n * model.m  # held whole by every shard
    shard, points = math.ceil(model.m / width), math.ceil(batch / data)
    flops = points * (fixed + per_neuron * shard)
    traffic = points * shard * BYTES_PER_ACTIVATION  # the blocks' activations through HBM
    compute = max(flops / flops_s, traffic / HBM_BYTES_S)
    grads = (params_fixed + params_n * shard) * elem_bytes
    comm = _ring(grads, data, link)
    comm += _ring(points * elem_bytes + params_fixed * elem_bytes, width, link)
    return compute, comm


def train_table(args: argparse.Namespace) -> None:
    model = ModelConfig(mode=args.mode, m=args.m, k=args.k, dtype="float32")
    flops_s = {"float32": 51e12, "bf16": 795e12}[args.train_dtype]
    elem = {"float32": 4, "bf16": 2}[args.train_dtype]
    link = args.link_gbs * 1e9

    def total(w: int, dr: int) -> tuple[float, float, float]:
        c, m = step_seconds(model, args.d, args.batch, w, dr, flops_s, link, elem)
        return c + m, c, m

    alone = total(1, 1)[0]
    print(f"\nTraining step (predicted): batch={args.batch} d={args.d} m={args.m} k={args.k} "
          f"{args.mode}, {args.train_dtype} GEMM {flops_s / 1e12:g} TFLOP/s, HBM "
          f"{HBM_BYTES_S / 1e12:g} TB/s, link {args.link_gbs:g} GB/s")
    print(f"{'GPUs':>5} | {'width-only s':>12} {'eff':>5} | {'mesh WxD':>9} {'s':>9} "
          f"{'compute':>9} {'comm':>9} {'eff':>5}")
    for n_gpus in args.gpus:
        w_only = total(n_gpus, 1) if n_gpus <= model.m else None
        shapes = [(total(w, dr), w, dr) for w, dr in factor_pairs(n_gpus, model.m)
                  if dr <= args.batch]
        (t, c, m), w, dr = min(shapes)
        w_s = f"{w_only[0]:12.4g} {alone / (n_gpus * w_only[0]):5.2f}" if w_only \
            else f"{'-':>12} {'-':>5}"
        print(f"{n_gpus:5d} | {w_s} | {w:>4}x{dr:<4} {t:9.4g} {c:9.3g} {m:9.3g} "
              f"{alone / (n_gpus * t):5.2f}")


# -- CPU calibration ------------------------------------------------------------------------
def _median_seconds(fn, repeats: int) -> float:
    return statistics.median(wall_times(fn, repeats))


def calibrate_kernel(args: argparse.Namespace) -> tuple[float, float]:
    """(peak FLOP/s, half-rate width) of one thread's tile kernel: span_partial on a
    tile x tile off-diagonal tile for several neuron counts, t(w) = (fixed + per_neuron (w +
    half)) / peak fitted (linear in w). Freed memory kept, as the actors keep it."""
    from fntk_dist.gram.executor import span_partial
    from fntk_dist.memory import keep_freed_memory

    keep_freed_memory()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = ModelConfig(mode=args.cal_mode, m=1024, k=args.k)
    tile = args.job_tile
    x = torch.randn(2 * tile, args.cal_d, dtype=torch.float64)
    span = ((0, tile), (tile, 2 * tile))
    costs = [c for c in tile_costs(model, args.cal_d, 2 * tile, tile) if not c.diagonal][0]
    widths = [w for w in (2 ** i for i in range(4, 16)) if args.k <= w <= args.job_m]
    seconds = []
    for w in widths:
        net = model.model_copy(update={"m": w}).build(args.cal_d)
        seconds.append(_median_seconds(lambda net=net: span_partial(net, x, span, None), 3))
    torch.set_num_threads(threads)
    # Least squares in relative error (weights 1/t^2): thin blocks, which take milliseconds,
    # count as much as wide ones.
    wts = [1 / t ** 2 for t in seconds]
    sw = sum(wts)
    mean_w = sum(c * w for c, w in zip(wts, widths)) / sw
    mean_t = sum(c * t for c, t in zip(wts, seconds)) / sw
    slope = (sum(c * (w - mean_w) * (t - mean_t) for c, w, t in zip(wts, widths, seconds))
             / sum(c * (w - mean_w) ** 2 for c, w in zip(wts, widths)))
    intercept = mean_t - slope * mean_w
    peak = costs.per_neuron_flops / slope
    half = max(0.0, (intercept * peak - costs.fixed_flops) / costs.per_neuron_flops)
    print("kernel, one thread (neurons: seconds, GFLOP/s):")
    for w, t in zip(widths, seconds):
        flops = costs.fixed_flops + costs.per_neuron_flops * w
        model_s = (costs.fixed_flops + costs.per_neuron_flops * (w + half)) / peak
        print(f"  {w:5d}: {t:.4f} s  {flops / t / 1e9:6.1f}  model {model_s:.4f} s")
    return peak, half


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


def calibrate_root(args: argparse.Namespace) -> tuple[float, float, float, float]:
    """(seconds per tile, FLOP/s) of a root's finish (finish_span, fitted on two tile sizes),
    bytes/s of staging a tile file beside a store, and seconds of the driver's commit."""
    from fntk_dist.gram.executor import finish_span, span_partial
    from fntk_dist.gram.grid_plan import _finish_flops
    from fntk_dist.gram.tile_file import warm_up
    from fntk_dist.gram.tile_store import TileStore

    warm_up()
    model = ModelConfig(mode=args.cal_mode, m=64, k=args.k)
    net = model.build(args.cal_d)
    points, stored, commits = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for tile in (args.job_tile // 2, args.job_tile):
            x = torch.randn(2 * tile, args.cal_d, dtype=torch.float64)
            span = ((0, tile), (tile, 2 * tile))
            part = span_partial(net, x, span, None)
            flops = _finish_flops(net, tile, tile, tile_costs(
                model, args.cal_d, 2 * tile, tile)[0].fixed_flops)
            store = TileStore.create_or_open(Path(tmp) / f"s{tile}", config_hash="calibrate",
                                             n=2 * tile, tile=tile)
            away = store.target(0, 1, reachable=False)  # the finish alone, no file
            seconds = _median_seconds(
                lambda part=part, x=x, span=span, away=away: finish_span(net, x, part, span,
                                                                           away), 5)
            points.append((flops, seconds))
            block = finish_span(net, x, part, span, away)
            for _ in range(5):  # the tile file (its own rate: bytes), then the driver's commit
                t0 = time.perf_counter()
                staged = stage_tile(store.target(0, 1), block)
                t1 = time.perf_counter()
                store.commit(0, 1, staged)
                stored.append(staged.bytes / (t1 - t0))
                commits.append(time.perf_counter() - t1)
    (f1, t1), (f2, t2) = points
    rate = (f2 - f1) / max(t2 - t1, 1e-9)
    return max(0.0, t1 - f1 / rate), rate, statistics.median(stored), statistics.median(commits)


def job_config(model: dict, n: int, d: int, tile: int, workers: int,
               grid: tuple[int, int] | None = None) -> object:
    return build_config({
        "model": {"dtype": "float64", **model},
        "data": {"source": "sphere", "n": n, "d": d},
        "dist": {"workers": workers, **({"grid": list(grid)} if grid else {})},
        "gram": {"tile": tile, "device": "cpu", "certify": False},
        "tracking": {"wandb": False},
    }, source="scaling_model")


def run_job(cfg) -> tuple[float, tuple[int, int] | None]:
    """A real `fntk gram` job into a fresh store: (its tile seconds, the grid it ran). Tile
    seconds: the wall time from the first tile submitted to the last stored (the store's
    tile_seconds), without starting and stopping the actors."""
    from fntk_dist.gram.job import run_gram_job

    with tempfile.TemporaryDirectory() as tmp:
        summary = run_gram_job(cfg, Path(tmp) / "gram", progress=False)
    grid = summary.get("grid")
    return summary["tile_seconds"], (tuple(grid) if grid else None)


def calibrate(args: argparse.Namespace) -> None:
    import os

    from fntk_dist.distributed.cluster import connect

    load = os.getloadavg()[0]
    print(f"load average before: {load:.2f} (cores: {os.cpu_count()})")
    peak, half = calibrate_kernel(args)
    connect(None, min_cpus=max(args.workers))
    call, link = calibrate_ray(args)
    finish_s, finish_rate, store_rate, commit = calibrate_root(args)
    rates = replace(CPU_RATES, peak_flops=peak, half_width=half, call_s=call,
                    link_bytes_s=link, finish_flops=finish_rate, finish_s=finish_s,
                    store_bytes_s=store_rate, commit_s=commit)
    print(f"calibrated: {rates}")
    model = {"mode": args.cal_mode, "m": args.job_m, "k": args.k}
    if args.cal_mode == "sketch_in":
        model["sketch"] = "gaussian"
    measured: dict[int, list[float]] = {w: [] for w in args.workers}
    shapes: dict[int, tuple[int, int] | None] = {}
    for _ in range(args.repeats):  # interleaved: 1, 2, 4, 1, 2, 4, ...
        for workers in args.workers:
            seconds, grid = run_job(job_config(model, args.job_n, args.cal_d, args.job_tile,
                                               workers))
            measured[workers].append(seconds)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibrate", action="store_true", help="the CPU check on this host")
    ap.add_argument("--gpus", type=int, nargs="+", default=GPUS)
    ap.add_argument("--n", type=int, default=262144, help="Gram: points")
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--m", type=int, default=65536)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--mode", default="sketch_in")
    ap.add_argument("--tile", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=65536, help="training: global batch")
    ap.add_argument("--gram-dtype", default="float32", choices=["float32", "float64"],
                    help="the net's (its tiles'); the 0/1 mask products run in bf16 either way")
    ap.add_argument("--train-dtype", default="bf16", choices=["float32", "bf16"])
    ap.add_argument("--link-gbs", type=float, default=25.0, help="GB/s per GPU between nodes")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cal-mode", default="sketch_in")
    ap.add_argument("--cal-d", type=int, default=256)
    ap.add_argument("--job-n", type=int, default=2048)
    ap.add_argument("--job-m", type=int, default=8192)
    ap.add_argument("--job-tile", type=int, default=512)
    args = ap.parse_args()
    if args.calibrate:
        calibrate(args)
    else:
        gram_table(args, shared_store=True)
        gram_table(args, shared_store=False)
        train_table(args)


if __name__ == "__main__":
    main()
