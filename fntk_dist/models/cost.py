"""Per-point cost of a TwoLayerNet: trainable parameters and floating-point operations.

FLOPs count a multiply-add as 2. The training step is the neuron-blocked one of
fntk_dist.train.blocked: a forward pass, then a backward pass that recomputes pre-activations.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class NetCost:
    trainable_params: int
    forward_flops: int  # per point
    train_step_flops: int  # per point: forward + blocked backward (recomputed pre-activations)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _features_flops(mode: str, sketch: str | None, d: int, k: int | None) -> int:
    if mode == "dense":
        return 0
    if mode == "sketch_in" and sketch == "srht":
        d_pad = 1 << max(0, (d - 1).bit_length())
        return d_pad * (int(math.log2(d_pad)) + 1)
    if mode == "sketch_in" and sketch == "countsketch":
        return 2 * d
    return 2 * k * d


def _preact_flops(mode: str, sketch: str | None, m: int, d: int, k: int | None) -> int:
    if mode == "dense":
        return 2 * m * d
    if mode == "sketch_out" and sketch == "srht":
        k_pad = 1 << max(0, (k - 1).bit_length())
        return -(-m // k_pad) * k_pad * (int(math.log2(k_pad)) + 1)
    if mode == "sketch_out" and sketch == "countsketch":
        return m
    return 2 * m * k


def net_cost(
    mode: str, sketch: str | None, m: int, d: int, k: int | None, train_output: bool
) -> NetCost:
    """Parameters and per-point FLOPs of the whole net (all m neurons)."""
    pre = _preact_flops(mode, sketch, m, d, k)
    forward = _features_flops(mode, sketch, d, k) + pre + 3 * m
    backward = pre + m  # recomputed pre-activations, then the masked residual
    params = m if train_output else 0
    if mode == "dense":
        params += m * d
        backward += 2 * m * d
    if mode in ("sketch_in", "lowrank"):
        params += m * k
        backward += 2 * m * k
    if mode in ("sketch_out", "lowrank"):
        params += k * d
        backward += pre + 2 * k * d  # G = (S o e) diag(a) U, then G^T X
    if train_output:
        backward += 2 * m
    return NetCost(params, forward, forward + backward)
