"""Analytic-only trials (`kind: kernel` sweeps): what the sketch does to the infinite-width
kernel, with no training and no width-m Gram.

For a net whose first layer is sketch_in, Z = X V^T and the limit kernel is the analytic ReLU
NTK on Z; against the dense net's on X this measures the price of the sketch itself:

- lambda_inf = lambda_min(H_inf(Z)), its ratio to lambda_min(H_inf(X)), lambda_max and the
  condition number of H_inf(Z);
- ||Z Z^T - X X^T||_2 / ||X X^T||_2, the sketch's error on the inputs' Gram;
- max_{i<j} | ||z_i - z_j||^2 / ||x_i - x_j||^2 - 1 |, its largest pairwise distortion
  (Johnson-Lindenstrauss).

A dense net measures its own kernel (ratio 1, no distortion); a net with no analytic limit
(a factorized layer above a sketch_in or a sketch_out / lowrank layer) gets nulls.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..config import RunConfig
from ..data import load_dataset
from ..ntk.analytic import analytic_ntk
from ..ntk.spectrum import spectrum


def _sym_norm(a: np.ndarray) -> float:
    """Spectral norm of a symmetric matrix (its largest |eigenvalue|)."""
    return float(np.abs(np.linalg.eigvalsh(a)).max())


def max_pair_distortion(x: np.ndarray, z: np.ndarray) -> float | None:
    """max over pairs of distinct points of |(||z_i - z_j||^2 / ||x_i - x_j||^2) - 1|; None
    with fewer than two distinct points. Distances from the Gram products (n^2 memory)."""
    def sq_dists(a: np.ndarray) -> np.ndarray:
        g = a @ a.T
        sq = np.diag(g)
        return np.maximum(sq[:, None] + sq[None, :] - 2 * g, 0.0)

    dx, dz = sq_dists(x), sq_dists(z)
    iu = np.triu_indices(len(x), 1)
    dx, dz = dx[iu], dz[iu]
    keep = dx > 1e-12 * dx.max(initial=0.0)  # duplicates have no distance to distort
    if not keep.any():
        return None
    return float(np.abs(dz[keep] / dx[keep] - 1).max())


def kernel_metrics(cfg: RunConfig) -> dict[str, Any]:
    """The analytic-only measurements of cfg's net on cfg's data (float64 throughout)."""
    t0 = time.perf_counter()
    data = load_dataset(cfg.data)
    x = torch.as_tensor(data.x, dtype=torch.float64)
    # One neuron of the last layer suffices: the measures need the sketch and the depth only.
    net = cfg.model.model_copy(update={"dtype": "float64"}).build(d=data.d, neurons=(0, 1))
    out: dict[str, Any] = {
        "n": data.n, "d": data.d, "n_test": int(len(data.y_test)), "kind": "kernel",
        "data_fingerprint": data.fingerprint, "steps": 0,
    }
    h_dense = analytic_ntk(x, None, train_output=net.train_output, depth=net.depth)
    dense = spectrum(h_dense, 1)
    out["lambda_inf_dense"] = dense.lambda_min
    with torch.no_grad():
        z = net.analytic_inputs(x)
    if z is None:
        return out | {"seconds": time.perf_counter() - t0}
    h = analytic_ntk(z, None, train_output=net.train_output, depth=net.depth)
    spec = spectrum(h, 1)
    xn, zn = x.numpy(), z.double().numpy()
    gx = xn @ xn.T
    out |= {
        "lambda_inf": spec.lambda_min, "lambda_max_inf": spec.lambda_max,
        "condition_inf": spec.condition,
        "lambda_inf_ratio": spec.lambda_min / dense.lambda_min if dense.lambda_min > 0 else None,
        "sketch_rel_err": _sym_norm(zn @ zn.T - gx) / _sym_norm(gx),
        "max_pair_distortion": max_pair_distortion(xn, zn),
        "seconds": time.perf_counter() - t0,
    }
    return out
