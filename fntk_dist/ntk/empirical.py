"""The exact empirical NTK Gram of a network from its factors (DESIGN sections 4 and 7).

H = sum over trained groups of one named term. The last hidden layer's and the readout's
terms are summed over that layer's neurons in blocks (gram_terms), so memory is O(n^2 +
n * block) at depth 1 and at any width; gram_partial sums a net's neurons (a width shard's
share when it holds [lo, hi)); partials of all shards add, and finish_gram turns the total
into H once (a RANK term's G must be summed over every neuron before its outer product).

A deep net's lower layers are whole in every shard. Their terms (deep_terms) start from the
last layer's backprop signal, which the partial sums like G; finish_gram carries it down. The
layers' activations are n x m_l, so empirical_ntk walks a deep net's points in tiles: memory
O(tile x sum of widths + n1 x n2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..models.blocks import default_block, neuron_blocks
from ..models.network import Network
from ..models.validation import prepare_inputs
from ..runtime import ieee_float32
from .deep_terms import last_groups, lower_gram, lower_groups
from .gram_terms import Block, back_sum, finish_term, running_sums, unit_readout
from .partial import GramPartial

# Activations a deep net's Gram holds per point tile: about 4M numbers (tile x sum of widths).
TILE_ACTIVATIONS = 1 << 22


def point_tile(net: Network) -> int:
    """Points per tile of a deep net's Gram and mat-vec: at least 64."""
    return max(64, TILE_ACTIVATIONS // (net.d + sum(layer.m for layer in net.layers)))


def gram_partial(
    net: Network, x1: torch.Tensor, x2: torch.Tensor | None = None, block: int | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> GramPartial:
    """The sums over this net's neurons of its last layer (a shard's share when net holds
    neurons [lo, hi)).

    on_block(done, total) is called after each neuron block (progress reporting).
    """
    x1 = prepare_inputs(x1, net.d, net.dtype, net.device, "X")
    x2 = None if x2 is None else prepare_inputs(x2, net.d, net.dtype, net.device, "X2")
    return partial_sums(net, x1, x2, block, on_block, unit_readout(net.a.detach()))


def partial_sums(
    net: Network, x1: torch.Tensor, x2: torch.Tensor | None, block: int | None,
    on_block: Callable[[int, int], None] | None, counts: bool,
) -> GramPartial:
    """gram_partial of inputs already checked (finite, (n, d), the net's dtype and device),
    with counts = unit_readout(net.a): no host synchronisation, so a caller that computes many
    tiles of one net checks once (the walk over neuron blocks queues device work only)."""
    sym = x2 is None
    x2 = x1 if sym else x2
    layer, n1, n2 = net.layers[-1], x1.shape[0], x2.shape[0]
    with torch.no_grad(), ieee_float32(net.device):
        a = net.a.detach()
        sums = running_sums(last_groups(net), layer, a, n1, n2, sym, counts)
        back = back_sum(sums, layer, n1, n2, a.device, sym) if lower_groups(net) else None
        s1 = net.last_input(x1)
        s2 = s1 if sym else net.last_input(x2)
        f1 = layer.features(s1)
        f2 = f1 if sym else layer.features(s2)
        blocks = neuron_blocks(net, block, n1 + n2, net.device)
        for done, (i0, i1) in enumerate(blocks, 1):
            p1 = layer.preact(f1, i0, i1)
            b = Block(i0, i1, p1, p1 if sym else layer.preact(f2, i0, i1), a[i0:i1])
            for s in sums:
                s.add(b)
            if back is not None:
                back.add(b)
            if on_block is not None:
                on_block(done, len(blocks))
        return GramPartial(tuple(s.result() for s in sums),
                           None if back is None else back.result())


def finish_gram(
    net: Network, part: GramPartial, x1: torch.Tensor, x2: torch.Tensor | None = None
) -> torch.Tensor:
    """H(X1, X2) from the summed partials of all the last layer's neurons, in the net's dtype.

    net: any shard of the net (its lower layers and the last layer's features are all it
    reads of the weights)."""
    groups = {g.key: g for g in last_groups(net)}
    if set(part.keys) != set(groups):
        raise ValueError(f"part: holds the terms {part.keys}, but the net trains "
                         f"{tuple(groups)}")
    if (part.back is None) != (not lower_groups(net)):
        raise ValueError("part: a deep net whose lower layers train needs the last layer's "
                         "backprop signal (part.back), and only such a net has one")
    x1 = prepare_inputs(x1, net.d, net.dtype, net.device, "X")
    x2 = None if x2 is None else prepare_inputs(x2, net.d, net.dtype, net.device, "X2")
    return _finish(net, part, x1, x2)


def _finish(net: Network, part: GramPartial, x1: torch.Tensor,
            x2: torch.Tensor | None) -> torch.Tensor:
    """finish_gram of a checked partial and checked inputs (no host synchronisation)."""
    groups = {g.key: g for g in last_groups(net)}
    layer = net.layers[-1]
    sym = x2 is None
    x2 = x1 if sym else x2
    with torch.no_grad(), ieee_float32(net.device):
        if net.depth == 1:
            ins1, ins2 = [x1], [x2]
        else:
            ins1 = net.layer_inputs(x1)
            ins2 = ins1 if sym else net.layer_inputs(x2)
        # The terms add into the first one that is a fresh tensor (not the partial's own sum),
        # and 1/m is applied in place: each n1 x n2 pass and temporary saved is a tile's worth
        # of memory traffic (a zeroed accumulator and h / m cost two more).
        h: torch.Tensor | None = None
        for term in part.terms:
            t = finish_term(term, groups[term.key].role, layer, ins1[-1], ins2[-1])
            h = _accumulate(h, t, term.tensors())
        if part.back is not None:
            dt = net.dtype
            y1 = layer.features_adjoint(part.back.g1.to(dt))
            y2 = y1 if sym else layer.features_adjoint(part.back.g2.to(dt))
            h = _accumulate(h, lower_gram(net, ins1, ins2, y1, y2), ())
        return h.div_(net.m)


def _accumulate(h: torch.Tensor | None, t: torch.Tensor,
                held: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """h + t, into h; the first t becomes h, copied when it is one of the partial's tensors
    (`held`), which the caller still owns."""
    if h is not None:
        return h.add_(t)
    ptr = t.untyped_storage().data_ptr()
    return t.clone() if any(ptr == u.untyped_storage().data_ptr() for u in held) else t


def _spans(n: int, tile: int) -> list[tuple[int, int]]:
    return [(i, min(i + tile, n)) for i in range(0, n, tile)]


def _tiled(net: Network, x1: torch.Tensor, x2: torch.Tensor | None, block: int | None,
           on_block: Callable[[int, int], None] | None, tile: int) -> torch.Tensor:
    """A deep net's Gram tile by tile of points (the upper triangle of H(X, X) only)."""
    sym = x2 is None
    rows = _spans(x1.shape[0], tile)
    cols = rows if sym else _spans(x2.shape[0], tile)
    pairs = [(r, c) for i, r in enumerate(rows) for j, c in enumerate(cols) if not sym or j >= i]
    # One block size for every tile (the largest tile's), so the progress count is exact.
    block = default_block(net, 2 * tile, net.device) if block is None else block
    todo = [len(neuron_blocks(net, block, (r[1] - r[0]) + (c[1] - c[0]))) for r, c in pairs]
    counts = unit_readout(net.a.detach())
    h = torch.empty(x1.shape[0], (x1 if sym else x2).shape[0], dtype=net.dtype,
                    device=net.device)
    done = 0
    for ((r0, r1), (c0, c1)), count in zip(pairs, todo):
        a = x1[r0:r1]
        b = None if sym and r0 == c0 else (x1 if sym else x2)[c0:c1]

        def report(i: int, _total: int, base: int = done) -> None:
            on_block(base + i, sum(todo))

        part = partial_sums(net, a, b, block, None if on_block is None else report, counts)
        h[r0:r1, c0:c1] = _finish(net, part, a, b)
        if sym and r0 != c0:
            h[c0:c1, r0:r1] = h[r0:r1, c0:c1].T
        done += count
    return h


def empirical_ntk(
    net: Network, x1: torch.Tensor, x2: torch.Tensor | None = None, block: int | None = None,
    on_block: Callable[[int, int], None] | None = None, tile: int | None = None,
) -> torch.Tensor:
    """The exact empirical NTK H(X1, X2) over the net's trained parameters: (n1, n2).

    Summed over the last layer's neurons in blocks of `block` (default: default_block's, 4M
    activations at a time on the CPU); on_block(done, total) is called after each block. A
    deep net walks its points in tiles of `tile` (default point_tile(net)); depth 1 holds no
    activations and needs none.
    """
    if (net.lo, net.hi) != (0, net.m):
        raise ValueError(
            f"net: holds neurons [{net.lo}, {net.hi}) of {net.m}; a shard's Gram is "
            "gram_partial(...) summed over shards, then finish_gram(...)"
        )
    if net.depth == 1:
        return finish_gram(net, gram_partial(net, x1, x2, block, on_block), x1, x2)
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 1):
        raise ValueError(f"tile: expected an integer >= 1, got {tile!r}")
    x1 = prepare_inputs(x1, net.d, net.dtype, net.device, "X")
    x2 = None if x2 is None else prepare_inputs(x2, net.d, net.dtype, net.device, "X2")
    return _tiled(net, x1, x2, block, on_block, tile or point_tile(net))
