"""H v without forming H, term by term, from the net's factors (for Grams too large to store);
with x2, the cross-Gram's H(X, X2) v the same way (X2's factors on the right).

Depth 1, per neuron block b, with D_b = S_b diag(a_b) and features F (X or Z):
    ROWS:    (1/m) rowsum(D_b o (F (F^T diag(v) D_b)))
    READOUT: (1/m) R_b (R_b^T v)
    RANK:    (1/m) rowsum((G (G^T diag(v) A)) o A), with G = sum_b D_b U_b over all blocks
             first and A the layer's input.
Memory O(n * (block + d + k)); one pass over the neurons per call.

Deeper, every term is (P P^T) o (Q Q^T) for per-point factors (deep_terms), and
[(P P^T) o (Q Q^T)] v = rowsum(P o (Q M^T)) with M = P^T diag(v) Q: O(n p q) per term, the
cost of a forward pass, over tiles of points.
"""

from __future__ import annotations

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


class _Block(NamedTuple):
    i0: int
    i1: int
    p: torch.Tensor  # pre-activations (n1, b) of the rows' points X1
    d: torch.Tensor  # D_b = S_b diag(a_b): the block's backprop signal, times sqrt(m)
    p2: torch.Tensor  # the same for the columns' points X2 (p and d themselves when X2 = X1)
    d2: torch.Tensor


class _Rows:
    def __init__(self, feats: torch.Tensor, feats2: torch.Tensor) -> None:
        self.f, self.f2 = feats, feats2

    def add(self, out: torch.Tensor, vv: torch.Tensor, b: _Block) -> None:
        for j in range(vv.shape[1]):
            m_j = self.f2.T @ (b.d2 * vv[:, j : j + 1])  # (dim F, B)
            out[:, j] += ((self.f @ m_j) * b.d).sum(dim=1).to(F64)

    def finish(self, out: torch.Tensor, vv: torch.Tensor) -> None:
        pass


class _Readout:
    def add(self, out: torch.Tensor, vv: torch.Tensor, b: _Block) -> None:
        r2 = torch.relu(b.p2)
        r1 = r2 if b.p is b.p2 else torch.relu(b.p)
        out += (r1 @ (r2.T @ vv)).to(F64)

    def finish(self, out: torch.Tensor, vv: torch.Tensor) -> None:
        pass


class _Rank:
    def __init__(self, layer: Layer, inputs: torch.Tensor, inputs2: torch.Tensor) -> None:
        self.layer, self.x, self.x2 = layer, inputs, inputs2
        self.g = inputs.new_zeros(inputs.shape[0], layer.k)
        self.g2 = self.g if inputs2 is inputs else inputs2.new_zeros(inputs2.shape[0], layer.k)

    def add(self, out: torch.Tensor, vv: torch.Tensor, b: _Block) -> None:
        self.g += self.layer.to_rank(b.d, b.i0, b.i1)
        if self.g2 is not self.g:
            self.g2 += self.layer.to_rank(b.d2, b.i0, b.i1)

    def finish(self, out: torch.Tensor, vv: torch.Tensor) -> None:
        for j in range(vv.shape[1]):
            a_j = self.g2.T @ (self.x2 * vv[:, j : j + 1])  # (k, d)
            out[:, j] += ((self.g @ a_j) * self.x).sum(dim=1).to(F64)


def _term(group: Group, layer: Layer, x: torch.Tensor, feats: torch.Tensor,
          x2: torch.Tensor, feats2: torch.Tensor):
    if group.role is Role.ROWS:
        return _Rows(feats, feats2)
    if group.role is Role.RANK:
        return _Rank(layer, x, x2)
    return _Readout()


def _depth1(net: Network, x: torch.Tensor, x2: torch.Tensor | None, vv: torch.Tensor,
            out: torch.Tensor, block: int | None) -> None:
    """The two-layer net's H(X, X2) v into out, neuron block by neuron block."""
    layer = net.layers[0]
    a = net.a.detach()
    f = layer.features(x)
    f2 = f if x2 is None else layer.features(x2)
    x2 = x if x2 is None else x2
    terms = [_term(g, layer, x, f, x2, f2) for g in net.groups]
    rows = x.shape[0] + (0 if x2 is x else x2.shape[0])
    for i0, i1 in neuron_blocks(net, block, rows, net.device):
        p = layer.preact(f, i0, i1)
        d = (p > 0).to(net.dtype) * a[i0:i1]
        p2 = p if x2 is x else layer.preact(f2, i0, i1)
        d2 = d if x2 is x else (p2 > 0).to(net.dtype) * a[i0:i1]
        b = _Block(i0, i1, p, d, p2, d2)
        for t in terms:
            t.add(out, vv, b)
    for t in terms:
        t.finish(out, vv)


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

    Depth 1 walks the neurons in blocks of `block`; a deeper net walks its points in tiles of
    `tile` (default point_tile(net)), memory O(tile x sum of widths + parameters).
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
            _depth1(net, x, x2, vv, out, block)
    out = (out / net.m).to(net.dtype)
    return out[:, 0] if vec else out
