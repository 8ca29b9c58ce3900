"""What the solver needs of the NTK, and the one-process implementation of it.

The kernel regression job asks an operator for four things, all exact and none storing H:
H v (each CG iteration), r columns H(X, X_S) (the Nystrom preconditioner), H(X_test, X) v (the
predictions) and f0 = the net's outputs at initialisation. LocalOperator is the whole net in
this process; fntk_dist.distributed.matvec_actors.RayOperator splits the width over actors and
gives the same numbers (to rounding of the sum over shards).
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..memory import keep_freed_memory
from ..models.network import Network
from ..ntk import empirical_ntk, ntk_matvec
from ..runtime import peak_rss_bytes

F64 = torch.float64


class KernelOperator(Protocol):
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H(X, X) v, float64 (n,)."""

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        """H(X, X[idx]), float64 (n, r)."""

    def cross_matvec(self, x_test: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """H(X_test, X) v, float64 (n_test,)."""

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The net's outputs f0 on x, float64."""

    def info(self) -> dict:
        """Summary keys: device, shard_nodes, worker_peak_rss_bytes."""

    def close(self) -> None:
        """Releases the workers."""


def row_spans(n: int, tile: int) -> list[tuple[int, int]]:
    return [(i, min(i + tile, n)) for i in range(0, n, tile)]


def tiled_outputs(net: Network, x: torch.Tensor, tile: int) -> torch.Tensor:
    """net(x) in tiles of rows: the forward pass holds tile x m activations, not n x m."""
    with torch.no_grad():
        return torch.cat([net(x[i0:i1]).to(F64).cpu() for i0, i1 in row_spans(x.shape[0], tile)])


class LocalOperator:
    """The whole net on `device`; x: the training points (n, d) in the net's dtype."""

    def __init__(self, net: Network, x: torch.Tensor, block: int | None, tile: int) -> None:
        keep_freed_memory()
        self.net, self.x, self.block, self.tile = net, x.to(net.device), block, tile

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return ntk_matvec(self.net, self.x, v.to(self.net.device), self.block).to(F64).cpu()

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        xs = self.x[idx.to(self.x.device)]
        return torch.cat([empirical_ntk(self.net, self.x[i0:i1], xs, self.block).to(F64).cpu()
                          for i0, i1 in row_spans(self.x.shape[0], self.tile)])

    def cross_matvec(self, x_test: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        xt = x_test.to(self.net.device, self.net.dtype)
        return ntk_matvec(self.net, xt, v.to(self.net.device), self.block,
                          x2=self.x).to(F64).cpu()

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        return tiled_outputs(self.net, x.to(self.net.device, self.net.dtype), self.tile)

    def info(self) -> dict:
        return {"device": str(self.net.device), "shard_nodes": [],
                "worker_peak_rss_bytes": peak_rss_bytes()}

    def close(self) -> None:
        """Nothing to release: the net goes with this object."""
