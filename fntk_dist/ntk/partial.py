"""GramPartial: a Gram's sums over a set of neurons, one per named NTK term.

Width shards (and neuron blocks) each hold some neurons; the Gram is a sum over all of them,
but not every term is a sum of per-neuron Grams: a RANK term (V trained) needs the n x k
factor G = Delta U summed over every neuron before its outer product G G^T. So a shard ships
sums, not Gram terms: they add over disjoint neuron sets, are reduced across shards (a Ray
driver adds them, a torch.distributed group all-reduces them), and the Gram is finished once.

The object is plain data (dataclasses of tensors, each term named by a pair of strings). It
pickles its CPU tensors as numpy arrays, which Ray ships between processes as out-of-band
buffers (one copy into its object store); a torch tensor pickles through a byte string, three
to four times slower for a 1024 x 1024 sum on a 2-core host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..runtime import to_host


def _move(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """t on device; to the CPU from a GPU through page-locked memory (runtime.to_host)."""
    return to_host(t) if torch.device(device).type == "cpu" else t.to(device)


def _portable(t: torch.Tensor) -> torch.Tensor | np.ndarray:
    """What a term's tensor pickles as: a numpy array for a CPU tensor, else the tensor."""
    return t.detach().numpy() if t.device.type == "cpu" else t


def _tensor(t: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A pickled tensor back, owning writable memory: an array Ray hands over is a read-only
    view of its object store, so it is copied."""
    return torch.from_numpy(np.array(t)) if isinstance(t, np.ndarray) else t


def _neuron_sum(key: tuple[str, str], total: torch.Tensor | np.ndarray) -> NeuronSum:
    return NeuronSum(key, _tensor(total))


def _rank_sum(key: tuple[str, str], g1: torch.Tensor | np.ndarray,
              g2: torch.Tensor | np.ndarray | None) -> RankSum:
    t1 = _tensor(g1)
    return RankSum(key, t1, t1 if g2 is None else _tensor(g2))


@dataclass
class NeuronSum:
    """sum_r d_r(X1) d_r(X2)^T over neurons r, (n1, n2) float64, for a ROWS term (d the
    backprop signal) or the READOUT term (d the activation). It adds over neurons as it is."""

    key: tuple[str, str]
    total: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.total,)

    def __add__(self, other: NeuronSum) -> NeuronSum:
        return NeuronSum(self.key, self.total + other.total)

    def to(self, device: torch.device | str) -> NeuronSum:
        return NeuronSum(self.key, _move(self.total, device))

    def __reduce__(self) -> tuple:
        return _neuron_sum, (self.key, _portable(self.total))


@dataclass
class RankSum:
    """G(X1) and G(X2), (n, k) float64, with G = Delta U summed over neurons: a RANK term.
    Also a deep net's backprop signal into its last layer's features, Delta W summed over
    that layer's neurons (GramPartial.back).

    g2 is g1 itself for a Gram of X against itself (one sum to reduce, not two).
    """

    key: tuple[str, str]
    g1: torch.Tensor
    g2: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.g1,) if self.g2 is self.g1 else (self.g1, self.g2)

    def __add__(self, other: RankSum) -> RankSum:
        g1 = self.g1 + other.g1
        sym = self.g2 is self.g1 and other.g2 is other.g1
        return RankSum(self.key, g1, g1 if sym else self.g2 + other.g2)

    def to(self, device: torch.device | str) -> RankSum:
        g1 = _move(self.g1, device)
        return RankSum(self.key, g1, g1 if self.g2 is self.g1 else _move(self.g2, device))

    def __reduce__(self) -> tuple:
        g2 = None if self.g2 is self.g1 else _portable(self.g2)  # a Gram of X: one sum
        return _rank_sum, (self.key, _portable(self.g1), g2)


Term = NeuronSum | RankSum


@dataclass
class GramPartial:
    """The sums of the last hidden layer's and the readout's NTK terms over a set of that
    layer's neurons, in the net's group order. Partials of disjoint neuron sets add (p1 + p2,
    or sum(parts)); finish_gram turns the total over all neurons into the Gram.

    back: in a deep net whose lower layers train, the backprop signal those layers' terms
    start from: sum_r delta_r w_r over the last layer's neurons, in its feature space (n x k
    factorized, n x m_{L-1} dense). It is linear in the neurons, so it adds over shards like
    G, and finish_gram carries it down through the (whole) lower layers.
    """

    terms: tuple[Term, ...]
    back: RankSum | None = None

    @property
    def keys(self) -> tuple[tuple[str, str], ...]:
        """The terms' names: ("layer0", "U"), ("readout", "a"), ..."""
        return tuple(t.key for t in self.terms)

    def _sums(self) -> tuple[Term, ...]:
        return self.terms if self.back is None else (*self.terms, self.back)

    def _check_addable(self, other: GramPartial) -> None:
        if other.keys != self.keys or (other.back is None) != (self.back is None):
            raise ValueError(f"part: cannot add partials of terms {self.keys} and {other.keys}"
                             f" (back signal: {self.back is not None}, {other.back is not None})")

    def __add__(self, other: GramPartial) -> GramPartial:
        if not isinstance(other, GramPartial):
            return NotImplemented
        self._check_addable(other)
        back = None if self.back is None else self.back + other.back
        return GramPartial(tuple(a + b for a, b in zip(self.terms, other.terms)), back)

    def __radd__(self, other: object) -> GramPartial:
        if isinstance(other, int) and other == 0:  # sum(parts) starts from 0
            return self
        return NotImplemented

    def add_(self, other: GramPartial) -> GramPartial:
        """Adds other's sums into self's, in place (no n x n allocation: a row group's root
        adds the other shards' sum into its own partial); returns self."""
        self._check_addable(other)
        for mine, theirs in zip(self._sums(), other._sums()):
            ours, their = mine.tensors(), theirs.tensors()
            if len(ours) != len(their):
                raise ValueError(f"part: {mine.key} sums X against itself in one partial only")
            for t, u in zip(ours, their):
                t.add_(u)
        return self

    def all_reduce_(self, sum_fn: Callable[[torch.Tensor], object]) -> GramPartial:
        """Apply an in-place sum over processes (e.g. a torch.distributed all-reduce over the
        width shards) to every summed tensor, once each; returns self."""
        for term in self._sums():
            for t in term.tensors():
                sum_fn(t)
        return self

    def to(self, device: torch.device | str) -> GramPartial:
        back = None if self.back is None else self.back.to(device)
        return GramPartial(tuple(t.to(device) for t in self.terms), back)

    def cpu(self) -> GramPartial:
        return self.to("cpu")
