"""How far a finite net's Gram is from its infinite-width limit, where it has one."""

from __future__ import annotations

import numpy as np
import torch

from ..models.network import Network
from .analytic import analytic_ntk
from .spectrum import Spectrum, spectrum


def infinite_width(net: Network, x: torch.Tensor, h: torch.Tensor | np.ndarray,
                   top: int = 5) -> tuple[Spectrum | None, float | None]:
    """(spectrum of H_inf, ||H - H_inf||_2 / ||H_inf||_2) for the net's analytic kernel on x
    (dense: X; sketch_in: the sketched Z), or (None, None) where the net has none. The
    relative distance is None where H_inf vanishes (every x zero): a degeneracy to report,
    not a division to make."""
    ax = net.only_layer("the analytic kernel").analytic_inputs(x)
    if ax is None:
        return None, None
    h_inf = analytic_ntk(ax, train_output=net.train_output).cpu().numpy()
    h = h.detach().cpu().numpy() if isinstance(h, torch.Tensor) else np.asarray(h)
    # Both are symmetric: a 2-norm is the largest |eigenvalue| (eigvalsh is several times
    # cheaper than the SVD a general 2-norm takes).
    spec_inf = spectrum(h_inf, top)
    norm_inf = max(abs(spec_inf.lambda_min), abs(spec_inf.lambda_max))
    if norm_inf == 0:
        return spec_inf, None
    diff = np.linalg.eigvalsh(h.astype(np.float64) - h_inf)
    return spec_inf, float(np.abs(diff).max() / norm_inf)
