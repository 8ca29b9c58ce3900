"""What a Gram job reports about its store: the spectrum, the distance to the analytic kernel
(when the Gram is assembled), and what computing the whole store cost."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..ntk import spectrum, spectrum_from_matmat
from ..ntk.limit import infinite_width
from .config import GramConfig
from .tile_store import TileStore

if TYPE_CHECKING:
    from ..models.network import Network


def analytic_distance(net: Network, x: torch.Tensor, h: np.ndarray) -> dict:
    """lambda_inf = lambda_min(H_inf) and ||H - H_inf||_2 / ||H_inf||_2 (None where the net
    has no analytic limit, or it vanishes)."""
    spec_inf, rel = infinite_width(net, x, h, top=1)
    return {"lambda_inf": None if spec_inf is None else spec_inf.lambda_min,
            "gram_rel_err_inf": rel}


def spectrum_report(store: TileStore, net: Network, x: torch.Tensor,
                    gc: GramConfig) -> dict:
    """The spectrum of the complete store: from the assembled matrix when n <=
    gram.assemble_max_n (then also the analytic comparison), else block LOBPCG over tiles."""
    t0 = time.perf_counter()
    if store.n <= gc.assemble_max_n:
        h = store.assemble()
        spec, resid, how = spectrum(h, gc.top), 0.0, "assembled"
        analytic = analytic_distance(net, x, h)
    else:
        spec, resid = spectrum_from_matmat(store.matvec, store.n, top=gc.top,
                                           block=gc.eig_block, maxiter=gc.eig_maxiter)
        how, analytic = "block LOBPCG on tiles", {"lambda_inf": None, "gram_rel_err_inf": None}
    return {"lambda_min": spec.lambda_min, "lambda_max": spec.lambda_max,
            "top_eigenvalues": spec.top, "condition": spec.condition, **analytic,
            "spectrum_from": how, "lambda_min_residual": resid,
            "spectrum_seconds": time.perf_counter() - t0}


def cost_report(store: TileStore) -> dict:
    """Rates over every tile of the store, whichever run computed it (a rerun that computes
    nothing reports the real ones): tile work seconds, tiles per second, GFLOP/s."""
    tiles, seconds, flops = store.work()
    if not tiles or seconds <= 0:
        return {"tile_seconds": None, "tiles_per_s": None, "gflops": None}
    return {"tile_seconds": seconds, "tiles_per_s": tiles / seconds,
            "gflops": flops / seconds / 1e9}
