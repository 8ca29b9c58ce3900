"""Progress of the certified spectrum: a tqdm bar per factorization and for the Lanczos
solves, and rows for the tracker (run folder, W&B) on steps after the tiles'."""

from __future__ import annotations

import time

from tqdm import tqdm

from ..track import Tracker


class Watch:
    """step0: the last step the tiles logged; every row here comes after it."""

    def __init__(self, tracker: Tracker, step0: int, progress: bool) -> None:
        self.tracker, self.step, self.progress = tracker, step0, progress
        self.bar: tqdm | None = None
        self.sigma, self.done, self.flops, self.t0 = 0.0, 0, 0.0, 0.0

    def factoring(self, sigma: float, total: int, todo: int) -> None:
        """A factorization at sigma starts, with todo of its total tiles left."""
        self.close()
        self.sigma, self.done, self.flops, self.t0 = sigma, total - todo, 0.0, time.perf_counter()
        self.bar = tqdm(total=total, initial=total - todo, unit="tile", mininterval=1.0,
                        desc=f"cholesky of H - {sigma:.4g} I", disable=not self.progress)

    def factored(self, tile: tuple[int, int], flops: float) -> None:
        self.done += 1
        self.flops += flops
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        self.tracker.log({"factor_sigma": self.sigma, "factor_tiles_done": self.done,
                          "factor_gflops": self.flops / elapsed / 1e9}, step=self.step)

    def solved(self, count: int) -> None:
        """After each solve of shift-invert Lanczos."""
        if count == 1:
            self.close()
            self.bar = tqdm(unit="solve", desc="shift-invert Lanczos", mininterval=1.0,
                            disable=not self.progress)
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)
        self.tracker.log({"lanczos_solves": count}, step=self.step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
