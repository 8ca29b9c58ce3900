"""NTK diagnostics of a training run, measured against the network at initialisation.

Gram terms (lambda_min(H(t)), ||H(t) - H(0)||_2) need the n x n Gram, formed only while
n <= gram_max_n; the weight terms (largest neuron move, flipped activation patterns) walk the
neurons in blocks at any size. A width-sharded run passes `width`, whose sum_width/max_width
reduce a shard's sums over the other shards of its replica (see fntk_dist.distributed.mesh).
"""

from __future__ import annotations

import copy
import math
from typing import Protocol

import torch

from ..models.blocks import neuron_blocks
from ..models.net import TwoLayerNet
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
    def __init__(self, net: TwoLayerNet, x: torch.Tensor, gram_max_n: int, block: int | None,
                 top: int = 5, width: WidthReduce | None = None) -> None:
        self.x, self.block, self.top, self.width = x, block, top, width
        self.net0 = copy.deepcopy(net).requires_grad_(False)
        self.forms_gram = x.shape[0] <= gram_max_n
        self.h0 = self.spec0 = self.spec_inf = self.rel_err_inf = None
        if self.forms_gram:
            self.h0 = self._gram(net)
            self.spec0 = spectrum(self.h0, top)
            self.spec_inf, self.rel_err_inf = infinite_width(net, x, self.h0, top)

    def _gram(self, net: TwoLayerNet) -> torch.Tensor:
        if self.width is None:
            return empirical_ntk(net, self.x, block=self.block)
        with torch.no_grad():
            part = gram_partial(net, self.x, block=self.block).all_reduce_(self.width.sum_width)
            return finish_gram(net, part, self.x)

    def gram(self, net: TwoLayerNet) -> dict[str, float]:
        if not self.forms_gram:
            return {}
        h = self._gram(net)
        return {"lambda_min": spectrum(h, 1).lambda_min, "gram_drift": _norm2(h - self.h0)}

    @torch.no_grad()
    def weights(self, net: TwoLayerNet) -> dict[str, float]:
        """max_r ||w_r(t) - w_r(0)|| and the fraction of (point, neuron) signs that flipped."""
        f, f0 = net.features(self.x), self.net0.features(self.x)
        move, flips = 0.0, 0
        for i0, i1 in neuron_blocks(net, self.block, self.x.shape[0]):
            dw = net.neuron_weights(i0, i1) - self.net0.neuron_weights(i0, i1)
            move = max(move, float(dw.norm(dim=1).max()))
            flips += int(((net.preact(f, i0, i1) > 0) != (self.net0.preact(f0, i0, i1) > 0)).sum())
        if self.width is not None:
            move = float(self.width.max_width(torch.tensor(move, dtype=torch.float64)))
            flips = int(self.width.sum_width(torch.tensor(flips, dtype=torch.int64)))
        return {"max_weight_change": move, "flip_fraction": flips / (self.x.shape[0] * net.m)}


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
