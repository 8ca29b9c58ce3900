"""A dataset as one Parquet file: column x = fixed_size_list<float64>[d], column y = float64.

Reading is lenient about widths (x may be a list/large_list of float32 or float64, y any float
or integer type) and strict about content: every problem is one DataError naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..atomic import atomic_path
from .config import DataError

_X_EXPECTED = "fixed_size_list<float64> (or a list/large_list of float64 or float32)"
_Y_EXPECTED = "float64 (or float32 or an integer type)"


def write_dataset(path: str | os.PathLike, x: np.ndarray, y: np.ndarray) -> None:
    """Write x (n, d) and y (n,) to path; the file appears whole or not at all."""
    path = Path(path)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise DataError(f"{path}: x must be a 2-D array (n, d) with n, d >= 1, got {x.shape}")
    if y.shape != (x.shape[0],):
        raise DataError(f"{path}: y must have shape ({x.shape[0]},) to match x, got {y.shape}")
    _check_finite(path, "x", x)
    _check_finite(path, "y", y)
    values = pa.array(np.ascontiguousarray(x).ravel(), type=pa.float64())
    table = pa.table({
        "x": pa.FixedSizeListArray.from_arrays(values, x.shape[1]),
        "y": pa.array(y, type=pa.float64()),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))


def read_dataset(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read (x, y) as float64 arrays (n, d) and (n,); columns other than x and y are ignored."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a Parquet file")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a Parquet file or unreadable ({_one_line(exc)})") from None
    for name in ("x", "y"):
        if schema.get_field_index(name) < 0:
            found = ", ".join(schema.names) or "none"
            raise DataError(f"{path}: missing column {name!r} (columns found: {found})")
    x_type, y_type = schema.field("x").type, schema.field("y").type
    if not (_is_list(x_type) and x_type.value_type in (pa.float64(), pa.float32())):
        raise DataError(f"{path}: column 'x' has type {x_type}, expected {_X_EXPECTED}")
    if not (y_type in (pa.float64(), pa.float32()) or pa.types.is_integer(y_type)):
        raise DataError(f"{path}: column 'y' has type {y_type}, expected {_Y_EXPECTED}")
    try:
        table = pq.read_table(path, columns=["x", "y"])
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: unreadable Parquet file ({_one_line(exc)})") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: has zero rows")
    x = _read_x(path, table.column("x").combine_chunks())
    y_col = table.column("y").combine_chunks()
    if y_col.null_count:
        raise DataError(f"{path}: column 'y' has a null in row {_first(y_col.is_null())}")
    y = y_col.to_numpy(zero_copy_only=False).astype(np.float64)
    _check_finite(path, "x", x)
    _check_finite(path, "y", y)
    return x, y


def _read_x(path: Path, col: pa.Array) -> np.ndarray:
    if col.null_count:
        raise DataError(f"{path}: column 'x' has a null in row {_first(col.is_null())}")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    d = int(lengths[0])
    if np.any(lengths != d):
        row = int(np.flatnonzero(lengths != d)[0])
        raise DataError(f"{path}: rows of column 'x' have unequal lengths "
                        f"(row 0 has {d}, row {row} has {int(lengths[row])})")
    if d == 0:
        raise DataError(f"{path}: rows of column 'x' are empty (length 0)")
    values = col.flatten()
    if values.null_count:
        parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
        row = int(parents[_first(values.is_null())])
        raise DataError(f"{path}: column 'x' has a null entry in row {row}")
    return values.to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(col), d)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)


def _first(mask: pa.Array) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def _check_finite(path: Path, name: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a) if a.ndim == 1 else ~np.isfinite(a).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column {name!r} has NaN or Inf in row {row}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
