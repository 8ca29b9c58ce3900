"""The NTK term of a trained shared factor V (sketch_out, lowrank) for width shards.

At depth 1 that term is (G G^T) o (X X^T) / m with G = sum over ALL neurons r of
relu'(<w_r, x>) a_r u_r (n x k): quadratic in a sum over neurons, so shards' mat-vecs do not
add. Each shard sums its neurons' part of G once (rank_factor; the net never changes during a
solve), the parts are added, and the term's mat-vec is taken once from the total:

    [(G1 G2^T) o (X1 X2^T)] v = rowsum((G1 (G2^T diag(v) X2)) o X1),   O(n k d).
"""

from __future__ import annotations

import torch

from ..models.blocks import neuron_blocks
from ..models.groups import Role
from ..models.network import Network
from ..models.validation import prepare_inputs
from ..runtime import ieee_float32

F64 = torch.float64


def trains_rank(net: Network) -> bool:
    """Whether a depth-1 net trains a shared factor V (a RANK term)."""
    return any(g.role is Role.RANK for g in net.groups)


def rank_factor(net: Network, x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """This net's neurons' part of G on the points x (n, k), float64 on the net's device."""
    if net.depth != 1:
        raise ValueError(f"net: rank_factor is the depth-1 term, got depth {net.depth}")
    x = prepare_inputs(x, net.d, net.dtype, net.device, "X")
    layer, a = net.layers[0], net.a.detach()
    g = torch.zeros(x.shape[0], layer.k, dtype=F64, device=net.device)
    with torch.no_grad(), ieee_float32(net.device):
        f = layer.features(x)
        for i0, i1 in neuron_blocks(net, block, x.shape[0], net.device):
            d = (layer.preact(f, i0, i1) > 0).to(net.dtype) * a[i0:i1]
            g += layer.to_rank(d, i0, i1).to(F64)
    return g


def rank_matvec(x1: torch.Tensor, g1: torch.Tensor, v: torch.Tensor, m: int,
                x2: torch.Tensor | None = None, g2: torch.Tensor | None = None) -> torch.Tensor:
    """[(G1 G2^T) o (X1 X2^T)] v / m in float64 (X2, G2 = X1, G1 when omitted); G summed over
    all m neurons."""
    x1 = x1.to(F64)
    x2, g2 = (x1, g1) if x2 is None else (x2.to(F64), g2)
    a = g2.T @ (x2 * v.to(F64)[:, None])  # (k, d)
    return ((g1 @ a) * x1).sum(dim=1) / m
