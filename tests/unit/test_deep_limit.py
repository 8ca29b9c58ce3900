"""The deep analytic kernel is the infinite-width limit of the empirical NTK (Monte Carlo).

The recursion itself is pinned to neural-tangents (test_analytic.py); this checks the other
half of the claim: that the nets fntk_dist builds (He-scaled hidden layers, NTK
parameterisation, a sketch_in first layer on its sketched inputs) converge to it. At width m
an empirical Gram fluctuates around the limit by O(1/sqrt(m)) (relative, per seed), so the
error must stay under C/sqrt(m) at every width AND fall as the width grows 16-fold: a wrong
kernel, or a wrong scale c_l, leaves an error that does not shrink.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from fntk_dist import analytic_ntk, empirical_ntk
from fntk_dist.models import LayerSpec, build_network

SEEDS = range(6)
WIDTHS = (64, 256, 1024)


def _points() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 6, generator=g, dtype=torch.float64)
    return x * torch.logspace(-0.5, 0.5, 10, dtype=torch.float64)[:, None]  # unequal norms


def _median_error(first: LayerSpec, depth: int, m: int, train_output: bool) -> float:
    """Median over seeds of ||H_emp - Theta|| / ||Theta|| (Frobenius), each net against the
    limit on its own (sketched) inputs."""
    x, errors = _points(), []
    for seed in SEEDS:
        specs = [LayerSpec(m, first.mode, first.k, first.sketch), *[LayerSpec(m)] * (depth - 1)]
        net = build_network(x.shape[1], specs, train_output=train_output, seed=seed,
                            dtype=torch.float64)
        theta = analytic_ntk(net.analytic_inputs(x), train_output=train_output, depth=depth)
        errors.append(float((empirical_ntk(net, x) - theta).norm() / theta.norm()))
    return statistics.median(errors)


@pytest.mark.parametrize(("first", "depth", "train_output"), [
    (LayerSpec(0, "dense"), 2, False),
    (LayerSpec(0, "dense"), 3, True),
    (LayerSpec(0, "sketch_in", 4, "gaussian"), 2, True),
])
def test_empirical_grams_of_wide_nets_converge_to_the_analytic_kernel(first, depth,
                                                                      train_output):
    errors = {m: _median_error(first, depth, m, train_output) for m in WIDTHS}
    for m, err in errors.items():
        assert err <= 4 / math.sqrt(m), errors
    assert errors[WIDTHS[-1]] <= 0.5 * errors[WIDTHS[0]], errors  # 1/sqrt(16) = 0.25 expected
