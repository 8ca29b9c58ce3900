"""Analytic infinite-width kernel against Monte Carlo, and the spectrum helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import net_grid

from fntk_dist import (
    GramMethod,
    TwoLayerNet,
    analytic_ntk,
    empirical_ntk,
    ntk_matvec,
    spectrum,
    spectrum_from_matmat,
    spectrum_from_matvec,
)
from fntk_dist.ntk import gram


@pytest.mark.parametrize("train_output", [False, True])
def test_analytic_kernel_is_the_wide_limit(train_output):
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    x[1] = -x[0]  # antipodal: theta = pi
    x[2] = 3 * x[3]  # parallel, other norm: theta = 0
    h_inf = analytic_ntk(x, train_output=train_output)
    # The empirical Gram at init averages m i.i.d. neurons: its error falls like 1/sqrt(m).
    def mean_err(m, seeds):
        return sum(float((empirical_ntk(TwoLayerNet(5, m, train_output=train_output, seed=s,
                                                     dtype=torch.float64), x) - h_inf)
                         .abs().mean()) for s in seeds) / len(seeds)

    small, large = mean_err(2_000, range(4)), mean_err(200_000, [9])
    assert large < 0.005 * float(h_inf.abs().max())
    assert large < small / 3  # sqrt(100) = 10 expected


def test_analytic_kernel_closed_values():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]], dtype=torch.float64)
    h = analytic_ntk(x, train_output=True)
    assert h[0, 0] == pytest.approx(0.5 + 0.5)  # W part |x|^2/2, a part |x|^2/2
    assert h[0, 1] == pytest.approx(2 * 1 / (2 * np.pi))  # orthogonal: W part 0, a part 1/pi
    assert h[0, 2] == 0.0  # antipodal: sin theta = 0 and pi - theta = 0 exactly


def test_analytic_kernel_rejects_bad_input():
    with pytest.raises(ValueError, match="X: contains NaN"):
        analytic_ntk(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="X2: expected 2 columns"):
        analytic_ntk(torch.ones(2, 2), torch.ones(2, 3))


def test_spectrum_from_matrix_and_from_matvec_agree():
    net = TwoLayerNet(10, 3000, "sketch_in", 4, "srht", train_output=True, dtype=torch.float64)
    x = torch.randn(80, 10, dtype=torch.float64)
    h = empirical_ntk(net, x)
    dense = spectrum(h, top=4)
    ev = np.linalg.eigvalsh(h.numpy())
    assert dense.lambda_min == pytest.approx(ev[0]) and dense.top == pytest.approx(ev[::-1][:4])
    assert dense.condition == pytest.approx(ev[-1] / ev[0])

    def mv(v):
        return ntk_matvec(net, x, torch.from_numpy(v)).numpy()

    it = spectrum_from_matvec(mv, 80, top=4)
    assert it.lambda_min == pytest.approx(dense.lambda_min, rel=1e-6)
    assert it.top == pytest.approx(dense.top, rel=1e-8)
    blocked, resid = spectrum_from_matmat(lambda v: h.numpy() @ v, 80, top=4, block=8)
    assert blocked.lambda_min == pytest.approx(dense.lambda_min, rel=1e-6) and resid < 1e-6
    assert blocked.top == pytest.approx(dense.top, rel=1e-8)


@pytest.mark.parametrize("mode,sketch", net_grid())
@pytest.mark.parametrize("train_output", [False, True])
def test_gram_methods_agree(mode, sketch, train_output):
    net = TwoLayerNet(9, 70, mode, None if mode == "dense" else 4, sketch, train_output, 2,
                      torch.float64)
    x = torch.randn(8, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    closed = gram(net, x)
    assert torch.equal(closed, gram(net, x, method=GramMethod.CLOSED_FORM))
    for j in range(8):  # mat-vec, column by column, against the closed form
        e = torch.zeros(8, dtype=torch.float64)
        e[j] = 1
        assert torch.allclose(ntk_matvec(net, x, e, block=16), closed[:, j], rtol=0, atol=1e-12)
    assert torch.allclose(gram(net, x, method="matvec"), closed, rtol=0, atol=1e-12)
    assert torch.allclose(gram(net, x, method="autograd"), closed, rtol=0, atol=1e-12)
    cross = gram(net, x[:3], x[3:], method="autograd")
    assert torch.allclose(gram(net, x[:3], x[3:]), cross, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode,sketch", [("dense", None), ("sketch_in", "gaussian"),
                                         ("sketch_in", "srht")])
def test_analytic_method_is_the_wide_limit_of_the_closed_form(mode, sketch):
    x = torch.nn.functional.normalize(
        torch.randn(6, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64), dim=1)
    net = TwoLayerNet(8, 100_000, mode, None if mode == "dense" else 8, sketch, True, 0,
                      torch.float64)
    inf = gram(net, x, method=GramMethod.ANALYTIC)
    assert inf.dtype == torch.float64
    assert (gram(net, x) - inf).abs().max() < 0.02 * inf.abs().max()
    assert torch.allclose(gram(net, x[:2], x, method="analytic"), inf[:2])


def test_gram_method_errors():
    net = TwoLayerNet(3, 10, "sketch_out", 2)
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="method: expected one of"):
        gram(net, x, method="jacobian")
    with pytest.raises(ValueError, match="method: mode 'sketch_out' has no analytic"):
        gram(net, x, method="analytic")
    with pytest.raises(ValueError, match="x2: the mat-vec method"):
        gram(net, x, x, method="matvec")
