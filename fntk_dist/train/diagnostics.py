"""NTK diagnostics of a training run, measured against the network at initialisation.

Gram terms (lambda_min(H(t)), ||H(t) - H(0)||_2) need the n x n Gram, formed only while
n <= gram_max_n; the weight terms (largest neuron move, flipped activation patterns, per
hidden layer) walk each layer's neurons in blocks at any size. A width-sharded run passes
`width`, whose sum_width/max_width reduce a shard's sums over the other shards of its replica
(see fntk_dist.distributed.mesh); only the last layer is sharded, the layers below are whole
in every shard.
"""

from __future__ import annotations

import copy
import math
from typing import Protocol

import torch

from ..models.blocks import neuron_blocks
from ..models.layer import Layer
from ..models.network import Network
from ..ntk import empirical_ntk, finish_gram, gram_partial, spectrum
from ..ntk.limit import infinite_width


class WidthReduce(Protocol):
    def sum_width(self, t: torch.Tensor) -> torch.Tensor: ...
    def max_width(self, t: torch.Tensor) -> torch.Tensor: ...


def _norm2(h: torch.Tensor) -> float:
    """Spectral norm of a symmetric matrix."""
    ev = torch.linalg.eigvalsh(h.double())
    return float(ev.abs().max())


class Diagnostics:
    def __init__(self, net: Network, x: torch.Tensor, gram_max_n: int, block: int | None,
                 top: int = 5, width: WidthReduce | None = None) -> None:
        self.x, self.block, self.top, self.width = x, block, top, width
        self.net0 = copy.deepcopy(net).requires_grad_(False)
        self.forms_gram = x.shape[0] <= gram_max_n
        self.h0 = self.spec0 = self.spec_inf = self.rel_err_inf = None
        if self.forms_gram:
            self.h0 = self._gram(net)
            self.spec0 = spectrum(self.h0, top)
            self.spec_inf, self.rel_err_inf = infinite_width(net, x, self.h0, top)

    def _gram(self, net: Network) -> torch.Tensor:
        if self.width is None:
            return empirical_ntk(net, self.x, block=self.block)
        with torch.no_grad():
            part = gram_partial(net, self.x, block=self.block).all_reduce_(self.width.sum_width)
            return finish_gram(net, part, self.x)

    def gram(self, net: Network) -> dict[str, float]:
        if not self.forms_gram:
            return {}
        h = self._gram(net)
        return {"lambda_min": spectrum(h, 1).lambda_min, "gram_drift": _norm2(h - self.h0)}

    @torch.no_grad()
    def _layer(self, layer: Layer, layer0: Layer, s: torch.Tensor, s0: torch.Tensor,
               shard: bool) -> tuple[float, float]:
        """(max_r ||w_r(t) - w_r(0)||, fraction of (point, neuron) signs flipped) of a layer
        whose input is s now and s0 at initialisation; shard: the last layer of a width shard,
        its sums reduced over the replica's other shards."""
        f, f0 = layer.features(s), layer0.features(s0)
        move, flips = 0.0, 0
        for i0, i1 in neuron_blocks(layer, self.block, self.x.shape[0]):
            dw = layer.neuron_weights(i0, i1) - layer0.neuron_weights(i0, i1)
            move = max(move, float(dw.norm(dim=1).max()))
            flips += int(((layer.preact(f, i0, i1) > 0) != (layer0.preact(f0, i0, i1) > 0)).sum())
        if shard:
            move = float(self.width.max_width(torch.tensor(move, dtype=torch.float64)))
            flips = int(self.width.sum_width(torch.tensor(flips, dtype=torch.int64)))
        return move, flips / (self.x.shape[0] * layer.m)

    @torch.no_grad()
    def weights(self, net: Network) -> dict[str, float]:
        """max_r ||w_r(t) - w_r(0)|| (the effective rows w_r, unscaled by c_l) and the
        fraction of (point, neuron) signs that flipped, each the largest over the layers; a
        deep net adds them per layer ("flip_fraction/layer1"). Each layer sees its own input
        now against its input at initialisation, so a flip below moves the signs above."""
        out: dict[str, float] = {}
        moves, flips = [], []
        inputs = zip(net.iter_inputs(self.x), self.net0.iter_inputs(self.x))
        for i, (layer, layer0, (s, s0)) in enumerate(zip(net.layers, self.net0.layers, inputs)):
            last = i == net.depth - 1
            move, flip = self._layer(layer, layer0, s, s0, last and self.width is not None)
            moves.append(move)
            flips.append(flip)
            if net.depth > 1:
                out |= {f"max_weight_change/layer{i}": move, f"flip_fraction/layer{i}": flip}
        return {"max_weight_change": max(moves), "flip_fraction": max(flips), **out}


def fitted_rate(steps: list[int], losses: list[float], floor: float) -> float | None:
    """Per-step loss factor exp(slope) of a least-squares line through log loss, over the
    logged steps whose loss is above floor (the linear phase, before round-off)."""
    pts = [(s, math.log(v)) for s, v in zip(steps, losses) if v > floor and v > 0]
    if len(pts) < 2:
        return None
    ms = sum(s for s, _ in pts) / len(pts)
    ml = sum(v for _, v in pts) / len(pts)
    var = sum((s - ms) ** 2 for s, _ in pts)
    return math.exp(sum((s - ms) * (v - ml) for s, v in pts) / var) if var > 0 else None
