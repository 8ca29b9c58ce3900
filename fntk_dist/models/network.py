"""Network: a stack of Layers and a readout a, in NTK parameterisation (DESIGN section 7).

    h^0 = x,  g^l = c_l W^l h^{l-1},  h^l = relu(g^l),  f(x) = (1/sqrt(m_L)) sum_r a_r h^L_r
    c_1 = 1,  c_l = sqrt(2 / m_{l-1}) for l >= 2

With one layer this is exactly the two-layer net of section 2 (TwoLayerNet builds that case).
The readout a is +-1, trained only when train_output, and covers the last layer's neurons:
a net whose last layer holds neurons [lo, hi) returns that width shard's share of f.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .cost import NetCost, group_gram_flops, readout_cost
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
            if (below.lo, below.hi) != (0, below.m):
                raise ValueError(f"neurons: layer {i - 1} feeds layer {i}, so it must hold all "
                                 f"its neurons; only the last layer may be a width shard")
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

    def only_layer(self, what: str) -> Layer:
        """The one hidden layer, for the computations that cover depth 1 so far (`what`)."""
        if self.depth != 1:
            raise ValueError(f"net: {what} covers one hidden layer so far, got depth "
                             f"{self.depth} (plain autograd covers any: net(x), autograd_ntk)")
        return self.layers[0]

    def parameter(self, group: Group) -> nn.Parameter:
        """The tensor of a trained group."""
        owner = self if group.layer is None else self.layers[group.layer]
        return getattr(owner, group.name)

    def cost(self) -> NetCost:
        """Per-point cost of the whole net (all neurons of every layer): parameters and FLOPs."""
        return sum((layer.cost() for layer in self.layers), readout_cost(self.m, self.train_output))

    def gram_flops(self, rows: int, cols: int) -> int:
        """FLOPs of one rows x cols Gram tile over all shards: each point's forward pass, then
        every trained group's products."""
        flops = self.cost().forward_flops * (rows + cols)
        for g in self.groups:
            layer = self.layers[-1 if g.layer is None else g.layer]
            flops += group_gram_flops(g.role, rows, cols, layer.m, layer.k)
        return flops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(X): (n, d) -> (n,); plain autograd (the reference path; training uses blocks).

        Checks shapes only, never values, so it traces under torch.func; the kernels' entry
        points check for NaN and Inf once per call.
        """
        check_shape(x, self.d, "X")
        h = x
        for c, layer in zip(self.scales, self.layers):
            g = layer(h)
            h = torch.relu(g if c == 1.0 else c * g)
        return h @ self.a / math.sqrt(self.m)
