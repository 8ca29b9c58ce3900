"""How a net is split over the width group of a mesh (tensor parallelism by neurons).

The model says what it computes; this module says how it is split:
- shards: each width rank owns a contiguous neuron range and rebuilds it from the seed;
- the output: each shard computes its neurons' share; the shares are all-reduced forward, and
  the backward is the identity (every rank of a width group computes the same loss);
- shared factors: parameters not indexed by neuron (V of sketch_out and lowrank) are held
  whole by every shard, so their gradient is the sum of the shards' gradients.
A mesh of width 1 (one process) makes all three no-ops.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class WidthGroup(Protocol):
    width: int
    width_rank: int

    def sum_width(self, t: torch.Tensor) -> torch.Tensor: ...


def shard_ranges(total: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous ranges of near-equal size covering [0, total)."""
    cuts = [round(i * total / parts) for i in range(parts + 1)]
    return list(zip(cuts, cuts[1:]))


def neuron_range(m: int, group: WidthGroup) -> tuple[int, int] | None:
    """The neurons [lo, hi) this width rank owns; None (the whole net) on a width of 1."""
    return None if group.width == 1 else shard_ranges(m, group.width)[group.width_rank]


def sum_output(partial: torch.Tensor, group: WidthGroup) -> torch.Tensor:
    """The net's output from this shard's share of it (differentiable)."""
    return _SumOverWidth.apply(partial, group) if group.width > 1 else partial


def sum_shared_gradients(net: nn.Module, group: WidthGroup) -> None:
    """Make the gradients of the factors every shard holds whole (V) their sum over shards."""
    if group.width == 1:
        return
    for p in (net.V,):
        if p is not None and p.requires_grad:
            p.register_hook(lambda g: group.sum_width(g.clone()))


class _SumOverWidth(torch.autograd.Function):
    """Forward: all-reduce the shards' partial outputs. Backward: identity, because every rank
    of the width group computes the same loss from the same summed output."""

    @staticmethod
    def forward(ctx, partial: torch.Tensor, group: WidthGroup) -> torch.Tensor:
        return group.sum_width(partial.clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None
