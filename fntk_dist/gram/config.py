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
    dtype: Literal["float32", "float64"] | None = Field(
        None, description="dtype of the stored tiles; default the net's (model.dtype, itself "
                          "float64 by default): the tiles hold what the net computes. float32 "
                          "halves a float64 net's store at 6e-8 |H_ij| per entry; float64 tiles "
                          "of a float32 net would hold float32-accurate numbers in twice the "
                          "bytes, so that is refused")
    in_flight: int = Field(2, ge=1, description="Ray: tiles submitted ahead of the one written")
    assemble_max_n: int = Field(
        20000, ge=1, description="largest n whose Gram is assembled in memory for its spectrum "
                                 "(and compared with the analytic kernel); above, an iterative "
                                 "solver streams tiles from the store")
    eig_block: int = Field(64, ge=1, description="vectors per pass of the iterative solver")
    eig_maxiter: int = Field(200, ge=1, description="passes of the iterative solver at most")
    certify: bool = Field(
        True, description="bracket lambda_min: lower bound from a Cholesky of H - sigma I, upper "
                          "from a Ritz vector's Rayleigh quotient (fntk_dist.gram.certify); "
                          "false: lambda_min from eigvalsh or block LOBPCG alone, as before")
    certify_rtol: float = Field(
        1e-3, gt=0, lt=1, description="relative width of the bracket to aim for: the shift is "
                                      "placed rtol/4 below the Ritz estimate")
    certify_max_factorizations: int = Field(
        4, ge=1, description="Cholesky factorizations at most (failed shifts included)")
    lambda_estimate: float | None = Field(
        None, description="a guess of lambda_min (an earlier run's) for the first shift of the "
                          "tiled path, which otherwise factors H + 8 e0 I first for a Lanczos "
                          "estimate: right, it saves a factorization; too high, the "
                          "factorization fails and the shift backs off")
    bottom: int = Field(3, ge=1, description="smallest eigenvalues shift-invert Lanczos finds")
    factor_tasks: Literal["auto", "threads", "ray"] = Field(
        "auto", description="where the tiled Cholesky's tile tasks run: threads of this "
                            "process, or Ray tasks on the cluster (inputs through the object "
                            "store); auto: Ray when the tiles were computed on a Ray "
                            "cluster of several nodes, else threads (memory maps, no copies)")
    factor_workers: int | None = Field(
        None, ge=1, description="tile tasks at a time; default 1 on threads (its BLAS gets "
                                "every core, a thread's cores / factor_workers), the job's "
                                "worker count on Ray (one CPU each)")
