"""One tile file of a tile store: Arrow IPC of the flat tile with its shape, and how a writer
in another process (a Ray actor on the store's host) stages it whole under a temporary name
beside its target for the store to commit (fntk_dist.gram.tile_store)."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from ..atomic import temporary_beside


def _write_ipc(block: np.ndarray, sink: pa.NativeFile) -> None:
    r, c = block.shape
    field = pa.field("v", pa.from_numpy_dtype(block.dtype))
    schema = pa.schema([field], metadata={"shape": f"{r},{c}"})
    with ipc.new_file(sink, schema) as w:
        w.write_table(pa.table({"v": block.reshape(-1)}, schema=schema))


class _HashingFile:
    """A binary file that hashes what is written through it: pyarrow hands it the tile's body
    straight from the array, so a tile is hashed and written without a copy in between. One
    thread hashes, in order, while this one writes (both release the GIL): a tile costs the
    slower of the two, not their sum (1 GB on an H100's host: sha256 0.92 s, the write
    0.75-1.03 s)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.sha, self.closed = fh, hashlib.sha256(), False
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="tile-sha256")

    def write(self, data: bytes) -> int:
        self._hasher.submit(self.sha.update, data)  # holds data until it is hashed
        return self.fh.write(data)

    def hexdigest(self) -> str:
        """The checksum of everything written; waits for the hashing thread."""
        self._hasher.shutdown(wait=True)
        return self.sha.hexdigest()

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.closed = True


def decode_tile(data: bytes) -> np.ndarray:
    """The tile in `data`; raises (ArrowException, KeyError, ValueError, TypeError) if malformed."""
    reader = ipc.open_file(pa.BufferReader(data))
    table = reader.read_all()
    shape = tuple(int(s) for s in reader.schema.metadata[b"shape"].decode().split(","))
    if table.column_names != ["v"] or len(shape) != 2:
        raise ValueError("not a tile")
    return np.array(table.column("v").to_numpy(), copy=True).reshape(shape)


@dataclass(frozen=True)
class TileTarget:
    """Where tile (i, j) of a store goes, for whoever computes it: the file's path (None when
    the writer cannot reach the store's folder and hands the tile back instead), the tile's
    shape and the store's dtype."""

    path: str | None
    shape: tuple[int, int]
    dtype: str


@dataclass(frozen=True)
class StagedTile:
    """A tile file written whole under a temporary name beside its target, for the store to
    commit (rename and journal): its temporary path, checksum and size."""

    tmp: str
    sha256: str
    bytes: int


def stage_tile(target: TileTarget, block: np.ndarray) -> StagedTile | np.ndarray:
    """The tile `block` in the store's dtype, written under a temporary name beside its target
    (a StagedTile), or, for a target with no path, the array itself."""
    block = np.ascontiguousarray(block, dtype=target.dtype)
    if block.shape != tuple(target.shape):
        raise ValueError(f"tile must be {tuple(target.shape)}, got {block.shape}")
    if target.path is None:
        return block
    tmp = temporary_beside(target.path)
    try:
        with open(tmp, "wb") as fh:
            hashing = _HashingFile(fh)
            try:
                _write_ipc(block, pa.PythonFile(hashing, mode="w"))
            finally:
                sha256 = hashing.hexdigest()
            size = fh.tell()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return StagedTile(str(tmp), sha256, size)


def warm_up() -> None:
    """Encodes a 1 x 1 tile in memory: pyarrow's IPC writer initialises on its first use
    (0.15 s on a 2-core host), which a process that will stage tiles pays before its tiles
    are timed."""
    _write_ipc(np.zeros((1, 1)), pa.BufferOutputStream())
