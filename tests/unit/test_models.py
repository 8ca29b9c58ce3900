"""TwoLayerNet: determinism, slice rebuild, sketches as fast transforms, argument checks."""

from __future__ import annotations

import math

import pydantic
import pytest
import torch
from conftest import net_grid

from fntk_dist import TwoLayerNet, empirical_ntk, ntk_matvec
from fntk_dist.errors import ConfigError
from fntk_dist.models import InputSketch, Layer, Network, OutputSketch, fwht, net_cost
from fntk_dist.models.config import ModelConfig
from fntk_dist.models.cost import activation_cost, readout_cost
from fntk_dist.ntk import finish_gram, gram_partial


def _net(mode, sketch, **kw):
    base = dict(d=13, m=600, mode=mode, k=None if mode == "dense" else 6, sketch=sketch,
                train_output=True, seed=7, dtype=torch.float64)
    return TwoLayerNet(**{**base, **kw})


@pytest.mark.parametrize("mode,sketch", net_grid())
def test_same_arguments_same_net_other_seed_other_net(mode, sketch):
    a, b, c = _net(mode, sketch), _net(mode, sketch), _net(mode, sketch, seed=8)
    x = torch.randn(5, 13, dtype=torch.float64)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), c(x))


@pytest.mark.parametrize("mode,sketch", net_grid())
def test_neuron_slices_rebuild_the_whole_net(mode, sketch):
    whole = _net(mode, sketch)
    x = torch.randn(6, 13, dtype=torch.float64)
    cuts = [0, 1, 255, 256, 300, 513, 600]  # inside and across generator blocks
    shards = [_net(mode, sketch, neurons=(lo, hi)) for lo, hi in zip(cuts, cuts[1:])]
    def raw_rows(net):  # the generated per-neuron tensor: bit-identical in any slicing
        if mode == "sketch_out":
            return net.layer.out_sketch.rows(0, net.m_local)
        return net.W if mode == "dense" else net.U

    assert torch.equal(torch.cat([raw_rows(s) for s in shards]), raw_rows(whole))
    rows = torch.cat([s.neuron_weights(0, s.m_local) for s in shards])
    assert torch.allclose(rows, whole.neuron_weights(0, whole.m), rtol=0, atol=1e-13)
    assert torch.equal(torch.cat([s.a for s in shards]), whole.a)
    assert torch.allclose(sum(s(x) for s in shards), whole(x), atol=1e-13)
    total = sum((gram_partial(s, x) for s in shards[1:]), gram_partial(shards[0], x))
    ref = finish_gram(whole, gram_partial(whole, x), x)
    assert torch.allclose(finish_gram(whole, total, x), ref, atol=1e-12)


def test_fwht_is_the_hadamard_matrix():
    h = torch.ones(1, 1, dtype=torch.float64)
    for _ in range(4):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    x = torch.randn(3, 16, dtype=torch.float64)
    assert torch.allclose(fwht(x), x @ h.T)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "srht", "countsketch"])
def test_input_sketch_is_a_jl_map_with_its_adjoint(kind):
    d, k = 12, 8
    sk = [InputSketch(kind, k, d, seed, torch.float64) for seed in range(400)]
    dense = [s(torch.eye(d, dtype=torch.float64)).T for s in sk]  # V: (k, d)
    z, y = torch.randn(4, d, dtype=torch.float64), torch.randn(4, k, dtype=torch.float64)
    assert torch.allclose(sk[0](z), z @ dense[0].T)
    assert torch.allclose(sk[0].transpose(y), y @ dense[0])
    mean = sum(v.T @ v for v in dense) / len(dense)  # E[V^T V] = I
    assert (mean - torch.eye(d, dtype=torch.float64)).abs().max() < 0.2


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "srht", "countsketch"])
def test_output_sketch_rows_are_isotropic_and_consistent(kind):
    k, m = 5, 4000
    sk = OutputSketch(kind, k, 0, m, 3, torch.float64)
    u = sk.rows(0, m)
    z, y = torch.randn(3, k, dtype=torch.float64), torch.randn(3, 70, dtype=torch.float64)
    assert torch.allclose(sk(z, 30, 100), z @ u[30:100].T)
    assert torch.allclose(sk.transpose(y, 30, 100), y @ u[30:100])
    assert ((u.T @ u) / m - torch.eye(k, dtype=torch.float64)).abs().max() < 0.15


def test_cost_report():
    d, m, k = 512, 16384, 32
    dense = TwoLayerNet(d, m).cost()
    fact = TwoLayerNet(d, m, "sketch_in", k).cost()
    assert dense.trainable_params == m * d and fact.trainable_params == m * k
    assert dense.forward_flops == 2 * m * d + 3 * m
    assert fact.forward_flops == 2 * k * d + 2 * m * k + 3 * m
    assert TwoLayerNet(d, m, "lowrank", k, train_output=True).cost().trainable_params == (
        m * k + k * d + m)
    srht = TwoLayerNet(d, m, "sketch_in", k, "srht").cost()
    assert srht.forward_flops == 512 * (int(math.log2(512)) + 1) + 2 * m * k + 3 * m


@pytest.mark.parametrize("kwargs,key", [
    (dict(d=0, m=4), "d:"), (dict(d=4, m=0), "m:"), (dict(d=4, m=4, mode="wide"), "mode:"),
    (dict(d=4, m=4, mode="sketch_in", k=0), "k:"), (dict(d=4, m=4, mode="sketch_in", k=5), "k:"),
    (dict(d=4, m=4, mode="lowrank"), "k:"), (dict(d=4, m=4, k=2), "k:"),
    (dict(d=4, m=8, mode="dense", sketch="srht"), "sketch:"),
    (dict(d=4, m=8, mode="lowrank", k=2, sketch="gaussian"), "sketch:"),
    (dict(d=4, m=8, mode="sketch_in", k=2, sketch="fft"), "sketch:"),
    (dict(d=3, m=8, mode="sketch_in", k=5, sketch="srht"), "k:"),
    (dict(d=4, m=8, neurons=(5, 5)), "neurons:"), (dict(d=4, m=8, dtype="float16"), "dtype:"),
])
def test_bad_arguments_name_themselves(kwargs, key):
    with pytest.raises(ValueError, match=f"^{key}"):
        TwoLayerNet(**kwargs)


@pytest.mark.parametrize("x,msg", [
    (torch.randn(3, 5), r"X: expected shape \(n, 4\)"),
    (torch.tensor([[1.0, float("nan"), 0, 0]]), "X: contains NaN or Inf"),
    (torch.tensor([[1.0, 0, 0, 0], [0, float("inf"), 0, 0]]), r"row 1"),
    (torch.zeros(0, 4), r"n >= 1"),
    (torch.zeros(2, 4, dtype=torch.int64), "X: expected a floating-point tensor"),
])
def test_bad_inputs_name_x(x, msg):
    net = TwoLayerNet(4, 8)
    for call in (lambda: empirical_ntk(net, x), lambda: ntk_matvec(net, x, torch.ones(x.shape[0])),
                 lambda: gram_partial(net, x)):
        with pytest.raises(ValueError, match=msg):
            call()
    if "NaN" in msg or "row" in msg:  # forward checks shapes only: it never reads values
        assert not torch.isfinite(net(x)).all()
    else:
        with pytest.raises(ValueError, match=msg):
            net(x)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "srht", "countsketch"])
@pytest.mark.parametrize("k", [1, 3, 4, 6])
def test_output_sketch_rows_are_its_adjoint_on_the_identity(kind, k):
    for lo, hi in [(0, 40), (7, 33), (37, 261)]:
        sk = OutputSketch(kind, k, lo, hi, 3, torch.float64)
        for i0, i1 in [(0, hi - lo), (2, 9), (5, 6)]:
            eye = torch.eye(i1 - i0, dtype=torch.float64)
            assert torch.equal(sk.rows(i0, i1), sk.transpose(eye, i0, i1))


def test_layer_streams_layer0_is_the_two_layer_net_deeper_layers_differ():
    net = _net("lowrank", None)
    first = Layer(13, 600, "lowrank", 6, seed=7, index=0, dtype=torch.float64)
    second = Layer(13, 600, "lowrank", 6, seed=7, index=1, dtype=torch.float64)
    assert torch.equal(first.U, net.U) and torch.equal(first.V, net.V)
    assert not torch.equal(second.U, net.U) and not torch.equal(second.V, net.V)
    shard = Layer(13, 600, "lowrank", 6, seed=7, index=1, dtype=torch.float64, neurons=(250, 300))
    assert torch.equal(shard.U, second.U[250:300])
    sk = [Layer(13, 600, "sketch_in", 6, "srht", seed=7, index=i, dtype=torch.float64)
          for i in (0, 1)]
    assert not torch.equal(sk[0].in_sketch.signs, sk[1].in_sketch.signs)


def test_deep_network_follows_the_scaling_convention():
    layers = [Layer(5, 30, "dense", seed=1, index=0, dtype=torch.float64),
              Layer(30, 20, "lowrank", 4, seed=1, index=1, dtype=torch.float64),
              Layer(20, 10, "sketch_in", 3, "srht", seed=1, index=2, dtype=torch.float64)]
    net = Network(layers, train_output=True, seed=1)
    x = torch.randn(4, 5, dtype=torch.float64)
    h1 = torch.relu(x @ layers[0].W.T)
    h2 = torch.relu(math.sqrt(2 / 30) * (h1 @ layers[1].V.T @ layers[1].U.T))
    h3 = torch.relu(math.sqrt(2 / 20) * (layers[2].in_sketch(h2) @ layers[2].U.T))
    assert torch.allclose(net(x), h3 @ net.a / math.sqrt(10), rtol=0, atol=1e-14)
    assert net.depth == 3 and net.d == 5 and net.m == 10
    assert [g.key for g in net.groups] == [("layer0", "W"), ("layer1", "U"), ("layer1", "V"),
                                           ("layer2", "U"), ("readout", "a")]
    # The blocked step: the last layer recomputes its pre-activations; the layers below run
    # whole, each with its relu and the next layer's scale, and pass the gradient down.
    assert net.cost() == (layers[0].cost(recompute=False) + activation_cost(30)
                          + layers[1].cost(recompute=False, input_grad=True)
                          + activation_cost(20) + layers[2].cost(input_grad=True)
                          + readout_cost(10, True))
    assert net.mode == ("dense", "lowrank", "sketch_in") and net.k == (None, 4, 3)
    assert net.sketch == (None, None, "srht")


@pytest.mark.parametrize("layers,msg", [
    (lambda: [Layer(5, 30), Layer(20, 10)], "layers: layer 1 takes d=20"),
    (lambda: [Layer(5, 30, neurons=(0, 10)), Layer(30, 10)],
     r"inputs: layer 1 holds the columns \(0, 30\) of its input but layer 0 holds the neurons "
     r"\(0, 10\)"),
    (lambda: [Layer(5, 30), Layer(30, 10, dtype=torch.float64)], "dtype:"),
    (lambda: [], "layers:"),
])
def test_network_rejects_stacks_that_do_not_chain(layers, msg):
    with pytest.raises(ValueError, match=msg):
        Network(layers())


@pytest.mark.parametrize("mode,sketch", net_grid())
@pytest.mark.parametrize("train_output", [False, True])
def test_cost_adds_per_layer_and_gram_flops_count_each_term(mode, sketch, train_output):
    d, m, k = 20, 300, 6
    net = TwoLayerNet(d, m, mode, None if mode == "dense" else k, sketch, train_output)
    assert net.cost() == net_cost(mode, net.sketch, m, d, net.k, train_output)
    rows, cols = 7, 11
    want = net.cost().forward_flops * (rows + cols)  # the distributed Gram's former tile_flops
    if mode != "sketch_out":
        want += 2 * rows * cols * m
    if train_output:
        want += 2 * rows * cols * m
    if mode in ("sketch_out", "lowrank"):
        want += 2 * (rows + cols) * m * k
    assert net.gram_flops(rows, cols) == want


@pytest.mark.parametrize("model,key,msg", [
    (dict(mode="sketch_in", m=8, k=9), "k", "must be <= m=8, got 9"),
    (dict(mode="dense", k=4), "k", "mode 'dense' has no rank"),
    (dict(mode="lowrank", k=4, sketch="srht"), "sketch", "mode 'lowrank' has no fixed factor"),
    (dict(mode="sketch_out"), "k", "mode 'sketch_out' needs a rank k"),
])
def test_model_config_runs_the_layer_checks(model, key, msg):
    with pytest.raises(pydantic.ValidationError) as info:
        ModelConfig(**model)
    err = info.value.errors()[0]
    assert err["loc"] == (key,) and err["msg"].startswith(msg)
    ModelConfig()  # the untouched default is checked when built
    with pytest.raises(ConfigError, match=r"^model\.k: srht samples k rows"):
        ModelConfig(mode="sketch_in", k=64, sketch="srht").build(d=8)
