"""The kernel regression's NTK on Ray: a grid of actors (width shards x row groups) answering
mat-vecs, cross-Gram columns and outputs, and the operator that sums their shares.

Each MatvecShard owns a neuron range of a depth-1 net and rebuilds it from the seed (no
weights travel); the training points are put in the object store once. Over a shard's
neurons, the ROWS and READOUT terms of H v and the net's output are sums, so the driver adds
the shards' shares in float64. Over the points, the mat-vec's first pass (ntk.matvec's
MatvecState: parameter-sized sums) adds too, so each row group sums its own points' and the
groups' states are added by a tree among the actors of each width shard before the second
pass gives every group its rows. The term of a trained V (sketch_out, lowrank) is quadratic in
G summed over all neurons (fntk_dist.ntk.rank_term): the shards' parts of G are summed once,
when the operator starts (and once for the test points), and the driver takes that term's
mat-vec from the total, O(n k d). Each row group computes the preconditioner's columns on its
share of the rows, in tiles: a group's shards sum their GramPartials by a tree (G summed
before its outer product there too) into the group's first shard, which finishes the tile, as
the Gram's grid does (gram_actors). G and the net's outputs split their points over the row
groups too.
"""

from __future__ import annotations

import numpy as np
import ray
import torch

from ..config import RunConfig
from ..memory import keep_freed_memory
from ..models.config import ModelConfig
from ..ntk import GramPartial, finish_gram
from ..ntk.empirical import partial_sums
from ..ntk.gram_terms import unit_readout
from ..ntk.matvec import MatvecState, matvec_apply, matvec_state
from ..ntk.rank_term import rank_factor, rank_matvec, trains_rank
from ..regress.operator import row_spans, tiled_outputs
from ..runtime import peak_rss_bytes
from .parallelize import shard_ranges
from .shards import Placed, connect_and_place, start_grid, tree_sum

F64 = torch.float64


@ray.remote
class MatvecShard:
    """Neurons [lo, hi) of the net on `device`."""

    def __init__(self, model: dict, d: int, neurons: tuple[int, int], block: int | None,
                 device: str) -> None:
        keep_freed_memory()
        self.net = ModelConfig(**model).build(d, device=device, neurons=neurons)
        # The terms that add over shards: the same neurons with V frozen (its term is taken
        # from G summed over every shard, rank_term); the net itself where V is not trained.
        self.linear = self.net
        if trains_rank(self.net):
            self.linear = ModelConfig(**model).build(d, device=device, neurons=neurons)
            self.linear.layers[0].V.requires_grad_(False)
        self.device, self.block = device, block
        self.x: torch.Tensor | None = None

    def load(self, x: np.ndarray) -> None:
        """Keep the training points (a copy: the object store's array is read-only)."""
        if self.x is None:
            self.x = torch.tensor(x, device=self.device)

    def state(self, x: np.ndarray, span: tuple[int, int], v: np.ndarray) -> MatvecState:
        """Pass 1 of this shard's share of H(., X) v (ROWS and READOUT terms) over the
        training points [span) (v: their entries of v), on the CPU."""
        self.load(x)
        r0, r1 = span
        vt = torch.as_tensor(v, device=self.device)
        return matvec_state(self.linear, self.x[r0:r1], vt, self.block).to("cpu")

    def add(self, mine: MatvecState, other: MatvecState) -> MatvecState:
        """One step of a tree sum over the row groups (tree_sum)."""
        return mine + other

    def apply(self, x: np.ndarray, span: tuple[int, int], state: MatvecState) -> np.ndarray:
        """Pass 2: this shard's share of rows [span) of H(X, X) v, float64, from the state
        of every training point."""
        self.load(x)
        r0, r1 = span
        return self._apply(self.x[r0:r1], state)

    def apply_to(self, x_eval: np.ndarray, state: MatvecState) -> np.ndarray:
        """Pass 2 on other points: this shard's share of H(X_eval, X) v, float64."""
        return self._apply(torch.as_tensor(x_eval, device=self.device), state)

    def _apply(self, pts: torch.Tensor, state: MatvecState) -> np.ndarray:
        return matvec_apply(self.linear, pts, state.to(self.device)).to(F64).cpu().numpy()

    def rank(self, x: np.ndarray, x_eval: np.ndarray | None, span: tuple[int, int]
             ) -> np.ndarray:
        """This shard's part of G on rows [span) of x_eval (of the training points when None),
        float64."""
        self.load(x)
        pts = self.x if x_eval is None else torch.as_tensor(x_eval, device=self.device)
        return rank_factor(self.net, pts[span[0]:span[1]], self.block).cpu().numpy()

    def columns(self, x: np.ndarray, span: tuple[int, int], idx: np.ndarray) -> GramPartial:
        """The shard's partial of H(X[span], X[idx]), on the CPU (it travels to another
        shard)."""
        self.load(x)
        return self._columns(span, self._picked(idx)).cpu()

    def finished_columns(self, x: np.ndarray, span: tuple[int, int], idx: np.ndarray,
                         others: list[ray.ObjectRef]) -> np.ndarray:
        """A row group's first shard: rows [span) of H(X, X[idx]), float64, from its own
        partial plus `others` (a list holding the reference to the group's other shards' sum,
        or none: in a list, Ray does not wait for it before this starts)."""
        self.load(x)
        xs = self._picked(idx)
        part = self._columns(span, xs)
        if others:
            part.add_(ray.get(others[0]).to(self.net.device))
        r0, r1 = span
        return finish_gram(self.net, part, self.x[r0:r1], xs).to(F64).cpu().numpy()

    def _picked(self, idx: np.ndarray) -> torch.Tensor:
        return self.x[torch.as_tensor(idx, device=self.device)]

    def _columns(self, span: tuple[int, int], xs: torch.Tensor) -> GramPartial:
        r0, r1 = span
        return partial_sums(self.net, self.x[r0:r1], xs, self.block, None,
                            unit_readout(self.net.a.detach()))

    def outputs(self, x_eval: np.ndarray, span: tuple[int, int], tile: int) -> np.ndarray:
        """This shard's share of the net's outputs on rows [span) of x_eval, float64."""
        pts = torch.as_tensor(x_eval[span[0]:span[1]], device=self.device)
        return tiled_outputs(self.net, pts, tile).numpy()

    def memory(self) -> int:
        return peak_rss_bytes()

    def node(self) -> str:
        return ray.util.get_node_ip_address()


def connect_for_regress(cfg: RunConfig, workers: int) -> Placed:
    """The cluster joined and the actors placed by regress.device (shards.connect_and_place)."""
    return connect_and_place(cfg, workers, "regress.device")


class RayOperator:
    """A (W, R) grid of MatvecShard actors, the operator of LocalOperator: W width shards x R
    row groups, group r owning the training points of row span r. A mat-vec is the
    MatvecState of each group's points (pass 1), summed over the groups by a tree per width
    shard, then each group's rows from the sum (pass 2), added over the width shards by the
    driver. The preconditioner's columns, G and the outputs: each group its share of the
    points (the columns' tiles summed and finished inside the group)."""

    def __init__(self, cfg: RunConfig, grid: tuple[int, int], x: torch.Tensor,
                 placed: Placed) -> None:
        self.device = placed[0]
        self.tile = cfg.regress.tile
        self.x = x
        self.x_ref = ray.put(x.numpy())
        self.groups = start_grid(MatvecShard, cfg, grid, x.shape[1], cfg.regress.block, placed,
                                 self.x_ref)
        self.spans = shard_ranges(x.shape[0], grid[1])  # row group r's training points
        self.width = grid[0]
        self.finisher = cfg.model.build(x.shape[1], neurons=(0, 1))  # features and scale only
        # G over all neurons on the training points: fixed for the whole solve.
        self.g = self._rank(None) if trains_rank(self.finisher) else None

    def _states(self, v: np.ndarray) -> list[ray.ObjectRef]:
        """Per width shard, the reference to pass 1's state over every training point."""
        return [tree_sum([g[w] for g in self.groups],
                         [g[w].state.remote(self.x_ref, (r0, r1), v[r0:r1])
                          for g, (r0, r1) in zip(self.groups, self.spans)])
                for w in range(self.width)]

    def _by_group(self, n: int) -> list[tuple[list, tuple[int, int]]]:
        """Each row group with its share of n points (groups beyond n get none)."""
        return [(g, s) for g, s in zip(self.groups, shard_ranges(n, len(self.groups)))
                if s[1] > s[0]]

    def _rank(self, x_eval: np.ndarray | None) -> torch.Tensor:
        pts = None if x_eval is None else ray.put(x_eval)
        n = self.x.shape[0] if x_eval is None else x_eval.shape[0]
        parts = [[s.rank.remote(self.x_ref, pts, span) for s in g] for g, span in self._by_group(n)]
        return torch.cat([self._sum(p) for p in parts])

    @staticmethod
    def _sum(refs: list) -> torch.Tensor:
        parts = ray.get(refs)
        total = np.zeros_like(parts[0], dtype=np.float64)
        for p in parts:  # in shard order: the same sum whatever finishes first
            total += p
        return torch.from_numpy(total)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        states = self._states(v.to(self.x.dtype).numpy())
        parts = [[s.apply.remote(self.x_ref, span, state) for s, state in zip(g, states)]
                 for g, span in zip(self.groups, self.spans)]
        hv = torch.cat([self._sum(p) for p in parts])
        if self.g is not None:
            hv += rank_matvec(self.x, self.g, v, self.finisher.m)
        return hv

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        """H(X, X[idx]): each row group takes its share of the rows in tiles of at most
        regress.tile, two tiles per group in flight (the object store holds a few tiles'
        partials, not all n rows')."""
        idx_np = idx.numpy()
        todo = [[(g, (r0 + a, r0 + b)) for a, b in row_spans(r1 - r0, self.tile)]
                for g, (r0, r1) in self._by_group(self.x.shape[0])]
        flying: dict[ray.ObjectRef, tuple[int, int]] = {}

        def submit(q: int) -> None:
            if todo[q]:
                (root, *rest), span = todo[q].pop(0)
                others = [tree_sum(rest, [s.columns.remote(self.x_ref, span, idx_np)
                                          for s in rest])] if rest else []
                flying[root.finished_columns.remote(self.x_ref, span, idx_np, others)] = \
                    (q, span[0])

        for q in range(len(todo)):
            submit(q)
            submit(q)
        done = {}
        while flying:
            (ref,), _ = ray.wait(list(flying), num_returns=1)
            q, r0 = flying.pop(ref)
            done[r0] = ray.get(ref)
            submit(q)
        # In row order; a fresh array (the object store's are read-only).
        return torch.from_numpy(np.concatenate([done[r0] for r0 in sorted(done)]))

    def cross_matvec(self, x_test: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        states = self._states(v.to(self.x.dtype).numpy())
        xt = x_test.numpy()
        parts = [[s.apply_to.remote(xt[t0:t1], state) for s, state in zip(g, states)]
                 for g, (t0, t1) in self._by_group(xt.shape[0])]
        hv = torch.cat([self._sum(p) for p in parts])
        if self.g is not None:
            hv += rank_matvec(x_test, self._rank(xt), v, self.finisher.m, self.x, self.g)
        return hv

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        # The training points are in the object store already (f0 of the solve's start).
        ref = self.x_ref if x is self.x else ray.put(x.numpy())
        parts = [[s.outputs.remote(ref, span, self.tile) for s in g]
                 for g, span in self._by_group(x.shape[0])]
        return torch.cat([self._sum(p) for p in parts])

    def info(self) -> dict:
        shards = [s for g in self.groups for s in g]
        return {"device": self.device,
                "shard_nodes": sorted(set(ray.get([s.node.remote() for s in shards]))),
                "worker_peak_rss_bytes": max(ray.get([s.memory.remote() for s in shards]))}

    def close(self) -> None:
        for g in self.groups:
            for s in g:
                ray.kill(s)
