"""Where a Gram job's tiles are computed: the executor interface and the local executor.

An executor answers, for each tile (i, j) of a store, the finished tile: staged beside the
store (fntk_dist.gram.tile_file.stage_tile) by whoever computed it when it can reach the
store's folder, else the array. The job only commits or writes them (fntk_dist.gram.tiles), so
its own work per tile is a rename and a journal line, whatever the executor. The local
executor is the whole net in this process; the Ray one (fntk_dist.distributed.gram_actors) is
a grid of actors, width shards x row groups, each group's shards summing their partials among
themselves and the group's root finishing and storing the tile.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from ..memory import keep_freed_memory
from ..models.network import Network
from ..ntk import GramPartial
from ..ntk.empirical import finish_gram, partial_sums
from ..ntk.gram_terms import unit_readout
from ..runtime import peak_rss_bytes, rss_bytes, to_host
from .tile_file import StagedTile, TileTarget, stage_tile
from .tile_store import TileStore

if TYPE_CHECKING:
    from ..config import RunConfig

Span = tuple[tuple[int, int], tuple[int, int]]  # a tile's rows [r0, r1) and cols [c0, c1)


@dataclass(frozen=True)
class TileTimes:
    """Where one tile's seconds went in the process that finished it (a row group's root),
    by its clock. On a GPU the device works asynchronously: its kernels count in the first
    phase that waits for them (the finish's copy to the host, or the add of the others' sum)."""

    partial: float  # its own partial (a root: its shard's neurons)
    wait: float  # the other shards' sum: waiting for them, and receiving it (0 for one shard)
    finish: float  # that sum added, the tile finished and brought to the host
    stage: float  # the tile file written beside the store (or the array, without a path)


class TileExecutor(Protocol):
    def tiles(self, store: TileStore, todo: list[tuple[int, int]]
              ) -> Iterator[tuple[tuple[int, int], StagedTile | np.ndarray, TileTimes]]:
        """Each tile of `todo` as (i, j), the tile (staged beside the store, or the array)
        and where its seconds went, in the order they are done."""

    def info(self) -> dict:
        """The summary keys device, shard_nodes, worker_peak_rss_bytes, worker_base_rss_bytes."""

    def close(self) -> None:
        """Releases the workers."""


# Whether each net's readout is +-1 (ntk.gram_terms.unit_readout), with the readout tensor and
# its version counter when asked: a Gram job's net never changes, so the host synchronisation
# that answers it happens once per net, not per tile; a readout replaced or changed in place (an
# optimizer step bumps the version) is asked again.
_UNIT_READOUT: weakref.WeakKeyDictionary[Network, tuple[torch.Tensor, int, bool]] = \
    weakref.WeakKeyDictionary()


def _counts(net: Network) -> bool:
    a = net.a
    held = _UNIT_READOUT.get(net)
    if held is None or held[0] is not a or held[1] != a._version:
        held = _UNIT_READOUT[net] = (a, a._version, unit_readout(a.detach()))
    return held[2]


def _span_points(x: torch.Tensor, span: Span) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A tile's row points and column points (None on the diagonal: the symmetric path)."""
    (r0, r1), (c0, c1) = span
    return x[r0:r1], (None if (r0, r1) == (c0, c1) else x[c0:c1])


def span_partial(net: Network, x: torch.Tensor, span: Span, block: int | None,
                 cpu: bool = True) -> GramPartial:
    """The partial of net's neurons for one tile of the points x: on the CPU, where it travels
    to another shard (or, cpu False, on the net's device, where its tile is finished).

    x: the job's points in the net's dtype and on its device, checked when the data was read
    (finite, (n, d)); so a tile queues device work only, and its one synchronisation is the
    copy of its sums (or its finished tile) to the CPU.
    """
    part = partial_sums(net, *_span_points(x, span), block, None, _counts(net))
    return part.cpu() if cpu else part


def finish_span(net: Network, x: torch.Tensor, part: GramPartial, span: Span,
                target: TileTarget) -> StagedTile | np.ndarray:
    """The tile from the partial of all neurons, finished on net's device (net: any shard of
    the net) and staged at `target` (or the array, for a target with no path)."""
    return stage_tile(target, _finished(net, x, part, span))


def _finished(net: Network, x: torch.Tensor, part: GramPartial, span: Span) -> np.ndarray:
    """The tile from the partial of all neurons, finished on net's device, on the host."""
    return to_host(finish_gram(net, part.to(net.device), *_span_points(x, span))).numpy()


def timed_tile(net: Network, x: torch.Tensor, span: Span, block: int | None,
               target: TileTarget, others: Callable[[], GramPartial] | None = None
               ) -> tuple[StagedTile | np.ndarray, TileTimes]:
    """One tile from net's partial plus, where the net is one width shard, the other shards'
    sum (others: fetches it), finished and staged, with where its seconds went."""
    t0 = time.perf_counter()
    part = span_partial(net, x, span, block, cpu=False)
    t1 = t2 = time.perf_counter()
    if others is not None:
        rest = others()
        t2 = time.perf_counter()
        part.add_(rest.to(net.device))
    h = _finished(net, x, part, span)
    t3 = time.perf_counter()
    tile = stage_tile(target, h)
    return tile, TileTimes(t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3)


def span_tile(net: Network, x: torch.Tensor, span: Span, block: int | None,
              target: TileTarget) -> StagedTile | np.ndarray:
    """One tile of the whole net (all its neurons in net), finished and staged."""
    return timed_tile(net, x, span, block, target)[0]


def store_spans(store: TileStore, todo: list[tuple[int, int]]) -> list[Span]:
    return [(store.bounds(i), store.bounds(j)) for i, j in todo]


class LocalExecutor:
    """The whole net in this process, on `device` (gram.device, resolved)."""

    def __init__(self, cfg: RunConfig, x: torch.Tensor, device: torch.device) -> None:
        self.base_rss = rss_bytes()  # before the net: what the tiles' work adds is above it
        keep_freed_memory()
        self.device = device
        self.net = cfg.model.build(x.shape[1], device=device)
        self.x = x.to(device)
        self.block = cfg.gram.block

    def tiles(self, store: TileStore, todo: list[tuple[int, int]]
              ) -> Iterator[tuple[tuple[int, int], StagedTile | np.ndarray, TileTimes]]:
        for (i, j), span in zip(todo, store_spans(store, todo)):
            yield (i, j), *timed_tile(self.net, self.x, span, self.block, store.target(i, j))

    def info(self) -> dict:
        return {"device": str(self.device), "shard_nodes": [],
                "worker_peak_rss_bytes": peak_rss_bytes(), "worker_base_rss_bytes": self.base_rss}

    def close(self) -> None:
        """Nothing to release: the net goes with this object."""
