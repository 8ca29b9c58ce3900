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

    python tools/bench_dist_train.py --case deep [--deep-m 4096 --deep-k 64 --deep-n 256]

The deep case (issue 11): a depth-3 factorized net (sketch_in, lowrank, lowrank; width m, rank
k) in float64, full-batch GD, ZeRO 0, on 1 worker, 2 width-sharded workers (tensor
parallelism, a 2 x 1 mesh) and 2 data-parallel workers (1 x 2), each worker one thread
(OMP_NUM_THREADS=1, so 2 workers use the 2 cores that 1 leaves half idle), --deep-steps steps.
It prints, per layout, the bytes of the tensors one step's collectives summed (counted in the
mesh's all-reduces: Z and dL/dZ of each factorized layer for width sharding, every gradient for
data parallelism) and the steady samples/s: n over the median step after the first (the first
step also waits for the slowest rank to arrive from its start-up), as the median and range over
--repeats runs, then the ratios: data-parallel bytes over width-sharded bytes, and each
2-worker layout's samples/s over 1 worker's, steady and over all steps (the run's own
samples/s, from its mean step).

The same three layouts then run the same loop, engine and mesh (train_loop, DeepSpeedEngine,
Mesh on gloo over loopback) in processes started by torch.multiprocessing instead of Ray Train
(--no-bare skips them), with the Ray cluster shut down meanwhile (started again, and left
SETTLE_S seconds, before the next round's Ray Train runs): on a 2-core host two lockstep
workers have no core to spare for Ray's own processes (raylet, GCS, agents and idle workers,
which poll even when no job runs; Ray Train's controller and helper actors), so the two
figures side by side tell the framework's scaling from the share of the host Ray takes.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
import torch.multiprocessing as mp
from timing import spread

from fntk_dist.config import RunConfig, build_config
from fntk_dist.distributed.cluster import connect, shutdown
from fntk_dist.train.job import run_train_job

RUNS = {  # (dist, deepspeed) settings
    "1 worker, ZeRO 0": ({"workers": 1, "data": 1}, {"zero_stage": 0}),
    "2 workers, ZeRO 0": ({"workers": 2, "data": 2}, {"zero_stage": 0}),
    "2 workers, ZeRO 3 + offload": ({"workers": 2, "data": 2},
                                    {"zero_stage": 3, "offload": True}),
}


# Seconds a freshly started cluster is left before Ray Train's runs: its agents and API server
# go on starting up after ray.init returns, on the cores the two workers need.
SETTLE_S = 10.0

DEEP_RUNS = {  # name: (width, data)
    "1 worker": (1, 1),
    "2 workers, width-sharded (2 x 1)": (2, 1),
    "2 workers, data-parallel (1 x 2)": (1, 2),
}


def dense(args: argparse.Namespace) -> None:
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


def _deep_config(args: argparse.Namespace, width: int, data: int) -> RunConfig:
    m, k = args.deep_m, args.deep_k
    layers = [{"m": m, "mode": "sketch_in", "k": k, "sketch": "srht"},
              {"m": m, "mode": "lowrank", "k": k}, {"m": m, "mode": "lowrank", "k": k}]
    return build_config({
        "model": {"layers": layers, "dtype": "float64"},
        "data": {"source": "sphere", "n": args.deep_n, "d": args.d},
        "train": {"steps": args.deep_steps, "lr": 1e-3, "ntk_every": 0, "gram_max_n": 1,
                  "log_every": 1},
        "dist": {"workers": width * data, "width": width, "data": data},
        "tracking": {"wandb": False},
    }, source="bench")


def _step_seconds(run: Path) -> np.ndarray:
    """Every step's seconds, from the run's metrics (log_every 1)."""
    col = pq.read_table(run / "metrics.parquet", columns=["step_seconds"]).column(0)
    sec = col.to_numpy(zero_copy_only=False)
    return sec[~np.isnan(sec)]


def _bare_rank(rank: int, world: int, width: int, port: int, cfg: dict, out: str) -> None:
    """One rank of a run without Ray: the loop, engine and mesh of a Ray Train worker."""
    import torch.distributed as dist

    from fntk_dist.data import load_dataset
    from fntk_dist.distributed.deepspeed_engine import DeepSpeedEngine
    from fntk_dist.distributed.train_worker import init_mesh
    from fntk_dist.train.loop import train_loop
    from fntk_dist.train.parts import FolderCheckpointer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo")
    mesh = init_mesh(width, world // width)
    run_cfg = RunConfig.model_validate(cfg)
    train_loop(run_cfg, Path(out), load_dataset(run_cfg.data), mesh=mesh,
               device=torch.device("cpu"),
               make_engine=lambda net, eta, rows: DeepSpeedEngine(net, run_cfg, eta, rows, mesh),
               checkpointer=FolderCheckpointer(Path(out)), progress=False)
    dist.destroy_process_group()


def _bare_run(cfg: RunConfig, width: int, data: int, out: Path) -> np.ndarray:
    with socket.socket() as s:  # a free loopback port for the group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_bare_rank, args=(width * data, width, port, cfg.model_dump(mode="json"),
                               str(out)), nprocs=width * data)
    return _step_seconds(out)


def _ratios(got: list[dict], one: list[dict], key: str) -> str:
    return spread([g[key] / o[key] for g, o in zip(got, one)], "{:.2f}")


def deep(args: argparse.Namespace) -> None:
    launches = ("Ray Train", "without Ray") if args.bare else ("Ray Train",)
    runs = {(how, name): [] for how in launches for name in DEEP_RUNS}
    for _ in range(args.repeats):  # the layouts alternate, so drifts of the machine spread
        for how in launches:
            if how != "Ray Train":  # no Ray cluster on the host while the bare runs run
                shutdown()
            elif not ray.is_initialized():  # stopped for the last round's bare runs
                connect(None, min_cpus=2)
                time.sleep(SETTLE_S)
            for name, (width, data) in DEEP_RUNS.items():
                cfg = _deep_config(args, width, data)
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "run"
                    if how == "Ray Train":
                        s = run_train_job(cfg, out, progress=False)
                        steps = _step_seconds(out)
                    else:
                        steps, s = _bare_run(cfg, width, data, out), {}
                if len(steps) < 2:
                    raise SystemExit("--deep-steps: at least 2 steps are needed")
                s["steady_samples_per_s"] = args.deep_n / float(np.median(steps[1:]))
                s["all_samples_per_s"] = args.deep_n / float(steps.mean())
                runs[how, name].append(s)
    first = runs["Ray Train", "1 worker"][0]
    print(f"deep: sketch_in(srht) -> lowrank -> lowrank, m={args.deep_m} k={args.deep_k} "
          f"(m/k={args.deep_m // args.deep_k}) d={args.d} n={args.deep_n}, float64 GD, ZeRO 0, "
          f"{args.deep_steps} steps, one thread per worker; "
          f"{first['trainable_params'] / 1e6:.2f} M trained parameters; median [min-max] over "
          f"{args.repeats} runs; steady: n / the median step after the first; all: n / the "
          "mean step")
    for how in launches:
        print(f"{how}:")
        for name in DEEP_RUNS:
            got = runs[how, name]
            moved = ("" if how != "Ray Train" else spread(
                [(s["width_bytes_per_step"] + s["data_bytes_per_step"]) / 2**20 for s in got],
                "{:.3f}") + " MiB moved/step  ")
            print(f"  {name:34s} {moved}steady "
                  f"{spread([s['steady_samples_per_s'] for s in got], '{:.1f}')} samples/s, all "
                  f"{spread([s['all_samples_per_s'] for s in got], '{:.1f}')}")
    width, data = (runs["Ray Train", name][0] for name in list(DEEP_RUNS)[1:])
    print("data-parallel bytes / width-sharded bytes per step: "
          f"{data['data_bytes_per_step'] / width['width_bytes_per_step']:.1f}x")
    for how in launches:
        one = runs[how, "1 worker"]
        for name in list(DEEP_RUNS)[1:]:
            got = runs[how, name]
            print(f"{how}, {name} vs 1 worker (paired by run): steady "
                  f"{_ratios(got, one, 'steady_samples_per_s')}x, all steps "
                  f"{_ratios(got, one, 'all_samples_per_s')}x samples/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=("dense", "deep", "all"), default="all")
    ap.add_argument("--m", type=int, default=131072)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--deep-m", type=int, default=4096)
    ap.add_argument("--deep-k", type=int, default=64)
    ap.add_argument("--deep-n", type=int, default=256)
    ap.add_argument("--deep-steps", type=int, default=32)
    ap.add_argument("--no-bare", dest="bare", action="store_false",
                    help="deep case: skip the runs without Ray")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    # One thread per worker: the embedded cluster's workers inherit it.
    os.environ["OMP_NUM_THREADS"] = "1"
    connect(None, min_cpus=2)
    if args.case in ("dense", "all"):
        dense(args)
    if args.case in ("deep", "all"):
        deep(args)


if __name__ == "__main__":
    main()
