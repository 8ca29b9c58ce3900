"""Width sharding of a deep net (tensor parallelism by neurons, DESIGN section 7).

A width group of `size` shards splits every hidden layer by neurons: shard r holds neurons
shard_ranges(m_l, size)[r] of each layer l, so its activations h^l_r are exactly the input
columns that its part of layer l + 1 needs. Between layers:
- a factorized layer (W = U V) holds its rows of U and the matching columns of V, and its
  rank-space input z = sum over shards of h_r V_r^T is one all-reduce of n x k (`sum_partials`);
- a dense layer gathers its whole input, then computes its own rows (column-parallel;
  `gather_columns`, an all-reduce of n x m);
- the first layer takes the whole input x, and the readout is a partial sum per shard.

The model never talks to other processes: the group's in-place sum is injected as a callable
(a torch.distributed all-reduce on a mesh; in one process there is no WidthShard at all).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

SumFn = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over the group, in place


def shard_ranges(total: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous ranges of near-equal size covering [0, total)."""
    cuts = [round(i * total / parts) for i in range(parts + 1)]
    return list(zip(cuts, cuts[1:]))


@dataclass(frozen=True, eq=False)
class WidthShard:
    """Shard `rank` of a width group of `size`, and the group's in-place sum."""

    rank: int
    size: int
    sum: SumFn

    def neurons(self, m: int) -> tuple[int, int]:
        """The neurons [lo, hi) of a layer of width m that this shard holds."""
        return shard_ranges(m, self.size)[self.rank]

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the group, in place: the layers hold the shard as their SumFn."""
        return self.sum(t)

    def __deepcopy__(self, memo: dict) -> WidthShard:
        # A copy of a sharded net talks to the same group: the process group behind the sum is
        # shared, never copied (it cannot be).
        return self


class _SumPartials(torch.autograd.Function):
    """Forward: the sum of the shards' partial sums. Backward: the sum of the shards' gradients,
    because what consumes the sum is sharded too (each shard's rows of the next layer), so each
    shard's gradient is only its own neurons' share of the whole."""

    @staticmethod
    def forward(ctx, partial: torch.Tensor, fn: SumFn) -> torch.Tensor:
        ctx.fn = fn
        return fn(partial.clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.fn(grad.clone()), None


class _GatherColumns(torch.autograd.Function):
    """Forward: the whole (n, total) input from each shard's columns [lo, hi), as a sum of
    zero-padded copies. Backward: each shard's rows of the layer above give a share of the
    whole input's gradient; their sum, restricted to this shard's columns."""

    @staticmethod
    def forward(ctx, part: torch.Tensor, lo: int, total: int, fn: SumFn) -> torch.Tensor:
        ctx.fn, ctx.cols = fn, slice(lo, lo + part.shape[1])
        whole = part.new_zeros(part.shape[0], total)
        whole[:, ctx.cols] = part
        return fn(whole)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.fn(grad.clone())[:, ctx.cols].contiguous(), None, None, None


def sum_partials(partial: torch.Tensor, fn: SumFn) -> torch.Tensor:
    """The sum over shards of partial sums, differentiable (an all-reduce each way)."""
    return _SumPartials.apply(partial, fn)


def gather_columns(part: torch.Tensor, lo: int, total: int, fn: SumFn) -> torch.Tensor:
    """The whole input from this shard's columns [lo, lo + part.shape[1]), differentiable."""
    return _GatherColumns.apply(part, lo, total, fn)


class SketchColumns(nn.Module):
    """Columns [lo, hi) of a fixed k x d input sketch V, as a dense k x (hi - lo) matrix: the
    part of Z = X V^T that a shard holding those input columns contributes. Its numbers are
    those of the whole sketch (the same seed and streams, applied to the unit vectors)."""

    def __init__(self, sketch: nn.Module, lo: int, hi: int) -> None:
        super().__init__()
        self.kind, self.k, self.d = sketch.kind, sketch.k, sketch.d
        eye = torch.eye(sketch.k, dtype=_dtype(sketch))
        self.register_buffer("matrix", sketch.transpose(eye)[:, lo:hi].contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """This shard's part of Z: (n, hi - lo) -> (n, k)."""
        return x @ self.matrix.T

    def transpose(self, z: torch.Tensor) -> torch.Tensor:
        """Z V[:, lo:hi]: (n, k) -> (n, hi - lo)."""
        return z @ self.matrix


def _dtype(sketch: nn.Module) -> torch.dtype:
    """The floating dtype a sketch's buffers hold."""
    return next(b.dtype for b in sketch.buffers() if b.is_floating_point())
