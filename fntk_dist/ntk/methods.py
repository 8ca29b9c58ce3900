"""The ways to compute an NTK Gram, by name, and one function that dispatches on them."""

from __future__ import annotations

from enum import Enum

import torch

from ..models.network import Network
from ..models.validation import prepare_inputs
from .autograd import autograd_ntk
from .empirical import empirical_ntk
from .limit import ANALYTIC_NETS, analytic_gram
from .matvec import ntk_matvec


class GramMethod(str, Enum):
    """How to compute H(X1, X2) of a network; all give the same matrix where they apply.

    CLOSED_FORM  empirical_ntk: one term per trained group from the net's factors (S S^T,
                 G G^T, R R^T, Hadamard products). Exact, O(n^2 sum_l m_l) time, O(n^2 +
                 n * block) memory at depth 1 (plus tile x sum_l m_l deeper). The default
                 whenever the n x n result can be stored.
    MATVEC       ntk_matvec: H v from the factors, O(n m k) per product (k the features' width)
                 without ever forming H. Wins when H cannot be stored: iterative spectra and
                 solves call it; gram() assembles H from it only to compare methods.
    AUTOGRAD     autograd_ntk: J J^T from torch.func Jacobians, for any module. The reference:
                 O(n^2 P) time and O(n P) memory for P parameters, so only for small problems.
    ANALYTIC     analytic_ntk: the infinite-width kernel (the arc-cosine recursion of the
                 net's depth), O(n^2 (d + L)). Only where the net has one in closed form:
                 dense layers, the first of which may be sketch_in (on the sketched inputs);
                 a finite net's Gram tends to it as the widths grow.
    """

    CLOSED_FORM = "closed_form"
    MATVEC = "matvec"
    AUTOGRAD = "autograd"
    ANALYTIC = "analytic"


def gram(
    net: Network, x1: torch.Tensor, x2: torch.Tensor | None = None,
    method: GramMethod | str = GramMethod.CLOSED_FORM, block: int | None = None,
) -> torch.Tensor:
    """H(X1, X2) of net by the given method: the net's dtype, float64 for ANALYTIC."""
    try:
        method = GramMethod(method)
    except ValueError:
        names = [m.value for m in GramMethod]
        raise ValueError(f"method: expected one of {names}, got {method!r}") from None
    if method is GramMethod.CLOSED_FORM:
        return empirical_ntk(net, x1, x2, block)
    if method is GramMethod.AUTOGRAD:
        return autograd_ntk(net, x1, x2)
    if method is GramMethod.MATVEC:
        if x2 is not None:
            raise ValueError("x2: the mat-vec method computes H(X, X) only")
        eye = torch.eye(x1.shape[0], dtype=net.dtype, device=net.device)
        return ntk_matvec(net, x1, eye, block)
    x1 = prepare_inputs(x1, net.d, net.dtype, net.device, "X")
    x2 = None if x2 is None else prepare_inputs(x2, net.d, net.dtype, net.device, "X2")
    h = analytic_gram(net, x1, x2)
    if h is None:
        raise ValueError(f"method: mode {net.mode!r} has no analytic infinite-width kernel "
                         f"({ANALYTIC_NETS} have one)")
    return h
