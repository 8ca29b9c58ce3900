"""Benchmark of `fntk regress`: the exact NTK mat-vec against this machine's float64 GEMM peak,
1 against 2 width-shard workers, and CG iterations with and without the Nystrom preconditioner.

    python tools/bench_regress.py [--n 20000 --m 4096 --k 32 --d 256 --repeats 3]
                                  [--cg-n 2048 --cg-m 1024 --rank 256 --ridge 1e-3] [--threads T]
                                  [--parts matvec,ray,cg]

Mat-vec: the net of the issue's n = 10^6 target (sketch_in, SRHT, m = 4096, k = 32, float64)
on n points; GFLOP/s counts its GEMMs (pre-activations 2nmk, the ROWS term 4nmk) against
torch.mm of two 2048 x 2048 float64 matrices timed in the same run (before and after). CG: the
same net at width cg-m on cg-n points (one data seed per repeat), relative residual 1e-6,
preconditioned (rank columns) and plain; iterations and seconds, median [min-max]. Ray
workers are actors of one CPU each (one torch thread).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from timing import spread

from fntk_dist.config import build_config
from fntk_dist.data import load_dataset
from fntk_dist.regress.job import run_regress_job
from fntk_dist.regress.operator import LocalOperator


def gemm_peak(repeats: int, size: int = 2048) -> list[float]:
    a = torch.randn(size, size, dtype=torch.float64)
    b = torch.randn(size, size, dtype=torch.float64)
    a @ b  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        out.append(2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return out


def raw_config(args: argparse.Namespace, n: int, data_seed: int = 0, m: int | None = None,
               **regress) -> dict:
    return {"model": {"mode": "sketch_in", "m": m or args.m, "k": args.k, "sketch": "srht",
                      "dtype": "float64"},
            "data": {"source": "sphere", "n": n, "d": args.d, "seed": data_seed},
            "regress": {"rtol": 1e-6, "maxiter": 5000, "test_metrics": False, "device": "cpu",
                        **regress},
            "tracking": {"wandb": False}}


def time_matvecs(op, v: torch.Tensor, repeats: int) -> list[float]:
    op.matvec(v)  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        op.matvec(v)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--m", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cg-n", type=int, default=2048)
    ap.add_argument("--rank", type=int, default=256)
    ap.add_argument("--ridge", type=float, default=1e-3)
    ap.add_argument("--cg-m", type=int, default=1024, help="width of the CG runs' net")
    ap.add_argument("--parts", default="matvec,ray,cg",
                    help="which parts to run: matvec (vs the GEMM peak), ray (1 vs 2 workers), "
                         "cg (iterations with and without the preconditioner)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads in this process (GEMM peak, mat-vec, CG); on a shared "
                         "machine 1 avoids OpenMP threads waiting on each other")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads: {torch.get_num_threads()}")

    parts = set(args.parts.split(","))
    if parts & {"matvec", "ray"}:
        cfg = build_config(raw_config(args, args.n), source="bench")
        data = load_dataset(cfg.data)
        x, v = torch.as_tensor(data.x), torch.as_tensor(data.y)
        if "matvec" in parts:
            bench_matvec(args, cfg, x, v)
        if "ray" in parts:
            bench_workers(args, x, v)
    if "cg" in parts:
        bench_cg(args)


def bench_matvec(args: argparse.Namespace, cfg, x: torch.Tensor, v: torch.Tensor) -> None:
    flops = 6 * args.n * args.m * args.k  # GEMMs of one mat-vec
    peak = gemm_peak(args.repeats)
    local = LocalOperator(cfg.model.build(args.d), x, None, cfg.regress.tile)
    secs = time_matvecs(local, v, args.repeats)
    peak_after = gemm_peak(args.repeats)  # the machine is shared: the peak before and after
    rate = [flops / s / 1e9 for s in secs]
    print(f"float64 GEMM peak (2048^3): before {spread(peak, '{:.1f}')} GFLOP/s, after "
          f"{spread(peak_after, '{:.1f}')}")
    print(f"mat-vec n={args.n} m={args.m} k={args.k} d={args.d}: {spread(secs, '{:.3f}')} s, "
          f"{spread(rate, '{:.1f}')} GFLOP/s = "
          f"{statistics.median(rate) / statistics.median(peak + peak_after):.2f} of the peak")


def bench_workers(args: argparse.Namespace, x: torch.Tensor, v: torch.Tensor) -> None:
    from fntk_dist.distributed.cluster import connect
    from fntk_dist.distributed.matvec_actors import RayOperator, connect_for_regress

    connect(None, min_cpus=2)
    by_workers = {}
    for workers in (1, 2):
        wcfg = build_config({**raw_config(args, args.n), "dist": {"workers": workers}},
                            source="bench")
        op = RayOperator(wcfg, workers, x, connect_for_regress(wcfg, workers))
        by_workers[workers] = time_matvecs(op, v, args.repeats)
        op.close()
        print(f"Ray, {workers} worker(s): mat-vec {spread(by_workers[workers], '{:.3f}')} s")
    print(f"speedup 2 vs 1 workers (medians): "
          f"{statistics.median(by_workers[1]) / statistics.median(by_workers[2]):.2f}x")


def bench_cg(args: argparse.Namespace) -> None:
    per_mode: dict[bool, tuple[list[int], list[float]]] = {True: ([], []), False: ([], [])}
    for seed in range(args.repeats):
        for pre in (True, False):
            raw = raw_config(args, args.cg_n, seed, args.cg_m, precondition=pre, rank=args.rank,
                             ridge=args.ridge, seed=seed)
            with tempfile.TemporaryDirectory() as tmp:
                s = run_regress_job(build_config(raw, source="bench"), Path(tmp) / "r",
                                    progress=False)
            assert s["converged"], s
            per_mode[pre][0].append(s["iterations"])
            per_mode[pre][1].append(s["seconds"])
    for pre, (its, secs) in per_mode.items():
        what = f"Nystrom rank {args.rank}" if pre else "no preconditioner"
        print(f"CG n={args.cg_n} m={args.cg_m} k={args.k} ridge={args.ridge:g} rtol=1e-6, "
              f"{what}: iterations {spread([float(i) for i in its], '{:.0f}')}, seconds "
              f"{spread(secs, '{:.1f}')}")
    ratio = [p / q for p, q in zip(per_mode[False][0], per_mode[True][0])]
    print(f"iterations without / with the preconditioner: {spread(ratio, '{:.1f}')}")

if __name__ == "__main__":
    main()
