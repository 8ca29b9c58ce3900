"""Trained parameter groups: what each contributes to the NTK is fixed by its role.

The NTK is a sum of one term per trained group (DESIGN sections 3 and 7). Its form depends only
on how the group enters the network, not on which tensor it is, so the kernels dispatch on the
role and name terms by the group's key:

    ROWS     per-neuron rows (W, or U of W = U V): grad_r = delta_r * features
             term (Delta Delta^T) o (F F^T)
    RANK     the shared inner factor V of W = U V: grad = G^T A, G = Delta U
             term (G G^T) o (A A^T), G reduced over all neurons first
    READOUT  the output weights a: term A^L A^L^T
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


class Role(Enum):
    ROWS = "rows"
    RANK = "rank"
    READOUT = "readout"


class Group(NamedTuple):
    """One trained parameter tensor of a network: layer index (None for the readout), name."""

    layer: int | None
    name: str
    role: Role

    @property
    def key(self) -> tuple[str, str]:
        """The NTK term's name: ("layer0", "U"), ("readout", "a")."""
        return ("readout" if self.layer is None else f"layer{self.layer}", self.name)
