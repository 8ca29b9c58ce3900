"""H v without forming H, term by term, from the net's factors (for Grams too large to store).

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
    p: torch.Tensor  # pre-activations (n, b)
    d: torch.Tensor  # D_b = S_b diag(a_b): the block's backprop signal, times sqrt(m)


class _Rows:
    def __init__(self, feats: torch.Tensor) -> None:
        self.f = feats

    def add(self, out: torch.Tensor, vv: torch.Tensor, b: _Block) -> None:
        for j in range(vv.shape[1]):
            m_j = self.f.T @ (b.d * vv[:, j : j + 1])  # (dim F, B)
            out[:, j] += ((self.f @ m_j) * b.d).sum(dim=1).to(F64)

    def finish(self, out: torch.Tensor, vv: torch.Tensor) -> None:
        pass


class _Readout:
    def add(self, out: torch.Tensor, vv: torch.Tensor, b: _Block) -> None:
        r = torch.relu(b.p)
        out += (r @ (r.T @ vv)).to(F64)

    def finish(self, out: torch.Tensor, vv: torch.Tensor) -> None:
        pass


class _Rank:
    def __init__(self, layer: Layer, inputs: torch.Tensor) -> None:
        self.layer, self.x = layer, inputs
        self.g = inputs.new_zeros(inputs.shape[0], layer.k)

    def add(self, out: torch.Tensor, vv: torch.Tensor, b: _Block) -> None:
        self.g += self.layer.to_rank(b.d, b.i0, b.i1)

    def finish(self, out: torch.Tensor, vv: torch.Tensor) -> None:
        for j in range(vv.shape[1]):
            a_j = self.g.T @ (self.x * vv[:, j : j + 1])  # (k, d)
            out[:, j] += ((self.g @ a_j) * self.x).sum(dim=1).to(F64)


def _term(group: Group, layer: Layer, x: torch.Tensor, feats: torch.Tensor):
    if group.role is Role.ROWS:
        return _Rows(feats)
    if group.role is Role.RANK:
        return _Rank(layer, x)
    return _Readout()


def _depth1(net: Network, x: torch.Tensor, vv: torch.Tensor, out: torch.Tensor,
            block: int | None) -> None:
    """The two-layer net's H v into out, neuron block by neuron block."""
    layer = net.layers[0]
    a = net.a.detach()
    f = layer.features(x)
    terms = [_term(g, layer, x, f) for g in net.groups]
    for i0, i1 in neuron_blocks(net, block, x.shape[0], net.device):
        p = layer.preact(f, i0, i1)
        b = _Block(i0, i1, p, (p > 0).to(net.dtype) * a[i0:i1])
        for t in terms:
            t.add(out, vv, b)
    for t in terms:
        t.finish(out, vv)


def _deep(net: Network, x: torch.Tensor, vv: torch.Tensor, out: torch.Tensor,
          tile: int) -> None:
    """A deep net's H v into out, column by column: per column, one pass over the point tiles
    sums M = P^T diag(v) Q for every term (parameter-sized), a second gives
    rowsum(P o (Q M^T)) (the readout's P (P^T v)). A single tile's factors serve every column."""
    spans = [(i, min(i + tile, x.shape[0])) for i in range(0, x.shape[0], tile)]
    cached = net_factors(net, x) if len(spans) == 1 else None

    def factors(i0: int, i1: int) -> list[Factors]:
        return cached if cached is not None else net_factors(net, x[i0:i1])

    for j in range(vv.shape[1]):
        ms: list[torch.Tensor | None] = [None] * len(net.groups)
        for i0, i1 in spans:
            vj = vv[i0:i1, j : j + 1]
            for t, f in enumerate(factors(i0, i1)):
                m = f.p.T @ (vj if f.q is None else vj * f.q)
                ms[t] = m if ms[t] is None else ms[t] + m
        for i0, i1 in spans:
            for f, m in zip(factors(i0, i1), ms):
                col = f.p @ m if f.q is None else ((f.q @ m.T) * f.p).sum(dim=1, keepdim=True)
                out[i0:i1, j] += col[:, 0].to(F64)


def ntk_matvec(
    net: Network, x: torch.Tensor, v: torch.Tensor, block: int | None = None,
    tile: int | None = None,
) -> torch.Tensor:
    """H(X, X) @ v for v of shape (n,) or (n, p), exactly, in float64 accumulation.

    Depth 1 walks the neurons in blocks of `block`; a deeper net walks its points in tiles of
    `tile` (default point_tile(net)), memory O(tile x sum of widths + parameters).
    """
    if net.depth > 1 and (net.lo, net.hi) != (0, net.m):
        raise ValueError(f"net: holds neurons [{net.lo}, {net.hi}) of {net.m}; the mat-vec of "
                         "a deep net needs all of them")
    x = prepare_inputs(x, net.d, net.dtype, net.device, "X")
    n = x.shape[0]
    if not isinstance(v, torch.Tensor):
        v = torch.as_tensor(v)
    if v.dim() not in (1, 2) or v.shape[0] != n:
        raise ValueError(f"v: expected shape ({n},) or ({n}, p), got {tuple(v.shape)}")
    vec = v.dim() == 1
    vv = (v[:, None] if vec else v).to(dtype=net.dtype, device=net.device)
    out = torch.zeros(n, vv.shape[1], dtype=F64, device=net.device)
    with torch.no_grad(), ieee_float32(net.device):
        if net.depth > 1:
            _deep(net, x, vv, out, tile or point_tile(net))
        else:
            _depth1(net, x, vv, out, block)
    out = (out / net.m).to(net.dtype)
    return out[:, 0] if vec else out
