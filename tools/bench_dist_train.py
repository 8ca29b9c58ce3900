"""Benchmark: `fntk train --workers` throughput and memory, on an embedded local Ray cluster.

    python tools/bench_dist_train.py [--m 131072 --d 256 --n 2048 --steps 4]

Three runs of the same float32 dense net, full batch, Adam (so ZeRO has optimizer state to
partition), each through `fntk train --workers` (run_train_job: Ray Train + DeepSpeed, gloo):
  1 worker, ZeRO 0 | 2 data-parallel workers, ZeRO 0 | 2 data-parallel workers, ZeRO 3 + offload.
It prints seconds per step (the mean over steps, start-up excluded), samples/s, GFLOP/s and
the resident memory of the largest worker (its peak, which includes building the whole net
before ZeRO partitions it, and after the last step), then the two ratios: 2 workers against 1, and
ZeRO-3 + offload against stage 0. On a CPU-only machine "offload" moves nothing between
devices: what ZeRO-3 saves there is the partitioning of parameters, gradients and Adam state.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fntk_dist.config import build_config
from fntk_dist.distributed.cluster import connect
from fntk_dist.train.job import run_train_job

RUNS = {  # (dist, deepspeed) settings
    "1 worker, ZeRO 0": ({"workers": 1, "data": 1}, {"zero_stage": 0}),
    "2 workers, ZeRO 0": ({"workers": 2, "data": 2}, {"zero_stage": 0}),
    "2 workers, ZeRO 3 + offload": ({"workers": 2, "data": 2},
                                    {"zero_stage": 3, "offload": True}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=131072)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    connect(None, min_cpus=2)
    out = {}
    for name, (dist, deepspeed) in RUNS.items():
        cfg = build_config({
            "model": {"mode": "dense", "m": args.m, "dtype": "float32"},
            "data": {"source": "sphere", "n": args.n, "d": args.d},
            "train": {"steps": args.steps, "optimizer": "adam", "lr": 1e-3, "ntk_every": 0,
                      "gram_max_n": 1},
            "dist": dist,
            "deepspeed": deepspeed,
            "tracking": {"wandb": False},
        }, source="bench")
        with tempfile.TemporaryDirectory() as tmp:
            out[name] = run_train_job(cfg, Path(tmp) / "run", progress=False)
    params = args.m * args.d
    print(f"dense m={args.m} d={args.d} n={args.n} float32 Adam, full batch, {args.steps} steps; "
          f"{params / 1e6:.1f} M parameters = {4 * params / 2**20:.0f} MiB, Adam state twice that")
    for name, s in out.items():
        print(f"{name:30s} {s['seconds_per_step']:.3f} s/step  {s['samples_per_s']:8.1f} "
              f"samples/s  {s['gflops']:6.1f} GFLOP/s  per worker: peak RSS "
              f"{s['worker_peak_rss_mb']:.0f} MiB, RSS after the last step "
              f"{s['worker_end_rss_mb']:.0f} MiB")
    one, two, z3 = (out[k] for k in RUNS)
    print(f"2 data-parallel workers vs 1: {two['samples_per_s'] / one['samples_per_s']:.2f}x "
          "samples/s")
    print(f"ZeRO-3 + offload vs ZeRO 0 (2 workers): "
          f"{z3['seconds_per_step'] / two['seconds_per_step']:.2f}x time per step, "
          f"{z3['worker_peak_rss_mb'] / two['worker_peak_rss_mb']:.2f}x peak and "
          f"{z3['worker_end_rss_mb'] / two['worker_end_rss_mb']:.2f}x end memory per worker")


if __name__ == "__main__":
    main()
