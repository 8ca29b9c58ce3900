"""Network: a stack of Layers and a readout a, in NTK parameterisation (DESIGN section 7).

    h^0 = x,  g^l = c_l W^l h^{l-1},  h^l = relu(g^l),  f(x) = (1/sqrt(m_L)) sum_r a_r h^L_r
    c_1 = 1,  c_l = sqrt(2 / m_{l-1}) for l >= 2

With one layer this is exactly the two-layer net of section 2 (TwoLayerNet builds that case).
The readout a is +-1, trained only when train_output, and covers the last layer's neurons:
a net whose last layer holds neurons [lo, hi) returns that width shard's share of f. That may
be the only layer split (the Gram's shards), or every layer may be (a width shard of tensor
parallel training, models.width): layer l then holds the input columns that match layer
l - 1's neurons.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .cost import (
    NetCost,
    activation_cost,
    deep_group_gram_flops,
    group_gram_flops,
    readout_cost,
)
from .groups import Group, Role
from .layer import Layer
from .seeding import sign_rows
from .validation import check_shape


class Network(nn.Module):
    """Layers l = 0..L-1 (each feeding the next) and the readout a over the last one's neurons.

    The NTK kernels and the blocked step read it through `groups` (its trained tensors, each
    with the role that fixes its NTK term) and `parameter(group)`, never by tensor name.
    """

    def __init__(self, layers: Sequence[Layer], train_output: bool = False, seed: int = 0) -> None:
        super().__init__()
        if not layers:
            raise ValueError("layers: a network needs at least one layer")
        for i, (below, above) in enumerate(zip(layers, layers[1:]), 1):
            if above.d != below.m:
                raise ValueError(f"layers: layer {i} takes d={above.d} inputs but layer {i - 1} "
                                 f"has m={below.m} neurons")
            if above.inputs != (below.lo, below.hi):
                raise ValueError(f"inputs: layer {i} holds the columns {above.inputs} of its "
                                 f"input but layer {i - 1} holds the neurons "
                                 f"{(below.lo, below.hi)}; a width shard holds the same range")
        if len({layer.dtype for layer in layers}) > 1:
            raise ValueError(f"dtype: layers differ ({[layer.dtype for layer in layers]})")
        last = layers[-1]
        self.train_output, self.seed = train_output, seed
        # Fixed for the net's life, and read in every kernel's inner loop: plain attributes,
        # not lookups through the ModuleList. m is the readout's width (its 1/sqrt(m)), and
        # [lo, hi) the last layer's neurons held here.
        self.d, self.m, self.lo, self.hi = layers[0].d, last.m, last.lo, last.hi
        self.depth = len(layers)  # hidden layers L
        # a first: parameters() and state_dict() list the readout, then the layers.
        self.a = nn.Parameter(sign_rows(seed, "a", last.lo, last.hi).to(last.dtype),
                              requires_grad=train_output)
        self.layers = nn.ModuleList(layers)
        self.scales = (1.0, *(math.sqrt(2 / below.m) for below in layers[:-1]))

    # -- what the network is -------------------------------------------------------------
    @property
    def m_local(self) -> int:
        """Neurons of the last layer held here (hi - lo)."""
        return self.hi - self.lo

    @property
    def dtype(self) -> torch.dtype:
        return self.a.dtype

    @property
    def device(self) -> torch.device:
        return self.a.device

    @property
    def groups(self) -> tuple[Group, ...]:
        """Trained parameter groups, layer by layer, then the readout: one NTK term each."""
        out = tuple(g for layer in self.layers for g in layer.groups)
        return out + ((Group(None, "a", Role.READOUT),) if self.a.requires_grad else ())

    @property
    def mode(self) -> str | tuple[str, ...]:
        """The hidden layer's mode at depth 1; one per layer, bottom up, deeper."""
        return self._per_layer("mode")

    @property
    def k(self) -> int | None | tuple[int | None, ...]:
        """The hidden layer's rank at depth 1; one per layer, bottom up, deeper."""
        return self._per_layer("k")

    @property
    def sketch(self) -> str | None | tuple[str | None, ...]:
        """The hidden layer's sketch kind at depth 1; one per layer, bottom up, deeper."""
        return self._per_layer("sketch")

    def _per_layer(self, name: str) -> object:
        values = tuple(getattr(layer, name) for layer in self.layers)
        return values[0] if self.depth == 1 else values

    def parameter(self, group: Group) -> nn.Parameter:
        """The tensor of a trained group."""
        owner = self if group.layer is None else self.layers[group.layer]
        return getattr(owner, group.name)

    def cost(self) -> NetCost:
        """Per-point cost of the whole net (all neurons of every layer): parameters and FLOPs
        of the forward pass and of the blocked training step (train.blocked), in which the last
        layer recomputes its pre-activations in neuron blocks and the layers below it run whole
        under plain autograd, each with its relu and scale, passing the gradient down to the
        first layer."""
        total = readout_cost(self.m, self.train_output)
        for i, layer in enumerate(self.layers):
            last = i == self.depth - 1
            total += layer.cost(recompute=last, input_grad=i > 0)
            if not last:
                total += activation_cost(layer.m)
        return total

    def gram_flops(self, rows: int, cols: int) -> int:
        """FLOPs of one rows x cols Gram tile over all shards: each point's forward pass, then
        every trained group's products. A deep net also passes each point forward below the
        last layer again and its backprop signal down (ntk.empirical: the partial, then the
        finish), and counts both n x n products of each term."""
        flops = self.cost().forward_flops * (rows + cols)
        if self.depth == 1:
            for g in self.groups:
                layer = self.layers[-1 if g.layer is None else g.layer]
                flops += group_gram_flops(g.role, rows, cols, layer.m, layer.k)
            return flops
        for i, layer in enumerate(self.layers):
            forward = layer.cost(recompute=False).forward_flops
            below = i < self.depth - 1
            again = forward + 2 * layer.m if below else 0  # the finish's forward pass
            back = (forward if i > 0 else 0) + (2 * layer.m if below else 0)
            flops += (again + back) * (rows + cols)
        for g in self.groups:
            layer = self.layers[-1 if g.layer is None else g.layer]
            dim = layer.d if g.role is Role.RANK else layer.feature_dim
            flops += deep_group_gram_flops(g.role, rows, cols, layer.m, layer.k, dim)
        return flops

    def analytic_inputs(self, x: torch.Tensor) -> torch.Tensor | None:
        """Inputs on which the analytic ReLU kernel of the net's depth is its infinite-width
        limit, if it has one: every layer dense, except that the first may be sketch_in (the
        kernel on the sketched Z = X V^T); otherwise None (a factorized hidden layer keeps its
        rank k fixed as the widths grow: no deterministic limit)."""
        if any(layer.mode != "dense" for layer in self.layers[1:]):
            return None
        return self.layers[0].analytic_inputs(x)

    def iter_inputs(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """s^l = c_l h^{l-1} for l = 1..L, bottom up (s^1 = x). Layer l's pre-activations on
        s^l are g^l = c_l W^l h^{l-1}: the scale rides on the input, so every per-layer
        computation (kernels, blocked step) treats a layer like the first, and relu'(g^l) is
        s^{l+1} > 0 (c_{l+1} > 0). A width shard of every layer yields the columns it holds,
        or, to a dense layer, the whole input gathered (Layer.take_input)."""
        s = x
        yield s
        for c, layer, above in zip(self.scales[1:], self.layers[:-1], self.layers[1:]):
            s = above.take_input(layer.scaled_relu(s, c))  # a width shard's dense layer gathers
            yield s

    def layer_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[s^1, ..., s^L]: every layer's scaled input (n x m_{l-1} each), plain autograd."""
        return list(self.iter_inputs(x))

    def last_input(self, x: torch.Tensor) -> torch.Tensor:
        """s^L = c_L h^{L-1}(X), the last layer's scaled input (x itself at depth 1), holding
        one layer's activations at a time."""
        for s in self.iter_inputs(x):  # noqa: B007 - the last one is wanted
            pass
        return s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(X): (n, d) -> (n,); plain autograd (the reference path; training uses blocks).

        Checks shapes only, never values, so it traces under torch.func; the kernels' entry
        points check for NaN and Inf once per call.
        """
        check_shape(x, self.d, "X")
        h = torch.relu(self.layers[-1](self.last_input(x)))
        return h @ self.a / math.sqrt(self.m)
