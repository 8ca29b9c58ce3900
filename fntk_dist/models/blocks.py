"""Neuron blocks: how the kernels and the training step walk a layer's neurons.

Nothing n x m is ever held: every consumer (Gram, mat-vec, blocked step, diagnostics) works on
the pre-activations of one block of neurons at a time, so memory is O(n * block) at any width.

The block size depends on where the work runs. On the CPU a block's pre-activations should stay
in cache (default_block). On a GPU each block is a few kernel launches, so blocks are as large
as free device memory allows (device_block): a CPU-sized block of 64 neurons would launch tens
of thousands of small kernels per step and leave the tensor cores idle.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..runtime import free_device_bytes

# A neuron count is exact in float32 up to 2^24. The Gram counts shared active neurons in a
# float32 accumulator, so no block may be larger than half of that (the accumulator is flushed
# into float64 before it could pass 2^24).
F32_EXACT = 1 << 24

# device_block: the share of free device memory one block may take (1 / DEVICE_SHARE), the
# bytes a block keeps per (row, neuron) (up to four n x block tensors of 8 bytes: pre-activations
# for X1 and X2, their masks or ReLUs, a sketch's scratch), and the smallest block (a multiple
# of 256 keeps tensor-core tiles full).
DEVICE_SHARE = 4
# default_block on the CPU: activations of one block over all its rows. 4M keeps each n x block
# float64 temporary at 16 MB at most, below glibc's largest mmap threshold (32 MiB,
# fntk_dist.memory), so freed blocks are reused instead of mapped and faulted in afresh. Twice
# that (the old default) made a 1024-row tile's partial at m = 16384 on a 2-core host 25 %
# slower for sketch_in and 38 % for sketch_out, dense and lowrank within 6 % either way
# (tools/bench_tile_parts.py --against 309a98d); half of it gained nothing more.
CPU_BLOCK_ACTIVATIONS = 1 << 22
BYTES_PER_ACTIVATION = 32
MIN_DEVICE_BLOCK = 256


class HasNeurons(Protocol):
    @property
    def m_local(self) -> int: ...


def device_block(n_rows: int, device: torch.device | str) -> int | None:
    """Neurons per block on a CUDA device, from its free memory; None elsewhere (the caller
    keeps its CPU heuristic).

        block = 2^floor(log2(free / (DEVICE_SHARE * BYTES_PER_ACTIVATION * n_rows)))

    clamped to [MIN_DEVICE_BLOCK, F32_EXACT / 2]: the blocks' tensors take at most a quarter
    of the memory free now (free = what the driver reports plus what torch's allocator holds
    unused). Rounding down to a power of two keeps the block, and so the order of the sums,
    the same from call to call while free memory moves a little.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    fit = free_device_bytes(device) // (DEVICE_SHARE * BYTES_PER_ACTIVATION * max(1, n_rows))
    if fit < MIN_DEVICE_BLOCK:
        return MIN_DEVICE_BLOCK
    return min(1 << (int(fit).bit_length() - 1), F32_EXACT // 2)


def default_block(net: HasNeurons, n_rows: int, device: torch.device | str | None = None) -> int:
    """Neurons per block, at most the width: device_block on a CUDA device; elsewhere
    CPU_BLOCK_ACTIVATIONS over the rows, at least 64."""
    fit = None if device is None else device_block(n_rows, device)
    if fit is not None:
        return min(net.m_local, fit)
    return max(64, min(net.m_local, CPU_BLOCK_ACTIVATIONS // max(1, n_rows)))


def neuron_blocks(net: HasNeurons, block: int | None, n_rows: int,
                  device: torch.device | str | None = None) -> list[tuple[int, int]]:
    """(i0, i1) local neuron ranges covering the net's neurons, `block` at a time (default:
    default_block for the device the work runs on)."""
    b = default_block(net, n_rows, device) if block is None else block
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"block: expected an integer >= 1, got {block!r}")
    b = min(b, F32_EXACT // 2)
    return [(i, min(i + b, net.m_local)) for i in range(0, net.m_local, b)]
