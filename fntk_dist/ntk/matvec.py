"""H v without forming H, term by term, from the net's factors (for Grams too large to store);
with x2, the cross-Gram's H(X, X2) v the same way (X2's factors on the right).

Depth 1, per neuron block b, with D_b = S_b diag(a_b) and features F (X or Z):
    ROWS:    (1/m) rowsum(D_b o (F M_b)),  M_b = F^T diag(v) D_b               (dim F x b)
    READOUT: (1/m) R_b c_b,                c_b = R_b^T v                       (b)
    RANK:    (1/m) rowsum((G A) o X),      A = G^T diag(v) X, G = sum_b D_b U_b  (k x d)
in two passes over tiles of points, each tile neuron block by neuron block: the first sums
M_b, c_b and A over the tiles of X2 (every tile's G summed over all blocks first), the second
gives each tile's rows of the product from them, its features and pre-activations computed
again. A tile's pre-activations, D and products (tile x block each) stay in cache between the
GEMMs that read them, where a pass over all points would stream n x block temporaries through
memory (about 3x faster for a factorized net on one CPU core: tools/bench_regress.py). The
pre-activations cost a third more GEMM work; a single tile (a GPU's default) is the one-pass
order of operations.
Memory per call: O(tile x (block + dim F)) of temporaries and O(dim F x m + k x d) of sums
per column of v (columns go in rounds of at most STATE_FLOATS), beyond the output and, for a
trained V with X2 = X, the n x k G kept from pass 1.

Deeper, every term is (P P^T) o (Q Q^T) for per-point factors (deep_terms), and
[(P P^T) o (Q Q^T)] v = rowsum(P o (Q M^T)) with M = P^T diag(v) Q: O(n p q) per term, the
cost of a forward pass, over tiles of points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..models.blocks import neuron_blocks
from ..models.groups import Group, Role
from ..models.layer import Layer
from ..models.network import Network
from ..models.validation import prepare_inputs
from ..runtime import ieee_float32
from .deep_terms import Factors, net_factors
from .empirical import point_tile

F64 = torch.float64


# CPU working set of one (tile of points, block of neurons) step: the block's pre-activations,
# D and the products are tile x block each; about this many activations (1 MiB in float64,
# one core's L2) stay in cache between the GEMMs that read them, where n x block temporaries
# would stream through memory (the mat-vec ran at a tenth of the GEMM peak that way).
CPU_TILE_ACTIVATIONS = 1 << 17
CPU_BLOCK = 512  # neurons per block on the CPU unless `block` says otherwise
MIN_TILE = 64
# The per-column state kept between the two passes (M, dim F x m for the ROWS term) is held
# for at most this many floats (32 MiB in float64); more columns of v go in several rounds.
STATE_FLOATS = 1 << 22


class _Step(NamedTuple):
    """One neuron block [i0, i1) on one tile of points."""

    i0: int
    i1: int
    f: torch.Tensor  # the tile's features F (X, or Z = X V^T): (tile, dim F)
    r: torch.Tensor  # the ReLUs of the pre-activations (tile, i1 - i0)
    d: torch.Tensor  # D = S diag(a): the block's backprop signal, times sqrt(m)


class _Term:
    """A term's share of the two passes: gather (pass 1, tiles of X2) and apply (pass 2, tiles
    of X) per (tile, neuron block) step, defined by each term, and hooks around each tile of a
    pass, which do nothing unless a term needs them (RANK: a sum over all blocks first)."""

    def end_gather(self, t0: int, t1: int, vt: torch.Tensor) -> None:
        """After every block of a tile of X2 has been gathered."""

    def start_apply(self, t0: int, t1: int) -> None:
        """Before the blocks of a tile of X are applied."""

    def end_apply(self, t0: int, t1: int, out: torch.Tensor) -> None:
        """After every block of a tile of X has been applied."""


class _Rows(_Term):
    """Pass 1: M_b += F_t^T (D_t v_t); pass 2: out_t += rowsum((F_t M_b) o D_t)."""

    def __init__(self, like: torch.Tensor, dim: int, blocks: list[tuple[int, int]],
                 cols: int) -> None:
        self.state = [like.new_zeros(cols, dim, i1 - i0) for i0, i1 in blocks]  # M_b

    def gather(self, bi: int, s: _Step, t0: int, t1: int, vt: torch.Tensor) -> None:
        for j in range(vt.shape[1]):
            self.state[bi][j] += s.f.T @ (s.d * vt[:, j : j + 1])

    def apply(self, bi: int, s: _Step, t0: int, t1: int, out: torch.Tensor) -> None:
        for j in range(out.shape[1]):
            out[:, j] += ((s.f @ self.state[bi][j]) * s.d).sum(dim=1).to(F64)


class _Readout(_Term):
    """Pass 1: c_b += R_t^T v_t; pass 2: out_t += R_t c_b (R = relu of the pre-activations)."""

    def __init__(self, like: torch.Tensor, blocks: list[tuple[int, int]], cols: int) -> None:
        self.state = [like.new_zeros(i1 - i0, cols) for i0, i1 in blocks]  # c_b

    def gather(self, bi: int, s: _Step, t0: int, t1: int, vt: torch.Tensor) -> None:
        self.state[bi] += s.r.T @ vt

    def apply(self, bi: int, s: _Step, t0: int, t1: int, out: torch.Tensor) -> None:
        out += (s.r @ self.state[bi]).to(F64)


class _Rank(_Term):
    """G_t = sum_b D_b U_b over all blocks of a tile; pass 1: A += G_t^T (X_t o v_t) (k x d);
    pass 2: out_t += rowsum((G_t A) o X_t). With X2 = X the tiles' G from pass 1 are kept
    (n x k, no more than the features) rather than computed again."""

    def __init__(self, layer: Layer, x: torch.Tensor, x2: torch.Tensor, cols: int) -> None:
        self.layer, self.x, self.x2 = layer, x, x2
        self.a = x.new_zeros(cols, layer.k, x.shape[1])
        self.g = x.new_zeros(0, layer.k)
        self.kept: dict[int, torch.Tensor] | None = {} if x2 is x else None

    def gather(self, bi: int, s: _Step, t0: int, t1: int, vt: torch.Tensor) -> None:
        if bi == 0:
            self.g = self.x2.new_zeros(t1 - t0, self.layer.k)
        self.g += self.layer.to_rank(s.d, s.i0, s.i1)

    def end_gather(self, t0: int, t1: int, vt: torch.Tensor) -> None:
        xt = self.x2[t0:t1]
        for j in range(vt.shape[1]):
            self.a[j] += self.g.T @ (xt * vt[:, j : j + 1])
        if self.kept is not None:
            self.kept[t0] = self.g

    def start_apply(self, t0: int, t1: int) -> None:
        if self.kept is None:
            self.g = self.x.new_zeros(t1 - t0, self.layer.k)
        else:
            self.g = self.kept.pop(t0)

    def apply(self, bi: int, s: _Step, t0: int, t1: int, out: torch.Tensor) -> None:
        if self.kept is None:
            self.g += self.layer.to_rank(s.d, s.i0, s.i1)

    def end_apply(self, t0: int, t1: int, out: torch.Tensor) -> None:
        xt = self.x[t0:t1]
        for j in range(out.shape[1]):
            out[:, j] += ((self.g @ self.a[j]) * xt).sum(dim=1).to(F64)


def _spans(n: int, tile: int) -> list[tuple[int, int]]:
    return [(i, min(i + tile, n)) for i in range(0, n, tile)]


def _sizes(net: Network, rows: int, points: int, block: int | None,
           tile: int | None) -> tuple[list[tuple[int, int]], int]:
    """The neuron blocks and the points per tile. CPU: blocks of CPU_BLOCK and tiles that
    keep tile x block near CPU_TILE_ACTIVATIONS; a GPU: blocks as large as its memory allows
    (neuron_blocks) and, unless `tile` says otherwise, all points in one tile."""
    on_cpu = net.device.type == "cpu"
    if block is None and on_cpu:
        block = min(net.m_local, CPU_BLOCK)
    blocks = neuron_blocks(net, block, rows, net.device)
    if tile is None:
        width = blocks[0][1] - blocks[0][0]
        tile = max(MIN_TILE, CPU_TILE_ACTIVATIONS // width) if on_cpu else points
    elif isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile: expected an integer >= 1, got {tile!r}")
    return blocks, max(1, tile)


def _steps(layer: Layer, a: torch.Tensor, x: torch.Tensor, t0: int, t1: int,
           blocks: list[tuple[int, int]]):
    # The features tile by tile too: an SRHT's butterflies over n x d stream through memory
    # (a fifth of the mat-vec when done for all points at once), over a tile they stay in cache.
    ft = layer.features(x[t0:t1])
    for i0, i1 in blocks:
        r = torch.relu(layer.preact(ft, i0, i1))
        # S = sign(relu(p)), the same 0/1 as (p > 0) at a third of its cost on the CPU
        # (a comparison writes bools, which then need a conversion).
        yield _Step(i0, i1, ft, r, torch.sign(r).mul_(a[i0:i1]))


def _term(group: Group, layer: Layer, x: torch.Tensor, x2: torch.Tensor,
          blocks: list[tuple[int, int]], cols: int):
    if group.role is Role.ROWS:
        return _Rows(x, layer.feature_dim, blocks, cols)
    if group.role is Role.RANK:
        return _Rank(layer, x, x2, cols)
    return _Readout(x, blocks, cols)


def _depth1(net: Network, x: torch.Tensor, x2: torch.Tensor | None, vv: torch.Tensor,
            out: torch.Tensor, block: int | None, tile: int | None) -> None:
    """The two-layer net's H(X, X2) v into out in two passes over tiles of points, each tile
    neuron block by neuron block: the first (over X2) sums every term's parameter-sized M,
    the second (over X) gives each tile's rows of the product, the pre-activations computed
    again. Columns of v go in rounds of at most STATE_FLOATS of M."""
    layer = net.layers[0]
    a = net.a.detach()
    x2 = x if x2 is None else x2
    rows = x.shape[0] + (0 if x2 is x else x2.shape[0])
    blocks, tile = _sizes(net, rows, max(x.shape[0], x2.shape[0]), block, tile)
    per_col = layer.feature_dim * net.m_local + net.m_local + (layer.k or 0) * x.shape[1]
    per_round = max(1, STATE_FLOATS // per_col)
    for c0 in range(0, vv.shape[1], per_round):
        c1 = min(c0 + per_round, vv.shape[1])
        terms = [_term(g, layer, x, x2, blocks, c1 - c0) for g in net.groups]
        for t0, t1 in _spans(x2.shape[0], tile):
            vt = vv[t0:t1, c0:c1]
            for bi, s in enumerate(_steps(layer, a, x2, t0, t1, blocks)):
                for t in terms:
                    t.gather(bi, s, t0, t1, vt)
            for t in terms:
                t.end_gather(t0, t1, vt)
        for t0, t1 in _spans(x.shape[0], tile):
            ot = out[t0:t1, c0:c1]
            for t in terms:
                t.start_apply(t0, t1)
            for bi, s in enumerate(_steps(layer, a, x, t0, t1, blocks)):
                for t in terms:
                    t.apply(bi, s, t0, t1, ot)
            for t in terms:
                t.end_apply(t0, t1, ot)


def _deep(net: Network, x: torch.Tensor, x2: torch.Tensor | None, vv: torch.Tensor,
          out: torch.Tensor, tile: int) -> None:
    """A deep net's H(X, X2) v into out, column by column: per column, one pass over the tiles
    of X2 sums M = P^T diag(v) Q for every term (parameter-sized), a second, over the tiles of
    X, gives rowsum(P o (Q M^T)) (the readout's P (P^T v)). A single tile's factors serve
    every column."""
    def spans(pts: torch.Tensor) -> list[tuple[int, int]]:
        return [(i, min(i + tile, pts.shape[0])) for i in range(0, pts.shape[0], tile)]

    rows = spans(x)
    cols = rows if x2 is None else spans(x2)
    x2 = x if x2 is None else x2
    cached: dict[int, list[Factors]] = {}
    for pts in (x, x2):
        if len(spans(pts)) == 1 and id(pts) not in cached:
            cached[id(pts)] = net_factors(net, pts)

    def factors(pts: torch.Tensor, i0: int, i1: int) -> list[Factors]:
        return cached[id(pts)] if id(pts) in cached else net_factors(net, pts[i0:i1])

    for j in range(vv.shape[1]):
        ms: list[torch.Tensor | None] = [None] * len(net.groups)
        for i0, i1 in cols:
            vj = vv[i0:i1, j : j + 1]
            for t, f in enumerate(factors(x2, i0, i1)):
                m = f.p.T @ (vj if f.q is None else vj * f.q)
                ms[t] = m if ms[t] is None else ms[t] + m
        for i0, i1 in rows:
            for f, m in zip(factors(x, i0, i1), ms):
                col = f.p @ m if f.q is None else ((f.q @ m.T) * f.p).sum(dim=1, keepdim=True)
                out[i0:i1, j] += col[:, 0].to(F64)


def ntk_matvec(
    net: Network, x: torch.Tensor, v: torch.Tensor, block: int | None = None,
    tile: int | None = None, x2: torch.Tensor | None = None,
) -> torch.Tensor:
    """H(X, X) @ v for v of shape (n,) or (n, p), exactly, in float64 accumulation; with x2,
    the cross-Gram's H(X, X2) @ v for v of shape (n2,) or (n2, p) (predictions on new points).

    Depth 1 walks tiles of `tile` points, each in blocks of `block` neurons (defaults: on the
    CPU in-cache sizes, CPU_BLOCK neurons and CPU_TILE_ACTIVATIONS / block points; on a GPU
    the blocks its memory allows and all points in one tile). A deeper net walks its points in
    tiles of `tile` (default point_tile(net)), memory O(tile x sum of widths + parameters).
    """
    if net.depth > 1 and (net.lo, net.hi) != (0, net.m):
        raise ValueError(f"net: holds neurons [{net.lo}, {net.hi}) of {net.m}; the mat-vec of "
                         "a deep net needs all of them")
    x = prepare_inputs(x, net.d, net.dtype, net.device, "X")
    x2 = None if x2 is None else prepare_inputs(x2, net.d, net.dtype, net.device, "X2")
    n, n2 = x.shape[0], (x if x2 is None else x2).shape[0]
    if not isinstance(v, torch.Tensor):
        v = torch.as_tensor(v)
    if v.dim() not in (1, 2) or v.shape[0] != n2:
        raise ValueError(f"v: expected shape ({n2},) or ({n2}, p), got {tuple(v.shape)}")
    vec = v.dim() == 1
    vv = (v[:, None] if vec else v).to(dtype=net.dtype, device=net.device)
    out = torch.zeros(n, vv.shape[1], dtype=F64, device=net.device)
    with torch.no_grad(), ieee_float32(net.device):
        if net.depth > 1:
            _deep(net, x, x2, vv, out, tile or point_tile(net))
        else:
            _depth1(net, x, x2, vv, out, block, tile)
    out = (out / net.m).to(net.dtype)
    return out[:, 0] if vec else out


@dataclass
class MatvecState:
    """Pass 1 of a depth-1 net's H(., X2) v over some of X2's points: per term, per neuron
    block, the sums M_b (ROWS) and c_b (READOUT). They add over disjoint sets of points, so
    row groups of a grid each sum their own points and add their states (then pass 2 on any
    points gives their rows of H(X, X2) v). blocks: the neuron blocks they were summed in."""

    blocks: list[tuple[int, int]]
    sums: list[list[torch.Tensor]]

    def __add__(self, other: MatvecState) -> MatvecState:
        if other.blocks != self.blocks or len(other.sums) != len(self.sums):
            raise ValueError("other: a state of other neuron blocks or terms")
        return MatvecState(self.blocks, [[a + b for a, b in zip(mine, theirs)]
                                         for mine, theirs in zip(self.sums, other.sums)])

    def to(self, device: torch.device | str) -> MatvecState:
        return MatvecState(self.blocks, [[t.to(device) for t in term] for term in self.sums])


def _linear_net(net: Network) -> None:
    if net.depth > 1 or any(g.role is Role.RANK for g in net.groups):
        raise ValueError("net: the split mat-vec takes a depth-1 net without a trained V (its "
                         "term is quadratic in G summed over every neuron: rank_term)")


def matvec_state(net: Network, x2: torch.Tensor, v: torch.Tensor, block: int | None = None,
                 tile: int | None = None) -> MatvecState:
    """Pass 1 of H(., X2) v (v of shape (n2,)) for a depth-1 net whose terms add over points
    (ROWS, READOUT): the sums over X2's points, for matvec_apply."""
    _linear_net(net)
    x2 = prepare_inputs(x2, net.d, net.dtype, net.device, "X2")
    if v.shape != (x2.shape[0],):
        raise ValueError(f"v: expected shape ({x2.shape[0]},), got {tuple(v.shape)}")
    layer, a = net.layers[0], net.a.detach()
    blocks, tile = _sizes(net, x2.shape[0], x2.shape[0], block, tile)
    vv = v.to(dtype=net.dtype, device=net.device)[:, None]
    with torch.no_grad(), ieee_float32(net.device):
        terms = [_term(g, layer, x2, x2, blocks, 1) for g in net.groups]
        for t0, t1 in _spans(x2.shape[0], tile):
            for bi, s in enumerate(_steps(layer, a, x2, t0, t1, blocks)):
                for t in terms:
                    t.gather(bi, s, t0, t1, vv[t0:t1])
    return MatvecState(blocks, [t.state for t in terms])


def matvec_apply(net: Network, x: torch.Tensor, state: MatvecState,
                 tile: int | None = None) -> torch.Tensor:
    """Pass 2: H(X, X2) v on the points x from the state of all of X2 (matvec_state's, summed
    over its parts), in the net's dtype, as ntk_matvec gives it."""
    _linear_net(net)
    x = prepare_inputs(x, net.d, net.dtype, net.device, "X")
    layer, a = net.layers[0], net.a.detach()
    _, tile = _sizes(net, x.shape[0], x.shape[0], state.blocks[0][1] - state.blocks[0][0], tile)
    out = torch.zeros(x.shape[0], 1, dtype=F64, device=net.device)
    with torch.no_grad(), ieee_float32(net.device):
        terms = [_term(g, layer, x, x, state.blocks, 1) for g in net.groups]
        for t, sums in zip(terms, state.sums):
            t.state = sums
        for t0, t1 in _spans(x.shape[0], tile):
            for bi, s in enumerate(_steps(layer, a, x, t0, t1, state.blocks)):
                for t in terms:
                    t.apply(bi, s, t0, t1, out[t0:t1])
    return (out[:, 0] / net.m).to(net.dtype)
