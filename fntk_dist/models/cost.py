"""Cost model: trainable parameters and floating-point operations, per layer and per Gram tile.

FLOPs count a multiply-add as 2. The training step is the neuron-blocked one of
fntk_dist.train.blocked: a forward pass, then a backward pass that recomputes pre-activations.
A network's cost is the sum of its layers' and its readout's, so a deeper stack adds terms
instead of changing a formula.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .groups import Role


@dataclass(frozen=True)
class NetCost:
    trainable_params: int
    forward_flops: int  # per point
    train_step_flops: int  # per point: forward + blocked backward (recomputed pre-activations)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __add__(self, other: NetCost) -> NetCost:
        return NetCost(self.trainable_params + other.trainable_params,
                       self.forward_flops + other.forward_flops,
                       self.train_step_flops + other.train_step_flops)


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


def layer_cost(mode: str, sketch: str | None, m: int, d: int, k: int | None) -> NetCost:
    """One linear map d -> m (all m neurons): its trained parameters, its pre-activations
    forward, and backward the recomputed pre-activations plus each trained factor's gradient."""
    pre = _preact_flops(mode, sketch, m, d, k)
    forward = _features_flops(mode, sketch, d, k) + pre
    backward, params = pre, 0
    if mode == "dense":
        params += m * d
        backward += 2 * m * d
    if mode in ("sketch_in", "lowrank"):
        params += m * k
        backward += 2 * m * k
    if mode in ("sketch_out", "lowrank"):
        params += k * d
        backward += pre + 2 * k * d  # G = (S o e) diag(a) U, then G^T X
    return NetCost(params, forward, forward + backward)


def readout_cost(m: int, trained: bool) -> NetCost:
    """relu and the weighted sum over m neurons; backward the masked residual (and a's grad)."""
    forward, backward = 3 * m, m + (2 * m if trained else 0)
    return NetCost(m if trained else 0, forward, forward + backward)


def net_cost(
    mode: str, sketch: str | None, m: int, d: int, k: int | None, train_output: bool
) -> NetCost:
    """Parameters and per-point FLOPs of a whole two-layer net (all m neurons)."""
    return layer_cost(mode, sketch, m, d, k) + readout_cost(m, train_output)


def group_gram_flops(role: Role, rows: int, cols: int, m: int, k: int | None) -> int:
    """FLOPs a trained group adds to a rows x cols Gram tile over all m neurons of its layer:
    an n_I x n_J x m product for a per-neuron sum, two n x m x k products for G = Delta U."""
    if role is Role.RANK:
        return 2 * (rows + cols) * m * k
    return 2 * rows * cols * m
