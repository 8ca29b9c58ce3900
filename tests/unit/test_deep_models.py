"""Deep nets as a config and a Python object: model.layers / model.depth, dotted overrides into
layers, one-line errors naming the layer and key, build_network, shards, the cost model."""

from __future__ import annotations

import pytest
import torch
import yaml

from fntk_dist import TwoLayerNet
from fntk_dist.config import ConfigError, build_config, dump_config
from fntk_dist.models import LayerSpec, Network, build_network
from fntk_dist.models.cost import activation_cost, layer_cost, readout_cost

LAYERS = [{"m": 64, "mode": "sketch_in", "k": 8, "sketch": "srht"},
          {"m": 48, "mode": "lowrank", "k": 8}, {"m": 40, "mode": "dense"}]


def model(overrides=(), **section):
    return build_config({"model": {"dtype": "float64", **section}}, list(overrides)).model


def test_layers_build_the_stack_and_overrides_reach_into_them():
    cfg = model(["model.layers.1.k=16", "model.layers.2.m=32"], layers=LAYERS, seed=3)
    assert (cfg.layers[1].k, cfg.layers[2].m) == (16, 32)
    assert LAYERS[1]["k"] == 8  # the overrides copy what they pass through
    net = cfg.build(d=10)
    assert isinstance(net, Network) and net.depth == 3 and net.d == 10 and net.m == 32
    assert net.mode == ("sketch_in", "lowrank", "dense") and net.k == (8, 16, None)
    assert net.sketch == ("srht", None, None) and net.seed == 3
    assert [layer.index for layer in net.layers] == [0, 1, 2]
    # The flat keys read back as the last layer's (what dist.width divides).
    assert (cfg.m, cfg.mode, cfg.k, cfg.hidden_layers) == (32, "dense", None, 3)


def test_depth_repeats_the_flat_layer():
    cfg = model(mode="lowrank", m=20, k=4, depth=3)
    net = cfg.build(d=6)
    assert net.depth == 3 and [layer.d for layer in net.layers] == [6, 20, 20]
    assert all((layer.mode, layer.m, layer.k) == ("lowrank", 20, 4) for layer in net.layers)
    assert cfg.hidden_layers == 3


def test_depth_one_is_the_two_layer_net_bit_for_bit():
    flat = model(mode="sketch_in", m=40, k=4, sketch="countsketch").build(d=9)
    listed = model(layers=[{"m": 40, "mode": "sketch_in", "k": 4, "sketch": "countsketch"}])
    short = model(mode="sketch_in", m=40, k=4, sketch="countsketch", depth=1)
    x = torch.randn(5, 9, dtype=torch.float64)
    for other in (listed.build(d=9), short.build(d=9),
                  build_network(9, [LayerSpec(40, "sketch_in", 4, "countsketch")],
                                dtype=torch.float64)):
        assert type(other) is TwoLayerNet and torch.equal(other(x), flat(x))


@pytest.mark.parametrize("lower", [LayerSpec(24, "dense"), LayerSpec(24, "sketch_in", 4, "srht"),
                                   LayerSpec(24, "sketch_out", 6, "countsketch"),
                                   LayerSpec(24, "lowrank", 5)])
def test_the_stack_is_the_written_recursion_each_way(lower):
    """f = a . relu(g^L) / sqrt(m_L), g^l = c_l W^l relu(g^{l-1}), c_l = sqrt(2 / m_{l-1}), from
    each layer's effective rows: the forward and every trained tensor's gradient (the lower
    layers scale and relu in place inside their GEMM, Layer.scaled_relu)."""
    net = build_network(7, [lower, LayerSpec(20, "lowrank", 4), LayerSpec(16, "dense")],
                        train_output=True, seed=5, dtype=torch.float64)
    x = torch.randn(6, 7, dtype=torch.float64)
    params = [p for p in net.parameters() if p.requires_grad]

    def written() -> torch.Tensor:
        h, c = x, 1.0
        for layer in net.layers:
            h = torch.relu(c * h @ layer.neuron_weights(0, layer.m).T)
            c = (2 / layer.m) ** 0.5
        return h @ net.a / net.m ** 0.5

    y = torch.randn(6, dtype=torch.float64)
    got, want = net(x), written()
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
    for g, w in zip(torch.autograd.grad(got @ y, params), torch.autograd.grad(want @ y, params)):
        assert torch.allclose(g, w, rtol=1e-11, atol=1e-13)


def test_configs_round_trip_and_depth_one_dumps_as_before():
    for section in ({"layers": LAYERS}, {"mode": "dense", "m": 30, "depth": 2},
                    {"layers": LAYERS, "depth": 3}):
        cfg = build_config({"model": section})
        again = build_config(yaml.safe_load(dump_config(cfg)))
        assert again == cfg and again.model.build(12).depth == cfg.model.build(12).depth
    written = yaml.safe_load(dump_config(build_config({"model": {"layers": LAYERS}})))["model"]
    assert "layers" in written and not {"m", "mode", "k", "sketch", "depth"} & set(written)
    flat = build_config({"model": {"mode": "sketch_in", "m": 30, "k": 4}}).model.model_dump()
    assert set(flat) == {"mode", "m", "k", "sketch", "train_output", "seed", "dtype"}


@pytest.mark.parametrize("section,overrides,msg", [
    ({"layers": LAYERS}, ["model.layers.1.k=100"], "model.layers.1.k: must be <= m=48"),
    ({"layers": LAYERS}, ["model.layers.2.mode=lowrank", "model.layers.2.m=99",
                          "model.layers.2.k=60"],
     "model.layers.2.k: must be <= the layer's fan-in layers.1.m=48, got 60"),
    ({"layers": LAYERS}, ["model.layers.0.mode=wide"], "model.layers.0.mode: Input should be"),
    ({"layers": []}, [], "model.layers: a network needs at least one layer"),
    ({"layers": LAYERS}, ["model.layers.1.sketch=srht"], "model.layers.1.sketch: mode 'lowrank' "
     "has no fixed factor"),
    ({"layers": LAYERS}, ["model.layers.2.k=4"], "model.layers.2.k: mode 'dense' has no rank"),
    ({"layers": LAYERS}, ["model.layers.0.seed=1"], "model.layers.0.seed: unknown key"),
    ({"layers": LAYERS}, ["model.layers.1.m=null"], "model.layers.1.m: "),
    ({"layers": LAYERS}, ["model.k=8"], "model.k: given with model.layers, but layer 2 has "
     "k=None"),
    ({"layers": LAYERS}, ["model.depth=2"], "model.depth: 2, but model.layers lists 3 layers"),
    ({"layers": LAYERS}, ["model.layers.3.k=4"], "'model.layers.3.k=4': 3 is not an item of a "
     "list of 3"),
    ({"mode": "sketch_in", "m": 8, "k": 9, "depth": 2}, [], "model.k: must be <= m=8"),
    ({"mode": "dense", "m": 8, "depth": 0}, [], "model.depth: Input should be greater"),
])
def test_bad_layer_specs_are_one_line_naming_layer_and_key(section, overrides, msg):
    with pytest.raises(ConfigError) as info:
        model(overrides, **section)
    assert msg in str(info.value) and "\n" not in str(info.value)


def test_a_consistent_flat_key_is_accepted_with_layers():
    cfg = model(layers=[{"m": 16, "mode": "dense"}, {"m": 16, "mode": "dense"}], m=16,
                mode="dense", depth=2)
    assert cfg.build(4).depth == 2


def test_the_first_layer_fan_in_is_checked_when_built():
    with pytest.raises(ConfigError, match=r"^model\.layers\.0\.k: must be <= the layer's "
                                          r"fan-in d=6, got 8$"):
        model(layers=LAYERS).build(d=6)
    with pytest.raises(ConfigError, match=r"^model\.k: layer 0: must be <= the layer's fan-in "
                                          r"d=6, got 8"):
        model(mode="lowrank", m=20, k=8, depth=2).build(d=6)
    with pytest.raises(ValueError, match=r"^layers\.1\.mode: expected one of"):
        build_network(4, [LayerSpec(8), LayerSpec(8, "wide")])
    with pytest.raises(ValueError, match=r"^layers\.0: expected the keys"):
        build_network(4, [{"width": 8}])
    with pytest.raises(ValueError, match=r"^layers: a network needs at least one layer"):
        build_network(4, [])


def test_shards_of_the_last_layer_rebuild_the_whole_net():
    specs = [LayerSpec(300, "lowrank", 5), LayerSpec(600, "sketch_out", 6, "srht")]
    whole = build_network(7, specs, train_output=True, seed=2, dtype=torch.float64)
    cuts = [0, 255, 256, 513, 600]
    shards = [build_network(7, specs, train_output=True, seed=2, dtype=torch.float64,
                            neurons=(lo, hi)) for lo, hi in zip(cuts, cuts[1:])]
    x = torch.randn(4, 7, dtype=torch.float64)
    assert all(torch.equal(s.layers[0].U, whole.layers[0].U) for s in shards)
    assert torch.equal(torch.cat([s.a for s in shards]), whole.a)
    assert torch.allclose(sum(s(x) for s in shards), whole(x), rtol=0, atol=1e-13)


def test_cost_per_layer_and_gram_flops_of_a_deep_net():
    d, specs = 20, [LayerSpec(64, "sketch_in", 8, "srht"), LayerSpec(48, "lowrank", 8),
                    LayerSpec(40, "dense")]
    net = build_network(d, specs, train_output=True)
    want = (layer_cost("sketch_in", "srht", 64, d, 8, recompute=False) + activation_cost(64)
            + layer_cost("lowrank", None, 48, 64, 8, recompute=False, input_grad=True)
            + activation_cost(48) + layer_cost("dense", None, 40, 48, None, input_grad=True)
            + readout_cost(40, True))
    assert net.cost() == want
    assert net.cost().trainable_params == 64 * 8 + (48 * 8 + 8 * 64) + 40 * 48 + 40
    # Backward, a lower lowrank layer forms G once for V's gradient and its input's; a blocked
    # dense top layer recomputes its pre-activations.
    low = layer_cost("lowrank", None, 48, 64, 8, recompute=False, input_grad=True)
    assert low.train_step_flops - low.forward_flops == 2 * 48 * 8 * 2 + 2 * 8 * 64 * 2
    top = layer_cost("dense", None, 40, 48, None, input_grad=True)
    assert top.train_step_flops - top.forward_flops == 3 * (2 * 40 * 48)
    rows, cols = 5, 7
    assert net.gram_flops(rows, cols) > net.cost().forward_flops * (rows + cols)
    assert net.gram_flops(2 * rows, 2 * cols) > 2 * net.gram_flops(rows, cols)
