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

Threads (issue 16). On the CPU the blocks are walked by torch.get_num_threads() Python threads
side by side (train.walkers), each with single-threaded ops on its own blocks, rather than one
block at a time with every op split across torch's threads. A factorized layer's block GEMMs
are small (n x k x block, k ~ 32; a block of about 1 MB of pre-activations): split across
threads each is a short parallel region, and on 2 cores a second thread gained at most 1.44x
(sometimes lost). Larger blocks would make each region longer but leave L2, and a parallel
region stalls whenever another process takes a core away; walkers do not (each has its own
blocks): tools/bench_step.py --walk threads intra intra:4096 measures both side by side
(README, "Performance"; docs/DESIGN.md, "Neuron-blocked step"). Rows of the
gradients are disjoint per block and written in place; the sums over blocks (the output, the
rank-space accumulator, a dense layer's input gradient) are added in block order, so a threaded
walk adds the same numbers in the same order as a walk on one thread. Small problems (a block
below MIN_THREADED_WORK multiply-adds per feature pass) and CUDA (one stream) walk on the
calling thread.

Buffers. The block buffers live per thread for the process's life (grown when a larger one is
asked for), and a SpareGrads hands the gradients of the last step back to be filled again, so
a training step allocates nothing of the width's size.
"""

from __future__ import annotations

import math
import threading

import torch

from ..models.blocks import device_block, neuron_blocks
from ..models.groups import Role
from ..models.network import Network
from .walkers import walk

# Multiply-adds n * block * feature_dim of one block's GEMM below which threads do not pay: a
# hand-over between walkers costs tens of microseconds, a block of this size about a hundred.
MIN_THREADED_WORK = 1 << 20


def default_train_block(net: Network, n: int) -> int:
    """Neurons per block: on CUDA as many as free device memory allows (device_block: a
    CPU-sized block would launch tens of thousands of small kernels a step); on the CPU a
    block of pre-activations of about 1 MB, which stays in cache."""
    fit = device_block(n, net.device)
    if fit is not None:
        return min(net.m_local, fit)
    return max(64, min(net.m_local, 4096, (1 << 18) // max(1, n)))


def walk_threads(net: Network, n: int, block: int) -> int:
    """Threads that walk the blocks: torch's thread count on the CPU where a block is large
    enough to pay for the hand-over, 1 (the calling thread) otherwise and on CUDA."""
    layer = net.layers[-1]
    if net.device.type != "cpu" or n * min(block, net.m_local) * layer.feature_dim \
            < MIN_THREADED_WORK:
        return 1
    return torch.get_num_threads()


class SpareGrads:
    """Gradient tensors of the last step, handed back to the blocked step to be filled again.

    recycle(params) takes each parameter's .grad and leaves None (what zero_grad(set_to_none)
    does); the next backward's gradient of that parameter is written into the same memory and
    lands in .grad without a copy (autograd keeps a gradient nobody else holds). So nobody may
    keep a step's .grad past the next recycle.
    """

    def __init__(self) -> None:
        self._held: dict[torch.Tensor, torch.Tensor] = {}

    def recycle(self, params: list[torch.Tensor]) -> None:
        for p in params:
            if p.grad is not None:
                self._held[p] = p.grad
                p.grad = None

    def take(self, p: torch.Tensor) -> torch.Tensor:
        """p's recycled gradient if it still fits p, else a new one (either uninitialised)."""
        g = self._held.pop(p, None)
        ok = (g is not None and g.shape == p.shape and g.dtype == p.dtype
              and g.device == p.device and g.is_contiguous())
        return g if ok else torch.empty_like(p)


_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """This thread's buffer `name`, viewed as a contiguous tensor of `shape`; kept for the
    thread's life and only reallocated to grow (so a training step allocates none)."""
    held = getattr(_SCRATCH, "bufs", None)
    if held is None:
        held = _SCRATCH.bufs = {}
    key, numel = (name, like.dtype, like.device), math.prod(shape)
    flat = held.get(key)
    if flat is None or flat.numel() < numel:
        flat = held[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return flat[:numel].view(shape)


def _to_rank(layer, y: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
    """Y U[i0:i1] (Layer.to_rank), into this thread's buffer where U is a stored matrix."""
    if layer.mode == "sketch_out":
        return layer.to_rank(y, i0, i1)
    return torch.mm(y, layer.U[i0:i1], out=_scratch("rank", (y.shape[0], layer.k), y))


class _BlockedOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, net, groups, blocks, threads, spare, *params):
        with torch.autocast(x.device.type, enabled=False):  # see blocked_output
            return _BlockedOutput._forward(ctx, x, net, groups, blocks, threads, spare, *params)

    @staticmethod
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _BlockedOutput._backward(ctx, grad_out)

    @staticmethod
    def _forward(ctx, x, net, groups, blocks, threads, spare, *params):  # noqa: ARG004
        layer, a = net.layers[-1], net.a
        feats = layer.features(x)
        n = x.shape[0]
        out = torch.zeros(n, dtype=x.dtype, device=x.device)

        def compute(i0, i1):
            p = layer.preact(feats, i0, i1, out=_scratch("block", (n, i1 - i0), x)).relu_()
            return lambda: out.addmv_(p, a[i0:i1])

        walk(blocks, compute, threads)
        ctx.save_for_backward(x, feats)
        ctx.net, ctx.groups, ctx.blocks, ctx.threads, ctx.spare = net, groups, blocks, threads, \
            spare
        return out / math.sqrt(net.m)

    @staticmethod
    def _backward(ctx, grad_out):
        x, feats = ctx.saved_tensors
        net, n = ctx.net, x.shape[0]
        layer, a = net.layers[-1], net.a
        # One hidden layer has at most one trained group per role.
        want = {g.role: g for g, need in zip(ctx.groups, ctx.needs_input_grad[6:]) if need}

        def grad_buffer(role):
            if role not in want:
                return None
            p = net.parameter(want[role])
            return ctx.spare.take(p) if ctx.spare is not None else torch.empty_like(p)

        rows, readout = grad_buffer(Role.ROWS), grad_buffer(Role.READOUT)
        # The input's gradient (a deep net's lower layers train) is sum_b (S_b o e) diag(a_b)
        # W_b: through the rank space for a factorized layer, where V's gradient forms it too.
        back = ctx.needs_input_grad[0]
        dense_back = x.new_zeros(x.shape) if back and layer.mode == "dense" else None
        rank = (x.new_zeros(n, layer.k)
                if Role.RANK in want or (back and layer.mode != "dense") else None)
        e = (grad_out / math.sqrt(net.m))[:, None]

        def compute(i0, i1):
            # The block is turned in place into relu(P) where a needs it, then into the masked
            # residual S o e, so it stays in cache and nothing n x block is allocated.
            p = layer.preact(feats, i0, i1, out=_scratch("block", (n, i1 - i0), x))
            if readout is not None:
                torch.mv(p.clamp_(min=0).T, e[:, 0], out=readout[i0:i1])
            me = p.gt_(0).mul_(e)  # S = 1[P > 0] in P's dtype
            if rows is not None:
                torch.mm(me.T, feats, out=rows[i0:i1])
                rows[i0:i1] *= a[i0:i1, None]
            if rank is not None:
                share = _to_rank(layer, me.mul_(a[i0:i1]), i0, i1)
                return lambda: rank.add_(share)
            if dense_back is not None:
                share = torch.mm(me.mul_(a[i0:i1]), layer.W[i0:i1],
                                 out=_scratch("dense", x.shape, x))
                return lambda: dense_back.add_(share)
            return None  # nothing shared: the threads need not wait for each other

        walk(ctx.blocks, compute, ctx.threads)
        if rank is not None:  # dL/dZ of this shard's neurons; Z was summed over input shards
            rank = layer.sum_inputs(rank)
        grads = {Role.ROWS: rows, Role.READOUT: readout,
                 Role.RANK: None if Role.RANK not in want else rank.T @ x}  # G^T A: V's
        grad_x = None
        if back:
            grad_x = dense_back if dense_back is not None else layer.features_adjoint(rank)
        return grad_x, None, None, None, None, None, *(grads[g.role] for g in ctx.groups)


def blocked_output(net: Network, x: torch.Tensor, block: int | None = None,
                   threads: int | None = None, spare: SpareGrads | None = None) -> torch.Tensor:
    """f(X) of net's neurons (its last layer's, for a width shard), differentiable: the last
    layer neuron block by neuron block, the layers below it whole.

    threads: how many threads walk the blocks (default walk_threads: torch's thread count on
    the CPU where blocks are large enough; 1 walks them on the calling thread, each op then
    using torch's intra-op threads; ignored on CUDA). spare: where the step's gradients come
    from (SpareGrads; fresh tensors without one).

    Under autocast the layers below run as autocast says, and the last layer's walk in the
    net's dtype: it writes into preallocated buffers of that dtype, which autocast's casts
    would not match, and its gradients go straight into the parameters' dtype.
    """
    n = x.shape[0]
    b = default_train_block(net, n) if block is None else block
    blocks = neuron_blocks(net, b, n)
    if threads is None or net.device.type != "cpu":
        threads = walk_threads(net, n, b) if threads is None else 1
    top = net.depth - 1
    groups = tuple(g for g in net.groups if g.layer is None or g.layer == top)
    return _BlockedOutput.apply(net.last_input(x).to(net.dtype), net, groups, blocks, threads,
                                spare, *(net.parameter(g) for g in groups))
