"""GramConfig: settings of `fntk gram` (one process or Ray actors, same tiles and summary)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GramConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    block: int | None = Field(None, ge=1, description="neurons per block; default by n")
    top: int = Field(5, ge=1, description="how many of the largest eigenvalues to report")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where tiles are computed (in this process or in each actor)")
    tile: int | None = Field(
        None, ge=1, description="rows per Gram tile; default: n split into blocks of <= 1024")
    in_flight: int = Field(2, ge=1, description="Ray: tiles submitted ahead of the one written")
    assemble_max_n: int = Field(
        20000, ge=1, description="largest n whose Gram is assembled in memory for its spectrum "
                                 "(and compared with the analytic kernel); above, an iterative "
                                 "solver streams tiles from the store")
    eig_block: int = Field(64, ge=1, description="vectors per pass of the iterative solver")
    eig_maxiter: int = Field(200, ge=1, description="passes of the iterative solver at most")
