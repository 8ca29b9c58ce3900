"""TrainConfig: optimiser, step size, logging and NTK-diagnostic intervals."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(200, ge=0)
    optimizer: Literal["gd", "sgd", "adam"] = Field(
        "gd", description="gd: full-batch gradient descent; sgd/adam: mini-batches of batch_size"
    )
    lr: float | None = Field(
        None, gt=0, description="step size; default lr_scale / lambda_max(H(0))"
    )
    lr_scale: float = Field(1.0, gt=0, description="c in eta = c / lambda_max(H(0))")
    batch_size: int | None = Field(None, ge=1, description="sgd/adam mini-batch; default all")
    log_every: int = Field(1, ge=1)
    ntk_every: int = Field(
        10, ge=0, description="steps between Gram diagnostics (0: at the start and end only)"
    )
    gram_max_n: int = Field(
        4096, ge=1, description="largest n for which the n x n Gram is formed for diagnostics"
    )
    block: int | None = Field(None, ge=1, description="neurons per block; default by n")
    target_ratio: float = Field(1e-6, gt=0, lt=1, description="'converged': loss <= this * L(0)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(
        0, ge=0, description="steps between checkpoints (0: none); --resume continues from the "
                             "last one"
    )
