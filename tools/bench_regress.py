"""Benchmark of `fntk regress`: the exact NTK mat-vec against this machine's float64 GEMM peak,
the mat-vec and the preconditioner's columns on Ray grids, and CG iterations with and without
the Nystrom preconditioner.

    python tools/bench_regress.py [--n 20000 --m 4096 --k 32 --d 256 --repeats 3]
                                  [--cg-n 2048 --cg-m 1024 --rank 256 --ridge 1e-3] [--threads T]
                                  [--parts matvec,ray,cg] [--modes sketch_in,lowrank,dense]

Mat-vec: ntk_matvec (two passes over cache-sized tiles of points) against the one-pass scheme
it replaced (old_matvec below: n x block temporaries per neuron block), timed alternately in
the same run, on n points for each of --modes (default: the issue's n = 10^6 net, sketch_in
with SRHT, m = 4096, k = 32, float64; then lowrank and dense at the same m, k). GFLOP/s counts
the GEMMs of one mat-vec without the recomputed pre-activations (matvec_flops), against
torch.mm of two 2048 x 2048 float64 matrices timed in the same run (before and after). CG: the
sketch_in net at width cg-m on cg-n points (one data seed per repeat), relative residual 1e-6,
preconditioned (rank columns) and plain; iterations and seconds, median [min-max]. Ray: 1
actor, the 2 x 1 width split and the 1 x 2 row split (actors of one CPU and one torch thread
each), the mat-vec and the rank columns H(X, X_S) timed on each, interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from timing import spread, wall_times

from fntk_dist import ntk_matvec
from fntk_dist.config import build_config
from fntk_dist.data import load_dataset
from fntk_dist.models.blocks import neuron_blocks
from fntk_dist.models.groups import Role
from fntk_dist.models.network import Network
from fntk_dist.regress.job import run_regress_job

F64 = torch.float64


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
               mode: str = "sketch_in", **regress) -> dict:
    model = {"mode": mode, "m": m or args.m, "dtype": "float64"}
    model.update({"sketch_in": {"k": args.k, "sketch": "srht"}, "sketch_out": {"k": args.k},
                  "lowrank": {"k": args.k}, "dense": {}}[mode])
    return {"model": model,
            "data": {"source": "sphere", "n": n, "d": args.d, "seed": data_seed},
            "regress": {"rtol": 1e-6, "maxiter": 5000, "test_metrics": False, "device": "cpu",
                        **regress},
            "tracking": {"wandb": False}}


def old_matvec(net: Network, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H v of a depth-1 net as ntk_matvec computed it before the tiled scheme (one pass over
    neuron blocks of the default size, each holding n x block pre-activations, D and products
    for all points at once), kept here only to be timed against it."""
    layer, a = net.layers[0], net.a.detach()
    f = layer.features(x)
    out = torch.zeros(x.shape[0], dtype=F64)
    g = x.new_zeros(x.shape[0], layer.k or 1)
    roles = [grp.role for grp in net.groups]
    with torch.no_grad():
        for i0, i1 in neuron_blocks(net, None, x.shape[0], net.device):
            p = layer.preact(f, i0, i1)
            d = (p > 0).to(net.dtype) * a[i0:i1]
            for role in roles:
                if role is Role.ROWS:
                    out += ((f @ (f.T @ (d * v[:, None]))) * d).sum(dim=1)
                elif role is Role.RANK:
                    g += layer.to_rank(d, i0, i1)
                else:
                    r = torch.relu(p)
                    out += r @ (r.T @ v)
        if Role.RANK in roles:
            out += ((g @ (g.T @ (x * v[:, None]))) * x).sum(dim=1)
    return out / net.m


def matvec_flops(net: Network, n: int) -> int:
    """The GEMM flops of one depth-1 mat-vec, pre-activations counted once: 2 n m F for them
    (F = k, or d for dense), 4 n m F per ROWS term, 2 n m k + 4 n k d for RANK, 4 n m for
    READOUT, plus 2 n d k for a trained V's features."""
    layer = net.layers[0]
    fdim, k, d, m = layer.feature_dim, layer.k or 0, net.d, net.m
    per_role = {Role.ROWS: 4 * m * fdim, Role.RANK: 2 * m * k + 4 * k * d, Role.READOUT: 4 * m}
    feats = 2 * d * k if layer.mode in ("lowrank", "sketch_out") else 0
    return n * (2 * m * fdim + feats + sum(per_role[g.role] for g in net.groups))


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
                    help="which parts to run: matvec (vs the GEMM peak), ray (1 actor, 2x1, 1x2), "
                         "cg (iterations with and without the preconditioner)")
    ap.add_argument("--modes", default="sketch_in,lowrank,dense",
                    help="the nets of the matvec part (m, k as given; sketch_in with SRHT)")
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
            bench_matvec(args, x, v)
        if "ray" in parts:
            bench_workers(args, x, v)
    if "cg" in parts:
        bench_cg(args)


def bench_matvec(args: argparse.Namespace, x: torch.Tensor, v: torch.Tensor) -> None:
    peak = gemm_peak(args.repeats)
    rates: dict[str, tuple[list[float], list[float]]] = {}
    for mode in args.modes.split(","):
        net = build_config(raw_config(args, args.n, mode=mode), source="bench").model.build(args.d)
        xn = x.to(net.dtype)
        new, old = ntk_matvec(net, xn, v), old_matvec(net, xn, v)  # warm-up, and the check
        diff = float((new - old).norm() / old.norm())
        secs: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.repeats):  # alternately, so that both see the same load
            for name, fn in (("old", old_matvec), ("new", ntk_matvec)):
                t0 = time.perf_counter()
                fn(net, xn, v)
                secs[name].append(time.perf_counter() - t0)
        flops = matvec_flops(net, args.n)
        rates[mode] = tuple([flops / s / 1e9 for s in secs[k]] for k in ("old", "new"))
        speedup = [o / n for o, n in zip(secs["old"], secs["new"])]
        print(f"mat-vec {mode} n={args.n} m={args.m} k={net.layers[0].k} d={args.d} "
              f"({flops / 1e9:.1f} GFLOP of GEMMs): one-pass {spread(secs['old'], '{:.3f}')} s, "
              f"tiled {spread(secs['new'], '{:.3f}')} s, speedup {spread(speedup, '{:.2f}')}x "
              f"(relative difference {diff:.1e})")
    peak_after = gemm_peak(args.repeats)  # the machine is shared: the peak before and after
    print(f"float64 GEMM peak (2048^3): before {spread(peak, '{:.1f}')} GFLOP/s, after "
          f"{spread(peak_after, '{:.1f}')}")
    top = statistics.median(peak + peak_after)
    for mode, (old, new) in rates.items():
        print(f"  {mode}: one-pass {spread(old, '{:.1f}')} GFLOP/s = "
              f"{statistics.median(old) / top:.2f} of the peak; tiled {spread(new, '{:.1f}')} "
              f"GFLOP/s = {statistics.median(new) / top:.2f}")


LAYOUTS = {"1 actor": (1, 1), "2x1 width split": (2, 1), "1x2 row split": (1, 2)}


def bench_workers(args: argparse.Namespace, x: torch.Tensor, v: torch.Tensor) -> None:
    """The mat-vec and the preconditioner's --rank columns (H(X, X_S), tiles of 4096 rows) on
    each grid layout, the layouts interleaved per repeat so that all see the same load."""
    from fntk_dist.distributed.cluster import connect
    from fntk_dist.distributed.matvec_actors import RayOperator, connect_for_regress
    from fntk_dist.ntk.nystrom import sample_columns

    connect(None, min_cpus=2)
    idx = sample_columns(x.shape[0], args.rank, 0)
    secs = {(name, what): [] for name in LAYOUTS for what in ("mat-vec", "columns")}
    for _ in range(args.repeats):  # one layout's actors at a time: each takes the 2 CPUs
        for name, grid in LAYOUTS.items():
            wcfg = build_config({**raw_config(args, args.n), "dist": {"grid": grid}},
                                source="bench")
            op = RayOperator(wcfg, grid, x, connect_for_regress(wcfg, grid[0] * grid[1]))
            # One call each after a warm-up one (an actor's first call faults in its memory).
            secs[name, "mat-vec"] += wall_times(lambda op=op: op.matvec(v), 1)
            secs[name, "columns"] += wall_times(lambda op=op: op.columns(idx), 1)
            op.close()
    print(f"Ray, n={args.n} m={args.m}, one CPU and one torch thread per actor, "
          f"{args.rank} columns:")
    for what in ("mat-vec", "columns"):
        one = statistics.median(secs["1 actor", what])
        for name in LAYOUTS:
            med = statistics.median(secs[name, what])
            print(f"  {what:>8} {name:>16}: {spread(secs[name, what], '{:.3f}')} s, "
                  f"{one / med:.2f}x of 1 actor")


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
