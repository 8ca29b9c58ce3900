"""build_network: a Network of any depth from one spec per hidden layer (DESIGN section 7).

Depth 1 is TwoLayerNet, so a one-layer spec builds exactly the two-layer net. A deeper stack
checks each factorized layer's rank against its fan-in (the width below it, or d): a rank
above the fan-in adds parameters but not rank, since W = U V has rank <= min(k, fan-in). At
depth 1 the rank is only bounded by m, as the two-layer net always was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .layer import Layer, check_layer_args
from .net import TwoLayerNet
from .network import Network
from .width import WidthShard


@dataclass(frozen=True)
class LayerSpec:
    """One hidden layer: width m, mode, rank k (factorized modes) and sketch kind."""

    m: int
    mode: str = "dense"
    k: int | None = None
    sketch: str | None = None


def _spec(spec: LayerSpec | Mapping, i: int) -> LayerSpec:
    if isinstance(spec, LayerSpec):
        return spec
    try:
        return LayerSpec(**spec)
    except TypeError as err:  # an unknown or missing key
        raise ValueError(f"layers.{i}: expected the keys m, mode, k, sketch ({err})") from None


def check_fan_in(k: int | None, fan_in: int, below: str) -> None:
    """A deep net's factorized layer: k <= fan_in, since W = U V has rank <= min(k, fan_in)
    (below: what the fan-in is, for the message). ValueError('k: ...')."""
    if k is not None and k > fan_in:
        raise ValueError(f"k: must be <= the layer's fan-in {below}={fan_in}, got {k}")


def build_network(
    d: int, layers: Sequence[LayerSpec | Mapping], *, train_output: bool = False,
    seed: int = 0, dtype: torch.dtype | str = torch.float32,
    device: torch.device | str | None = None, neurons: tuple[int, int] | None = None,
    width: WidthShard | None = None,
) -> Network:
    """The net of len(layers) hidden layers on inputs of dimension d; neurons=(lo, hi) builds
    that range of the last layer only (a Gram's width shard), every layer below it whole;
    width builds that shard of every layer (tensor parallel training, models.width).

    Bad arguments raise ValueError('layers.<i>.<argument>: ...') naming the layer.
    """
    specs = [_spec(s, i) for i, s in enumerate(layers)]
    if not specs:
        raise ValueError("layers: a network needs at least one layer")
    if width is not None and neurons is not None:
        raise ValueError("neurons: a shard of the last layer or of every layer (width), not both")
    if width is not None and width.size == 1:
        width = None  # one shard is the whole net
    if len(specs) == 1:
        s = specs[0]
        try:
            if width is not None:
                check_layer_args(s.m, s.mode, s.k, s.sketch)
                neurons = width.neurons(s.m)
            return TwoLayerNet(d, s.m, s.mode, s.k, s.sketch, train_output, seed, dtype, device,
                               neurons)
        except ValueError as err:
            raise ValueError(f"layers.0.{err}") from None
    built, fan_in, below = [], d, None
    for i, s in enumerate(specs):
        last = i == len(specs) - 1
        try:
            check_layer_args(s.m, s.mode, s.k, s.sketch)  # before k is compared
            check_fan_in(s.k, fan_in, "d" if i == 0 else f"layers.{i - 1}.m")
            own = width.neurons(s.m) if width is not None else neurons if last else None
            built.append(Layer(fan_in, s.m, s.mode, s.k, s.sketch, seed=seed, index=i,
                               dtype=dtype, neurons=own, inputs=below,
                               reduce=width))
        except ValueError as err:
            raise ValueError(f"layers.{i}.{err}") from None
        fan_in, below = s.m, (own if width is not None else None)
    net = Network(built, train_output=train_output, seed=seed)
    return net if device is None else net.to(device)
