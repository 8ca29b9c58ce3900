"""InputSketch keeps the last input's sketch: the same input returns the same Z without
computing it again (full-batch training sketches its fixed data once), and anything that could
make the kept Z wrong computes it afresh."""

from __future__ import annotations

import copy

import pytest
import torch

from fntk_dist.models import InputSketch, Network
from fntk_dist.models.config import ModelConfig

KINDS = ("gaussian", "rademacher", "srht", "countsketch")


def _x(n: int = 6, d: int = 20) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _fresh(sk: InputSketch, x: torch.Tensor) -> torch.Tensor:
    return sk._sketch(x.clone())


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_input_returns_the_kept_sketch(kind):
    sk, x = InputSketch(kind, 8, 20, 0, torch.float64), _x()
    z = sk(x)
    assert torch.equal(z, _fresh(sk, x))
    assert sk(x) is z and sk(x[0:6]) is z  # x again, and a view of the same storage
    assert sk(x[1:]) is not z  # another start: other points
    torch.testing.assert_close(sk(x[1:]), _fresh(sk, x[1:]), rtol=0, atol=0)


def test_a_write_to_the_input_or_to_z_is_seen():
    sk, x = InputSketch("srht", 8, 20, 0, torch.float64), _x()
    z = sk(x)
    x[2].mul_(3.0)  # in place, through a view: the version counter the views share moves
    z2 = sk(x)
    assert z2 is not z and torch.equal(z2, _fresh(sk, x))
    z2.zero_()  # a caller wrote into the Z it was given
    z3 = sk(x)
    assert z3 is not z2 and torch.equal(z3, _fresh(sk, x))


def test_an_input_that_needs_a_gradient_is_never_kept():
    sk = InputSketch("gaussian", 8, 20, 0, torch.float64)
    x = _x().requires_grad_(True)
    z1, z2 = sk(x), sk(x)
    assert z1 is not z2 and z1.requires_grad
    z2.sum().backward()
    torch.testing.assert_close(x.grad, sk.matrix.sum(0).expand_as(x))


def test_autocast_and_moved_buffers_compute_afresh():
    sk, x = InputSketch("gaussian", 8, 20, 0, torch.float32), _x().float()
    z = sk(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = sk(x)
    assert low.dtype == torch.bfloat16
    assert sk(x).dtype == torch.float32
    sk.matrix = sk.matrix * 2  # new buffers (as .to() makes): the kept Z is of the old ones
    torch.testing.assert_close(sk(x), 2 * z, rtol=0, atol=0)


def test_a_copied_net_starts_without_the_kept_tensors_and_trains_alike():
    cfg = ModelConfig(layers=[{"m": 64, "mode": "sketch_in", "k": 8, "sketch": "srht"},
                              {"m": 32, "mode": "dense"}], dtype="float64")
    net: Network = cfg.build(20)
    x = _x(10)
    out = net(x)
    sketch = net.layers[0].in_sketch
    assert sketch._last is not None
    twin = copy.deepcopy(net)
    assert twin.layers[0].in_sketch._last is None
    torch.testing.assert_close(twin(x), out, rtol=0, atol=0)
    kept = sketch._last[2]

    def step(model: Network, forget: bool) -> None:
        if forget:
            model.layers[0].in_sketch._last = None
        model.zero_grad()
        model(x).square().sum().backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(1e-2 * p.grad)

    for _ in range(2):  # through the kept Z, and through a fresh one each time
        step(net, False)
        step(twin, True)
    assert sketch._last[2] is kept
    torch.testing.assert_close(twin(x), net(x), rtol=0, atol=0)
