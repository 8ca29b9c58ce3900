"""Where a job runs (DistConfig) and how DeepSpeed trains (DeepSpeedConfig)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class DistConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workers: int | None = Field(
        None, ge=1, description="Ray workers; set (or --workers): run on Ray. gram: width-shard "
                                "actors; train: width * data Ray Train workers"
    )
    address: str | None = Field(
        None, description="an existing Ray cluster (host:port or 'auto'); default: RAY_ADDRESS, "
                          "else an embedded local cluster on loopback"
    )
    connect_timeout_s: float = Field(15.0, gt=0, description="seconds to wait for --address")
    grid: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="gram, regress: [W, R] actors on Ray, W width shards x R row groups "
                          "(W * R = workers, which it sets when unset); each row group is the "
                          "width-sharded net. Default: gram the shape of least predicted time "
                          "(fntk gram --plan), regress [workers, 1]"
    )
    width: int | None = Field(
        None, ge=1, description="train: shards of the wide layer (neuron ranges); default: workers "
                                "/ data, else 1"
    )
    data: int | None = Field(
        None, ge=1, description="train: data-parallel replicas; default: workers / width"
    )
    max_failures: int = Field(
        2, ge=-1, description="train: worker-group restarts from the last checkpoint (-1: "
                              "unlimited)"
    )


class DeepSpeedConfig(BaseModel):
    """The engine of a distributed training run (a single process steps a torch optimizer)."""

    model_config = ConfigDict(extra="forbid")

    zero_stage: int = Field(
        0, ge=0, le=3, description="ZeRO stage (0-3); 1-3 need model.dtype float32 (ZeRO keeps "
                                   "float32 master weights)"
    )
    offload: bool = Field(False, description="optimizer state on CPU (ZeRO >= 1)")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 mixed precision (GPU clusters only)"
    )
