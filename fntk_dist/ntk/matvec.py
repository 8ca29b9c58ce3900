"""H v without forming H, term by term, from the net's factors (for Grams too large to store).

Per neuron block b of the last layer, with D_b = S_b diag(a_b) and features F (X or Z):
    ROWS:    (1/m) rowsum(D_b o (F (F^T diag(v) D_b)))
    READOUT: (1/m) R_b (R_b^T v)
    RANK:    (1/m) rowsum((G (G^T diag(v) A)) o A), with G = sum_b D_b U_b over all blocks
             first and A the layer's input.
Memory O(n * (block + d + k)); one pass over the neurons per call.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..models.blocks import neuron_blocks
from ..models.groups import Group, Role
from ..models.layer import Layer
from ..models.network import Network
from ..models.validation import prepare_inputs

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


def ntk_matvec(
    net: Network, x: torch.Tensor, v: torch.Tensor, block: int | None = None
) -> torch.Tensor:
    """H(X, X) @ v for v of shape (n,) or (n, p), exactly, in float64 accumulation."""
    layer = net.only_layer("the closed-form mat-vec")
    x = prepare_inputs(x, net.d, net.dtype, net.device, "X")
    n = x.shape[0]
    if not isinstance(v, torch.Tensor):
        v = torch.as_tensor(v)
    if v.dim() not in (1, 2) or v.shape[0] != n:
        raise ValueError(f"v: expected shape ({n},) or ({n}, p), got {tuple(v.shape)}")
    vec = v.dim() == 1
    vv = (v[:, None] if vec else v).to(dtype=net.dtype, device=net.device)
    out = torch.zeros(n, vv.shape[1], dtype=F64, device=net.device)
    with torch.no_grad():
        a = net.a.detach()
        f = layer.features(x)
        terms = [_term(g, layer, x, f) for g in net.groups]
        for i0, i1 in neuron_blocks(net, block, n):
            p = layer.preact(f, i0, i1)
            b = _Block(i0, i1, p, (p > 0).to(net.dtype) * a[i0:i1])
            for t in terms:
                t.add(out, vv, b)
        for t in terms:
            t.finish(out, vv)
    out = (out / net.m).to(net.dtype)
    return out[:, 0] if vec else out
