"""The job's side of every tile, whatever the executor: sum its shards' partials, finish it
once (a RANK term's G only after the sum over all neurons), store it with its cost."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from ..ntk import GramPartial, finish_gram
from ..track import Tracker
from .executor import Span, TileExecutor
from .tile_store import TileStore

if TYPE_CHECKING:
    from ..models.network import Network


def finish_tile(finisher: Network, parts: list[GramPartial], x: torch.Tensor,
                span: Span) -> np.ndarray:
    """The tile from its shards' partials, which together cover all neurons: summed (their
    sums are float64, so they add in float64), then finished once. finisher: the net's
    features and scale (built with one neuron), on the CPU like the partials and x."""
    (r0, r1), (c0, c1) = span
    x2 = None if (r0, r1) == (c0, c1) else x[c0:c1]
    return finish_gram(finisher, sum(parts), x[r0:r1], x2).numpy()


def write_tiles(store: TileStore, executor: TileExecutor, finisher: Network,
                x: torch.Tensor, todo: list[tuple[int, int]], tracker: Tracker,
                bar: tqdm) -> None:
    """Computes the tiles `todo` and stores each with its FLOPs and its wall seconds since the
    previous tile was stored (tiles in flight overlap, so these add up to the wall time of the
    tile work); logs tiles_done, tiles_per_s and gflops per tile."""
    spans = [(store.bounds(i), store.bounds(j)) for i, j in todo]
    before = len(store.all_tiles()) - len(todo)
    total_flops = 0
    t0 = t_prev = time.perf_counter()
    answers = executor.partials(spans)
    for done, ((i, j), span, parts) in enumerate(zip(todo, spans, answers), 1):
        block = finish_tile(finisher, parts, x, span)
        flops = finisher.gram_flops(span[0][1] - span[0][0], span[1][1] - span[1][0])
        now = time.perf_counter()
        store.write(i, j, block, seconds=now - t_prev, flops=flops)
        t_prev, total_flops = now, total_flops + flops
        bar.update(1)
        elapsed = now - t0
        tracker.log({"tiles_done": before + done, "tiles_per_s": done / elapsed,
                     "gflops": total_flops / elapsed / 1e9}, step=before + done)
