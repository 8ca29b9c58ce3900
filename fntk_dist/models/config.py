"""ModelConfig: the typed settings of a TwoLayerNet, checked by the very checks the net runs."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..errors import ConfigError
from .layer import check_layer_args
from .net import TwoLayerNet


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["dense", "sketch_in", "sketch_out", "lowrank"] = "sketch_in"
    m: int = Field(4096, ge=1, description="width: number of hidden neurons")
    k: int | None = Field(None, ge=1, description="rank of W = U V (factorized modes only)")
    sketch: Literal["gaussian", "rademacher", "srht", "countsketch"] | None = Field(
        None, description="kind of the fixed factor (sketch_in, sketch_out); default gaussian"
    )
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
        if not self.model_fields_set:
            return self
        try:
            check_layer_args(self.m, self.mode, self.k, self.sketch)
        except ValueError as err:
            key, _, msg = str(err).partition(": ")
            error = PydanticCustomError("value_error", "{msg}", {"msg": msg})
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [InitErrorDetails(type=error, loc=(key,), input=getattr(self, key, None))],
            ) from None
        return self

    def build(
        self, d: int, device: torch.device | str | None = None,
        neurons: tuple[int, int] | None = None,
    ) -> TwoLayerNet:
        """The net for inputs of dimension d; bad values raise ConfigError('model.KEY: ...')."""
        try:
            return TwoLayerNet(d=d, m=self.m, mode=self.mode, k=self.k, sketch=self.sketch,
                               train_output=self.train_output, seed=self.seed, dtype=self.dtype,
                               device=device, neurons=neurons)
        except ValueError as err:  # the net names its argument first: "k: ..." -> "model.k: ..."
            raise ConfigError(f"model.{err}") from None
