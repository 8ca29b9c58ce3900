"""fntk_dist: wide factorized two-layer networks and their exact NTK Grams, at scale."""

from .models import NetCost, TwoLayerNet
from .ntk import (
    GramMethod,
    Spectrum,
    analytic_ntk,
    autograd_ntk,
    empirical_ntk,
    ntk_matvec,
    spectrum,
    spectrum_from_matmat,
    spectrum_from_matvec,
)

__version__ = "0.1.0"

__all__ = [
    "GramMethod", "NetCost", "Spectrum", "TwoLayerNet", "analytic_ntk", "autograd_ntk",
    "empirical_ntk", "ntk_matvec", "spectrum", "spectrum_from_matmat", "spectrum_from_matvec",
]
