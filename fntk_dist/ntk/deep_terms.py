"""A deep net's NTK terms as pairs of per-point factors (DESIGN section 7).

Every trained group's term is (P1 P2^T) o (Q1 Q2^T) for per-point factors P, Q of X1 and X2
(Q = None for the readout's A A^T), without the 1/m_L common to all. With s^l = c_l h^{l-1}
the layer inputs as Network.layer_inputs gives them (the scale c_l rides on the input, so no
c_l^2 appears), E^l = sqrt(m_L) Delta^l the backprop signal, F^l the layer's features of s^l
(s^l itself, or Z^l = s^l V^T) and G^l = E^l U^l:

    ROWS (W^l, U^l)  P = E^l, Q = F^l
    RANK (V^l)       P = G^l, Q = s^l
    READOUT (a)      P = h^L

E^L = relu'(g^L) diag(a), and below it E^l = relu'(g^l) o (c_{l+1} E^{l+1} W^{l+1}), where
relu'(g^l) = 1[s^{l+1} > 0]. The layers below the last are whole in every shard, so their
factors follow from the last layer's backprop signal y = sum_r E^L_r w_r alone
(GramPartial.back): the Gram of a width-sharded net finishes from summed partials.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..models.groups import Group, Role
from ..models.network import Network


class Factors(NamedTuple):
    """One term's per-point factors (Q None: the term is P1 P2^T)."""

    p: torch.Tensor
    q: torch.Tensor | None


def last_groups(net: Network) -> tuple[Group, ...]:
    """The groups of the last hidden layer and the readout: those a GramPartial sums."""
    top = net.depth - 1
    return tuple(g for g in net.groups if g.layer is None or g.layer == top)


def lower_groups(net: Network) -> tuple[Group, ...]:
    """The trained groups of the layers below the last."""
    top = net.depth - 1
    return tuple(g for g in net.groups if g.layer is not None and g.layer < top)


def signals(net: Network, inputs: list[torch.Tensor], y: torch.Tensor) -> list[torch.Tensor]:
    """[E^1, ..., E^{L-1}] from y = E^L W^L (n x m_{L-1}), the signal at the last layer's
    input; E^1 last computed, since no trained layer lies below it."""
    out: list[torch.Tensor] = [None] * (net.depth - 1)
    for i in reversed(range(net.depth - 1)):
        e = (inputs[i + 1] > 0).to(y.dtype) * (net.scales[i + 1] * y)
        out[i] = e
        if i > 0:
            layer = net.layers[i]
            y = layer.features_adjoint(layer.to_features(e, 0, layer.m))
    return out


def group_factors(net: Network, group: Group, inputs: list[torch.Tensor],
                  e: torch.Tensor) -> Factors:
    """The factors of a ROWS or RANK group in layer group.layer, from its signal e = E^l."""
    layer, s = net.layers[group.layer], inputs[group.layer]
    if group.role is Role.ROWS:
        return Factors(e, layer.features(s))
    return Factors(layer.to_rank(e, 0, layer.m), s)


def hadamard_gram(f1: Factors, f2: Factors) -> torch.Tensor:
    """(P1 P2^T) o (Q1 Q2^T), or P1 P2^T."""
    h = f1.p @ f2.p.T
    return h if f1.q is None else h * (f1.q @ f2.q.T)


def lower_gram(net: Network, inputs1: list[torch.Tensor], inputs2: list[torch.Tensor],
               y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """The sum of the lower layers' terms (without the 1/m_L) for X1 and X2, from their
    layer inputs and the last layer's input signals. inputs2 is inputs1 itself (and y2 y1)
    for a Gram of X against itself."""
    sym = inputs2 is inputs1
    e1 = signals(net, inputs1, y1)
    e2 = e1 if sym else signals(net, inputs2, y2)
    h = torch.zeros(y1.shape[0], y2.shape[0], dtype=y1.dtype, device=y1.device)
    for g in lower_groups(net):
        f1 = group_factors(net, g, inputs1, e1[g.layer])
        h += hadamard_gram(f1, f1 if sym else group_factors(net, g, inputs2, e2[g.layer]))
    return h


def net_factors(net: Network, x: torch.Tensor) -> list[Factors]:
    """Every trained group's factors for the points x, in net.groups order (a net holding all
    its neurons; the mat-vec's per-tile pass)."""
    inputs = net.layer_inputs(x)
    top = net.layers[-1]
    feats = top.features(inputs[-1])
    pre = top.preact(feats, 0, top.m_local)
    e_top = (pre > 0).to(pre.dtype) * net.a
    low = lower_groups(net)
    e = signals(net, inputs, top.features_adjoint(top.to_features(e_top, 0, top.m))) if low \
        else []
    out = []
    for g in net.groups:
        if g.role is Role.READOUT:
            out.append(Factors(torch.relu(pre), None))
        elif g.layer == net.depth - 1:
            out.append(Factors(e_top, feats) if g.role is Role.ROWS
                       else Factors(top.to_rank(e_top, 0, top.m), inputs[-1]))
        else:
            out.append(group_factors(net, g, inputs, e[g.layer]))
    return out
