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

--calibrate, on this CPU host (one thread per actor): tools/cpu_calibration.py measures the
plan's rates one by one, then runs real `fntk gram` jobs on 1, 2 and 4 actors against the
model fed those rates. The host's cores are part of the model: 4 actors on 2 cores time-share
them.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cpu_calibration import calibrate  # noqa: E402

from fntk_dist.gram.grid_plan import (  # noqa: E402
    factor_pairs,
    h100_rates,
    plan,
    predict,
    tile_costs,
)
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
    ap.add_argument("--kernel-rounds", type=int, default=5,
                    help="--calibrate: rounds over the kernel's widths")
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
