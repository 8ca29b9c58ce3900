"""On-disk store of the tiles of a symmetric n x n Gram matrix, so a killed job can resume.

Only the tiles (I, J) with J >= I are stored; block I holds rows [I*tile, min((I+1)*tile, n)).
Every tile file is written whole under a temporary name beside it, then renamed (a writer in
another process, a Ray actor on this host, stages it: `stage_tile`; the store commits it), so a
crash leaves whole files or stray temporaries, which verifying deletes. manifest.json holds the
store's identity and the tiles listed at its last compaction; each tile written since is one
line of the journal manifest.jsonl (O(1) per tile).
Opening reads both; verifying a store, and `compact`, fold the journal into manifest.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from ..atomic import write_json
from ..errors import UserError
from . import journal
from .tile_file import StagedTile, TileTarget, decode_tile, stage_tile

FORMAT = 1
DTYPES = ("float64", "float32")
_TILE_NAME = re.compile(r"t_(\d+)_(\d+)\.arrow")
_KEY = re.compile(r"(\d+)_(\d+)")
JOURNAL = "manifest.jsonl"
_CHECKED = ("file", "rows", "cols", "sha256", "bytes")  # what a tile file must match


class TileStoreError(UserError):
    """A tile store that cannot be used as asked; the message names its folder."""


def _posint(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def _order(key: str) -> tuple[int, ...]:
    m = _KEY.fullmatch(key)
    return (int(m[1]), int(m[2])) if m else (1 << 62,)


class TileStore:
    """Tiles of one Gram matrix under one folder; see the module docstring for the layout."""

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.config_hash: str = manifest["config_hash"]
        self.n: int = manifest["n"]
        self.tile: int = manifest["tile"]
        self.dtype: str = manifest["dtype"]
        self.meta: dict = manifest["meta"]
        self._tiles: dict[str, dict] = manifest["tiles"]
        self._checked: set[str] = set()  # tiles whose checksum this object has seen pass

    @classmethod
    def create_or_open(
        cls, path: str | Path, *, config_hash: str, n: int, tile: int,
        dtype: str = "float64", meta: dict | None = None,
    ) -> TileStore:
        """Opens the store in `path` for this config, or starts one in a new or empty folder.

        Reopening keeps the stored meta: the config hash, not meta, says what the tiles are.
        """
        path = Path(path)
        for name, val in (("n", n), ("tile", tile)):
            if not _posint(val):
                raise TileStoreError(f"{path}: {name} must be an integer >= 1, got {val!r}")
        if dtype not in DTYPES:
            raise TileStoreError(f"{path}: dtype must be one of {DTYPES}, got {dtype!r}")
        if path.exists() and not path.is_dir():
            raise TileStoreError(f"{path} is a file, not a tile store folder")
        if (path / "manifest.json").exists():
            store = cls.open(path)
            want = {"config_hash": config_hash, "n": n, "tile": tile, "dtype": dtype}
            diff = [k for k, v in want.items() if getattr(store, k) != v]
            if diff:
                raise TileStoreError(
                    f"{path} holds the Gram of another config (stored {store.config_hash[:12]}, "
                    f"asked {config_hash[:12]}; differs in {', '.join(diff)}): "
                    "choose another folder or remove it"
                )
            return store
        if path.is_dir() and any(path.iterdir()):
            raise TileStoreError(f"{path} is not empty and has no manifest.json: refusing to write")
        manifest = {"format": FORMAT, "config_hash": config_hash, "n": n, "tile": tile,
                    "dtype": dtype, "meta": dict(meta or {}), "tiles": {}}
        store = cls(path, manifest)
        store.compact()
        return store

    @classmethod
    def open(cls, path: str | Path) -> TileStore:
        """Opens an existing store without checking its config (for reading)."""
        path = Path(path)
        try:
            m = json.loads((path / "manifest.json").read_text())
        except FileNotFoundError:
            raise TileStoreError(f"{path}: no manifest.json, not a tile store") from None
        except (OSError, ValueError) as e:
            raise TileStoreError(f"{path}: unreadable manifest.json ({e})") from None
        ok = (isinstance(m, dict) and m.get("format") == FORMAT
              and isinstance(m.get("config_hash"), str) and _posint(m.get("n"))
              and _posint(m.get("tile")) and m.get("dtype") in DTYPES
              and isinstance(m.get("meta"), dict) and isinstance(m.get("tiles"), dict))
        if not ok:
            raise TileStoreError(f"{path}: garbled manifest.json (not a format-{FORMAT} store)")
        for rec in journal.replay(path / JOURNAL):  # verify() judges what the entries say
            key = rec.pop("key", None)
            if isinstance(key, str):
                m["tiles"][key] = rec
        return cls(path, m)

    def grid(self) -> int:
        """Number of row blocks."""
        return -(-self.n // self.tile)

    def bounds(self, i: int) -> tuple[int, int]:
        """Rows [lo, hi) of block i."""
        if not 0 <= i < self.grid():
            raise TileStoreError(f"{self.path}: block {i} outside 0..{self.grid() - 1}")
        return i * self.tile, min((i + 1) * self.tile, self.n)

    def all_tiles(self) -> list[tuple[int, int]]:
        """Every (I, J) with J >= I, row-major."""
        g = self.grid()
        return [(i, j) for i in range(g) for j in range(i, g)]

    def area(self, i: int, j: int) -> int:
        """Entries of tile (i, j)."""
        r, c = self._shape(i, j)
        return r * c

    def _shape(self, i: int, j: int) -> tuple[int, int]:
        (r0, r1), (c0, c1) = self.bounds(i), self.bounds(j)
        return r1 - r0, c1 - c0

    def _rel(self, i: int, j: int) -> str:
        return f"tiles/t_{i}_{j}.arrow"

    def compact(self) -> None:
        """Folds the journal into manifest.json: the manifest first (atomically), then the
        journal goes; a crash in between leaves entries in both, which replay alike."""
        order = sorted(self._tiles, key=_order)
        write_json(self.path / "manifest.json", {
            "format": FORMAT, "config_hash": self.config_hash, "n": self.n, "tile": self.tile,
            "dtype": self.dtype, "meta": self.meta, "tiles": {k: self._tiles[k] for k in order},
        })
        (self.path / JOURNAL).unlink(missing_ok=True)

    def _entry(self, i: int, j: int, sha256: str, size: int) -> dict:
        (r0, r1), (c0, c1) = self.bounds(i), self.bounds(j)
        return {"file": self._rel(i, j), "rows": [r0, r1], "cols": [c0, c1],
                "sha256": sha256, "bytes": size}

    def _data_entry(self, i: int, j: int, data: bytes) -> dict:
        return self._entry(i, j, hashlib.sha256(data).hexdigest(), len(data))

    def _matches(self, i: int, j: int, data: bytes, entry: dict) -> bool:
        return (isinstance(entry, dict)
                and {k: entry.get(k) for k in _CHECKED} == self._data_entry(i, j, data))

    def verify(self) -> tuple[set[tuple[int, int]], list[tuple[int, int]]]:
        """(done, corrupt); drops bad tiles, adopts valid unlisted files, deletes the rest."""
        valid = set(self.all_tiles())
        done: set[tuple[int, int]] = set()
        corrupt: list[tuple[int, int]] = []
        changed = False
        for key, entry in list(self._tiles.items()):
            m = _KEY.fullmatch(key)
            ij = (int(m[1]), int(m[2])) if m and key == f"{int(m[1])}_{int(m[2])}" else None
            if ij in valid and isinstance(entry, dict) and entry.get("file") == self._rel(*ij):
                f = self.path / entry["file"]
                data = f.read_bytes() if f.is_file() else None
                if data is not None and self._matches(*ij, data, entry):
                    done.add(ij)
                    continue
                f.unlink(missing_ok=True)
                corrupt.append(ij)
            del self._tiles[key]  # a key naming no tile of this grid is dropped silently
            changed = True
        tdir = self.path / "tiles"
        for f in sorted(tdir.iterdir()) if tdir.is_dir() else []:
            if not f.is_file():
                continue
            m = _TILE_NAME.fullmatch(f.name)
            ij = (int(m[1]), int(m[2])) if m else None
            if ij in done:
                continue
            # A driver killed between the tile rename and its journal line leaves such files.
            if ij in valid and f.name == Path(self._rel(*ij)).name:
                data = f.read_bytes()
                try:
                    arr = decode_tile(data)
                    good = arr.shape == self._shape(*ij) and arr.dtype == np.dtype(self.dtype)
                except (pa.ArrowException, KeyError, ValueError, TypeError):
                    good = False
                if good:
                    self._tiles[f"{ij[0]}_{ij[1]}"] = self._data_entry(*ij, data)
                    done.add(ij)
                    changed = True
                    continue
            f.unlink()
        if changed or (self.path / JOURNAL).exists():
            self.compact()
        self._checked |= {f"{i}_{j}" for i, j in done}  # hashed above: mat-vecs need not again
        return done, sorted(corrupt)

    def missing(self) -> list[tuple[int, int]]:
        """Tiles still to compute, row-major (runs verify)."""
        done, _ = self.verify()
        return [t for t in self.all_tiles() if t not in done]

    def complete(self) -> bool:
        """Whether the manifest lists every tile (checksums are checked on read)."""
        return all(f"{i}_{j}" in self._tiles for i, j in self.all_tiles())

    def listed(self) -> list[tuple[int, int]]:
        """Tiles the manifest and its journal list, row-major (checksums not checked)."""
        return [t for t in self.all_tiles() if f"{t[0]}_{t[1]}" in self._tiles]

    def work(self) -> tuple[int, float, int]:
        """(tiles, seconds, flops) recorded by the jobs that computed the listed tiles: what the
        whole store cost, over every run that wrote it. Adopted tiles carry no record."""
        costs = [(e.get("seconds"), e.get("flops")) for e in self._tiles.values()
                 if isinstance(e, dict)]
        costs = [(s, f) for s, f in costs
                 if isinstance(s, int | float) and isinstance(f, int) and s >= 0 and f >= 0]
        return len(costs), float(sum(s for s, _ in costs)), sum(f for _, f in costs)

    def disk_bytes(self) -> int:
        """Total bytes of the stored tile files."""
        files = (self.path / e["file"] for e in self._tiles.values())
        return sum(f.stat().st_size for f in files if f.is_file())

    def target(self, i: int, j: int, reachable: bool = True) -> TileTarget:
        """Where tile (i, j), j >= i, goes (stage_tile): its file when the writer can reach
        this folder (`reachable`), else no path (the writer hands the array back)."""
        if j < i:
            raise TileStoreError(f"{self.path}: tile ({i}, {j}) below the diagonal; store (j, i)")
        path = str((self.path / self._rel(i, j)).resolve()) if reachable else None
        return TileTarget(path, self._shape(i, j), self.dtype)

    def write(self, i: int, j: int, block: np.ndarray, seconds: float | None = None,
              flops: int | None = None) -> None:
        """Stores tile (i, j), j >= i, in the store dtype: the file first, then its journal
        line. seconds and flops: what computing it cost (see `work`)."""
        try:
            staged = stage_tile(self.target(i, j), np.asarray(block))
        except ValueError as e:  # the wrong shape, or values the store's dtype cannot hold
            raise TileStoreError(f"{self.path}: tile ({i}, {j}): {e}") from None
        self.commit(i, j, staged, seconds, flops)

    def commit(self, i: int, j: int, staged: StagedTile, seconds: float | None = None,
               flops: int | None = None) -> None:
        """Stores tile (i, j) from its staged file (stage_tile on self.target(i, j)): renamed
        into place, then its journal line."""
        final = (self.path / self._rel(i, j)).resolve()
        tmp = Path(staged.tmp)
        if (tmp.parent != final.parent or not tmp.is_file()
                or tmp.stat().st_size != staged.bytes):
            raise TileStoreError(f"{self.path}: the staged file of tile ({i}, {j}), {tmp}, is "
                                 f"not a whole file of {staged.bytes} bytes beside {final.name}")
        os.replace(tmp, final)
        entry = self._entry(i, j, staged.sha256, staged.bytes)
        if seconds is not None and flops is not None:
            entry |= {"seconds": float(seconds), "flops": int(flops)}
        journal.append(self.path / JOURNAL, {"key": f"{i}_{j}", **entry})
        self._tiles[f"{i}_{j}"] = entry
        self._checked.add(f"{i}_{j}")

    def remove_temporaries(self) -> None:
        """Deletes stray staged files (of a writer killed after staging, whose tile was
        computed again): a finished job leaves only its tiles."""
        tdir = self.path / "tiles"
        for f in tdir.glob(".t_*.tmp") if tdir.is_dir() else []:
            f.unlink(missing_ok=True)

    def _checked_bytes(self, i: int, j: int) -> bytes:
        f = self.path / self._rel(i, j)
        entry = self._tiles.get(f"{i}_{j}")
        if entry is None or not f.is_file():
            raise TileStoreError(f"{self.path}: tile file {f.name} is not stored")
        data = f.read_bytes()
        if not self._matches(i, j, data, entry):
            raise TileStoreError(f"{self.path}: tile file {f.name} fails its checksum")
        self._checked.add(f"{i}_{j}")
        return data

    def read(self, i: int, j: int) -> np.ndarray:
        """Tile (i, j) after checking its checksum."""
        return decode_tile(self._checked_bytes(i, j))

    def mapped(self, i: int, j: int) -> np.ndarray:
        """Tile (i, j) as a read-only view of its memory-mapped file. Checksummed on first use
        by this object only: iterative eigensolvers pass over every tile hundreds of times."""
        if f"{i}_{j}" not in self._checked:
            self._checked_bytes(i, j)
        reader = ipc.open_file(pa.memory_map(str(self.path / self._rel(i, j))))
        col = reader.read_all().column("v")
        flat = (col.chunk(0).to_numpy(zero_copy_only=True) if col.num_chunks == 1
                else col.to_numpy())
        return flat.reshape(self._shape(i, j))

    def iter_tiles(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(i, j, tile) for each stored tile, row-major, each read once."""
        for i, j in self.listed():
            yield i, j, self.read(i, j)

    def _require_complete(self) -> None:
        total = self.all_tiles()
        lost = sum(f"{i}_{j}" not in self._tiles for i, j in total)
        if lost:
            msg = f"{lost} of {len(total)} tiles missing; rerun the job"
            raise TileStoreError(f"{self.path}: {msg}")

    def assemble(self) -> np.ndarray:
        """The full symmetric (n, n) matrix in the store dtype."""
        self._require_complete()
        h = np.empty((self.n, self.n), dtype=self.dtype)
        for i, j, b in self.iter_tiles():
            (r0, r1), (c0, c1) = self.bounds(i), self.bounds(j)
            h[r0:r1, c0:c1] = b
            if i != j:
                h[c0:c1, r0:r1] = b.T
        return h

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """H @ v for v of shape (n,) or (n, p), streaming each tile once from memory-mapped
        files. Products run in the store dtype (a float32 store is only float32-accurate
        anyway) and add up in float64."""
        v = np.asarray(v, dtype=np.float64)
        if v.ndim not in (1, 2) or v.shape[0] != self.n:
            raise TileStoreError(f"{self.path}: matvec needs shape ({self.n},) or ({self.n}, p)")
        self._require_complete()
        vs = v.astype(self.dtype, copy=False)
        out = np.zeros_like(v)
        for i, j in self.all_tiles():
            b = self.mapped(i, j)
            (r0, r1), (c0, c1) = self.bounds(i), self.bounds(j)
            out[r0:r1] += b @ vs[c0:c1]
            if i != j:
                out[c0:c1] += b.T @ vs[r0:r1]
        return out


def load_gram(path: str | Path) -> np.ndarray:
    """The full Gram matrix stored in `path`."""
    return TileStore.open(path).assemble()


def iter_tiles(path: str | Path) -> Iterator[tuple[int, int, np.ndarray]]:
    """(i, j, tile) for each tile stored in `path`, row-major."""
    return TileStore.open(path).iter_tiles()
