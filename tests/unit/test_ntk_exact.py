"""The closed-form Gram, cross-Gram and mat-vec against torch.func Jacobians, in float64."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from conftest import net_grid, requires_cuda
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call, jacrev, vmap

from fntk_dist import TwoLayerNet, autograd_ntk, empirical_ntk, ntk_matvec
from fntk_dist.ntk import GramPartial, RankSum, finish_gram, gram_partial
from fntk_dist.ntk.gram_terms import SYM_SPLIT, symmetric_blocks


def _rel(a: torch.Tensor, b: torch.Tensor, scale: float = 0.0) -> float:
    """max |a - b| relative to max(max |b|, scale) (an all-zero b demands an all-zero a)."""
    return float((a - b).abs().max() / max(float(b.abs().max()), scale, 1e-300))


def _net(mode, sketch, d, m, k, train_output, seed=0, dtype=torch.float64):
    return TwoLayerNet(d, m, mode, None if mode == "dense" else k, sketch, train_output, seed,
                       dtype)


@pytest.mark.parametrize("mode,sketch", net_grid())
@pytest.mark.parametrize("train_output", [False, True])
@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 9), n2=st.integers(1, 6), d=st.integers(1, 12), m=st.integers(1, 40),
       k=st.integers(1, 8), block=st.integers(1, 17), seed=st.integers(0, 10**6))
def test_gram_matches_autograd(mode, sketch, train_output, n, n2, d, m, k, block, seed):
    k = min(k, m)
    if sketch == "srht" and mode == "sketch_in":
        k = min(k, 1 << max(0, (d - 1).bit_length()))
    net = _net(mode, sketch, d, m, k, train_output, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x2 = torch.randn(n2, d, generator=g, dtype=torch.float64)
    # Entries are measured against max |H| and, as a floor, against |x| |x'|, the scale of an
    # entry: some terms (G = S diag(a) U) can cancel to an exact 0 that autograd rounds to 1e-17.
    def floor(a, b):
        return float(a.norm(dim=1).max() * b.norm(dim=1).max())

    ref = autograd_ntk(net, x)
    assert _rel(empirical_ntk(net, x, block=block), ref, floor(x, x)) < 1e-10
    cross = autograd_ntk(net, x, x2)
    assert _rel(empirical_ntk(net, x, x2, block=block), cross, floor(x, x2)) < 1e-10
    v = torch.randn(n, 3, generator=g, dtype=torch.float64)
    mv_floor = floor(x, x) * float(v.abs().max()) * n
    assert _rel(ntk_matvec(net, x, v, block=block), ref @ v, mv_floor) < 1e-10
    assert _rel(ntk_matvec(net, x, v[:, 0], block=block), ref @ v[:, 0], mv_floor) < 1e-10


def test_trained_parameters_are_exactly_the_modes():
    want = {"dense": ("W",), "sketch_in": ("U",), "sketch_out": ("V",), "lowrank": ("U", "V")}
    for mode, sketch in net_grid():
        for to in (False, True):
            net = _net(mode, sketch, 8, 16, 4, to)
            names = {n for n, p in net.named_parameters() if p.requires_grad}
            first = {f"layers.0.{g}" for g in want[mode]}
            assert names == first | ({"a"} if to else set())
            assert net.trained == want[mode] + (("a",) if to else ())
            keys = tuple(g.key for g in net.groups)
            assert keys == tuple(("layer0", g) for g in want[mode]) + ((("readout", "a"),)
                                                                      if to else ())
            assert all(net.parameter(g).requires_grad for g in net.groups)


def test_float32_gram_close_to_float64():
    x = torch.randn(20, 16, dtype=torch.float64)
    for mode, sketch in net_grid():
        h64 = empirical_ntk(_net(mode, sketch, 16, 300, 8, True), x)
        h32 = empirical_ntk(_net(mode, sketch, 16, 300, 8, True, dtype=torch.float32), x.float())
        assert h32.dtype == torch.float32
        assert _rel(h32.double(), h64) < 1e-4


def test_autograd_ntk_on_any_module():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1))
    mlp = mlp.double()
    x = torch.randn(4, 5, dtype=torch.float64)
    h = autograd_ntk(mlp, x)
    jac = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(mlp(x[i:i + 1])[0, 0],
                                                                          list(mlp.parameters()))])
                       for i in range(4)])
    assert torch.allclose(h, jac @ jac.T, atol=1e-12)
    # In chunks of rows (a chunk not dividing n, and a cross-Gram): the same numbers.
    assert torch.allclose(autograd_ntk(mlp, x, chunk=3), h, atol=1e-14)
    assert torch.allclose(autograd_ntk(mlp, x[:3], x, chunk=2), h[:3], atol=1e-14)
    with pytest.raises(ValueError, match="chunk"):
        autograd_ntk(mlp, x, chunk=0)


@requires_cuda
def test_gram_on_cuda_matches_cpu():
    x = torch.randn(64, 32, dtype=torch.float64)
    for mode, sketch in net_grid():
        cpu = empirical_ntk(_net(mode, sketch, 32, 1000, 8, True), x)
        gpu = empirical_ntk(_net(mode, sketch, 32, 1000, 8, True).cuda(), x.cuda())
        assert _rel(gpu.cpu(), cpu) < 1e-10


@pytest.mark.parametrize("mode,sketch", net_grid())
@pytest.mark.parametrize("train_output", [False, True])
def test_vmapped_jacobians_of_forward_give_the_closed_form(mode, sketch, train_output):
    # The torch.func recipe: per-point Jacobians by vmap(jacrev) over the net itself. It needs a
    # forward without data-dependent branches (forward checks shapes only).
    net = _net(mode, sketch, 7, 30, 4, train_output, seed=2)
    x = torch.randn(6, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    params = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}

    def f(p, xi):
        return functional_call(net, p, (xi.unsqueeze(0),))[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    h = sum(j.reshape(6, -1) @ j.reshape(6, -1).T for j in jac.values())
    assert _rel(empirical_ntk(net, x), h) < 1e-12


@pytest.mark.parametrize("mode,sketch", net_grid())
def test_gram_after_the_readout_moved(mode, sketch):
    # A trained readout leaves +-1: the ROWS terms weigh each neuron by a_r^2.
    net = _net(mode, sketch, 6, 40, 3, True, seed=4)
    with torch.no_grad():
        net.a.mul_(torch.linspace(0.3, 2.0, 40, dtype=torch.float64))
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = autograd_ntk(net, x)
    assert _rel(empirical_ntk(net, x, block=16), ref) < 1e-12
    assert _rel(empirical_ntk(net, x[:3], x, block=16), ref[:3]) < 1e-12
    v = torch.randn(7, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert _rel(ntk_matvec(net, x, v, block=16), ref @ v) < 1e-12


def _shards(mode, sketch, cuts):
    return [TwoLayerNet(6, cuts[-1], mode, None if mode == "dense" else 3, sketch, True, 1,
                        torch.float64, neurons=(lo, hi)) for lo, hi in zip(cuts, cuts[1:])]


@pytest.mark.parametrize("mode,sketch", [("lowrank", None), ("sketch_out", "srht"),
                                         ("dense", None)])
def test_gram_partials_add_reduce_move_and_pickle(mode, sketch):
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x2 = x[:2] + 1
    whole = _shards(mode, sketch, [0, 90])[0]
    shards = _shards(mode, sketch, [0, 13, 70, 90])
    for other in (None, x2):
        parts = [gram_partial(s, x, other, block=8) for s in shards]
        total = sum(parts)
        assert total.keys == tuple(g.key for g in whole.groups)
        ref = empirical_ntk(whole, x, other)
        before = [t.clone() for term in total.terms for t in term.tensors()]
        assert _rel(finish_gram(whole, total, x, other), ref) < 1e-13
        # The finish adds its terms into the first fresh one, in place: the readout's term is
        # the partial's own sum, which must come out unchanged, whichever term comes first.
        readout_first = GramPartial(tuple(reversed(total.terms)), total.back)
        assert _rel(finish_gram(whole, readout_first, x, other), ref) < 1e-13
        after = [t for term in total.terms for t in term.tensors()]
        assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
        again = pickle.loads(pickle.dumps(total.cpu()))
        assert torch.equal(finish_gram(whole, again, x, other), finish_gram(whole, total, x, other))
        # As Ray ships it: every sum an out-of-band buffer (no byte-string copy), received
        # read-only, rebuilt as writable tensors.
        buffers = []
        data = pickle.dumps(total.cpu(), protocol=5, buffer_callback=buffers.append)
        assert len(buffers) == sum(len(t.tensors()) for t in total.terms)
        shipped = pickle.loads(data, buffers=[memoryview(b).toreadonly() for b in buffers])
        for term in shipped.terms:
            for t in term.tensors():
                t.add_(0)  # writable memory of its own
        assert torch.equal(finish_gram(whole, shipped, x, other),
                           finish_gram(whole, total, x, other))
        # In place, as a row group's root adds the other shards' sum into its own partial.
        into = copy.deepcopy(parts[0])
        for p in parts[1:]:
            into.add_(p)
        assert torch.equal(finish_gram(whole, into, x, other), finish_gram(whole, total, x, other))
        assert all((t.g2 is t.g1) == (other is None) for t in again.terms
                   if isinstance(t, RankSum))
        # all_reduce_ with the shards as the processes: every summed tensor once, g2 is g1
        # (one tensor) for X against itself.
        flat = [[t for term in p.terms for t in term.tensors()] for p in parts]
        calls = iter(range(len(flat[0])))

        def sum_fn(t, flat=flat, calls=calls):
            i = next(calls)
            for other_tensors in flat[1:]:
                t.add_(other_tensors[i])

        reduced = copy.deepcopy(parts[0]).all_reduce_(sum_fn)
        assert next(calls, None) is None
        assert torch.equal(finish_gram(whole, reduced, x, other),
                           finish_gram(whole, total, x, other))
        ranks = [t for t in total.terms if isinstance(t, RankSum)]
        assert all((r.g2 is r.g1) == (other is None) for r in ranks)
        assert all(len(r.tensors()) == (1 if other is None else 2) for r in ranks)
    with pytest.raises(ValueError, match="part: cannot add"):
        gram_partial(shards[0], x) + gram_partial(_shards("sketch_in", None, [0, 90])[0], x)
    with pytest.raises(ValueError, match="part: cannot add"):
        gram_partial(shards[0], x).add_(gram_partial(_shards("sketch_in", None, [0, 90])[0], x))


@pytest.mark.parametrize("n", [5, 13, 64])
@pytest.mark.parametrize("moved", [False, True])
def test_a_diagonal_tile_sums_its_upper_blocks_only(n, moved):
    """X against itself forms its n x n sums from the blocks on and above the diagonal
    (gram_terms.symmetric_blocks, on the CPU) and mirrors them: the sums of X against a copy
    of X, which forms them whole, exactly for the neuron counts of a +-1 readout, to rounding
    for weighted masks and the readout's term; and exactly symmetric."""
    assert (symmetric_blocks(n, torch.device("cpu")) is None) == (n < 2 * SYM_SPLIT)
    net = _net("sketch_in", "gaussian", 6, 40, 3, True, seed=2)
    if moved:  # the weighted, non-count path
        with torch.no_grad():
            net.a.mul_(torch.linspace(0.3, 2.0, 40, dtype=torch.float64))
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    upper, whole = gram_partial(net, x, block=16), gram_partial(net, x, x.clone(), block=16)
    assert upper.keys == whole.keys == (("layer0", "U"), ("readout", "a"))
    for mine, ref in zip(upper.terms, whole.terms):
        assert torch.equal(mine.total, mine.total.T)
        if mine.key == ("layer0", "U") and not moved:
            assert torch.equal(mine.total, ref.total)
        else:
            assert _rel(mine.total, ref.total) < 1e-14
