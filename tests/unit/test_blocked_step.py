"""The neuron-blocked output and its gradients against plain autograd, every mode and depth."""

from __future__ import annotations

import pytest
import torch
from conftest import net_grid

from fntk_dist import TwoLayerNet
from fntk_dist.models import LayerSpec, build_network
from fntk_dist.train.blocked import blocked_output


def blocked_and_autograd(net, block):
    """(output, gradients) of the loss 1/2 |f(x) - y|^2, blocked and by plain autograd."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(11, 9, generator=g, dtype=torch.float64)
    y = torch.randn(11, generator=g, dtype=torch.float64)
    params = [p for p in net.parameters() if p.requires_grad]
    ref = torch.autograd.grad(0.5 * ((net(x) - y) ** 2).sum(), params)
    out = blocked_output(net, x, block)
    got = torch.autograd.grad(0.5 * ((out - y) ** 2).sum(), params)
    return out, net(x), got, ref


@pytest.mark.parametrize("mode,sketch", net_grid())
@pytest.mark.parametrize("train_output", [False, True])
@pytest.mark.parametrize("block", [1, 7, None])
def test_blocked_gradients_match_autograd(mode, sketch, train_output, block):
    net = TwoLayerNet(9, 50, mode, None if mode == "dense" else 4, sketch, train_output, 3,
                      torch.float64)
    out, plain, got, ref = blocked_and_autograd(net, block)
    assert torch.allclose(out, plain, atol=1e-13)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode,sketch", net_grid())
@pytest.mark.parametrize("train_output", [False, True])
@pytest.mark.parametrize("block", [1, 7, None])
def test_deep_blocked_gradients_match_autograd(mode, sketch, train_output, block):
    # Depth 2 and 3, every kind at the top (the blocked layer) and in the middle (autograd's).
    k = None if mode == "dense" else 4
    for specs in ([LayerSpec(12, "sketch_in", 5, "srht"), LayerSpec(30, mode, k, sketch)],
                  [LayerSpec(12, "dense"), LayerSpec(10, mode, k, sketch),
                   LayerSpec(25, "lowrank", 3)]):
        net = build_network(9, specs, train_output=train_output, seed=3, dtype=torch.float64)
        out, plain, got, ref = blocked_and_autograd(net, block)
        assert torch.allclose(out, plain, rtol=0, atol=1e-13)
        for a, b in zip(got, ref):
            assert float((a - b).abs().max()) <= 1e-12 * float(b.abs().max())
