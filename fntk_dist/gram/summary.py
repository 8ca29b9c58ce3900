"""What a Gram job reports about its store: the spectrum, the distance to the analytic kernel
(when the Gram is assembled), and what computing the whole store cost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..ntk import spectrum, spectrum_from_matmat
from ..ntk.limit import infinite_width
from ..ntk.spectrum import make_spectrum, top_from_matvec
from .bounds import Block
from .certify import Options, Source, bracket_lambda_min, dense_blocks
from .cholesky import DenseFactor, TiledFactor, gram_diagonal
from .config import GramConfig
from .progress import Watch
from .tile_store import TileStore

CERTIFY = "certify"  # the folder of the bracket's journal, Ritz vector and factor tiles

if TYPE_CHECKING:
    from ..models.network import Network


def analytic_distance(net: Network, x: torch.Tensor, h: np.ndarray) -> dict:
    """lambda_inf = lambda_min(H_inf) and ||H - H_inf||_2 / ||H_inf||_2 (None where the net
    has no analytic limit, or it vanishes)."""
    spec_inf, rel = infinite_width(net, x, h, top=1)
    return {"lambda_inf": None if spec_inf is None else spec_inf.lambda_min,
            "gram_rel_err_inf": rel}


def spectrum_report(store: TileStore, net: Network, x: torch.Tensor, gc: GramConfig,
                    watch: Watch | None = None, ray_workers: int | None = None) -> dict:
    """The spectrum of the complete store: from the assembled matrix when n <=
    gram.assemble_max_n (then also the analytic comparison), else over the tiles (Lanczos for
    the top; with gram.certify, lambda_min bracketed by fntk_dist.gram.certify with the factor
    in store.path / "certify", else block LOBPCG). ray_workers: the tiles' Ray worker count
    when they ran on Ray (gram.factor_tasks auto then puts the factor's tasks there too when
    the cluster has more than one node)."""
    t0 = time.perf_counter()
    certified: dict = {"lambda_min_lower": None, "lambda_min_upper": None,
                       "lambda_min_method": None}
    opt = Options(gc.certify_rtol, gc.certify_max_factorizations, gc.bottom,
                  watch.solved if watch else None)
    if store.n <= gc.assemble_max_n:
        h = store.assemble()
        spec, resid, how = spectrum(h, gc.top), 0.0, "assembled"
        analytic = analytic_distance(net, x, h)
        if gc.certify:
            src = Source(store.n, np.diagonal(h).astype(np.float64), lambda: dense_blocks(h),
                         lambda sigma: DenseFactor(h, sigma), "in memory (LAPACK potrf)")
            certified = bracket_lambda_min(src, spec.lambda_min, opt)
        del h
    elif gc.certify:
        t1 = time.perf_counter()
        # Lanczos, one vector per pass: the top of a Gram's spectrum clusters (spherical
        # harmonics), where block LOBPCG needs ~100 passes of eig_block vectors.
        top = (top_from_matvec(store.matvec, store.n, gc.top) if store.n >= 3
               else spectrum(store.assemble(), gc.top).top)
        certified_top = {"top_seconds": time.perf_counter() - t1}
        folder = store.path / CERTIFY
        tasks = None
        if ray_workers is not None and gc.factor_tasks != "threads":
            from ..distributed.factor_tasks import RayTasks, spans_nodes  # Ray only if used

            if gc.factor_tasks == "ray" or spans_nodes():
                tasks = RayTasks
        on_ray = tasks is not None
        workers = gc.factor_workers or (ray_workers if on_ray else 1)

        def factor(sigma: float) -> TiledFactor:
            f = TiledFactor(store, folder / "factor", sigma)
            todo = f.missing()
            if watch is not None:
                watch.factoring(sigma, len(f.store.all_tiles()), len(todo))
            try:
                f.run(workers, watch.factored if watch else None, todo, tasks)
            finally:
                if watch is not None:
                    watch.close()
            return f

        src = Source(store.n, gram_diagonal(store), lambda: tile_blocks(store), factor,
                     f"tiled Cholesky over the tile store ({workers} "
                     f"{'Ray task' if on_ray else 'thread'}{'s' * (workers > 1)} at a time), "
                     "shift-invert Lanczos")
        certified = bracket_lambda_min(src, gc.lambda_estimate, opt, folder) | certified_top
        est = certified["lambda_min_estimate"]
        spec = make_spectrum(est if est is not None else float("nan"), top)
        resid = (certified["ritz_residual"] / top[0]
                 if certified["ritz_residual"] is not None and top[0] > 0 else None)
        how = "Lanczos on tiles (top), certified bracket (lambda_min)"
        analytic = {"lambda_inf": None, "gram_rel_err_inf": None}
    else:
        spec, resid = spectrum_from_matmat(store.matvec, store.n, top=gc.top,
                                           block=gc.eig_block, maxiter=gc.eig_maxiter)
        how, analytic = "block LOBPCG on tiles", {"lambda_inf": None, "gram_rel_err_inf": None}
    if how == "assembled" and certified.get("ritz_residual") is not None and spec.lambda_max > 0:
        resid = certified["ritz_residual"] / spec.lambda_max
    return {"lambda_min": spec.lambda_min, "lambda_max": spec.lambda_max,
            "top_eigenvalues": spec.top, "condition": spec.condition, **analytic,
            "spectrum_from": how, "lambda_min_residual": resid, **certified,
            "spectrum_seconds": time.perf_counter() - t0,
            "factor_disk_bytes": _disk(store.path / CERTIFY)}


def tile_blocks(store: TileStore) -> Iterator[Block]:
    """The stored tiles as float64 blocks, each standing also for its transpose."""
    for i, j in store.all_tiles():
        (r0, r1), (c0, c1) = store.bounds(i), store.bounds(j)
        yield r0, r1, c0, c1, np.asarray(store.mapped(i, j), dtype=np.float64), i != j


def _disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def cost_report(store: TileStore) -> dict:
    """Rates over every tile of the store, whichever run computed it (a rerun that computes
    nothing reports the real ones): tile work seconds, tiles per second, GFLOP/s."""
    tiles, seconds, flops = store.work()
    if not tiles or seconds <= 0:
        return {"tile_seconds": None, "tiles_per_s": None, "gflops": None}
    return {"tile_seconds": seconds, "tiles_per_s": tiles / seconds,
            "gflops": flops / seconds / 1e9}
