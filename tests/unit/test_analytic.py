"""The analytic infinite-width NTK at every depth: against neural-tangents 0.6.5
(tests/assets/neural_tangents_relu_kernels.npz) and against closed forms at the angles where
arccos loses half its digits (0 and pi): the diagonal, parallel and antiparallel pairs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fntk_dist import analytic_ntk

ASSETS = Path(__file__).parents[1] / "assets"
DEPTHS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(ASSETS / "neural_tangents_relu_kernels.npz") as z:
        return {k: z[k] for k in z.files}


def _points(n: int = 12, d: int = 7, seed: int = 0) -> torch.Tensor:
    """Points of unequal norms (0.1 to 10)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x * torch.logspace(-1, 1, n, dtype=torch.float64)[:, None]


def _assert_matches(h: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    """Normwise (max abs error / max abs value) and entrywise where entries are not ~0."""
    err = np.abs(h - ref)
    scale = np.abs(ref).max()
    assert err.max() <= rtol * scale
    big = np.abs(ref) > 1e-6 * scale
    assert (err[big] <= rtol * np.abs(ref[big])).all()


@pytest.mark.parametrize("train_output", [True, False])
def test_depth1_matches_neural_tangents(reference, train_output):
    ref = reference["ntk_depth1"] - (0 if train_output else reference["nngp_depth1"])
    h = analytic_ntk(torch.from_numpy(reference["X"]), train_output=train_output)
    _assert_matches(h.numpy(), ref, 1e-14)
    assert h[4, 5] == 0.0 and h[5, 4] == 0.0  # rows 4 and 5 are antiparallel


@pytest.mark.parametrize("train_output", [True, False])
@pytest.mark.parametrize("depth", DEPTHS)
def test_depth_L_matches_neural_tangents(reference, depth, train_output):
    ref = reference[f"ntk_depth{depth}"]
    if not train_output:
        ref = ref - reference[f"nngp_depth{depth}"]
    x = reference["X"]
    h = analytic_ntk(x, train_output=train_output, depth=depth)  # numpy input accepted
    _assert_matches(h.numpy(), ref, 1e-13)
    # Cross-Gram: the same entries, whichever rows are on either side.
    hc = analytic_ntk(torch.from_numpy(x[:3]), torch.from_numpy(x[2:]),
                      train_output=train_output, depth=depth)
    _assert_matches(hc.numpy(), ref[:3, 2:], 1e-13)


def test_depth1_is_the_closed_form_at_every_angle():
    """u = e1 against v at angle t, t from 0 to pi, ends included: the closed form with the
    exact angle, to round-off (the old arccos was off by up to 1e-8 near 0 and pi)."""
    t = torch.tensor([0.0, 1e-12, 1e-9, 1e-6, 1e-3, 0.5, 1.0, math.pi / 2, 2.0, 3.0,
                      math.pi - 1e-3, math.pi - 1e-6, math.pi - 1e-9, math.pi],
                     dtype=torch.float64)
    v = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    u = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    rest = math.pi - t
    w_part = torch.cos(t) * rest / (2 * math.pi)
    a_part = (torch.sin(t) + rest * torch.cos(t)) / (2 * math.pi)
    for train_output, want in ((False, w_part), (True, w_part + a_part)):
        h = analytic_ntk(u, v, train_output=train_output)[0]
        assert (h - want).abs().max() <= 1e-15


@pytest.mark.parametrize("depth", DEPTHS)
def test_diagonal_is_exact(depth):
    """theta = 0 at every level: Sigma^l(x, x) = |x|^2 and Sigmadot = 1 (1/2 at the readout),
    so Theta(x, x) = (<x, x> + (L - 1)|x|^2) / 2, + |x|^2 / 2 with a trained readout."""
    x = _points()
    sq, dots = x.norm(dim=1) ** 2, (x * x).sum(dim=1)
    for train_output in (False, True):
        want = (dots + (depth - 1) * sq) / 2 + (sq / 2 if train_output else 0)
        for h in (analytic_ntk(x, train_output=train_output, depth=depth),
                  analytic_ntk(x, x.clone(), train_output=train_output, depth=depth)):
            torch.testing.assert_close(torch.diagonal(h), want, rtol=2e-15, atol=0)
    # Norms and inner products exact in float64 (Pythagorean rows): bit for bit.
    p = torch.tensor([[3.0, 4.0, 0.0], [0.0, 5.0, 12.0], [2.0, 3.0, 6.0], [-1.0, 4.0, -8.0]],
                     dtype=torch.float64)
    sq = (p * p).sum(dim=1)
    h = analytic_ntk(p, train_output=True, depth=depth)
    assert torch.equal(torch.diagonal(h), (depth + 1) * sq / 2)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("c", [1.5, 2.0, 1e-3, 7.3, 1 + 2**-40])
def test_parallel_pairs_closed_form(depth, c):
    """x' = c x (c > 0), theta = 0 at every level:
    Theta = (<x, x'> + (L - 1)|x||x'|) / 2, + |x||x'| / 2 with a trained readout."""
    x = _points()
    y = c * x
    dots, norms = (x * y).sum(dim=1), x.norm(dim=1) * y.norm(dim=1)
    for train_output in (False, True):
        want = (dots + (depth - 1) * norms) / 2 + (norms / 2 if train_output else 0)
        h = analytic_ntk(x, y, train_output=train_output, depth=depth)
        torch.testing.assert_close(torch.diagonal(h), want, rtol=2e-15, atol=0)


@pytest.mark.parametrize("c", [1.0, 2.0, 0.25, 2.5])
def test_antiparallel_pairs(c):
    """x' = -c x, theta = pi: sin theta = 0 and pi - theta = 0, so the depth-1 kernel is 0
    with and without the readout (exactly where -c x is exactly antiparallel in floating point:
    c a power of two). At depth 2 the second layer's angle is pi/2 (rho = J(pi) = 0): the fixed
    readout gives 0 and the readout's own term is |x||x'| J(pi/2) / 2 = |x||x'| / (2 pi)."""
    x = _points()
    y = -c * x
    norms = x.norm(dim=1) * y.norm(dim=1)
    tol = 0.0 if math.log2(c).is_integer() else 1e-15
    for train_output in (False, True):
        h1 = torch.diagonal(analytic_ntk(x, y, train_output=train_output))
        assert (h1.abs() <= tol * norms).all()
    h2 = torch.diagonal(analytic_ntk(x, y, depth=2))
    assert (h2.abs() <= tol * norms).all()
    h2 = torch.diagonal(analytic_ntk(x, y, train_output=True, depth=2))
    torch.testing.assert_close(h2, norms / (2 * math.pi), rtol=1e-15, atol=tol)


@pytest.mark.parametrize("depth", DEPTHS)
def test_cross_gram_is_the_block_of_the_gram(depth):
    x = _points(10)
    x[7] = 3 * x[2]  # parallel
    x[8] = -x[4]  # antiparallel
    x[9] = x[1]  # duplicate
    for train_output in (False, True):
        h = analytic_ntk(x, train_output=train_output, depth=depth)
        hc = analytic_ntk(x[:4], x[3:], train_output=train_output, depth=depth)
        torch.testing.assert_close(hc, h[:4, 3:], rtol=1e-15, atol=1e-15 * float(h.abs().max()))
        torch.testing.assert_close(h, h.T, rtol=1e-15, atol=1e-15 * float(h.abs().max()))


def test_zero_rows_have_kernel_zero():
    x = _points(5)
    x[2] = 0.0
    for depth in DEPTHS:
        for train_output in (False, True):
            h = analytic_ntk(x, train_output=train_output, depth=depth)
            assert torch.isfinite(h).all()
            assert (h[2] == 0).all() and (h[:, 2] == 0).all()
            assert (torch.diagonal(h)[[0, 1, 3, 4]] > 0).all()


def test_depth_is_checked():
    x = torch.ones(2, 3, dtype=torch.float64)
    for depth in (0, -1, 1.0, True, "2"):
        with pytest.raises(ValueError, match="depth: expected an integer >= 1"):
            analytic_ntk(x, depth=depth)
    with pytest.raises(ValueError, match="X: expected a 2-D array"):
        analytic_ntk(torch.ones(3), depth=2)
    with pytest.raises(ValueError, match="X2: contains NaN"):
        analytic_ntk(x, torch.tensor([[1.0, float("inf"), 0.0]]), depth=3)
    with pytest.raises(ValueError, match="X2: expected 3 columns"):
        analytic_ntk(x, torch.ones(2, 4), depth=2)
