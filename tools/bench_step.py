"""Benchmark: one training step of a factorized net against the dense net of the same width.

    python tools/bench_step.py [--n 1024 --m 16384 --d 512 --k 32 --processes 5 --steps 7]
                               [--walk threads intra:4096 ...] [--threads 1 2] [--no-dense]

A step is what `fntk train` runs (TorchEngine, in a process where train_loop has called
keep_freed_memory): last step's gradients recycled, the blocked forward and backward, an SGD
update; float32. Every (walk, threads) configuration runs in
--processes fresh processes, alternated, and each process times --steps steps of sketch_in
(rank k, gaussian V) and of dense after 2 warm-up steps (median of the steps). Walks:
  threads     the blocks walked by torch.get_num_threads() threads, one intra-op thread each
              (what fntk train does on the CPU; blocks of the default size)
  intra:B     the blocks walked by the calling thread, every op split across torch's threads,
              B neurons per block ('intra' alone: the default block)
Printed per configuration: each net's median and [min-max] over processes, the speedup as a
fraction of the FLOP ratio (m d) / (m k + k d) (per process, dense and sketch_in measured side by
side), the scaling from 1 to 2 threads (ratio of the medians), and the minor page faults per
step with the bytes they map as a fraction of the net's parameter bytes.
Targets (issue 16): sketch_in at >= 70% of the FLOP ratio with 2 threads in every process,
>= 1.7x from 1 to 2 threads, faulted bytes per step < 1% of the parameters' bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

import torch
from timing import per_call, spread

from fntk_dist import TwoLayerNet
from fntk_dist.memory import keep_freed_memory
from fntk_dist.train.blocked import SpareGrads, blocked_output
from fntk_dist.train.config import TrainConfig
from fntk_dist.train.parts import TorchEngine

NETS = ("dense", "sketch_in")


def make_step(net: TwoLayerNet, x: torch.Tensor, y: torch.Tensor, block: int | None,
              threads: int | None):
    """TorchEngine's step (threads None: `fntk train`'s own engine, walkers and all): last
    step's gradients recycled, blocked forward and backward, SGD. With threads set, the same
    step walked by that many threads with the calling thread's intra-op threads as they are."""
    if threads is None:
        engine = TorchEngine(net, TrainConfig(block=block), eta=1e-6)

        def step():
            engine.backward(0.5 * ((engine.forward(x) - y) ** 2).sum())
            engine.step()

        return step
    params = [p for p in net.parameters() if p.requires_grad]
    opt, spare = torch.optim.SGD(params, lr=1e-6), SpareGrads()

    def step():
        spare.recycle(params)
        out = blocked_output(net, x, block, threads=threads, spare=spare)
        (0.5 * ((out - y) ** 2).sum()).backward()
        opt.step()

    return step


def child(args: argparse.Namespace) -> None:
    """One process: time the step of each net under one (walk, threads); print a JSON line."""
    torch.set_num_threads(args.threads[0])
    keep_freed_memory()  # as train_loop does
    walk, _, b = args.walk[0].partition(":")
    threads, block = (None, None) if walk == "threads" else (1, int(b) if b else None)
    n, m, d, k = args.n, args.m, args.d, args.k
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, d, generator=g), torch.randn(n, generator=g)
    result = {}
    for name in NETS if args.dense else NETS[1:]:
        net = TwoLayerNet(d, m, name, None if name == "dense" else k)
        seconds, faults = per_call(make_step(net, x, y, block, threads), args.steps)
        nbytes = sum(p.numel() * p.element_size() for p in net.parameters())
        result[name] = {"s": seconds, "faults": faults, "param_bytes": nbytes}
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--m", type=int, default=16384)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--walk", nargs="+", default=["threads"],
                    help="walks to compare: threads, intra or intra:BLOCK")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--processes", type=int, default=5, help="fresh processes per setting")
    ap.add_argument("--steps", type=int, default=7, help="timed steps per net and process")
    ap.add_argument("--no-dense", dest="dense", action="store_false",
                    help="time sketch_in alone (a dense net of m = 10^6 takes minutes a step)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    n, m, d, k = args.n, args.m, args.d, args.k
    ratio = m * d / (m * k + k * d)
    page = resource.getpagesize()
    load0 = os.getloadavg()
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.processes):
        for walk in args.walk:
            for t in args.threads:
                cmd = [sys.executable, __file__, "--child", "--walk", walk, "--threads", str(t),
                       *(f"--{a}={getattr(args, a)}" for a in ("n", "m", "d", "k", "steps"))]
                cmd += [] if args.dense else ["--no-dense"]
                env = os.environ | {"OMP_NUM_THREADS": str(t), "MKL_NUM_THREADS": str(t)}
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
                runs.setdefault((walk, t), []).append(json.loads(out.stdout.splitlines()[-1]))
                print(f"# {walk} threads={t}: {out.stdout.splitlines()[-1]}", flush=True)
    print(f"n={n} m={m} d={d} k={k} float32  torch {torch.__version__}  "
          f"{args.processes} processes per setting, median of {args.steps} steps in each  "
          f"load {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"FLOP ratio {ratio:.2f}; figures: median [min-max] over processes")
    for walk in args.walk:
        for t in args.threads:
            rs = runs[(walk, t)]
            line = f"{walk:12} threads={t}"
            for name in NETS if args.dense else NETS[1:]:
                s = [r[name]["s"] for r in rs]
                mb = [r[name]["faults"] * page / 2**20 for r in rs]
                share = [r[name]["faults"] * page / r[name]["param_bytes"] for r in rs]
                line += (f"\n  {name:9} {spread(s)} s   faults/step "
                         f"{spread([r[name]['faults'] for r in rs], '{:.0f}')} = "
                         f"{spread(mb, '{:.3f}')} MiB = {spread(share, '{:.3%}')} of params")
            if args.dense:
                frac = [r["dense"]["s"] / r["sketch_in"]["s"] / ratio for r in rs]
                line += f"\n  fraction of the FLOP ratio {spread(frac, '{:.0%}')}"
            print(line)
        if len(args.threads) > 1:
            t0, t1 = args.threads[0], args.threads[-1]
            for name in NETS if args.dense else NETS[1:]:
                med = [statistics.median(r[name]["s"] for r in runs[(walk, t)]) for t in (t0, t1)]
                print(f"{walk:12} {name:9} scaling {t0} -> {t1} threads: {med[0] / med[1]:.2f}x")


if __name__ == "__main__":
    main()
