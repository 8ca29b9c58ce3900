"""The network's output as an autograd Function that walks neurons in blocks.

The last hidden layer's n x m activations are never held whole: the forward pass keeps only
the features (its input, or Z = input V^T, n x k), and the backward pass recomputes each
block's pre-activations. Memory is O(n * (block + k) + parameters) at any width for a two-layer
net, and any torch optimizer (or DeepSpeed) can step the gradients it leaves in .grad.

A deeper net runs its lower layers whole under plain autograd: their n x m_l activations are
what a deep net's backward needs anyway, and autograd keeps exactly those. Only the last layer,
the one the readout sums over and width shards split, is walked in blocks; its input s^L =
c_L h^{L-1} (Network.last_input) is the Function's input, and the Function returns the
gradient with respect to it, which autograd carries down.

The Function takes the net's trained tensors as they come (net.groups) and computes each one's
gradient by its role, so it needs no knowledge of which tensors a mode trains.
"""

from __future__ import annotations

import math

import torch

from ..models.blocks import neuron_blocks
from ..models.groups import Role
from ..models.network import Network


def default_train_block(net: Network, n: int) -> int:
    """Neurons per block: a block of pre-activations of about 1 MB stays in cache."""
    return max(64, min(net.m_local, 4096, (1 << 18) // max(1, n)))


def _block_buffer(x: torch.Tensor, blocks: list[tuple[int, int]]):
    """A view maker over one buffer for all blocks: each block's (n, b) view is contiguous."""
    n, width = x.shape[0], max(i1 - i0 for i0, i1 in blocks)
    flat = torch.empty(n * width, dtype=x.dtype, device=x.device)
    return lambda b: flat[: n * b].view(n, b)


class _BlockedOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, net, groups, blocks, *params):  # noqa: ARG004 - params for autograd
        layer = net.layers[-1]
        feats = layer.features(x)
        buf = _block_buffer(x, blocks)
        out = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for i0, i1 in blocks:
            out.addmv_(layer.preact(feats, i0, i1, out=buf(i1 - i0)).relu_(), net.a[i0:i1])
        ctx.save_for_backward(x, feats)
        ctx.net, ctx.groups, ctx.blocks = net, groups, blocks
        return out / math.sqrt(net.m)

    @staticmethod
    def backward(ctx, grad_out):
        x, feats = ctx.saved_tensors
        net, blocks = ctx.net, ctx.blocks
        layer, a = net.layers[-1], net.a
        # One hidden layer has at most one trained group per role.
        want = {g.role: g for g, need in zip(ctx.groups, ctx.needs_input_grad[4:]) if need}
        rows = torch.empty_like(net.parameter(want[Role.ROWS])) if Role.ROWS in want else None
        readout = torch.empty_like(a) if Role.READOUT in want else None
        # The input's gradient (a deep net's lower layers train) is sum_b (S_b o e) diag(a_b)
        # W_b: through the rank space for a factorized layer, where V's gradient forms it too.
        back = ctx.needs_input_grad[0]
        dense_back = x.new_zeros(x.shape) if back and layer.mode == "dense" else None
        rank = (x.new_zeros(x.shape[0], layer.k)
                if Role.RANK in want or (back and layer.mode != "dense") else None)
        e = (grad_out / math.sqrt(net.m))[:, None]
        buf = _block_buffer(x, blocks)
        for i0, i1 in blocks:
            # The block is turned in place into relu(P), then into the masked residual S o e,
            # so it stays in cache and nothing n x block is allocated.
            p = layer.preact(feats, i0, i1, out=buf(i1 - i0)).clamp_(min=0)
            if readout is not None:
                torch.mv(p.T, e[:, 0], out=readout[i0:i1])
            me = p.sign_().mul_(e)
            if rows is not None:
                torch.mm(me.T, feats, out=rows[i0:i1])
                rows[i0:i1] *= a[i0:i1, None]
            if rank is not None:
                rank += layer.to_rank(me.mul_(a[i0:i1]), i0, i1)
            if dense_back is not None:
                dense_back.addmm_(me.mul_(a[i0:i1]), layer.W[i0:i1])
        grads = {Role.ROWS: rows, Role.READOUT: readout,
                 Role.RANK: None if Role.RANK not in want else rank.T @ x}  # G^T A: V's
        grad_x = None
        if back:
            grad_x = dense_back if dense_back is not None else layer.features_adjoint(rank)
        return grad_x, None, None, None, *(grads[g.role] for g in ctx.groups)


def blocked_output(net: Network, x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """f(X) of net's neurons (its last layer's, for a width shard), differentiable: the last
    layer neuron block by neuron block, the layers below it whole."""
    b = default_train_block(net, x.shape[0]) if block is None else block
    blocks = neuron_blocks(net, b, x.shape[0])
    top = net.depth - 1
    groups = tuple(g for g in net.groups if g.layer is None or g.layer == top)
    return _BlockedOutput.apply(net.last_input(x), net, groups, blocks,
                                *(net.parameter(g) for g in groups))
