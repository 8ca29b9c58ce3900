"""Benchmark: the distributed Gram with 1 worker against 2, on an embedded local Ray cluster.

    python tools/bench_dist_gram.py [--n 2048 --m 8192 --d 256 --tile 512]

Each worker is a Ray actor holding one CPU (torch then runs one thread in it) and a width
shard of the net. Both runs compute the same float32 Gram into fresh tile stores; the script
prints wall time, tiles/s, GFLOP/s, the speedup (target >= 1.7x on 2 cores) and each run's
peak resident memory per worker, against the O(tile^2 + shard) it should stay within.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fntk_dist.config import build_config
from fntk_dist.distributed.cluster import connect
from fntk_dist.gram.job import run_gram_job


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--m", type=int, default=8192)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--mode", default="dense")
    args = ap.parse_args()
    connect(None, min_cpus=2)
    results = {}
    for workers in (1, 2):
        cfg = build_config({
            "model": {"mode": args.mode, "m": args.m, "dtype": "float32"},
            "data": {"source": "sphere", "n": args.n, "d": args.d},
            "dist": {"workers": workers},
            "gram": {"tile": args.tile, "device": "cpu"},
            "tracking": {"wandb": False},
        }, source="bench")
        with tempfile.TemporaryDirectory() as tmp:
            results[workers] = run_gram_job(cfg, Path(tmp) / "g", progress=False)
    print(f"n={args.n} m={args.m} d={args.d} tile={args.tile} {args.mode} float32")
    for w, s in results.items():
        shard_bytes = 4 * (args.m // w) * args.d
        grown = (s["worker_peak_rss_bytes"] - s["worker_base_rss_bytes"]) / 2**20
        print(f"{w} worker(s): tiles {s['tile_seconds']:.2f} s (with start-up "
              f"{s['seconds']:.2f} s)  {s['tiles_per_s']:.2f} tiles/s  {s['gflops']:.1f} GFLOP/s"
              f"  per worker: peak RSS {s['worker_peak_rss_bytes'] / 2**20:.0f} MiB, of which "
              f"{grown:.0f} MiB above the bare process (tile^2 float64 "
              f"{8 * args.tile**2 / 2**20:.0f} MiB, shard {shard_bytes / 2**20:.0f} MiB)")
    speedup = results[1]["tile_seconds"] / results[2]["tile_seconds"]
    print(f"speedup 2 vs 1 workers (tile work): {speedup:.2f}x")


if __name__ == "__main__":
    main()
