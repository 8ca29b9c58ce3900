"""The scaling model against one device (tools/bench_gpu.py's "scaling" section): the tile
phase of a one-device `fntk gram` job, timed, against grid_plan's prediction for one actor.

A job on one device is the local executor (gram.device cuda, no Ray): each tile's partial and
finish on the device, its file staged (Arrow IPC, hashed) and committed by fntk_dist.gram.tiles
.write_tiles, as `fntk gram` runs it; the spectrum after the tiles is not timed (it runs on the
host's CPU and is not part of the grid model). Two predictions per job:

- stated: the rates `fntk gram --plan` uses (h100_rates on CUDA: datasheet peaks, tile files
  at 1 GB/s; CPU_RATES on a CPU);
- measured: the same with this run's GEMM peaks (the net's dtype; bf16 for the 0/1 mask
  products on CUDA), the bytes/s of staging one of the job's tiles and the bytes/s at which
  its commit writes it to disk, measured here; no cold start (the timed calls follow a
  warm-up call in the same process; CPU_RATES has one, the GPU figures none).

Each row also times the tiles' compute alone (partial, finish, copy to the host, no file) so
that the job's seconds split into compute and storing, and says where a tile's seconds went
in the job (write_tiles' phases per tile, medians of the timed calls) beside the model's
account of them with the measured rates (grid_plan.phase_seconds). Those are host clocks: on
a GPU the kernels run asynchronously, so they count in the finish, which waits for them.
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fntk_dist.config import RunConfig
from fntk_dist.gram.executor import LocalExecutor, span_tile, store_spans
from fntk_dist.gram.grid_plan import (
    CPU_RATES,
    Rates,
    h100_rates,
    phase_seconds,
    predict,
    tile_costs,
)
from fntk_dist.gram.tile_file import stage_tile
from fntk_dist.gram.tile_store import TileStore
from fntk_dist.gram.tiles import write_tiles
from fntk_dist.track import make_tracker

# write_tiles' phases (fntk_dist.gram.tiles.PHASES) as the report's columns name them; the
# wait for other width shards is none in a one-device job.
PHASE_NAMES = {"partial": "partial", "finish": "finish", "stage": "tile file",
               "commit": "commit"}

# (n, tile, dtype) of the jobs: one tile of the Gram benchmark's size, the same net over ten
# smaller tiles (per-tile costs), and the float64 net's tile.
JOBS = {"target": [(16384, 16384, "float32"), (32768, 8192, "float32"),
                   (16384, 16384, "float64")],
        "small": [(256, 256, "float32"), (512, 128, "float32"), (256, 256, "float64")]}


def _config(size: dict, n: int, tile: int, dtype: str, device: torch.device) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"mode": "sketch_in", "m": size["m"], "k": size["k"], "sketch": "gaussian",
                  "dtype": dtype},
        "data": {"source": "sphere", "n": n, "d": size["d"]},
        "gram": {"tile": tile, "device": device.type, "certify": False},
        "tracking": {"wandb": False}})


def _store(folder: Path, n: int, tile: int, dtype: str) -> TileStore:
    return TileStore.create_or_open(folder, config_hash="bench_gpu", n=n, tile=tile, dtype=dtype)


def _timed(fn: Callable[[], object], repeats: int,
           fresh: Callable[[], None] = lambda: None) -> dict:
    """Median, min and max seconds of `repeats` calls after a warm-up call; fresh() before
    each call, untimed (it clears what the previous call wrote). fn returns once its results
    are on the host, so no device synchronisation is needed."""
    times = []
    for _ in range(repeats + 1):
        fresh()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times = times[1:]
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def stage_and_commit(store: TileStore, keys: list[tuple[int, int]], block: np.ndarray
                     ) -> list[tuple[float, float]]:
    """(seconds staging, seconds committing) of `block` stored as each new tile of `keys`, as
    a job stores its tiles: a root stages the file, the driver commits it (a rename and a
    fsynced journal line, which makes ext4 write the staged file first)."""
    out = []
    for key in keys:
        t0 = time.perf_counter()
        staged = stage_tile(store.target(*key), block)
        t1 = time.perf_counter()
        store.commit(*key, staged)
        out.append((t1 - t0, time.perf_counter() - t1))
    return out


def file_rates(tile: int, dtype: str, repeats: int, commit_s: float) -> tuple[float, float]:
    """(bytes/s of staging a tile x tile tile file: encode, hash, write, as a root does;
    bytes/s at which the driver's commit of it writes it to disk beyond commit_s), each
    staged as a new tile of the store, as a job's are; the cost depends on the bytes, not the
    values."""
    block = np.full((tile, tile), 0.5, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(Path(tmp), tile * (repeats + 1), tile, dtype)
        # The first call warms up.
        times = stage_and_commit(store, [(i, i) for i in range(repeats + 1)], block)[1:]
    flush = statistics.median(c for _, c in times) - commit_s
    return (block.nbytes / statistics.median(s for s, _ in times),
            block.nbytes / flush if flush > 0 else math.inf)


def _predicted(cfg: RunConfig, n: int, tile: int, rates: Rates) -> dict:
    """The model's seconds for one actor, all and without writing the tile files, as the
    one-device job runs its tiles: computed, staged and committed by one process in series
    (no driver beside a root to commit one tile while the next is computed)."""
    costs = tile_costs(cfg.model, cfg.data.d, n, tile)

    def serial(r: Rates) -> float:
        p = predict(costs, cfg.model.m, 1, 1, r)
        return p.compute_s + p.comm_s + p.driver_s

    return {"s": serial(rates),
            "compute_s": serial(replace(rates, store_bytes_s=math.inf,
                                        flush_bytes_s=math.inf))}


def _job_times(cfg: RunConfig, x: torch.Tensor, device: torch.device, repeats: int
               ) -> tuple[dict, dict, int, dict]:
    """(the tile phase's seconds, the tiles' compute alone, tiles, the job's seconds per tile
    in each phase write_tiles times: medians of the timed calls) of cfg's job on device."""
    n, tile, dtype = cfg.data.n, cfg.gram.tile, cfg.model.dtype
    executor = LocalExecutor(cfg, x, device)
    with tempfile.TemporaryDirectory() as tmp:
        layout = _store(Path(tmp) / "layout", n, tile, dtype)
        todo = layout.all_tiles()
        spans = store_spans(layout, todo)
        away = [layout.target(i, j, reachable=False) for i, j in todo]
        folder = Path(tmp) / "run"
        went: list[dict[str, float]] = []

        def job() -> None:
            store = _store(folder / "store", n, tile, dtype)
            with tqdm(disable=True) as bar:
                went.append(write_tiles(store, executor, executor.net, todo,
                                        make_tracker(cfg.tracking, folder, "bench_gpu", {}),
                                        bar))
            store.compact()

        def compute() -> None:
            for span, target in zip(spans, away):
                span_tile(executor.net, executor.x, span, executor.block, target)

        measured = _timed(job, repeats, lambda: shutil.rmtree(folder, ignore_errors=True))
        alone = _timed(compute, repeats)
    executor.close()
    timed = went[1:]  # _timed's first call warms up
    phases = {name: statistics.median(w[name] for w in timed) / len(todo) for name in timed[0]}
    return measured, alone, len(todo), phases


def scaling_runs(size: dict, small: bool, device: torch.device, peak: dict, repeats: int,
                 points: Callable[[int, int, torch.dtype], torch.Tensor]) -> list:
    """One row per job of JOBS: measured (median of the timed calls) against predicted.
    peak: bench_gpu's GEMM peaks (TFLOP/s by dtype); points(n, d, dtype): its inputs (CPU)."""
    out = []
    for n, tile, dtype in JOBS["small" if small else "target"]:
        cfg = _config(size, n, tile, dtype, device)
        measured, alone, tiles, phases = _job_times(
            cfg, points(n, size["d"], getattr(torch, dtype)), device, repeats)
        stated = h100_rates(dtype) if device.type == "cuda" else CPU_RATES
        flops = peak[dtype]["tflops"] * 1e12
        stage, flush = file_rates(tile, dtype, repeats, stated.commit_s)
        here = replace(stated, peak_flops=flops, finish_flops=flops,
                       count_flops=peak["bf16"]["tflops"] * 1e12 if stated.count_flops else None,
                       store_bytes_s=stage, flush_bytes_s=flush, cold_s=0.0)
        out.append({"mode": "sketch_in", "n": n, "tile": tile, "tiles": tiles, "dtype": dtype,
                    "m": size["m"], "d": size["d"], "k": size["k"], **measured,
                    "compute_s": alone["median_s"], "store_bytes_s": here.store_bytes_s,
                    "flush_bytes_s": here.flush_bytes_s,
                    "stated_rates": stated.name,
                    "predicted_stated": _predicted(cfg, n, tile, stated),
                    "predicted_measured": _predicted(cfg, n, tile, here),
                    "phases_s": phases,
                    "predicted_phases_s": phase_seconds(
                        tile_costs(cfg.model, cfg.data.d, n, tile), cfg.model.m, (1, 1), here)})
    return out


def markdown(rows: list) -> list[str]:
    """The section's lines: measured against both predictions, all and compute alone (and the
    commit's write to disk, in reports that measured it)."""
    flush = all("flush_bytes_s" in r for r in rows)
    lines = ["", "| one-device `fntk gram` tiles | dtype | tiles | seconds | of which compute "
             "| predicted, stated rates (compute) | error | predicted, measured rates (compute) "
             "| error | tile file GB/s |" + (" commit's write GB/s |" if flush else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if flush else "")]
    for r in rows:
        cells = []
        for key in ("predicted_stated", "predicted_measured"):
            p = r[key]
            cells += [f"{p['s']:.4g} ({p['compute_s']:.4g})",
                      f"{100 * (p['s'] - r['median_s']) / r['median_s']:+.0f}%"]
        extra = f" {r['flush_bytes_s'] / 1e9:.3g} |" if flush else ""
        lines.append(f"| {r['mode']} n={r['n']} tile={r['tile']} m={r['m']} d={r['d']} "
                     f"k={r['k']} | {r['dtype']} | {r['tiles']} | {r['median_s']:.4g} "
                     f"[{r['min_s']:.4g}, {r['max_s']:.4g}] | {r['compute_s']:.4g} | "
                     f"{' | '.join(cells)} | {r['store_bytes_s'] / 1e9:.3g} |{extra}")
    if all("phases_s" in r for r in rows):  # reports before run 17 have none
        lines += ["", "Where a tile's seconds went in those jobs, ms per tile (medians of the "
                  "timed calls; the model's with the measured rates in parentheses). Host "
                  "clocks: on a GPU the kernels run asynchronously and count in the finish.",
                  "", "| one-device `fntk gram` tiles | dtype | "
                  + " | ".join(PHASE_NAMES.values()) + " |",
                  "|---|---|" + "---|" * len(PHASE_NAMES)]
        for r in rows:
            lines.append(f"| {r['mode']} n={r['n']} tile={r['tile']} | {r['dtype']} | "
                         + " | ".join(f"{1e3 * r['phases_s'][k]:.3g} "
                                      f"({1e3 * r['predicted_phases_s'][k]:.3g})"
                                      for k in PHASE_NAMES) + " |")
    return lines
