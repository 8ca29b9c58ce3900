"""ModelConfig: the typed settings of a TwoLayerNet, validated as the net itself validates."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

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

    @field_validator("k")
    @classmethod
    def _rank(cls, k: int | None, info: ValidationInfo) -> int | None:
        mode, m = info.data.get("mode"), info.data.get("m")
        if mode == "dense" and k is not None:
            raise ValueError("mode 'dense' has no rank; leave k unset")
        if mode not in (None, "dense") and k is None:
            raise ValueError(f"mode {mode!r} needs a rank k (1 <= k <= m)")
        if k is not None and m is not None and k > m:
            raise ValueError(f"must be <= m={m}, got {k}")
        return k

    @field_validator("sketch")
    @classmethod
    def _sketch(cls, sketch: str | None, info: ValidationInfo) -> str | None:
        mode = info.data.get("mode")
        if sketch is not None and mode in ("dense", "lowrank"):
            raise ValueError(f"mode {mode!r} has no fixed factor; sketch applies to sketch_in "
                             "and sketch_out")
        return sketch

    def build(
        self, d: int, device: torch.device | str | None = None,
        neurons: tuple[int, int] | None = None,
    ) -> TwoLayerNet:
        """The net for inputs of dimension d; bad values raise ValueError('model.KEY: ...')."""
        try:
            return TwoLayerNet(d=d, m=self.m, mode=self.mode, k=self.k, sketch=self.sketch,
                               train_output=self.train_output, seed=self.seed, dtype=self.dtype,
                               device=device, neurons=neurons)
        except ValueError as err:  # the net names its argument first: "k: ..." -> "model.k: ..."
            raise ValueError(f"model.{err}") from None
