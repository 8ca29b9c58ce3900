"""ModelConfig: the typed settings of a network, checked by the very checks the layers run.

A net is a stack of hidden layers (DESIGN section 7), given one of two ways:

- flat: `m`, `mode`, `k`, `sketch` describe one hidden layer, repeated `depth` times (default
  1: the two-layer net, exactly as before depth existed);
- `layers`: one {m, mode, k, sketch} per hidden layer, bottom up. The flat keys then describe
  nothing of their own: given alongside, each must agree with every layer (and `depth` with
  the count). Once read, they hold the last layer's values (the layer the readout and width
  shards act on: `model.m` is what `dist.width` divides), and the config is written back
  with `layers` alone.

`seed`, `dtype` and `train_output` are the net's: one seed derives every layer's weights (each
layer its own streams), one dtype for all, and the readout a is the net's own.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..errors import ConfigError
from .layer import check_layer_args
from .net import TwoLayerNet
from .network import Network
from .stack import LayerSpec, build_network, check_fan_in
from .width import WidthShard

Mode = Literal["dense", "sketch_in", "sketch_out", "lowrank"]
Sketch = Literal["gaussian", "rademacher", "srht", "countsketch"]
_LAYER_KEYS = ("m", "mode", "k", "sketch")
_LAYER_ERROR = re.compile(r"^layers\.(\d+)\.(\w+): ")  # build_network's "layers.1.k: ..."


def _fail(model: type[BaseModel], loc: tuple, msg: str, value: object) -> ValidationError:
    """A ValidationError at loc (this section's key path), as pydantic reports its own."""
    error = PydanticCustomError("value_error", "{msg}", {"msg": msg})
    return ValidationError.from_exception_data(
        model.__name__, [InitErrorDetails(type=error, loc=loc, input=value)])


def _layer_checks(model: BaseModel, m: int, mode: str, k: int | None, sketch: str | None,
                  where: tuple = ()) -> None:
    """check_layer_args, its failing argument reported as the key at `where` + (argument,)."""
    try:
        check_layer_args(m, mode, k, sketch)
    except ValueError as err:
        key, _, msg = str(err).partition(": ")
        raise _fail(type(model), (*where, key), msg, getattr(model, key, None)) from None


class LayerConfig(BaseModel):
    """One hidden layer of model.layers."""

    model_config = ConfigDict(extra="forbid")

    m: int = Field(ge=1, description="width: number of neurons")
    mode: Mode
    k: int | None = Field(None, ge=1, description="rank of W = U V (factorized modes only)")
    sketch: Sketch | None = Field(None, description="kind of the fixed factor (sketch modes)")

    @model_validator(mode="after")
    def _as_the_layer_checks(self) -> LayerConfig:
        _layer_checks(self, self.m, self.mode, self.k, self.sketch)
        return self


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Mode = "sketch_in"
    m: int = Field(4096, ge=1, description="width: number of hidden neurons")
    k: int | None = Field(None, ge=1, description="rank of W = U V (factorized modes only)")
    sketch: Sketch | None = Field(
        None, description="kind of the fixed factor (sketch_in, sketch_out); default gaussian"
    )
    depth: int | None = Field(None, ge=1, description="hidden layers (default 1), each the "
                              "flat m/mode/k/sketch; with layers, their count")
    layers: list[LayerConfig] | None = Field(
        None, description="one {m, mode, k, sketch} per hidden layer, bottom up")
    train_output: bool = False
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float64"

    @model_validator(mode="after")
    def _as_the_layer_checks(self) -> ModelConfig:
        """Run the layer's own argument checks (those that need no input dimension) when the
        config is read, and report the failing argument as this section's key.

        A section left entirely to its defaults is checked when the net is built instead: the
        default mode needs a rank, and a config that has not set up its model yet should report
        its other mistakes first.
        """
        if self.layers is not None:
            return self._resolve_layers()
        if not self.model_fields_set:
            return self
        _layer_checks(self, self.m, self.mode, self.k, self.sketch)
        return self

    def _resolve_layers(self) -> ModelConfig:
        """Check model.layers against itself and the flat keys; then mirror the last layer."""
        layers, cls = self.layers, type(self)
        if not layers:
            raise _fail(cls, ("layers",), "a network needs at least one layer", [])
        if self.depth is not None and self.depth != len(layers):
            raise _fail(cls, ("depth",), f"{self.depth}, but model.layers lists {len(layers)} "
                        "layers", self.depth)
        for key in _LAYER_KEYS:
            if key not in self.model_fields_set:
                continue
            for i, layer in enumerate(layers):
                if getattr(layer, key) != getattr(self, key):
                    raise _fail(cls, (key,), f"given with model.layers, but layer {i} has "
                                f"{key}={getattr(layer, key)!r}; set it per layer "
                                f"(model.layers.N.{key})", getattr(self, key))
        for i, (below, layer) in enumerate(zip(layers, layers[1:]), 1):
            try:  # the first layer's fan-in d is checked when the net is built
                check_fan_in(layer.k, below.m, f"layers.{i - 1}.m")
            except ValueError as err:
                raise _fail(cls, ("layers", i, "k"), str(err).partition(": ")[2],
                            layer.k) from None
        for key in _LAYER_KEYS:
            setattr(self, key, getattr(layers[-1], key))
        return self

    @model_serializer(mode="wrap")
    def _written(self, handler: SerializerFunctionWrapHandler) -> dict:
        """The keys as given: `layers` without the flat keys it replaces; neither `depth` nor
        `layers` when unset, so a depth-1 config reads and hashes as it always did."""
        out = handler(self)
        if self.layers is not None:
            for key in _LAYER_KEYS:
                out.pop(key, None)
        else:
            out.pop("layers", None)
        if self.depth is None:
            out.pop("depth", None)
        return out

    @property
    def hidden_layers(self) -> int:
        """The depth L: hidden layers of the net."""
        return len(self.layers) if self.layers is not None else self.depth or 1

    @property
    def layer_specs(self) -> list[LayerSpec]:
        """One spec per hidden layer, bottom up."""
        if self.layers is not None:
            return [LayerSpec(la.m, la.mode, la.k, la.sketch) for la in self.layers]
        return [LayerSpec(self.m, self.mode, self.k, self.sketch)] * (self.depth or 1)

    def build(
        self, d: int, device: torch.device | str | None = None,
        neurons: tuple[int, int] | None = None, width: WidthShard | None = None,
    ) -> Network:
        """The net for inputs of dimension d (a TwoLayerNet at depth 1); neurons=(lo, hi)
        builds that range of the last layer, width that shard of every layer (models.width).
        Bad values raise ConfigError('model.KEY: ...')."""
        specs = self.layer_specs
        try:
            if self.layers is None and len(specs) == 1:
                if width is not None and width.size > 1:
                    neurons = width.neurons(self.m)
                return TwoLayerNet(d=d, m=self.m, mode=self.mode, k=self.k, sketch=self.sketch,
                                   train_output=self.train_output, seed=self.seed,
                                   dtype=self.dtype, device=device, neurons=neurons)
            return build_network(d, specs, train_output=self.train_output, seed=self.seed,
                                 dtype=self.dtype, device=device, neurons=neurons, width=width)
        except ValueError as err:  # the net names its argument first: "k: ..." -> "model.k: ..."
            msg = str(err)
            if self.layers is None:  # the flat keys were given: name them, and the layer
                msg = _LAYER_ERROR.sub(r"\2: layer \1: ", msg)
            raise ConfigError(f"model.{msg}") from None
