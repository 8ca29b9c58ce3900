"""The exact empirical NTK Gram of a TwoLayerNet from its factors (DESIGN section 3).

With S = 1[X W^T > 0], Z = X V^T, G = S diag(a) U and R = relu(X W^T), each trained group adds
    W: (X X^T) o (S S^T) / m     U: (Z Z^T) o (S S^T) / m
    V: (X X^T) o (G G^T) / m     a: (R R^T) / m.
Neurons are walked in blocks, so memory is O(n^2 + n * block) for any width. The sums S S^T,
R R^T and G over disjoint neuron sets add: a GramPartial of each width shard is summed, then
finished once (G must be reduced before its outer product).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models.net import TwoLayerNet
from ..models.validation import prepare_inputs

# S S^T counts neurons: exact in float32 while the count stays below 2^24, so a float32
# accumulator is flushed into the float64 one before it could pass that.
_F32_EXACT = 1 << 24


def default_block(net: TwoLayerNet, n_rows: int) -> int:
    """Neurons per block: about 8M activations in flight, at least 64, at most the width."""
    return max(64, min(net.m_local, (1 << 23) // max(1, n_rows)))


def neuron_blocks(net: TwoLayerNet, block: int | None, n_rows: int):
    """(i0, i1) local neuron ranges covering the net's neurons."""
    b = default_block(net, n_rows) if block is None else block
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"block: expected an integer >= 1, got {block!r}")
    b = min(b, _F32_EXACT // 2)
    return [(i, min(i + b, net.m_local)) for i in range(0, net.m_local, b)]


@dataclass
class GramPartial:
    """Sums over a set of neurons from which the Gram is finished; partials add.

    ss = sum_r S1_r S2_r^T (W or U trained), rr = sum_r R1_r R2_r^T (a trained), g1 and g2 the
    rows of G = S diag(a) U for X1 and X2 (V trained). Unused terms are None.
    """

    ss: torch.Tensor | None
    rr: torch.Tensor | None
    g1: torch.Tensor | None
    g2: torch.Tensor | None

    def __add__(self, other: GramPartial) -> GramPartial:
        def add(a, b):
            return None if a is None else a + b

        return GramPartial(add(self.ss, other.ss), add(self.rr, other.rr),
                           add(self.g1, other.g1), add(self.g2, other.g2))


def gram_partial(
    net: TwoLayerNet, x1: torch.Tensor, x2: torch.Tensor | None = None, block: int | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> GramPartial:
    """The sums over this net's neurons (a shard's share when net holds neurons [lo, hi)).

    on_block(done, total) is called after each neuron block (progress reporting).
    """
    x1 = prepare_inputs(x1, net.d, net.dtype, net.device, "X")
    sym = x2 is None
    x2 = x1 if sym else prepare_inputs(x2, net.d, net.dtype, net.device, "X2")
    trained = net.trained
    need_s, need_r, need_g = ("W" in trained or "U" in trained), "a" in trained, "V" in trained
    n1, n2, dev = x1.shape[0], x2.shape[0], net.device
    f64 = dict(dtype=torch.float64, device=dev)
    ss = torch.zeros(n1, n2, **f64) if need_s else None
    ss32 = torch.zeros(n1, n2, dtype=torch.float32, device=dev) if need_s else None
    rr = torch.zeros(n1, n2, **f64) if need_r else None
    g1 = torch.zeros(n1, net.k, **f64) if need_g else None
    g2 = (g1 if sym else torch.zeros(n2, net.k, **f64)) if need_g else None
    pending = 0
    with torch.no_grad():
        f1 = net.features(x1)
        f2 = f1 if sym else net.features(x2)
        blocks = neuron_blocks(net, block, n1 + n2)
        for done, (i0, i1) in enumerate(blocks, 1):
            p1 = net.preact(f1, i0, i1)
            p2 = p1 if sym else net.preact(f2, i0, i1)
            if need_s:
                if pending + (i1 - i0) >= _F32_EXACT:
                    ss += ss32
                    ss32.zero_()
                    pending = 0
                s1 = (p1 > 0).to(torch.float32)
                s2 = s1 if sym else (p2 > 0).to(torch.float32)
                ss32.addmm_(s1, s2.T)
                pending += i1 - i0
            if need_r:
                r1 = torch.relu(p1)
                rr += (r1 @ (r1 if sym else torch.relu(p2)).T).to(torch.float64)
            if need_g:
                a = net.a[i0:i1]
                g1 += net.to_rank((p1 > 0).to(p1.dtype) * a, i0, i1).to(torch.float64)
                if not sym:
                    g2 += net.to_rank((p2 > 0).to(p2.dtype) * a, i0, i1).to(torch.float64)
            if on_block is not None:
                on_block(done, len(blocks))
        if need_s:
            ss += ss32
    return GramPartial(ss, rr, g1, g2)


def finish_gram(
    net: TwoLayerNet, part: GramPartial, x1: torch.Tensor, x2: torch.Tensor | None = None
) -> torch.Tensor:
    """H(X1, X2) from the summed partials of all m neurons, in the net's dtype."""
    x1 = prepare_inputs(x1, net.d, net.dtype, net.device, "X")
    x2 = x1 if x2 is None else prepare_inputs(x2, net.d, net.dtype, net.device, "X2")
    dt = net.dtype
    with torch.no_grad():
        h = torch.zeros(x1.shape[0], x2.shape[0], dtype=dt, device=net.device)
        if part.ss is not None:
            f1 = net.features(x1)
            f2 = f1 if x2 is x1 else net.features(x2)
            h += (f1 @ f2.T) * part.ss.to(dt)
        if part.g1 is not None:
            h += (x1 @ x2.T) * (part.g1 @ part.g2.T).to(dt)
        if part.rr is not None:
            h += part.rr.to(dt)
        return h / net.m


def empirical_ntk(
    net: TwoLayerNet, x1: torch.Tensor, x2: torch.Tensor | None = None, block: int | None = None,
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
