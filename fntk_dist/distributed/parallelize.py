"""How a net is split over the width group of a mesh (tensor parallelism by neurons).

The model says what it computes (fntk_dist.models.width: which neurons a shard holds, the sums
between layers, through an injected callable); this module plugs in the mesh:
- shards: each width rank owns a contiguous range of every layer's neurons and rebuilds it from
  the seed; the layers' sums between them are the width group's all-reduce;
- the output: each shard computes its neurons' share; the shares are all-reduced forward, and
  the backward is the identity (every rank of a width group computes the same loss);
- shared factors: the first layer's V (sketch_out, lowrank) is held whole by every shard, so its
  gradient is the sum of the shards' gradients. A deeper layer's V is split by columns, each
  shard's gradient its own (from dL/dZ summed over the shards, models.width);
- diagnostics of a deep net see the whole net, gathered from the shards (gather_whole).
A mesh of width 1 (one process) makes all of it a no-op.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..models.network import Network
from ..models.width import WidthShard, shard_ranges

__all__ = ["gather_whole", "shard_ranges", "sum_output", "sum_shared_gradients", "width_shard"]


class WidthGroup(Protocol):
    width: int
    width_rank: int

    def sum_width(self, t: torch.Tensor) -> torch.Tensor: ...


def width_shard(group: WidthGroup) -> WidthShard | None:
    """This rank's shard of every layer, summing over the width group; None on a width of 1."""
    return None if group.width == 1 else WidthShard(group.width_rank, group.width,
                                                    group.sum_width)


def sum_output(partial: torch.Tensor, group: WidthGroup) -> torch.Tensor:
    """The net's output from this shard's share of it (differentiable)."""
    return _SumOverWidth.apply(partial, group) if group.width > 1 else partial


def sum_shared_gradients(net: Network, group: WidthGroup) -> None:
    """Make the gradient of the factor every shard holds whole (the first layer's V) the sum of
    the shards' gradients."""
    if group.width == 1:
        return
    v = net.layers[0].V
    if v is not None and v.requires_grad:
        v.register_hook(lambda g: group.sum_width(g.clone()))


@torch.no_grad()
def gather_whole(whole: Network, net: Network, group: WidthGroup) -> Network:
    """Fill `whole` (the unsharded net, as built from the same config) with the trained
    parameters of every shard of the width group, `net` being this rank's; returns whole.

    Each shard's rows (W, U, a) and columns (V above the first layer) are placed in a zero
    tensor of the whole shape and summed over the group; a factor held whole is copied.
    """
    for lw, ls in zip(whole.layers, net.layers):
        for name in ls.factors:
            rows = slice(ls.lo, ls.hi) if name != "V" else slice(None)
            cols = slice(*ls.inputs) if name == "V" else slice(None)
            _place(getattr(lw, name), getattr(ls, name), (rows, cols), group)
    _place(whole.a, net.a, (slice(net.lo, net.hi),), group)
    return whole


def _place(target: torch.Tensor, part: torch.Tensor, where: tuple[slice, ...],
           group: WidthGroup) -> None:
    if part.shape == target.shape:  # held whole by every shard
        target.copy_(part)
        return
    full = torch.zeros_like(target)
    full[where] = part
    target.copy_(group.sum_width(full))


class _SumOverWidth(torch.autograd.Function):
    """Forward: all-reduce the shards' partial outputs. Backward: identity, because every rank
    of the width group computes the same loss from the same summed output."""

    @staticmethod
    def forward(ctx, partial: torch.Tensor, group: WidthGroup) -> torch.Tensor:
        return group.sum_width(partial.clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None
