"""The Gram on Ray: a grid of actors, W width shards x R row groups, and the executor that
keeps it fed with tiles.

Each GramShard owns a neuron range and rebuilds it from the seed (no weights travel); the
points are put in the object store once and each shard copies them on its first tile. A row
group is the whole width-sharded net: its W shards compute one tile at a time, and their
partials are summed by a binary tree among them (each level moves one partial shard to shard
through the object store), so one sum per tile reaches the driver, however wide W. Row groups
work on different tiles: the width split keeps each tile's latency low, the row split keeps
every shard's GEMMs as wide as the net (fntk_dist.gram.grid_plan weighs the two).

RayExecutor keeps gram.in_flight tiles per row group submitted ahead of the one the job is
finishing. Actors have unlimited restarts and task retries: Ray rebuilds a killed shard and
computes its tiles in flight again.

The points come with every tile call, as a reference (Ray hands an actor on the same node a
read-only view of the stored array, no copy), not as a constructor argument: a restarted
actor then gets them from its next call, and Ray has no constructor argument in its object
store to warn about (an E-level core_worker line for every shard otherwise).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import ray
import torch

from ..config import RunConfig
from ..gram.executor import Span, span_partial
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
        self.net = ModelConfig(**model).build(d, device=device, neurons=neurons)
        self.device, self.block = device, block
        self.x: torch.Tensor | None = None

    def load(self, x: np.ndarray) -> None:
        """Keep the points (a copy: the object store's array is read-only)."""
        if self.x is None:
            self.x = torch.tensor(x, device=self.device)

    def partial(self, span: Span, x: np.ndarray) -> GramPartial:
        """The shard's partial for one tile, on the CPU (it travels to the driver whole)."""
        self.load(x)
        return span_partial(self.net, self.x, span, self.block)

    def add(self, mine: GramPartial, other: GramPartial) -> GramPartial:
        """One step of a row group's tree sum (Ray fetches both operands from the object
        store; the result stays there for the next level)."""
        return mine + other

    def where(self) -> tuple[int, str]:
        """(pid, node IP): for tests and logs."""
        return os.getpid(), ray.util.get_node_ip_address()

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
        self.nodes = sorted({ip for _, ip in ray.get([s.where.remote() for s in shards])})

    def _tile(self, group: list, span: Span) -> ray.ObjectRef:
        """The reference to one tile's partial summed over the group's width shards."""
        return tree_sum(group, [s.partial.remote(span, self.x_ref) for s in group])

    def partials(self, spans: Iterable[Span]) -> Iterator[list[GramPartial]]:
        pending = iter(spans)
        queue: deque[tuple[ray.ObjectRef, int]] = deque()
        busy = [0] * len(self.groups)  # tiles submitted to each row group and not yet taken

        def submit() -> None:
            span = next(pending, None)
            if span is not None:
                g = busy.index(min(busy))
                busy[g] += 1
                queue.append((self._tile(self.groups[g], span), g))

        for _ in range((self.in_flight + 1) * len(self.groups)):
            submit()
        while queue:
            ref, g = queue.popleft()
            busy[g] -= 1  # the next tile goes to the group with the least work left
            submit()
            yield [ray.get(ref)]

    def info(self) -> dict:
        memory = ray.get([s.memory.remote() for group in self.groups for s in group])
        return {"device": self.device, "shard_nodes": self.nodes,
                "worker_peak_rss_bytes": max(m[0] for m in memory),
                "worker_base_rss_bytes": max(m[1] for m in memory)}

    def close(self) -> None:
        for group in self.groups:
            for s in group:
                ray.kill(s)
