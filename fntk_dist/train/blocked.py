"""The network's output as an autograd Function that walks neurons in blocks.

The n x m activations are never held whole: the forward pass keeps only the features (X or
Z = X V^T, n x k), and the backward pass recomputes each block's pre-activations. Memory is
O(n * (block + k) + parameters) at any width, and any torch optimizer (or DeepSpeed) can step
the gradients it leaves in .grad.
"""

from __future__ import annotations

import math

import torch

from ..models.net import TwoLayerNet
from ..ntk.empirical import neuron_blocks


def default_train_block(net: TwoLayerNet, n: int) -> int:
    """Neurons per block: a block of pre-activations of about 1 MB stays in cache."""
    return max(64, min(net.m_local, 4096, (1 << 18) // max(1, n)))


def _block_buffer(x: torch.Tensor, blocks: list[tuple[int, int]]):
    """A view maker over one buffer for all blocks: each block's (n, b) view is contiguous."""
    n, width = x.shape[0], max(i1 - i0 for i0, i1 in blocks)
    flat = torch.empty(n * width, dtype=x.dtype, device=x.device)
    return lambda b: flat[: n * b].view(n, b)


class _BlockedOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, first, v, a, net, blocks):  # noqa: ARG004 - tensors passed for autograd
        feats = net.features(x)
        buf = _block_buffer(x, blocks)
        out = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for i0, i1 in blocks:
            out.addmv_(net.preact(feats, i0, i1, out=buf(i1 - i0)).relu_(), a[i0:i1])
        ctx.save_for_backward(x, feats)
        ctx.net, ctx.blocks = net, blocks
        return out / math.sqrt(net.m)

    @staticmethod
    def backward(ctx, grad_out):
        x, feats = ctx.saved_tensors
        net, blocks = ctx.net, ctx.blocks
        need_first, need_v, need_a = ctx.needs_input_grad[1:4]
        first = net.W if net.mode == "dense" else net.U
        e = (grad_out / math.sqrt(net.m))[:, None]
        g_first = torch.empty_like(first) if need_first else None
        g_a = torch.empty_like(net.a) if need_a else None
        g_rank = x.new_zeros(x.shape[0], net.k) if need_v else None
        buf = _block_buffer(x, blocks)
        for i0, i1 in blocks:
            # The block is turned in place into relu(P), then into the masked residual S o e,
            # so it stays in cache and nothing n x block is allocated.
            p = net.preact(feats, i0, i1, out=buf(i1 - i0)).clamp_(min=0)
            if need_a:
                torch.mv(p.T, e[:, 0], out=g_a[i0:i1])
            me = p.sign_().mul_(e)
            if need_first:
                torch.mm(me.T, feats, out=g_first[i0:i1])
                g_first[i0:i1] *= net.a[i0:i1, None]
            if need_v:
                g_rank += net.to_rank(me.mul_(net.a[i0:i1]), i0, i1)
        g_v = g_rank.T @ x if need_v else None
        return None, g_first, g_v, g_a, None, None


def blocked_output(net: TwoLayerNet, x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """f(X) of net's neurons, differentiable, computed neuron block by neuron block."""
    b = default_train_block(net, x.shape[0]) if block is None else block
    blocks = neuron_blocks(net, b, x.shape[0])
    first = net.W if net.mode == "dense" else net.U
    return _BlockedOutput.apply(x, first, net.V, net.a, net, blocks)
