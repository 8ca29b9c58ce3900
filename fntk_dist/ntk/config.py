"""GramConfig: settings of `fntk gram`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GramConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    block: int | None = Field(None, ge=1, description="neurons per block; default by n")
    top: int = Field(5, ge=1, description="how many of the largest eigenvalues to report")
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")
