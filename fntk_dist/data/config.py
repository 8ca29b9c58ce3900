"""DataConfig: where the training points come from, validated; DataError for unusable data."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..errors import UserError


class DataError(UserError):
    """Data that cannot be used; str() is one line naming the file (or key) and the problem."""


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["sphere", "digits", "parquet"] = Field(
        "sphere", description="sphere: synthetic points; digits: sklearn's digits; parquet: a file"
    )
    path: str | None = Field(
        None, min_length=1, validate_default=True,
        description="a Parquet file (columns x, y); implies source 'parquet' when source is unset",
    )
    n: int | None = Field(
        None, ge=1, validate_default=True,
        description="sphere: number of points (default 256); digits/parquet: rows kept after a "
                    "seeded shuffle (default: all)",
    )
    d: int = Field(32, ge=1, description="sphere only: input dimension")
    labels: Literal["sign", "teacher"] = Field("teacher", description="sphere only: label rule")
    teacher_width: int = Field(32, ge=1, description="hidden width of the random teacher")
    seed: int = 0
    test_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of rows (rounded down) held out for testing"
    )

    @model_validator(mode="before")
    @classmethod
    def _path_implies_parquet(cls, data: Any) -> Any:
        # Only an unset source is inferred; an explicit one is checked against path below.
        if isinstance(data, dict) and data.get("path") is not None and "source" not in data:
            data = {**data, "source": "parquet"}
        return data

    @field_validator("path")
    @classmethod
    def _path_matches_source(cls, path: str | None, info: ValidationInfo) -> str | None:
        source = info.data.get("source")
        if source == "parquet" and path is None:
            raise ValueError("source 'parquet' needs a path to a Parquet file")
        if source in ("sphere", "digits") and path is not None:
            raise ValueError(f"source {source!r} reads no file; use source 'parquet' or drop path")
        return path

    @field_validator("n")
    @classmethod
    def _sphere_default_n(cls, n: int | None, info: ValidationInfo) -> int | None:
        return 256 if n is None and info.data.get("source") == "sphere" else n
