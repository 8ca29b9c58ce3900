"""Each trained group's Gram term of the last hidden layer and the readout, summed neuron
block by neuron block, then finished.

For the last hidden layer, with S = 1[P > 0] for pre-activations P, the backprop signal is
Delta = S diag(a) / sqrt(m). The 1/m common to every term is applied once, by finish_gram, so
the sums here are of Delta' = S diag(a):

    ROWS     sum_r Delta'_r(X1) Delta'_r(X2)^T        finished as (F1 F2^T) o sum
    RANK     G = Delta' U for X1 and X2 (n x k)       finished as (A1 A2^T) o (G1 G2^T)
    READOUT  sum_r relu(P_r(X1)) relu(P_r(X2))^T      finished as the sum itself
    back     sum_r Delta'_r w_r (in feature space)    a deep net's signal to its lower layers

with A the layer's input (X at depth 1, the scaled s^L = c_L h^{L-1} deeper, which puts the
scale c_L^2 into F and A) and F its features (A, or Z = A V^T).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..models.blocks import F32_EXACT
from ..models.groups import Group, Role
from ..models.layer import Layer
from .partial import NeuronSum, RankSum, Term

F64 = torch.float64


class Block(NamedTuple):
    """One neuron block [i0, i1) of the last layer: pre-activations for X1 and X2 (p2 is p1
    for a Gram of X against itself) and the block's readout weights a."""

    i0: int
    i1: int
    p1: torch.Tensor
    p2: torch.Tensor
    a: torch.Tensor


# A Gram of X against itself (a diagonal tile) is symmetric. On the CPU its n x n sums are
# formed in SYM_SPLIT x SYM_SPLIT row blocks, the upper triangle's only, and mirrored once at
# the end: (q + 1) / (2 q) of a whole product's FLOPs, 5/8 for q = 4 (the blocks' GEMMs, n / 4
# rows each, still run at the kernel's rate). CUDA keeps whole products: there a one-device
# job's time is writing its tiles, not their kernels (docs/gpu/README.md).
SYM_SPLIT = 4


def symmetric_blocks(n: int, device: torch.device) -> list[tuple[slice, slice]] | None:
    """The (rows, cols) blocks on or above the diagonal that a symmetric n x n sum is formed
    from on `device`, or None where it is formed whole."""
    if device.type != "cpu" or n < 2 * SYM_SPLIT:
        return None
    cuts = [n * i // SYM_SPLIT for i in range(SYM_SPLIT + 1)]
    spans = [slice(lo, hi) for lo, hi in zip(cuts, cuts[1:])]
    return [(r, c) for i, r in enumerate(spans) for c in spans[i:]]


def symmetric_share(n: int) -> float:
    """The share of a whole n x n product's FLOPs that symmetric_blocks computes on the CPU."""
    blocks = symmetric_blocks(n, torch.device("cpu"))
    if blocks is None:
        return 1.0
    return sum((r.stop - r.start) * (c.stop - c.start) for r, c in blocks) / (n * n)


def symmetric_operand_rows(n: int) -> int:
    """Rows of points the GEMMs of one n x n symmetric product read on the CPU, counted once
    per GEMM (each packs its operands): every block's rows and columns, (SYM_SPLIT + 1) n for
    symmetric_blocks' blocks; 2n for a whole product."""
    blocks = symmetric_blocks(n, torch.device("cpu"))
    if blocks is None:
        return 2 * n
    return sum((r.stop - r.start) + (c.stop - c.start) for r, c in blocks)


def _mirror(t: torch.Tensor, blocks: list[tuple[slice, slice]]) -> None:
    """The blocks below t's diagonal from those above it."""
    for r, c in blocks:
        if r != c:
            t[c, r] = t[r, c].T


def overlap_dtype(device: torch.device) -> torch.dtype:
    """The dtype the 0/1 activation masks are multiplied in for S S^T: bfloat16 on CUDA, where
    torch.mm(s1, s2.T, torch.float32) runs on tensor cores with float32 accumulation and a
    float32 result (torch.mm's out_dtype: float32 from float16/bfloat16 inputs, CUDA only), so
    every count below 2^24 is exact; float32 elsewhere (the CPU has no such product). A plain
    bfloat16 product would round its output to 8 bits: counts above 256 would be wrong."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class _RowsSum:
    """sum_r a_r^2 s_r(X1) s_r(X2)^T. While every a_r is +-1 (a fixed readout, or one not yet
    moved) that is a count of shared active neurons. On the CPU it is a float32 GEMM, exact
    for integers, into a float32 accumulator flushed into float64 before a count could pass
    2^24. On CUDA the masks are bfloat16 and each block's product (fewer than 2^24 neurons) is
    float32 from tensor cores, added into float64 (overlap_dtype). Otherwise the weighted
    masks are multiplied in the net's dtype and summed in float64."""

    def __init__(self, group: Group, n1: int, n2: int, device: torch.device, counts: bool,
                 sym: bool):
        self.key, self.counts, self.pending = group.key, counts, 0
        self.mask = overlap_dtype(device)
        self.total = torch.zeros(n1, n2, dtype=F64, device=device)
        # The CPU's float32 accumulator; on CUDA, the buffer each block's product lands in.
        self.count = torch.zeros(n1, n2, dtype=torch.float32, device=device) if counts else None
        self.blocks = symmetric_blocks(n1, device) if sym else None

    def add(self, b: Block) -> None:
        sym = b.p2 is b.p1
        if not self.counts:
            d1 = (b.p1 > 0).to(b.p1.dtype) * b.a
            if self.blocks is not None:
                for r, c in self.blocks:
                    self.total[r, c].add_((d1[r] @ d1[c].T).to(F64))
                return
            d2 = d1 if sym else (b.p2 > 0).to(b.p2.dtype) * b.a
            self.total += (d1 @ d2.T).to(F64)
            return
        s1 = (b.p1 > 0).to(self.mask)
        s2 = s1 if sym else (b.p2 > 0).to(self.mask)
        if self.mask is torch.bfloat16:
            torch.mm(s1, s2.T, torch.float32, out=self.count)
            self.total += self.count
            return
        if self.pending + (b.i1 - b.i0) >= F32_EXACT:
            self.total += self.count
            self.count.zero_()
            self.pending = 0
        if self.blocks is None:
            self.count.addmm_(s1, s2.T)
        else:
            for r, c in self.blocks:
                self.count[r, c].addmm_(s1[r], s1[c].T)
        self.pending += b.i1 - b.i0

    def result(self) -> NeuronSum:
        if self.counts and self.mask is not torch.bfloat16:
            self.total += self.count
        if self.blocks is not None:
            _mirror(self.total, self.blocks)
        return NeuronSum(self.key, self.total)


class _RankSum:
    """G = S diag(a) U for X1 and X2, summed in float64."""

    def __init__(self, group: Group, layer: Layer, n1: int, n2: int, device: torch.device,
                 sym: bool):
        self.key, self.layer = group.key, layer
        self.g1 = torch.zeros(n1, layer.k, dtype=F64, device=device)
        self.g2 = self.g1 if sym else torch.zeros(n2, layer.k, dtype=F64, device=device)

    def add(self, b: Block) -> None:
        self.g1 += self.layer.to_rank((b.p1 > 0).to(b.p1.dtype) * b.a, b.i0, b.i1).to(F64)
        if self.g2 is not self.g1:
            self.g2 += self.layer.to_rank((b.p2 > 0).to(b.p2.dtype) * b.a, b.i0, b.i1).to(F64)

    def result(self) -> RankSum:
        return RankSum(self.key, self.g1, self.g2)


class _BackSum:
    """sum_r Delta'_r w_r in the layer's feature space (Layer.to_features), for X1 and X2,
    summed in float64: the signal a deep net's lower layers backpropagate. A factorized layer
    whose V trains has it already, as its RANK term's G: then it is that G, copied (every
    summed tensor of a partial is its own, for all_reduce_)."""

    def __init__(self, layer: Layer, n1: int, n2: int, device: torch.device, sym: bool,
                 rank: _RankSum | None):
        self.key, self.layer, self.rank = (f"layer{layer.index}", "back"), layer, rank
        if rank is None:
            self.g1 = torch.zeros(n1, layer.feature_dim, dtype=F64, device=device)
            self.g2 = self.g1 if sym else torch.zeros(n2, layer.feature_dim, dtype=F64,
                                                      device=device)

    def add(self, b: Block) -> None:
        if self.rank is not None:
            return
        self.g1 += self.layer.to_features((b.p1 > 0).to(b.p1.dtype) * b.a, b.i0, b.i1).to(F64)
        if self.g2 is not self.g1:
            self.g2 += self.layer.to_features((b.p2 > 0).to(b.p2.dtype) * b.a, b.i0,
                                              b.i1).to(F64)

    def result(self) -> RankSum:
        if self.rank is None:
            return RankSum(self.key, self.g1, self.g2)
        g1 = self.rank.g1.clone()
        return RankSum(self.key, g1, g1 if self.rank.g2 is self.rank.g1 else self.rank.g2.clone())


class _ReadoutSum:
    """sum_r relu(P_r(X1)) relu(P_r(X2))^T, each block's product summed in float64."""

    def __init__(self, group: Group, n1: int, n2: int, device: torch.device, sym: bool):
        self.key = group.key
        self.total = torch.zeros(n1, n2, dtype=F64, device=device)
        self.blocks = symmetric_blocks(n1, device) if sym else None

    def add(self, b: Block) -> None:
        r1 = torch.relu(b.p1)
        if self.blocks is None:
            self.total += (r1 @ (r1 if b.p2 is b.p1 else torch.relu(b.p2)).T).to(F64)
            return
        for r, c in self.blocks:
            self.total[r, c].add_((r1[r] @ r1[c].T).to(F64))

    def result(self) -> NeuronSum:
        if self.blocks is not None:
            _mirror(self.total, self.blocks)
        return NeuronSum(self.key, self.total)


def unit_readout(a: torch.Tensor) -> bool:
    """Whether every readout weight is +-1, so that S S^T counts neurons (one host sync: a
    caller that computes many partials of one fixed net asks once)."""
    return bool((a.abs() == 1).all())


def running_sums(groups: tuple[Group, ...], layer: Layer, a: torch.Tensor, n1: int, n2: int,
                 sym: bool, counts: bool) -> list[_RowsSum | _RankSum | _ReadoutSum]:
    """One running sum per trained group of the layer and the readout, in the groups' order.

    a: the readout weights of the layer's local neurons; counts: unit_readout(a).
    """
    dev = a.device
    made = {
        Role.ROWS: lambda g: _RowsSum(g, n1, n2, dev, counts, sym),
        Role.RANK: lambda g: _RankSum(g, layer, n1, n2, dev, sym),
        Role.READOUT: lambda g: _ReadoutSum(g, n1, n2, dev, sym),
    }
    return [made[g.role](g) for g in groups]


def back_sum(sums: list, layer: Layer, n1: int, n2: int, device: torch.device,
             sym: bool) -> _BackSum:
    """The running backprop signal of a deep net's last layer, sharing a RANK sum's G."""
    rank = next((s for s in sums if isinstance(s, _RankSum)), None)
    return _BackSum(layer, n1, n2, device, sym, rank)


def finish_term(term: Term, role: Role, layer: Layer, x1: torch.Tensor,
                x2: torch.Tensor) -> torch.Tensor:
    """The term's Gram, without the common 1/m, from its sums over all neurons, in the dtype
    of the inputs (the net's).

    x2 is x1 itself for a Gram of X against itself (its features are then computed once).
    """
    dt = x1.dtype
    if role is Role.ROWS:
        f1 = layer.features(x1)
        f2 = f1 if x2 is x1 else layer.features(x2)
        return torch.mm(f1, f2.T).mul_(term.total.to(dt))
    if role is Role.RANK:
        return torch.mm(x1, x2.T).mul_((term.g1 @ term.g2.T).to(dt))
    return term.total.to(dt)
