"""The job's side of every tile, whatever the executor: finish it from its partial over all
neurons (the G term only after the sum over shards), count its FLOPs, store it with its cost."""

from __future__ import annotations

import functools
import operator
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
    from ..models.net import TwoLayerNet


def tile_flops(net: TwoLayerNet, rows: int, cols: int) -> int:
    """FLOPs of a rows x cols tile over all m neurons."""
    if hasattr(net, "gram_flops"):
        return net.gram_flops(rows, cols)
    # Until TwoLayerNet.gram_flops lands with the numerical core's reshape: the same count.
    trained = net.trained
    flops = net.cost().forward_flops * (rows + cols)  # the pre-activations of both sides
    sums = ("W" in trained or "U" in trained) + ("a" in trained)  # S S^T, R R^T
    flops += sums * 2 * rows * cols * net.m
    if "V" in trained:
        flops += 2 * (rows + cols) * net.m * net.k
    return flops


def finish_tile(finisher: TwoLayerNet, parts: list[GramPartial], x: torch.Tensor,
                span: Span) -> np.ndarray:
    """The tile from its shards' partials, which together cover all neurons: summed (their
    sums are float64, so they add in float64), then finished once. finisher: the net's
    features and scale (built with one neuron), on the CPU like the partials and x."""
    (r0, r1), (c0, c1) = span
    x2 = None if (r0, r1) == (c0, c1) else x[c0:c1]
    part = functools.reduce(operator.add, parts)
    return finish_gram(finisher, part, x[r0:r1], x2).numpy()


def write_tiles(store: TileStore, executor: TileExecutor, finisher: TwoLayerNet,
                x: torch.Tensor, todo: list[tuple[int, int]], tracker: Tracker,
                bar: tqdm) -> None:
    """Computes the tiles `todo` and stores each with its FLOPs and its wall seconds since the
    previous tile was stored (tiles in flight overlap, so these add up to the wall time of the
    tile work); logs tiles_done, tiles_per_s and gflops per tile."""
    spans = [(store.bounds(i), store.bounds(j)) for i, j in todo]
    before = len(store.all_tiles()) - len(todo)
    total_flops = 0
    t0 = t_prev = time.perf_counter()
    parts = executor.partials(spans)
    for done, ((i, j), span, shard_parts) in enumerate(zip(todo, spans, parts), 1):
        block = finish_tile(finisher, shard_parts, x, span)
        flops = tile_flops(finisher, span[0][1] - span[0][0], span[1][1] - span[1][0])
        now = time.perf_counter()
        store.write(i, j, block, seconds=now - t_prev, flops=flops)
        t_prev, total_flops = now, total_flops + flops
        bar.update(1)
        elapsed = now - t0
        tracker.log({"tiles_done": before + done, "tiles_per_s": done / elapsed,
                     "gflops": total_flops / elapsed / 1e9}, step=before + done)
