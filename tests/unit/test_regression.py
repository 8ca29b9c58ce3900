"""NTK kernel regression against a direct solve and against gradient descent on the linearised
network, in float64."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jacrev

from fntk_dist import TwoLayerNet, analytic_ntk, empirical_ntk
from fntk_dist.ntk.regression import (
    analytic_ntk_predict,
    empirical_ntk_predict,
    kernel_predict,
    prediction_errors,
)

F64 = torch.float64


def _sphere(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=F64), dim=1)


def test_infinite_time_equals_direct_solve():
    x, xt = _sphere(30, 40, 0), _sphere(7, 40, 1)
    y = torch.randn(30, generator=torch.Generator().manual_seed(2), dtype=F64)
    f0, f0t = 0.1 * y.flip(0), torch.linspace(-1, 1, 7, dtype=F64)
    h, hc = analytic_ntk(x), analytic_ntk(xt, x)
    pred = kernel_predict(h, hc, y, f0, f0t)
    direct = f0t + hc @ torch.linalg.solve(h, y - f0)
    torch.testing.assert_close(pred, direct, rtol=1e-10, atol=1e-10)
    # Without f0 it is the usual kernel regression mean.
    torch.testing.assert_close(kernel_predict(h, hc, y), hc @ torch.linalg.solve(h, y),
                               rtol=1e-10, atol=1e-10)


def _linearised_gd(net: TwoLayerNet, x, y, xt, eta: float, steps: int) -> torch.Tensor:
    """Gradient descent in parameter space on f0 + J (theta - theta0), with the net's own
    Jacobian (torch.func): independent of the closed-form Gram."""
    names = [k for k, p in net.named_parameters() if p.requires_grad]
    theta0 = {k: p.detach().clone() for k, p in net.named_parameters() if p.requires_grad}

    def flat_jac(inputs):
        jac = jacrev(lambda th: functional_call(net, th, (inputs,)))(theta0)
        return torch.cat([jac[k].reshape(inputs.shape[0], -1) for k in names], dim=1)

    j, jt = flat_jac(x), flat_jac(xt)
    with torch.no_grad():
        f0, f0t = net(x), net(xt)
    delta = torch.zeros(j.shape[1], dtype=F64)
    for _ in range(steps):
        delta -= eta * j.T @ (f0 + j @ delta - y)
    return f0t + jt @ delta


@pytest.mark.parametrize("mode,k", [("dense", None), ("sketch_in", 4), ("sketch_out", 3),
                                    ("lowrank", 3)])
def test_finite_time_matches_linearised_gradient_descent(mode, k):
    net = TwoLayerNet(d=6, m=40, mode=mode, k=k, seed=3, dtype=F64)
    x, xt = _sphere(12, 6, 4), _sphere(5, 6, 5)
    y = torch.randn(12, generator=torch.Generator().manual_seed(6), dtype=F64)
    h, hc = empirical_ntk(net, x), empirical_ntk(net, xt, x)
    eta = 1.0 / float(torch.linalg.eigvalsh(h).max())
    with torch.no_grad():
        f0, f0t = net(x), net(xt)
    for steps in (0, 1, 37):
        pred = kernel_predict(h, hc, y, f0, f0t, eta=eta, steps=steps)
        torch.testing.assert_close(pred, _linearised_gd(net, x, y, xt, eta, steps),
                                   rtol=1e-9, atol=1e-10)


def test_long_run_tends_to_infinite_time_predictor():
    # d > n: a well-conditioned Gram, so 3000 steps of size 1/lambda_max converge fully.
    net = TwoLayerNet(d=24, m=200, mode="dense", seed=7, dtype=F64)
    x, xt = _sphere(10, 24, 8), _sphere(4, 24, 9)
    y = torch.randn(10, generator=torch.Generator().manual_seed(10), dtype=F64)
    eta = 1.0 / float(torch.linalg.eigvalsh(empirical_ntk(net, x)).max())
    torch.testing.assert_close(empirical_ntk_predict(net, x, y, xt),
                               _linearised_gd(net, x, y, xt, eta, 3000), rtol=1e-9, atol=1e-9)


def test_singular_gram_fits_only_its_range():
    # A repeated point: H is singular and GD never fits the part of r(0) in its null space;
    # the pseudo-inverse predictor is the limit of the finite-time one.
    x = _sphere(6, 10, 11)
    x = torch.cat([x, x[:1]])
    xt = _sphere(3, 10, 12)
    y = torch.arange(7, dtype=F64)
    h, hc = analytic_ntk(x), analytic_ntk(xt, x)
    eta = 1.0 / float(torch.linalg.eigvalsh(h).max())
    limit = kernel_predict(h, hc, y)
    long_run = kernel_predict(h, hc, y, eta=eta, steps=20000)
    assert torch.isfinite(limit).all()
    torch.testing.assert_close(limit, long_run, rtol=1e-8, atol=1e-8)


def test_analytic_predictor_where_it_applies():
    x, xt = _sphere(15, 8, 13), _sphere(4, 8, 14)
    y = torch.sign(x[:, 0])
    dense = TwoLayerNet(d=8, m=16, mode="dense", seed=0, dtype=F64)
    torch.testing.assert_close(analytic_ntk_predict(dense, x, y, xt),
                               kernel_predict(analytic_ntk(x), analytic_ntk(xt, x), y))
    sk = TwoLayerNet(d=8, m=16, mode="sketch_in", k=5, seed=0, dtype=F64)
    z, zt = sk.features(x), sk.features(xt)
    torch.testing.assert_close(analytic_ntk_predict(sk, x, y, xt),
                               kernel_predict(analytic_ntk(z), analytic_ntk(zt, z), y))
    for mode in ("sketch_out", "lowrank"):
        net = TwoLayerNet(d=8, m=16, mode=mode, k=5, seed=0, dtype=F64)
        assert analytic_ntk_predict(net, x, y, xt) is None


def test_errors_and_bad_shapes():
    pred = torch.tensor([0.5, -2.0, 1.0, -0.1], dtype=F64)
    y = torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=F64)
    e = prediction_errors(pred, y)
    assert e["error"] == 0.25 and e["mse"] == pytest.approx((0.25 + 1 + 4 + 0.81) / 4)
    h = torch.eye(3, dtype=F64)
    with pytest.raises(ValueError, match="h_train"):
        kernel_predict(torch.eye(4, dtype=F64), torch.ones(2, 3, dtype=F64), torch.ones(3))
    with pytest.raises(ValueError, match="h_cross"):
        kernel_predict(h, torch.ones(2, 4, dtype=F64), torch.ones(3))
    with pytest.raises(ValueError, match="eta"):
        kernel_predict(h, torch.ones(2, 3, dtype=F64), torch.ones(3), steps=5)
