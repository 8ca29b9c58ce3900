"""Neuron blocks: how the kernels and the training step walk a layer's neurons.

Nothing n x m is ever held: every consumer (Gram, mat-vec, blocked step, diagnostics) works on
the pre-activations of one block of neurons at a time, so memory is O(n * block) at any width.
"""

from __future__ import annotations

from typing import Protocol

# A neuron count is exact in float32 up to 2^24. The Gram counts shared active neurons in a
# float32 accumulator, so no block may be larger than half of that (the accumulator is flushed
# into float64 before it could pass 2^24).
F32_EXACT = 1 << 24


class HasNeurons(Protocol):
    @property
    def m_local(self) -> int: ...


def default_block(net: HasNeurons, n_rows: int) -> int:
    """Neurons per block: about 8M activations in flight, at least 64, at most the width."""
    return max(64, min(net.m_local, (1 << 23) // max(1, n_rows)))


def neuron_blocks(net: HasNeurons, block: int | None, n_rows: int) -> list[tuple[int, int]]:
    """(i0, i1) local neuron ranges covering the net's neurons, `block` at a time."""
    b = default_block(net, n_rows) if block is None else block
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"block: expected an integer >= 1, got {block!r}")
    b = min(b, F32_EXACT // 2)
    return [(i, min(i + b, net.m_local)) for i in range(0, net.m_local, b)]
