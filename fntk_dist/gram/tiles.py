"""The job's side of every tile, whatever the executor: commit it (or write it, when its
computer could not reach the store) with its cost, and report progress."""

from __future__ import annotations

import time
from dataclasses import asdict, fields
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..track import Tracker
from .executor import TileExecutor, TileTimes
from .tile_file import StagedTile
from .tile_store import TileStore

if TYPE_CHECKING:
    from ..models.network import Network

# Where a tile's seconds go: its root's phases (executor.TileTimes), then the driver's commit.
PHASES = (*(f.name for f in fields(TileTimes)), "commit")


def write_tiles(store: TileStore, executor: TileExecutor, finisher: Network,
                todo: list[tuple[int, int]], tracker: Tracker, bar: tqdm) -> dict[str, float]:
    """Computes the tiles `todo` and stores each with its FLOPs (finisher: the net, whose own
    count they are) and its wall seconds since the previous tile was stored (tiles in flight
    overlap, so these add up to the wall time of the tile work); logs tiles_done, tiles_per_s,
    gflops and where the tile's seconds went (tile_partial_s, tile_wait_s, tile_finish_s,
    tile_stage_s in its root, tile_commit_s here) per tile. Returns those phases' seconds
    summed over the tiles (row groups work at once: the sums can exceed the wall time)."""
    before = len(store.all_tiles()) - len(todo)
    total_flops = 0
    phases = dict.fromkeys(PHASES, 0.0)
    t0 = t_prev = time.perf_counter()
    for done, ((i, j), tile, times) in enumerate(executor.tiles(store, todo), 1):
        (r0, r1), (c0, c1) = store.bounds(i), store.bounds(j)
        flops = finisher.gram_flops(r1 - r0, c1 - c0)
        now = time.perf_counter()
        if isinstance(tile, StagedTile):
            store.commit(i, j, tile, seconds=now - t_prev, flops=flops)
        else:
            store.write(i, j, tile, seconds=now - t_prev, flops=flops)
        tile_phases = {**asdict(times), "commit": time.perf_counter() - now}
        for name, seconds in tile_phases.items():
            phases[name] += seconds
        t_prev, total_flops = now, total_flops + flops
        bar.update(1)
        elapsed = now - t0
        tracker.log({"tiles_done": before + done, "tiles_per_s": done / elapsed,
                     "gflops": total_flops / elapsed / 1e9,
                     **{f"tile_{name}_s": s for name, s in tile_phases.items()}},
                    step=before + done)
    return phases
