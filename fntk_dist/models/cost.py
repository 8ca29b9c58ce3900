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


def layer_cost(mode: str, sketch: str | None, m: int, d: int, k: int | None, *,
               recompute: bool = True, input_grad: bool = False) -> NetCost:
    """One linear map d -> m (all m neurons): its trained parameters, its pre-activations
    forward, and backward each trained factor's gradient, plus the pre-activations again when
    recomputed (the blocked step's neuron blocks) and the gradient of the layer's input when a
    trained layer lies below it (the signal to feature space, then the features' adjoint)."""
    pre = _preact_flops(mode, sketch, m, d, k)
    feats = _features_flops(mode, sketch, d, k)
    forward = feats + pre
    backward, params = pre if recompute else 0, 0
    if mode == "dense":
        params += m * d
        backward += 2 * m * d
    if mode in ("sketch_in", "lowrank"):
        params += m * k
        backward += 2 * m * k
    shared = mode in ("sketch_out", "lowrank")  # V trained: G = (S o e) diag(a) U is formed
    if shared:
        params += k * d
        backward += pre + 2 * k * d  # G = (S o e) diag(a) U, then G^T X
    if input_grad:
        backward += (0 if shared else pre) + feats
    return NetCost(params, forward, forward + backward)


def activation_cost(m: int) -> NetCost:
    """A hidden layer's output below the last: relu and the next layer's scale c forward, the
    mask and the scale backward."""
    return NetCost(0, 2 * m, 4 * m)


def readout_cost(m: int, trained: bool) -> NetCost:
    """relu and the weighted sum over m neurons; backward the masked residual (and a's grad)."""
    forward, backward = 3 * m, m + (2 * m if trained else 0)
    return NetCost(m if trained else 0, forward, forward + backward)


def net_cost(
    mode: str, sketch: str | None, m: int, d: int, k: int | None, train_output: bool
) -> NetCost:
    """Parameters and per-point FLOPs of a whole two-layer net (all m neurons)."""
    return layer_cost(mode, sketch, m, d, k) + readout_cost(m, train_output)


def deep_group_gram_flops(role: Role, rows: int, cols: int, m: int, k: int | None,
                          dim: int) -> int:
    """group_gram_flops plus the n x n product of the term's other factor in a deep net,
    whose widths make it as large as the first: F F^T (dim: the features' width) for ROWS,
    G G^T and A A^T (dim: the fan-in) for RANK."""
    other = {Role.ROWS: dim, Role.RANK: k + dim if k else 0, Role.READOUT: 0}[role]
    return group_gram_flops(role, rows, cols, m, k) + 2 * rows * cols * other


def group_gram_flops(role: Role, rows: int, cols: int, m: int, k: int | None) -> int:
    """FLOPs a trained group adds to a rows x cols Gram tile over all m neurons of its layer:
    an n_I x n_J x m product for a per-neuron sum, two n x m x k products for G = Delta U."""
    if role is Role.RANK:
        return 2 * (rows + cols) * m * k
    return 2 * rows * cols * m
