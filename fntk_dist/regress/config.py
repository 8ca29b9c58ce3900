"""RegressConfig: settings of `fntk regress` (kernel regression with the net's exact NTK)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RegressConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ridge: float = Field(1e-3, ge=0, description="solve (H + ridge I) alpha = y - f0(X)")
    rank: int = Field(100, ge=1, description="exact columns of H behind the Nystrom "
                      "preconditioner (at most n)")
    precondition: bool = Field(True, description="Nystrom-preconditioned CG; false: plain CG")
    rtol: float = Field(1e-6, gt=0, lt=1, description="stop at this relative residual "
                        "||y - f0 - (H + ridge I) alpha|| / ||y - f0||")
    maxiter: int = Field(1000, ge=1, description="CG iterations at most (a resumed run's "
                         "included)")
    seed: int = Field(0, description="which columns the preconditioner samples")
    test_metrics: bool = Field(True, description="predict the data's test rows and report test "
                               "MSE and sign error (needs data.test_fraction > 0)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the mat-vecs run (in this process or in each actor)")
    block: int | None = Field(None, ge=1, description="neurons per block of a mat-vec; "
                              "default by n")
    tile: int = Field(4096, ge=1, description="rows per cross-Gram tile of the "
                      "preconditioner's columns")
    save_every_s: float = Field(
        10.0, ge=0, description="write the CG state at most this often (seconds; 0: after "
                                "every iteration); a stop request writes it at once")
