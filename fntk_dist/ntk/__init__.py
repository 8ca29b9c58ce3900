"""Exact NTK Grams: closed forms, mat-vecs, the autograd reference, the analytic limit."""

from .analytic import analytic_ntk
from .autograd import autograd_ntk
from .empirical import empirical_ntk, finish_gram, gram_partial
from .matvec import ntk_matvec
from .methods import GramMethod, gram
from .partial import GramPartial, NeuronSum, RankSum
from .spectrum import Spectrum, spectrum, spectrum_from_matmat, spectrum_from_matvec

__all__ = [
    "GramMethod", "GramPartial", "NeuronSum", "RankSum", "Spectrum", "analytic_ntk",
    "autograd_ntk", "empirical_ntk", "finish_gram", "gram", "gram_partial", "ntk_matvec",
    "spectrum", "spectrum_from_matmat", "spectrum_from_matvec",
]
