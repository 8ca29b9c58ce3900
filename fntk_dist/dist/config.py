"""DistConfig: where and how wide a distributed job runs (`fntk gram --workers`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DistConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workers: int | None = Field(
        None, ge=1, description="width-shard actors of `fntk gram`; set (or --workers): run on Ray"
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
