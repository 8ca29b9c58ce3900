"""DistConfig: where and how wide a distributed job runs (gram and train)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
    # gram
    tile: int | None = Field(
        None, ge=1, description="gram: rows per Gram tile; default: n split into blocks of <= 1024"
    )
    in_flight: int = Field(2, ge=1, description="gram: tiles submitted ahead of the one written")
    assemble_max_n: int = Field(
        20000, ge=1, description="gram: largest n whose Gram is assembled in memory for its "
                                 "spectrum; above, an iterative solver streams tiles from the store"
    )
    eig_block: int = Field(
        64, ge=1, description="gram: vectors per pass of the iterative solver (block LOBPCG)"
    )
    eig_maxiter: int = Field(200, ge=1, description="gram: passes of the iterative solver at most")
    # train
    width: int | None = Field(
        None, ge=1, description="train: shards of the wide layer (neuron ranges); default: workers "
                                "/ data, else 1"
    )
    data: int | None = Field(
        None, ge=1, description="train: data-parallel replicas; default: workers / width"
    )
    zero_stage: int = Field(
        0, ge=0, le=3, description="train: DeepSpeed ZeRO stage (0-3); 1-3 need model.dtype "
                                   "float32 (ZeRO keeps float32 master weights)"
    )
    offload: bool = Field(False, description="train: optimizer state on CPU (ZeRO >= 1)")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="train: bf16 mixed precision (GPU clusters only)"
    )
    checkpoint_every: int = Field(
        0, ge=0, description="train: steps between checkpoints; 0: only at the end"
    )
    max_failures: int = Field(
        2, ge=-1, description="train: worker-group restarts from the last checkpoint (-1: "
                              "unlimited)"
    )
