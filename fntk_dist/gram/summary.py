"""What a Gram job reports about its store: the spectrum, the distance to the analytic kernel
(when the Gram is assembled), and what computing the whole store cost."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..ntk import analytic_ntk, spectrum, spectrum_from_matmat
from .config import GramConfig
from .tile_store import TileStore

if TYPE_CHECKING:
    from ..models.net import TwoLayerNet


def analytic_distance(net: TwoLayerNet, x: torch.Tensor, h: np.ndarray) -> dict:
    """lambda_inf = lambda_min(H_inf) and ||H - H_inf||_2 / ||H_inf||_2, where the analytic
    ReLU kernel is the net's infinite-width limit (dense, sketch_in); else both None."""
    ax = net.analytic_inputs(x)
    if ax is None:
        return {"lambda_inf": None, "gram_rel_err_inf": None}
    h_inf = analytic_ntk(ax, train_output=net.train_output).numpy()
    # Both matrices are symmetric: their 2-norms are their largest |eigenvalue| (eigvalsh is
    # several times cheaper than the SVD a general 2-norm takes).
    ev_inf = np.linalg.eigvalsh(h_inf)
    ev_diff = np.linalg.eigvalsh(h.astype(np.float64) - h_inf)
    return {"lambda_inf": float(ev_inf[0]),
            "gram_rel_err_inf": float(np.abs(ev_diff).max() / np.abs(ev_inf).max())}


def spectrum_report(store: TileStore, net: TwoLayerNet, x: torch.Tensor,
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
