"""TwoLayerNet: f(x) = (1/sqrt(m)) sum_r a_r relu(<w_r, x>), first layer dense or W = U V."""

from __future__ import annotations

import torch
from torch import nn

from .layer import Layer
from .network import Network


class TwoLayerNet(Network):
    """A wide two-layer ReLU network in NTK parameterisation (DESIGN section 2): the depth-1
    Network, whose one Layer is the first layer.

    mode: dense (W trained), sketch_in (U trained, V a fixed sketch), sketch_out (V trained, U a
    fixed random factor), lowrank (U and V trained). sketch: the kind of the fixed factor
    (gaussian, rademacher, srht, countsketch). a is +-1, trained only when train_output.

    Every weight is a pure function of (seed, tensor name, neuron block): neurons=(lo, hi) builds
    only those neurons, exactly the rows lo..hi-1 of the whole net, and its forward returns that
    shard's share of the output (still scaled by 1/sqrt(m) of the whole width). The first
    layer's attributes and methods are the net's own, for the code that drives a two-layer net.
    """

    def __init__(
        self,
        d: int,
        m: int,
        mode: str = "dense",
        k: int | None = None,
        sketch: str | None = None,
        train_output: bool = False,
        seed: int = 0,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str | None = None,
        neurons: tuple[int, int] | None = None,
    ) -> None:
        layer = Layer(d, m, mode, k, sketch, seed=seed, index=0, dtype=dtype, neurons=neurons)
        super().__init__([layer], train_output=train_output, seed=seed)
        if device is not None:
            self.to(device)

    @property
    def layer(self) -> Layer:
        """The first (and only) hidden layer."""
        return self.layers[0]

    @property
    def W(self) -> nn.Parameter | None:
        return self.layer.W

    @property
    def U(self) -> nn.Parameter | None:
        return self.layer.U

    @property
    def V(self) -> nn.Parameter | None:
        return self.layer.V

    @property
    def trained(self) -> tuple[str, ...]:
        """Names of the trained parameter groups, among W, U, V, a."""
        return tuple(g.name for g in self.groups)

    def extra_repr(self) -> str:
        shard = "" if (self.lo, self.hi) == (0, self.m) else f", neurons=({self.lo}, {self.hi})"
        return (f"d={self.d}, m={self.m}, mode={self.mode!r}, k={self.k}, sketch={self.sketch!r}, "
                f"train_output={self.train_output}, seed={self.seed}{shard}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Layer.features of the first layer."""
        return self.layer.features(x)

    def preact(
        self, feats: torch.Tensor, i0: int, i1: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Layer.preact of the first layer."""
        return self.layer.preact(feats, i0, i1, out)

    def to_rank(self, y: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
        """Layer.to_rank of the first layer."""
        return self.layer.to_rank(y, i0, i1)

    def neuron_weights(self, i0: int, i1: int) -> torch.Tensor:
        """Layer.neuron_weights of the first layer."""
        return self.layer.neuron_weights(i0, i1)
