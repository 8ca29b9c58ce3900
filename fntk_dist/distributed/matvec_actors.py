"""The kernel regression's NTK on Ray: width-shard actors answering mat-vecs, cross-Gram
columns and outputs, and the operator that sums their shares.

Each MatvecShard owns a neuron range of a depth-1 net and rebuilds it from the seed (no
weights travel); the training points are put in the object store once. Over a shard's
neurons, the ROWS and READOUT terms of H v and the net's output are sums, so the driver adds
the shards' shares in float64. The preconditioner's columns come as GramPartials (a RANK
term's G summed before its outer product) finished once on the driver. A mat-vec with a RANK
term (V trained) is quadratic in G summed over all neurons: fntk_dist.regress.job refuses
those modes on Ray before any actor starts.
"""

from __future__ import annotations

import numpy as np
import ray
import torch

from ..config import RunConfig
from ..models.config import ModelConfig
from ..ntk import GramPartial, finish_gram, ntk_matvec
from ..ntk.empirical import partial_sums
from ..ntk.gram_terms import unit_readout
from ..regress.operator import row_spans, tiled_outputs
from ..runtime import peak_rss_bytes
from .cluster import connect
from .gram_actors import placement
from .parallelize import shard_ranges

F64 = torch.float64


@ray.remote
class MatvecShard:
    """Neurons [lo, hi) of the net on `device`."""

    def __init__(self, model: dict, d: int, neurons: tuple[int, int], block: int | None,
                 device: str) -> None:
        self.net = ModelConfig(**model).build(d, device=device, neurons=neurons)
        self.device, self.block = device, block
        self.x: torch.Tensor | None = None

    def load(self, x: np.ndarray) -> None:
        """Keep the training points (a copy: the object store's array is read-only)."""
        if self.x is None:
            self.x = torch.tensor(x, device=self.device)

    def matvec(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """This shard's share of H(X, X) v (ROWS and READOUT terms), float64."""
        self.load(x)
        vt = torch.as_tensor(v, device=self.device)
        return ntk_matvec(self.net, self.x, vt, self.block).to(F64).cpu().numpy()

    def cross_matvec(self, x: np.ndarray, x_test: np.ndarray, v: np.ndarray) -> np.ndarray:
        """This shard's share of H(X_test, X) v, float64."""
        self.load(x)
        xt = torch.as_tensor(x_test, device=self.device)
        vt = torch.as_tensor(v, device=self.device)
        return ntk_matvec(self.net, xt, vt, self.block, x2=self.x).to(F64).cpu().numpy()

    def columns(self, x: np.ndarray, span: tuple[int, int], idx: np.ndarray) -> GramPartial:
        """The shard's partial of H(X[span], X[idx]), on the CPU."""
        self.load(x)
        r0, r1 = span
        xs = self.x[torch.as_tensor(idx, device=self.device)]
        return partial_sums(self.net, self.x[r0:r1], xs, self.block, None,
                            unit_readout(self.net.a.detach())).cpu()

    def outputs(self, x_eval: np.ndarray, tile: int) -> np.ndarray:
        """This shard's share of the net's outputs on x_eval, float64."""
        return tiled_outputs(self.net, torch.as_tensor(x_eval, device=self.device),
                             tile).numpy()

    def memory(self) -> int:
        return peak_rss_bytes()

    def node(self) -> str:
        return ray.util.get_node_ip_address()


def connect_for_regress(cfg: RunConfig, workers: int) -> tuple[str, dict]:
    """Join the cluster (dist.address, else RAY_ADDRESS, else an embedded one) and place the
    actors (regress.device), before the job writes anything."""
    connect(cfg.dist.address, cfg.dist.connect_timeout_s, min_cpus=workers)
    return placement(cfg.regress.device, workers, ray.cluster_resources())


class RayOperator:
    """`workers` MatvecShard actors over the net's width; the operator of LocalOperator."""

    def __init__(self, cfg: RunConfig, workers: int, x: torch.Tensor,
                 placed: tuple[str, dict]) -> None:
        self.device, request = placed
        self.tile = cfg.regress.tile
        self.x = x
        self.x_ref = ray.put(x.numpy())
        options = dict(max_restarts=-1, max_task_retries=-1, scheduling_strategy="SPREAD",
                       **request)
        model = cfg.model.model_dump(mode="json")
        self.shards = [MatvecShard.options(**options).remote(model, x.shape[1], neurons,
                                                             cfg.regress.block, self.device)
                       for neurons in shard_ranges(cfg.model.m, workers)]
        ray.get([s.load.remote(self.x_ref) for s in self.shards])
        self.finisher = cfg.model.build(x.shape[1], neurons=(0, 1))  # features and scale only

    @staticmethod
    def _sum(refs: list) -> torch.Tensor:
        parts = ray.get(refs)
        total = np.zeros_like(parts[0], dtype=np.float64)
        for p in parts:  # in shard order: the same sum whatever finishes first
            total += p
        return torch.from_numpy(total)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        v_np = v.to(self.x.dtype).numpy()
        return self._sum([s.matvec.remote(self.x_ref, v_np) for s in self.shards])

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        xs = self.x[idx]
        out = []
        for r0, r1 in row_spans(self.x.shape[0], self.tile):
            parts = ray.get([s.columns.remote(self.x_ref, (r0, r1), idx.numpy())
                             for s in self.shards])
            out.append(finish_gram(self.finisher, sum(parts), self.x[r0:r1], xs).to(F64))
        return torch.cat(out)

    def cross_matvec(self, x_test: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        xt, v_np = x_test.numpy(), v.to(self.x.dtype).numpy()
        return self._sum([s.cross_matvec.remote(self.x_ref, xt, v_np) for s in self.shards])

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        x_np = x.numpy()
        return self._sum([s.outputs.remote(x_np, self.tile) for s in self.shards])

    def info(self) -> dict:
        return {"device": self.device,
                "shard_nodes": sorted(set(ray.get([s.node.remote() for s in self.shards]))),
                "worker_peak_rss_bytes": max(ray.get([s.memory.remote() for s in self.shards]))}

    def close(self) -> None:
        for s in self.shards:
            ray.kill(s)
