"""Random tensors as pure functions of (seed, tensor name, block index).

A tensor's name says which layer it belongs to (see stream): layer 0 keeps the names of the
two-layer network, so a depth-1 net draws exactly the numbers it always drew. Per-neuron
tensors are generated in fixed blocks of GEN_BLOCK rows, each from its own generator, so any
worker can rebuild neurons [lo, hi) alone and get exactly the rows of the whole network,
whatever the number of workers or the device. Generation always runs on the CPU in float64
(CUDA generators give other streams); the result is then cast and moved.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

GEN_BLOCK = 256  # rows per generator block: part of the network's identity, never change it


def stream(layer: int, name: str) -> str:
    """The name of tensor `name` (W, U, V, V.srht_sign, ...) of hidden layer `layer` (0-based).

    Layer 0 keeps the bare name, which makes a depth-1 network bit-identical to the two-layer
    network it generalises; deeper layers are prefixed ("layer1.U"), a name no layer 0 tensor
    can have.
    """
    return name if layer == 0 else f"layer{layer}.{name}"


def generator(seed: int, name: str, block: int = 0) -> torch.Generator:
    """A CPU generator seeded by a stable hash of (seed, name, block)."""
    digest = hashlib.blake2b(f"{seed}/{name}/{block}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def _rows(
    seed: int, name: str, lo: int, hi: int, make: Callable[[int, torch.Generator], torch.Tensor]
) -> torch.Tensor:
    """Rows [lo, hi) of a per-neuron tensor whose block b is make(GEN_BLOCK, generator(b))."""
    if hi <= lo:
        return make(0, generator(seed, name, 0))
    parts = []
    for b in range(lo // GEN_BLOCK, (hi - 1) // GEN_BLOCK + 1):
        start = b * GEN_BLOCK
        full = make(GEN_BLOCK, generator(seed, name, b))
        parts.append(full[max(lo, start) - start : min(hi, start + GEN_BLOCK) - start])
    return torch.cat(parts)


def normal_rows(
    seed: int, name: str, lo: int, hi: int, cols: int, std: float = 1.0
) -> torch.Tensor:
    """Rows [lo, hi) of a matrix with i.i.d. N(0, std^2) entries, float64 on the CPU."""
    return _rows(
        seed, name, lo, hi,
        lambda r, g: torch.randn(r, cols, generator=g, dtype=torch.float64) * std,
    )


def sign_rows(seed: int, name: str, lo: int, hi: int, cols: int | None = None) -> torch.Tensor:
    """Entries [lo, hi) (rows, if cols is given) of uniform +-1 values, float64 on the CPU."""
    shape = (lambda r: (r,)) if cols is None else (lambda r: (r, cols))
    return _rows(
        seed, name, lo, hi,
        lambda r, g: torch.randint(0, 2, shape(r), generator=g).to(torch.float64) * 2 - 1,
    )


def index_rows(seed: int, name: str, lo: int, hi: int, high: int) -> torch.Tensor:
    """Entries [lo, hi) of uniform integers in [0, high), int64 on the CPU."""
    return _rows(seed, name, lo, hi, lambda r, g: torch.randint(0, high, (r,), generator=g))


def permutation(seed: int, name: str, size: int) -> torch.Tensor:
    """A uniform random permutation of range(size)."""
    return torch.randperm(size, generator=generator(seed, name))
