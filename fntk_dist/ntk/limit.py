"""How far a finite net's Gram is from its infinite-width limit, where it has one."""

from __future__ import annotations

import numpy as np
import torch

from ..models.network import Network
from .analytic import analytic_ntk
from .spectrum import Spectrum, spectrum

# The nets analytic_gram covers (Network.analytic_inputs).
ANALYTIC_NETS = "nets of dense layers, the first of which may be sketch_in,"


def analytic_gram(net: Network, x1: torch.Tensor,
                  x2: torch.Tensor | None = None) -> torch.Tensor | None:
    """The net's infinite-width kernel H_inf(X1, X2) of its depth in float64 (ANALYTIC_NETS:
    on X, or on the sketched Z = X V^T of a sketch_in first layer), or None where it has
    none."""
    ax = net.analytic_inputs(x1)
    if ax is None:
        return None
    ax2 = None if x2 is None else net.analytic_inputs(x2)
    return analytic_ntk(ax, ax2, train_output=net.train_output, depth=net.depth)


def infinite_width(net: Network, x: torch.Tensor, h: torch.Tensor | np.ndarray,
                   top: int = 5) -> tuple[Spectrum | None, float | None]:
    """(spectrum of H_inf, ||H - H_inf||_2 / ||H_inf||_2) for the net's analytic kernel on x
    (analytic_gram), or (None, None) where the net has none. The
    relative distance is None where H_inf vanishes (every x zero): a degeneracy to report,
    not a division to make."""
    h_inf = analytic_gram(net, x)
    if h_inf is None:
        return None, None
    h_inf = h_inf.cpu().numpy()
    h = h.detach().cpu().numpy() if isinstance(h, torch.Tensor) else np.asarray(h)
    # Both are symmetric: a 2-norm is the largest |eigenvalue| (eigvalsh is several times
    # cheaper than the SVD a general 2-norm takes).
    spec_inf = spectrum(h_inf, top)
    norm_inf = max(abs(spec_inf.lambda_min), abs(spec_inf.lambda_max))
    if norm_inf == 0:
        return spec_inf, None
    diff = np.linalg.eigvalsh(h.astype(np.float64) - h_inf)
    return spec_inf, float(np.abs(diff).max() / norm_inf)
