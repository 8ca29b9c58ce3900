"""TrackingConfig: Weights & Biases settings (offline unless asked otherwise)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrackingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wandb: bool = Field(True, description="log to W&B; false turns it off")
    mode: Literal["offline", "online", "disabled"] | None = Field(
        None, description="W&B mode; default: WANDB_MODE if set, else offline (never network)"
    )
    project: str = "fntk_dist"
    entity: str | None = None
    name: str | None = Field(None, description="run name; default: the run folder's name")
    group: str | None = Field(None, description="groups runs on the dashboard, e.g. a sweep")
    tags: list[str] = Field(default_factory=list)
