"""Deep nets (DESIGN section 7): the closed-form Gram, cross-Gram, width-shard partials and
mat-vec against torch.func Jacobians in float64, for depths 1-4 mixing every layer kind."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import SKETCHES, net_grid
from hypothesis import given, settings
from hypothesis import strategies as st

from fntk_dist import analytic_ntk, autograd_ntk, empirical_ntk, ntk_matvec
from fntk_dist.models import LayerSpec, build_network
from fntk_dist.ntk import GramMethod, finish_gram, gram, gram_partial
from fntk_dist.ntk.limit import infinite_width

MODES = ("dense", "sketch_in", "sketch_out", "lowrank")


def _rel(a: torch.Tensor, b: torch.Tensor, scale: float = 0.0) -> float:
    """max |a - b| relative to max(max |b|, scale) (an all-zero b demands an all-zero a)."""
    return float((a - b).abs().max() / max(float(b.abs().max()), scale, 1e-300))


def _floor(a: torch.Tensor, b: torch.Tensor) -> float:
    """|x| |x'|: the scale of an entry (He scaling keeps it at every depth), a floor for the
    relative error where a term cancels to an exact 0 that autograd rounds to 1e-17."""
    return float(a.norm(dim=1).max() * b.norm(dim=1).max())


@st.composite
def stacks(draw, max_depth: int = 4) -> tuple[int, list[LayerSpec]]:
    """(d, one spec per layer): any mode and sketch, widths 1-12, each rank <= its fan-in."""
    d = draw(st.integers(1, 8))
    specs, fan_in = [], d
    for _ in range(draw(st.integers(1, max_depth))):
        m, mode = draw(st.integers(1, 12)), draw(st.sampled_from(MODES))
        k = None if mode == "dense" else draw(st.integers(1, min(m, fan_in)))
        sketch = draw(st.sampled_from(SKETCHES)) if mode in ("sketch_in", "sketch_out") else None
        specs.append(LayerSpec(m, mode, k, sketch))
        fan_in = m
    return d, specs


def _net(d, specs, train_output, seed, neurons=None):
    return build_network(d, specs, train_output=train_output, seed=seed, dtype=torch.float64,
                         neurons=neurons)


@pytest.mark.parametrize("train_output", [False, True])
@settings(max_examples=40, deadline=None)
@given(stack=stacks(), n=st.integers(1, 7), n2=st.integers(1, 5), block=st.integers(1, 9),
       tile=st.integers(1, 8), seed=st.integers(0, 10**6))
def test_deep_gram_and_matvec_match_autograd(train_output, stack, n, n2, block, tile, seed):
    d, specs = stack
    net = _net(d, specs, train_output, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x2 = torch.randn(n2, d, generator=g, dtype=torch.float64)
    ref, cross = autograd_ntk(net, x), autograd_ntk(net, x, x2)
    for t in (None, tile):
        assert _rel(empirical_ntk(net, x, block=block, tile=t), ref, _floor(x, x)) < 1e-10
        assert _rel(empirical_ntk(net, x, x2, block=block, tile=t), cross,
                    _floor(x, x2)) < 1e-10
        v = torch.randn(n, 3, generator=g, dtype=torch.float64)
        mv_floor = _floor(x, x) * float(v.abs().max()) * n
        assert _rel(ntk_matvec(net, x, v, block=block, tile=t), ref @ v, mv_floor) < 1e-10
        assert _rel(ntk_matvec(net, x, v[:, 0], tile=t), ref @ v[:, 0], mv_floor) < 1e-10

    # Width shards of the last layer: their partials add (the lower layers' terms start from
    # the summed backprop signal), and any shard finishes the total.
    m = specs[-1].m
    cuts = sorted({0, m, *(c % (m + 1) for c in (seed, seed // 7))})
    shards = [_net(d, specs, train_output, seed, (lo, hi)) for lo, hi in zip(cuts, cuts[1:])]
    for other, want in ((None, ref), (x2, cross)):
        total = pickle.loads(pickle.dumps(sum(gram_partial(s, x, other, block) for s in shards)))
        assert _rel(finish_gram(shards[-1], total, x, other), want,
                    _floor(x, x if other is None else x2)) < 1e-10


@pytest.mark.parametrize("mode,sketch", net_grid())
@pytest.mark.parametrize("train_output", [False, True])
def test_every_kind_below_and_at_the_top_of_a_deep_net(mode, sketch, train_output):
    k = None if mode == "dense" else 3
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    below = [LayerSpec(9, mode, k, sketch), LayerSpec(8, "dense"), LayerSpec(7, "lowrank", 2)]
    for specs in (below, [LayerSpec(9, "sketch_in", 4, "srht"), LayerSpec(8, mode, k, sketch)]):
        net = _net(5, specs, train_output, seed=2)
        ref = autograd_ntk(net, x)
        assert _rel(empirical_ntk(net, x, block=3), ref) < 1e-12
        assert _rel(empirical_ntk(net, x[:2], x, tile=1), ref[:2]) < 1e-12
        assert _rel(ntk_matvec(net, x, torch.eye(6, dtype=torch.float64), tile=4), ref) < 1e-12


def test_gram_methods_agree_on_a_deep_net_after_the_readout_moved():
    net = _net(6, [LayerSpec(20, "dense"), LayerSpec(12, "sketch_out", 3, "srht"),
                   LayerSpec(15, "lowrank", 4)], True, seed=4)
    with torch.no_grad():
        net.a.mul_(torch.linspace(0.3, 2.0, 15, dtype=torch.float64))
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = gram(net, x, method=GramMethod.AUTOGRAD)
    for method in (GramMethod.CLOSED_FORM, GramMethod.MATVEC):
        assert _rel(gram(net, x, method=method, block=4), ref) < 1e-12
    with pytest.raises(ValueError, match="has no analytic infinite-width kernel"):
        gram(net, x, method=GramMethod.ANALYTIC)


def test_tiles_report_progress_over_every_block():
    net = _net(4, [LayerSpec(10, "dense"), LayerSpec(9, "lowrank", 3)], False, seed=0)
    x = torch.randn(9, 4, dtype=torch.float64)
    seen = []
    h = empirical_ntk(net, x, block=4, tile=4, on_block=lambda i, t: seen.append((i, t)))
    assert [i for i, _ in seen] == list(range(1, len(seen) + 1))
    assert {t for _, t in seen} == {len(seen)}
    assert torch.allclose(h, h.T, rtol=0, atol=0)  # the lower triangle is the mirrored upper
    with pytest.raises(ValueError, match="tile: expected an integer >= 1"):
        empirical_ntk(net, x, tile=0)


def test_sharded_deep_net_refuses_the_whole_net_computations():
    specs = [LayerSpec(8, "dense"), LayerSpec(10, "sketch_in", 3)]
    shard = _net(4, specs, False, seed=0, neurons=(2, 7))
    x = torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="gram_partial"):
        empirical_ntk(shard, x)
    with pytest.raises(ValueError, match="the mat-vec of a deep net needs all of them"):
        ntk_matvec(shard, x, torch.ones(5, dtype=torch.float64))
    whole, frozen = _net(4, specs, False, seed=0), _net(4, specs, False, seed=0)
    frozen.layers[0].W.requires_grad_(False)  # no lower term: its partial carries no signal
    with pytest.raises(ValueError, match="part: a deep net whose lower layers train"):
        finish_gram(whole, gram_partial(frozen, x), x)
    assert torch.allclose(empirical_ntk(frozen, x), autograd_ntk(frozen, x), rtol=1e-12,
                          atol=1e-14)


def test_float32_deep_gram_close_to_float64():
    specs = [LayerSpec(64, "sketch_in", 8, "countsketch"), LayerSpec(48, "lowrank", 8),
             LayerSpec(40, "dense")]
    x = torch.randn(12, 16, dtype=torch.float64)
    h64 = empirical_ntk(_net(16, specs, True, seed=3), x)
    net32 = build_network(16, specs, train_output=True, seed=3, dtype=torch.float32)
    h32 = empirical_ntk(net32, x.float())
    assert h32.dtype == torch.float32 and _rel(h32.double(), h64) < 1e-4


def test_deep_dense_nets_have_the_analytic_kernel_of_their_depth():
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    for first, k in (("dense", None), ("sketch_in", 6)):
        specs = [LayerSpec(1024, first, k), LayerSpec(1024, "dense")]
        net = _net(8, specs, True, seed=1)
        inputs = x if first == "dense" else net.layers[0].features(x)
        want = analytic_ntk(inputs, train_output=True, depth=2)
        # To rounding: the sketch of 3 points and of 20 may take different GEMM kernels.
        torch.testing.assert_close(gram(net, x, method=GramMethod.ANALYTIC), want,
                                   rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(gram(net, x[:3], x, method=GramMethod.ANALYTIC),
                                   analytic_ntk(inputs[:3], inputs, train_output=True, depth=2),
                                   rtol=1e-13, atol=1e-15)
        # The conventions agree (scales, 1/m_L, the readout's half): at width 1024 the
        # empirical Gram is within about 1/sqrt(m) of the limit (measured: 0.08).
        spec, rel = infinite_width(net, x, empirical_ntk(net, x))
        assert spec.lambda_min > 0 and rel < 0.15
    mixed = _net(8, [LayerSpec(30, "dense"), LayerSpec(20, "lowrank", 4)], True, seed=1)
    assert infinite_width(mixed, x, empirical_ntk(mixed, x)) == (None, None)
