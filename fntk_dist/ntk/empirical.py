"""The exact empirical NTK Gram of a network from its factors (DESIGN sections 3 and 7).

H = sum over trained groups of one named term (gram_terms). Neurons are walked in blocks, so
memory is O(n^2 + n * block) at any width. gram_partial sums a net's neurons (a width shard's
share when it holds [lo, hi)); partials of all shards add, and finish_gram turns the total into
H once (a RANK term's G must be summed over every neuron before its outer product).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..models.blocks import neuron_blocks
from ..models.groups import Group
from ..models.network import Network
from ..models.validation import prepare_inputs
from .gram_terms import Block, finish_term, running_sums
from .partial import GramPartial


def gram_partial(
    net: Network, x1: torch.Tensor, x2: torch.Tensor | None = None, block: int | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> GramPartial:
    """The sums over this net's neurons (a shard's share when net holds neurons [lo, hi)).

    on_block(done, total) is called after each neuron block (progress reporting).
    """
    layer = net.only_layer("the closed-form Gram")
    x1 = prepare_inputs(x1, net.d, net.dtype, net.device, "X")
    sym = x2 is None
    x2 = x1 if sym else prepare_inputs(x2, net.d, net.dtype, net.device, "X2")
    with torch.no_grad():
        a = net.a.detach()
        sums = running_sums(net.groups, layer, a, x1.shape[0], x2.shape[0], sym)
        f1 = layer.features(x1)
        f2 = f1 if sym else layer.features(x2)
        blocks = neuron_blocks(net, block, x1.shape[0] + x2.shape[0])
        for done, (i0, i1) in enumerate(blocks, 1):
            p1 = layer.preact(f1, i0, i1)
            b = Block(i0, i1, p1, p1 if sym else layer.preact(f2, i0, i1), a[i0:i1])
            for s in sums:
                s.add(b)
            if on_block is not None:
                on_block(done, len(blocks))
        return GramPartial(tuple(s.result() for s in sums))


def finish_gram(
    net: Network, part: GramPartial, x1: torch.Tensor, x2: torch.Tensor | None = None
) -> torch.Tensor:
    """H(X1, X2) from the summed partials of all m neurons, in the net's dtype."""
    layer = net.only_layer("the closed-form Gram")
    groups: dict[tuple[str, str], Group] = {g.key: g for g in net.groups}
    if set(part.keys) != set(groups):
        raise ValueError(f"part: holds the terms {part.keys}, but the net trains "
                         f"{tuple(groups)}")
    x1 = prepare_inputs(x1, net.d, net.dtype, net.device, "X")
    x2 = x1 if x2 is None else prepare_inputs(x2, net.d, net.dtype, net.device, "X2")
    with torch.no_grad():
        h = torch.zeros(x1.shape[0], x2.shape[0], dtype=net.dtype, device=net.device)
        for term in part.terms:
            h += finish_term(term, groups[term.key].role, layer, x1, x2)
        return h / net.m


def empirical_ntk(
    net: Network, x1: torch.Tensor, x2: torch.Tensor | None = None, block: int | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The exact empirical NTK H(X1, X2) over the net's trained parameters: (n1, n2).

    Summed over neurons in blocks of `block` (default: about 8M activations at a time);
    on_block(done, total) is called after each block.
    """
    if (net.lo, net.hi) != (0, net.m):
        raise ValueError(
            f"net: holds neurons [{net.lo}, {net.hi}) of {net.m}; a shard's Gram is "
            "gram_partial(...) summed over shards, then finish_gram(...)"
        )
    return finish_gram(net, gram_partial(net, x1, x2, block, on_block), x1, x2)
