"""The tiled Cholesky's tasks as Ray tasks (gram.cholesky.TiledFactor.run(tasks=RayTasks)).

Each factor tile is one task, scheduled by Ray on any node with a free CPU. Its inputs travel
through the object store, so no node but the driver's needs the run folder: the Gram tile B_IJ
is put by the driver, and the factor tiles above it are the object refs of the tasks that
computed them (or, for tiles an earlier run wrote, put once from disk). The driver fetches each
result, writes it to the factor store (one journal writer, as with threads) and keeps its ref
while later tasks still read it; a ref nobody will read again is dropped, so the object store
holds about one panel of the factor rather than all of it.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import Future

import numpy as np
import ray

from ..gram.cholesky import Tile, TiledFactor, _deps, factor_tile


def spans_nodes() -> bool:
    """Whether the connected Ray cluster has more than one live node (gram.factor_tasks auto:
    on one host, threads read the tiles through memory maps with no copy and no transfer)."""
    return sum(1 for node in ray.nodes() if node.get("Alive")) > 1


@ray.remote(num_cpus=1)
def _factor_tile_task(b: np.ndarray, sigma: float, i: int, j: int, *deps: np.ndarray):
    # Ray resolves only top-level refs: the factor tiles come as separate arguments.
    return factor_tile(b, sigma, i, j, deps)


class RayTasks:
    """TileTasks on the connected Ray cluster (one CPU each)."""

    def __init__(self, factor: TiledFactor, workers: int, todo: list[Tile]) -> None:  # noqa: ARG002
        self.factor = factor
        self.refs: dict[Tile, ray.ObjectRef] = {}  # factor tiles later tasks still read
        self.pending: dict[Tile, ray.ObjectRef] = {}  # results not yet written
        self.reads = Counter(d for t in todo for d in _deps(*t))

    def _ref(self, tile: Tile) -> ray.ObjectRef:
        if tile not in self.refs:  # written by an earlier run: from disk, once
            self.refs[tile] = ray.put(np.array(self.factor.store.mapped(*tile)))
        return self.refs[tile]

    def submit(self, tile: Tile) -> Future:
        f = self.factor
        deps = _deps(*tile)
        ref = _factor_tile_task.remote(ray.put(f.gram.read(*tile)), f.sigma, *tile,
                                       *(self._ref(d) for d in deps))
        for d in deps:  # the task holds its arguments: the driver may let go of them
            self.reads[d] -= 1
            if self.reads[d] == 0:
                self.refs.pop(d, None)
        self.pending[tile] = ref
        return ref.future()

    def written(self, tile: Tile) -> None:
        ref = self.pending.pop(tile)
        if self.reads[tile] > 0:
            self.refs[tile] = ref

    def close(self) -> None:
        for ref in self.pending.values():
            ray.cancel(ref)
        self.refs.clear()
        self.pending.clear()
