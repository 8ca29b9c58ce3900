"""Cholesky factors of B = fl(H - sigma I) for a Gram H in a tile store, and solves with them.

In memory (`DenseFactor`): one LAPACK potrf. Beyond (`TiledFactor`): the upper factor R (B =
R^T R) is a second tile store beside the Gram's, tile (I, J), J >= I, like the Gram's own, and
each of its tiles is one task:

    R_IJ = R_II^{-T} (B_IJ - sum_{K<I} R_KI^T R_KJ)      (J > I: gemm, then trsm)
    R_II = chol(B_II - sum_{K<I} R_KI^T R_KI)            (syrk, then potrf)

A task runs once its inputs are written (the tiles R_KI, R_KJ above it and R_II), so the row
below a diagonal tile starts as soon as that tile is done: the DAG of the right-looking
algorithm, with each task applying its K updates in K order. Every factor tile is written once,
through the tile store (atomic file, then a journal line), so a killed factorization resumes
from its finished tiles, and the sum order fixed per tile makes the resumed factor bit-identical
to an unbroken one. (A right-looking schedule that stores trailing updates would write each
tile I times, and resuming it would need the partly updated tiles.)

Tasks run on a local thread pool by default (numpy and scipy release the GIL in BLAS and
LAPACK), reading the tiles through memory maps with no copy; or as Ray tasks
(distributed.factor_tasks), their input tiles sent through the object store, for a cluster. The
driver writes every tile either way: the journal has one writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.linalg as sla
from threadpoolctl import threadpool_limits

from .tile_store import TileStore

Tile = tuple[int, int]


class CholeskyFailed(Exception):
    """fl-Cholesky of fl(H - sigma I) broke down (a non-positive pivot) in diagonal tile `at`."""

    def __init__(self, sigma: float, at: int) -> None:
        super().__init__(f"Cholesky of H - sigma I failed at sigma={sigma!r} (diagonal tile {at})")
        self.sigma, self.at = sigma, at


def shifted(block: np.ndarray, sigma: float) -> np.ndarray:
    """fl(B - sigma I) of a diagonal block, in a new float64 array: the one place the shift is
    applied, so the in-memory and tiled factors and the bound see the same diagonal."""
    b = np.array(block, dtype=np.float64, order="C", copy=True)
    b[np.diag_indices_from(b)] -= sigma
    return b


def gram_diagonal(gram: TileStore) -> np.ndarray:
    """The diagonal of the stored Gram, float64 (exact from either store dtype)."""
    return np.concatenate([np.diagonal(gram.mapped(i, i)).astype(np.float64)
                           for i in range(gram.grid())])


class DenseFactor:
    """R with R^T R = fl(H - sigma I) for H in memory (LAPACK potrf)."""

    def __init__(self, h: np.ndarray, sigma: float) -> None:
        try:
            self.r = sla.cholesky(shifted(h, sigma), lower=False, overwrite_a=True,
                                  check_finite=False)
        except sla.LinAlgError:
            raise CholeskyFailed(sigma, 0) from None
        self.sigma, self.n = sigma, h.shape[0]

    def solve(self, x: np.ndarray) -> np.ndarray:
        """(R^T R)^{-1} x."""
        return sla.cho_solve((self.r, False), x, check_finite=False)


def _factor_hash(gram: TileStore, sigma: float) -> str:
    key = {"gram": gram.config_hash, "sigma": float(sigma).hex()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _deps(i: int, j: int) -> list[Tile]:
    """The factor tiles task (i, j) reads: R_KI for K < I, then R_KJ for K < I and R_II
    (J > I), in the order factor_tile takes them."""
    return ([(k, i) for k in range(i)] + [(k, j) for k in range(i) if j != i]
            + ([(i, i)] if j != i else []))


def factor_tile(b: np.ndarray, sigma: float, i: int, j: int,
                deps: Sequence[np.ndarray]) -> np.ndarray | None:
    """Task (i, j) from the Gram tile B_IJ and the factor tiles _deps(i, j) names, in that
    order: R_IJ, or None when the diagonal tile's pivot is not positive."""
    a = shifted(b, sigma) if i == j else np.array(b, dtype=np.float64, copy=True)
    for k in range(i):  # in K order: the same sums whether or not the run was resumed
        rki = deps[k]
        a -= rki.T @ (rki if i == j else deps[i + k])  # one array twice: numpy calls syrk
    if i == j:
        try:
            return sla.cholesky(a, lower=False, overwrite_a=True, check_finite=False)
        except sla.LinAlgError:
            return None
    return sla.solve_triangular(deps[-1], a, trans="T", lower=False, overwrite_b=True,
                                check_finite=False)


class TileTasks(Protocol):
    """Where a TiledFactor's tasks run: submit(tile) gives a future of factor_tile's result;
    written(tile) after the driver has stored it; close() at the end, done or not."""

    def submit(self, tile: Tile) -> Future: ...

    def written(self, tile: Tile) -> None: ...

    def close(self) -> None: ...


class ThreadTasks:
    """Tasks on a local thread pool of `workers` threads, each task's BLAS on cores / workers
    threads, its tiles read through memory maps."""

    def __init__(self, factor: TiledFactor, workers: int) -> None:
        self.factor, self.pool = factor, ThreadPoolExecutor(workers)
        self.limits = threadpool_limits(max(1, (os.cpu_count() or 1) // workers))

    def submit(self, tile: Tile) -> Future:
        f = self.factor
        return self.pool.submit(lambda: factor_tile(
            f.gram.read(*tile), f.sigma, *tile, [f.store.mapped(*d) for d in _deps(*tile)]))

    def written(self, tile: Tile) -> None:
        pass

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.limits.unregister()


class TiledFactor:
    """The upper factor R of fl(H - sigma I), tile by tile in its own store (`folder`)."""

    def __init__(self, gram: TileStore, folder: Path, sigma: float) -> None:
        """Opens the factor of this Gram and sigma in folder, or starts one; a factor of another
        sigma or Gram there is an abandoned attempt and is removed."""
        folder = Path(folder)
        want = _factor_hash(gram, sigma)
        if (folder / "manifest.json").exists() and TileStore.open(folder).config_hash != want:
            shutil.rmtree(folder)
        self.store = TileStore.create_or_open(
            folder, config_hash=want, n=gram.n, tile=gram.tile, dtype="float64",
            meta={"gram": gram.config_hash, "sigma": float(sigma).hex()})
        self.gram, self.sigma, self.n = gram, float(sigma), gram.n

    def missing(self) -> list[Tile]:
        return self.store.missing()

    def run(self, workers: int = 1, on_tile: Callable[[Tile, float], None] | None = None,
            todo: list[Tile] | None = None,
            tasks: Callable[[TiledFactor, int, list[Tile]], TileTasks] | None = None) -> None:
        """Computes the missing tiles (todo: `missing()` where the caller has it already),
        at most `workers` tasks at a time, on threads (ThreadTasks) or what `tasks(self,
        workers, todo)` makes (distributed.factor_tasks.RayTasks); raises CholeskyFailed when
        a pivot is not positive. on_tile(tile, flops) after each tile is written (progress,
        logging; an exception it raises stops the run with the written tiles kept)."""
        todo = self.missing() if todo is None else todo
        done = set(self.store.all_tiles()) - set(todo)
        waiting = set(todo)
        running: dict[Future, Tile] = {}
        t_prev = time.perf_counter()
        runner = ThreadTasks(self, workers) if tasks is None else tasks(self, workers, todo)
        try:
            while waiting or running:
                for t in sorted(t for t in waiting if all(d in done for d in _deps(*t))):
                    if len(running) >= workers:
                        break
                    waiting.discard(t)
                    running[runner.submit(t)] = t
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in sorted(finished, key=running.get):
                    t = running.pop(fut)
                    block, now = fut.result(), time.perf_counter()
                    if block is None:
                        raise CholeskyFailed(self.sigma, t[0])
                    # Written here, in one thread: the journal has one writer. Seconds since
                    # the previous write add up to the wall time (see TileStore.work).
                    self.store.write(*t, block, seconds=now - t_prev,
                                     flops=int(self.tile_flops(*t)))
                    t_prev = now
                    done.add(t)
                    runner.written(t)
                    if on_tile is not None:
                        on_tile(t, self.tile_flops(*t))
        finally:
            for fut in running:
                fut.cancel()
            runner.close()
        self.store.compact()

    def tile_flops(self, i: int, j: int) -> float:
        """Flops of task (i, j): its updates and its trsm or potrf."""
        (r0, r1), (c0, c1) = self.store.bounds(i), self.store.bounds(j)
        rows, cols = r1 - r0, c1 - c0
        upd = 2.0 * r0 * rows * cols
        return upd + (rows ** 3 / 3 if i == j else float(rows * rows * cols))

    def solve(self, x: np.ndarray) -> np.ndarray:
        """(R^T R)^{-1} x for x of shape (n,) or (n, p): a forward solve with R^T, then a
        backward one with R, each streaming the factor's tiles once."""
        s, g = self.store, self.store.grid()
        y = np.array(x, dtype=np.float64, copy=True)
        for i in range(g):  # R^T y = x, block row by block row
            r0, r1 = s.bounds(i)
            for k in range(i):
                k0, k1 = s.bounds(k)
                y[r0:r1] -= s.mapped(k, i).T @ y[k0:k1]
            y[r0:r1] = sla.solve_triangular(s.mapped(i, i), y[r0:r1], trans="T", lower=False,
                                            check_finite=False)
        for i in reversed(range(g)):  # R z = y
            r0, r1 = s.bounds(i)
            for j in range(i + 1, g):
                c0, c1 = s.bounds(j)
                y[r0:r1] -= s.mapped(i, j) @ y[c0:c1]
            y[r0:r1] = sla.solve_triangular(s.mapped(i, i), y[r0:r1], lower=False,
                                            check_finite=False)
        return y

    def dense(self) -> np.ndarray:
        """R as one upper-triangular matrix (tests, small n)."""
        r = np.zeros((self.n, self.n))
        for i, j, b in self.store.iter_tiles():
            (r0, r1), (c0, c1) = self.store.bounds(i), self.store.bounds(j)
            r[r0:r1, c0:c1] = b
        return r
