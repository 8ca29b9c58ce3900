"""The Gram on Ray: a grid of actors, W width shards x R row groups, and the executor that
keeps it fed with tiles.

Each GramShard owns a neuron range and rebuilds it from the seed (no weights travel); the
points are put in the object store once and each shard copies them on its first tile. A row
group is the whole width-sharded net: its W shards compute one tile at a time, and their
partials are summed among them: the group's root (its first shard) computes its own partial
while the others sum theirs by a binary tree (each level moves one partial shard to shard
through the object store), adds their sum to its own, finishes the tile and, on the driver's
node, writes it beside the store under a temporary name: the driver only renames it and
appends its journal line (a root on another node sends the finished tile, which the driver
writes). So the driver's work per tile is constant, whatever W, R and the net. Row groups
work on different tiles: the width split keeps each tile's latency low, the row split keeps
every shard's GEMMs as wide as the net (fntk_dist.gram.grid_plan weighs the two).

RayExecutor keeps gram.in_flight tiles per row group submitted ahead of the one the job is
storing. Actors have unlimited restarts and task retries: Ray rebuilds a killed shard and
computes its tiles in flight again (a file it staged and never handed over is deleted when the
job ends, or when its store is next opened).

The points come with every tile call, as a reference (Ray hands an actor on the same node a
read-only view of the stored array, no copy), not as a constructor argument: a restarted
actor then gets them from its next call, and Ray has no constructor argument in its object
store to warn about (an E-level core_worker line for every shard otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import ray
import torch

from ..config import RunConfig
from ..gram import tile_file
from ..gram.executor import Span, TileTimes, span_partial, store_spans, timed_tile
from ..gram.tile_file import StagedTile, TileTarget
from ..gram.tile_store import TileStore
from ..memory import keep_freed_memory
from ..models.config import ModelConfig
from ..ntk import GramPartial
from ..runtime import peak_rss_bytes, rss_bytes
from .shards import Placed, connect_and_place, start_grid, tree_sum


@ray.remote
class GramShard:
    """Neurons [lo, hi) of the net on `device`, answering partial tiles."""

    def __init__(self, model: dict, d: int, neurons: tuple[int, int], block: int | None,
                 device: str) -> None:
        self.base_rss = rss_bytes()  # the Python + torch process before any of our data
        keep_freed_memory()
        self.net = ModelConfig(**model).build(d, device=device, neurons=neurons)
        self.device, self.block = device, block
        self.x: torch.Tensor | None = None
        tile_file.warm_up()  # a root stages tiles: not in the first tile's time

    def load(self, x: np.ndarray) -> None:
        """Keep the points (a copy: the object store's array is read-only)."""
        if self.x is None:
            self.x = torch.tensor(x, device=self.device)

    def partial(self, span: Span, x: np.ndarray) -> GramPartial:
        """The shard's partial for one tile, on the CPU (it travels to another shard)."""
        self.load(x)
        return span_partial(self.net, self.x, span, self.block)

    def tile(self, span: Span, x: np.ndarray, target: TileTarget, others: list[ray.ObjectRef]
             ) -> tuple[StagedTile | np.ndarray, TileTimes]:
        """The row group's root: its own partial plus `others` (a list holding the reference
        to the other shards' sum, or none for a group of one: in a list, Ray does not wait
        for it before this starts, so the root computes beside the others), finished on its
        device and staged, with where its seconds went."""
        self.load(x)
        fetch = (lambda: ray.get(others[0])) if others else None
        return timed_tile(self.net, self.x, span, self.block, target, fetch)

    def add(self, mine: GramPartial, other: GramPartial) -> GramPartial:
        """One step of the tree sum of a row group's other shards (Ray fetches both operands
        from the object store; the result stays there for the next level or the root)."""
        return mine + other

    def where(self) -> tuple[int, str, str]:
        """(pid, node IP, node id): for tests and logs, and whether it shares the driver's
        node."""
        return (os.getpid(), ray.util.get_node_ip_address(),
                ray.get_runtime_context().get_node_id())

    def memory(self) -> tuple[int, int]:
        """(peak resident bytes, resident bytes before the shard was built)."""
        return peak_rss_bytes(), self.base_rss


def connect_for_gram(cfg: RunConfig, workers: int) -> Placed:
    """The cluster joined and the actors placed by gram.device (shards.connect_and_place)."""
    return connect_and_place(cfg, workers, "gram.device")


class RayExecutor:
    """A (W, R) grid of GramShard actors, placed by connect_for_gram."""

    def __init__(self, cfg: RunConfig, grid: tuple[int, int], x: torch.Tensor,
                 placed: Placed) -> None:
        self.device = placed[0]
        self.in_flight = cfg.gram.in_flight
        # Held for the whole job: every tile call (a retried one too) passes it.
        self.x_ref = ray.put(x.numpy())
        self.groups = start_grid(GramShard, cfg, grid, x.shape[1], cfg.gram.block, placed,
                                 self.x_ref)
        shards = [s for group in self.groups for s in group]
        where = ray.get([s.where.remote() for s in shards])
        self.nodes = sorted({ip for _, ip, _ in where})
        # A root on the driver's node reaches the store's folder and writes its tiles there.
        here = ray.get_runtime_context().get_node_id()
        width = grid[0]
        self.root_local = [where[g * width][2] == here for g in range(len(self.groups))]

    def _tile(self, group: list, span: Span, target: TileTarget) -> ray.ObjectRef:
        """The reference to one tile, finished and staged by the group's root."""
        root, rest = group[0], group[1:]
        others = [tree_sum(rest, [s.partial.remote(span, self.x_ref) for s in rest])] \
            if rest else []
        return root.tile.remote(span, self.x_ref, target, others)

    def tiles(self, store: TileStore, todo: list[tuple[int, int]]
              ) -> Iterator[tuple[tuple[int, int], StagedTile | np.ndarray, TileTimes]]:
        # Longest first (off-diagonal tiles, then the diagonal's, which take the symmetric
        # path; larger before smaller), so the row groups end on short tiles, not one long
        # tile while the others idle.
        order = sorted(todo, key=lambda t: (t[0] == t[1], -store.area(*t)))
        pending = iter(zip(order, store_spans(store, order)))
        flying: dict[ray.ObjectRef, tuple[tuple[int, int], int]] = {}
        busy = [0] * len(self.groups)  # tiles submitted to each row group and not yet taken

        def submit() -> None:
            item = next(pending, None)
            if item is not None:
                (i, j), span = item
                g = busy.index(min(busy))
                busy[g] += 1
                target = store.target(i, j, reachable=self.root_local[g])
                flying[self._tile(self.groups[g], span, target)] = ((i, j), g)

        for _ in range((self.in_flight + 1) * len(self.groups)):
            submit()
        while flying:  # in the order they finish: a fast group is fed at once
            (ref,), _ = ray.wait(list(flying), num_returns=1)
            key, g = flying.pop(ref)
            busy[g] -= 1  # the next tile goes to the group with the least work left
            submit()
            yield key, *ray.get(ref)

    def info(self) -> dict:
        memory = ray.get([s.memory.remote() for group in self.groups for s in group])
        return {"device": self.device, "shard_nodes": self.nodes,
                "worker_peak_rss_bytes": max(m[0] for m in memory),
                "worker_base_rss_bytes": max(m[1] for m in memory)}

    def close(self) -> None:
        for group in self.groups:
            for s in group:
                ray.kill(s)
