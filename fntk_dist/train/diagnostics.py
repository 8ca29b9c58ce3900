"""NTK diagnostics of a training run, measured against the network at initialisation.

Gram terms (lambda_min(H(t)), ||H(t) - H(0)||_2, and that drift on theory's scale: divided by
lambda_min(H(0)), since Du et al.'s argument needs ||H(t) - H(0)|| <= lambda_min / 2) need the
n x n Gram, formed only while n <= gram_max_n, as does the loss curve H(0) predicts
(train.prediction); the weight terms (largest neuron move, absolute and relative to the
neuron's ||w_r(0)||, flipped activation patterns, per hidden layer) walk each layer's neurons
in blocks at any size. A width-sharded run passes
`width`, whose sum_width/max_width reduce a shard's sums over the other shards of its replica
(see fntk_dist.distributed.mesh); only the last layer is sharded, the layers below are whole
in every shard.
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch

from ..models.blocks import neuron_blocks
from ..models.layer import Layer
from ..models.network import Network
from ..ntk import empirical_ntk, finish_gram, gram_partial, spectrum
from ..ntk.limit import infinite_width
from .prediction import LinearPrediction


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
        drift, lam0 = _norm2(h - self.h0), self.spec0.lambda_min
        out = {"lambda_min": spectrum(h, 1).lambda_min, "gram_drift": drift}
        if lam0 > 0:  # a singular H(0) has no scale to measure the drift against
            out["drift_over_lmin"] = drift / lam0
        return out

    @torch.no_grad()
    def linear_prediction(self, y: torch.Tensor, eta: float) -> LinearPrediction | None:
        """The GD loss curve H(0) predicts from the net at initialisation (None where the Gram
        is not formed). Every rank of a width shard calls it (its output sums over shards)."""
        if not self.forms_gram:
            return None
        f0 = self.net0(self.x)
        if self.width is not None:
            f0 = self.width.sum_width(f0)
        return LinearPrediction(self.h0, f0 - y, eta)

    @torch.no_grad()
    def _layer(self, layer: Layer, layer0: Layer, s: torch.Tensor, s0: torch.Tensor,
               shard: bool) -> tuple[float, float, float]:
        """(max_r ||w_r(t) - w_r(0)||, max_r of that over ||w_r(0)||, fraction of (point,
        neuron) signs flipped) of a layer
        whose input is s now and s0 at initialisation; shard: the last layer of a width shard,
        its sums reduced over the replica's other shards."""
        f, f0 = layer.features(s), layer0.features(s0)
        move, rel, flips = 0.0, 0.0, 0
        for i0, i1 in neuron_blocks(layer, self.block, self.x.shape[0], self.x.device):
            w0 = layer0.neuron_weights(i0, i1)
            dw = (layer.neuron_weights(i0, i1) - w0).norm(dim=1)
            move = max(move, float(dw.max()))
            # A zero row (possible for a sparse sketch's w_r) has no scale: left out.
            norm0 = w0.norm(dim=1)
            live = norm0 > 0
            if live.any():
                rel = max(rel, float((dw[live] / norm0[live]).max()))
            flips += int(((layer.preact(f, i0, i1) > 0) != (layer0.preact(f0, i0, i1) > 0)).sum())
        if shard:
            both = self.width.max_width(torch.tensor([move, rel], dtype=torch.float64))
            move, rel = float(both[0]), float(both[1])
            flips = int(self.width.sum_width(torch.tensor(flips, dtype=torch.int64)))
        return move, rel, flips / (self.x.shape[0] * layer.m)

    @torch.no_grad()
    def weights(self, net: Network) -> dict[str, float]:
        """max_r ||w_r(t) - w_r(0)|| (the effective rows w_r, unscaled by c_l), the same
        relative to ||w_r(0)|| (laziness on the weights' own scale), and the fraction of
        (point, neuron) signs that flipped, each the largest over the layers; a deep net adds
        them per layer ("flip_fraction/layer1"). Each layer sees its own input
        now against its input at initialisation, so a flip below moves the signs above."""
        out: dict[str, float] = {}
        moves, rels, flips = [], [], []
        inputs = zip(net.iter_inputs(self.x), self.net0.iter_inputs(self.x))
        for i, (layer, layer0, (s, s0)) in enumerate(zip(net.layers, self.net0.layers, inputs)):
            last = i == net.depth - 1
            move, rel, flip = self._layer(layer, layer0, s, s0, last and self.width is not None)
            moves.append(move)
            rels.append(rel)
            flips.append(flip)
            if net.depth > 1:
                out |= {f"max_weight_change/layer{i}": move, f"flip_fraction/layer{i}": flip}
        return {"max_weight_change": max(moves), "max_rel_weight_change": max(rels),
                "flip_fraction": max(flips), **out}

