"""`fntk gram --workers N`: the Gram on Ray, tile by tile, into a resumable tile store.

Shard actors each own a neuron range and rebuild it from the seed. The driver walks the tiles
(I, J), J >= I, that the store lacks; every shard answers its partial sums for a tile, the
driver adds them in float64, finishes the tile (the G term only after the sum over shards) and
writes it. Ray restarts a killed shard and retries its tiles; a killed driver loses at most
the tiles in flight, and the same command resumes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import write_text
from ..config import ConfigError, RunConfig, dump_config
from ..data import load_dataset
from ..models.validation import as_dtype
from ..ntk import GramPartial, finish_gram, spectrum, spectrum_from_matmat
from ..track import make_tracker
from .cluster import connect
from .tile_store import TileStore


def gram_hash(cfg: RunConfig, n: int, tile: int) -> str:
    """What determines the tiles: the net, the data and the tiling (not the worker count)."""
    key = {"model": cfg.model.model_dump(mode="json"), "data": cfg.data.model_dump(mode="json"),
           "n": n, "tile": tile}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def shard_ranges(m: int, workers: int) -> list[tuple[int, int]]:
    """Neuron ranges of near-equal size covering [0, m)."""
    cuts = [round(i * m / workers) for i in range(workers + 1)]
    return list(zip(cuts, cuts[1:]))


def tile_flops(cost_forward: int, m: int, k: int | None, trained: tuple[str, ...],
               rows: int, cols: int) -> int:
    """FLOPs of one tile over all shards: pre-activations, then the n_I x n_J x m products."""
    flops = cost_forward * (rows + cols)
    if "W" in trained or "U" in trained:
        flops += 2 * rows * cols * m
    if "a" in trained:
        flops += 2 * rows * cols * m
    if "V" in trained:
        flops += 2 * (rows + cols) * m * k
    return flops


def _check(cfg: RunConfig, n: int) -> tuple[int, int]:
    dc = cfg.dist
    workers = dc.workers or 1
    if workers > cfg.model.m:
        raise ConfigError(f"dist.workers: {workers} workers but only m={cfg.model.m} neurons "
                          "to shard")
    tile = dc.tile or min(n, 1024)
    if tile > n:
        raise ConfigError(f"dist.tile: {tile} rows per tile exceeds the n={n} points; tiles "
                          "must partition the rows")
    return workers, tile


def run_gram_distributed(cfg: RunConfig, out_dir: Path, progress: bool = True) -> dict:
    """Compute the Gram of cfg's net on cfg's data with Ray; returns the summary."""
    import ray

    from .gram_shard import GramShard

    data = load_dataset(cfg.data)
    n, d = data.x.shape
    workers, tile = _check(cfg, n)
    dtype = as_dtype(cfg.model.dtype)
    x = data.x.astype(np.float64 if dtype == torch.float64 else np.float32)
    finisher = cfg.model.build(d, neurons=(0, 1))  # features and scale only: no neuron rows
    store = TileStore.create_or_open(
        out_dir, config_hash=gram_hash(cfg, n, tile), n=n, tile=tile, dtype=cfg.model.dtype,
        meta={"mode": cfg.model.mode, "m": cfg.model.m, "k": cfg.model.k},
    )
    write_text(out_dir / "config.yaml", dump_config(cfg))
    todo = store.missing()
    resumed = len(store.all_tiles()) - len(todo)
    if todo:  # an earlier summary no longer describes the store until the tiles are back
        (out_dir / "summary.json").unlink(missing_ok=True)
    tracker = make_tracker(cfg.tracking, out_dir, cfg.name or out_dir.name,
                           cfg.model_dump(mode="json"))
    t0, flops, nodes, memory = time.perf_counter(), 0, [], []
    t_tiles = t0
    try:
        if todo:
            connect(cfg.dist.address, cfg.dist.connect_timeout_s, min_cpus=workers)
            has_gpu = ray.cluster_resources().get("GPU", 0) >= 1
            cpus = min(1.0, ray.cluster_resources().get("CPU", 1) / workers)
            options = dict(max_restarts=-1, max_task_retries=-1, scheduling_strategy="SPREAD",
                           **({"num_gpus": 1} if has_gpu else {"num_cpus": cpus}))
            x_ref = ray.put(x)
            shards = [GramShard.options(**options).remote(cfg.model.model_dump(mode="json"), d,
                                                          rng, x_ref, cfg.gram.block)
                      for rng in shard_ranges(cfg.model.m, workers)]
            nodes = sorted({ip for _, ip in ray.get([s.where.remote() for s in shards])})
            t_tiles = time.perf_counter()  # shards are up: what follows is tile work
            cost = finisher.cost().forward_flops
            queue: deque = deque()
            pending = iter(todo)
            bar = tqdm(total=len(todo), desc=f"gram tiles (n={n}, {workers} workers)",
                       unit="tile", disable=not progress, mininterval=1.0)

            def submit() -> None:
                ij = next(pending, None)
                if ij is not None:
                    rows, cols = store.bounds(ij[0]), store.bounds(ij[1])
                    queue.append((ij, [s.partial.remote(rows, cols) for s in shards]))

            for _ in range(cfg.dist.in_flight + 1):
                submit()
            done = 0
            while queue:
                (i, j), refs = queue.popleft()
                submit()
                parts = ray.get(refs)
                rows, cols = store.bounds(i), store.bounds(j)
                block = _finish(finisher, parts, x, rows, cols)
                store.write(i, j, block)
                done += 1
                flops += tile_flops(cost, cfg.model.m, cfg.model.k, finisher.trained,
                                    rows[1] - rows[0], cols[1] - cols[0])
                elapsed = time.perf_counter() - t_tiles
                bar.update(1)
                tracker.log({"tiles_done": resumed + done, "tiles_per_s": done / elapsed,
                             "gflops": flops / elapsed / 1e9}, step=resumed + done)
            bar.close()
            memory = ray.get([s.memory.remote() for s in shards])
        tile_seconds = time.perf_counter() - t_tiles
        seconds = time.perf_counter() - t0
        t_spec = time.perf_counter()
        if n <= cfg.dist.assemble_max_n:
            spec, resid = spectrum(store.assemble(), cfg.gram.top), 0.0
        else:
            spec, resid = spectrum_from_matmat(store.matvec, n, top=cfg.gram.top,
                                               block=cfg.dist.eig_block,
                                               maxiter=cfg.dist.eig_maxiter)
        spec_seconds = time.perf_counter() - t_spec
    except BaseException:
        tracker.abort()
        raise
    computed = len(todo)
    summary = {
        "n": n, "d": d, "m": cfg.model.m, "mode": cfg.model.mode, "k": cfg.model.k,
        "sketch": finisher.sketch, "train_output": cfg.model.train_output,
        "dtype": cfg.model.dtype, "workers": workers, "shard_nodes": nodes, "tile": tile,
        "tiles": len(store.all_tiles()), "tiles_computed": computed, "tiles_resumed": resumed,
        "lambda_min": spec.lambda_min, "lambda_max": spec.lambda_max,
        "top_eigenvalues": spec.top, "condition": spec.condition,
        "spectrum_from": "assembled" if n <= cfg.dist.assemble_max_n else "block LOBPCG on tiles",
        "lambda_min_residual": resid, "spectrum_seconds": spec_seconds,
        "seconds": seconds, "tile_seconds": tile_seconds,
        "tiles_per_s": computed / tile_seconds if computed else None,
        "gflops": flops / tile_seconds / 1e9 if computed else None,
        "disk_bytes": store.disk_bytes(),
        "worker_peak_rss_bytes": max((m[0] for m in memory), default=None),
        "worker_base_rss_bytes": max((m[1] for m in memory), default=None),
    }
    tracker.finish(summary)
    return summary


def _finish(finisher, parts: list[dict], x: np.ndarray, rows, cols) -> np.ndarray:
    """Sum the shards' partials (float64) and finish the tile."""
    total = {k: sum(p[k] for p in parts) for k in parts[0]}
    part = GramPartial(*(torch.from_numpy(total[k]) if k in total else None
                         for k in ("ss", "rr", "g1", "g2")))
    x1 = torch.from_numpy(x[rows[0]:rows[1]])
    x2 = None if rows == cols else torch.from_numpy(x[cols[0]:cols[1]])
    return finish_gram(finisher, part, x1, x2).double().numpy()
