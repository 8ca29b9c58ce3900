"""The Ray actor that owns one width shard of the net and computes its partial Gram tiles."""

from __future__ import annotations

import os
import resource

import numpy as np
import ray
import torch

from ..models.config import ModelConfig
from ..ntk.empirical import gram_partial


@ray.remote
class GramShard:
    """Rebuilds neurons [lo, hi) from the seed (no weights travel) and answers partial tiles.

    Created with max_restarts and max_task_retries, so a killed shard is rebuilt by Ray and its
    tiles in flight are computed again.
    """

    def __init__(self, model: dict, d: int, neurons: tuple[int, int], x: np.ndarray,
                 block: int | None) -> None:
        self.base_rss = _rss()  # the Python + torch process before any of our data
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.net = ModelConfig(**model).build(d, device=device, neurons=neurons)
        self.x = torch.as_tensor(x, dtype=self.net.dtype, device=device)
        self.block = block

    def partial(self, rows: tuple[int, int], cols: tuple[int, int]) -> dict[str, np.ndarray]:
        """The shard's sums (ss, rr, g1, g2) for the tile rows x cols, float64 numpy."""
        x1 = self.x[rows[0]:rows[1]]
        x2 = None if rows == cols else self.x[cols[0]:cols[1]]
        part = gram_partial(self.net, x1, x2, self.block)
        return {k: getattr(part, k).cpu().numpy() for k in ("ss", "rr", "g1", "g2")
                if getattr(part, k) is not None}

    def where(self) -> tuple[int, str]:
        """(pid, node IP): for tests and logs."""
        return os.getpid(), ray.util.get_node_ip_address()

    def memory(self) -> tuple[int, int]:
        """(peak resident bytes, resident bytes before the shard was built)."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, self.base_rss


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
