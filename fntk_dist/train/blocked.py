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

CUDA under bf16/fp16 autocast (issue 18): the walk is replaced by train.fused's Triton kernels,
which keep each tile's pre-activations in registers (the walk's passes over n x block buffers
in device memory bound the step at 18% of the bf16 peak on an H200; the kernels at 65-71%).

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
from . import fused as fused_kernels
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


def walk_threads(net: Network, n: int, block: int, count: int | None = None) -> int:
    """Threads that walk the blocks: `count` (default torch's thread count) on the CPU where a
    block is large enough to pay for the hand-over, 1 (the calling thread) otherwise and on
    CUDA."""
    layer = net.layers[-1]
    if net.device.type != "cpu" or n * min(block, net.m_local) * layer.feature_dim \
            < MIN_THREADED_WORK:
        return 1
    return torch.get_num_threads() if count is None else count


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
    thread's life and only reallocated to grow (so a training step allocates none). The views
    are kept too: a walk asks for the same few shapes hundreds of times a step, and on a thin
    layer building each view again cost about 2% of the step."""
    views = getattr(_SCRATCH, "views", None)
    if views is None:
        views = _SCRATCH.views = {}
        _SCRATCH.flats = {}
    key = (name, shape, like.dtype, like.device)
    view = views.get(key)
    if view is not None:
        return view
    flat_key, numel = (name, like.dtype, like.device), math.prod(shape)
    flat = _SCRATCH.flats.get(flat_key)
    if flat is None or flat.numel() < numel:
        flat = _SCRATCH.flats[flat_key] = torch.empty(numel, dtype=like.dtype,
                                                      device=like.device)
        views.clear()  # views of the smaller buffer would keep it alive
    view = views[key] = flat[:numel].view(shape)
    return view


def block_dtype(net: Network, x: torch.Tensor) -> torch.dtype | None:
    """The dtype of the walk's block products: autocast's (bf16, say) where autocast is on for
    x's device, the net is float32 and its last layer stores the rows it multiplies (every mode
    but sketch_out, whose fast sketches run in the net's dtype); None (the net's dtype)
    otherwise. As under autocast, each product rounds to that dtype while sums over blocks,
    the parameters and their gradients stay in the net's."""
    kind = x.device.type
    if (net.layers[-1].mode == "sketch_out" or x.dtype != torch.float32
            or not torch.is_autocast_enabled(kind)):
        return None
    return torch.get_autocast_dtype(kind)


def _relu_block(layer, stored: torch.Tensor | None, feats: torch.Tensor, i0: int, i1: int,
                lowp: torch.dtype | None,
                relu: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """relu(P) of neurons [i0, i1) in this thread's block buffer (feats' dtype), and the rows
    P came from (stored[i0:i1]; None for sketch_out's fast sketches): cast into this thread's
    buffer in a low-precision walk. On CUDA the relu runs in the GEMM's epilogue (cuBLASLt,
    through torch._addmm_activation with a zero bias), which spares a pass over the n x block
    buffer. relu=False: P itself on the CPU, for a caller that only needs P's signs."""
    n, width = feats.shape[0], i1 - i0
    if stored is None:
        p = layer.preact(feats, i0, i1, out=_scratch("block", (n, width), feats))
        return (p.relu_() if relu else p), None
    rows = stored[i0:i1]
    if lowp is not None:
        rows = _scratch("rows", tuple(rows.shape), feats).copy_(rows)
    if feats.is_cuda:
        zero = _scratch("zero_bias", (width,), feats).zero_()
        return torch._addmm_activation(zero, feats, rows.T,
                                       out=_scratch("block", (n, width), feats)), rows
    # Stored neuron-major (block x n) and returned as its n x block view: the backward's
    # gradient GEMM (P^T-shaped residual times the features) then reads its left operand
    # contiguously, 6% of a k = 32 block's backward on the CPU (forward and dense unchanged).
    p = torch.mm(rows, feats.T, out=_scratch("block", (width, n), feats)).T
    return (p.relu_() if relu else p), rows


def _into(dest: torch.Tensor, op, *args: torch.Tensor) -> None:
    """dest = op(*args): written in place where the dtypes agree, else copied (rounded up from
    a low-precision product into the gradient's dtype)."""
    if args[0].dtype == dest.dtype:
        op(*args, out=dest)
    else:
        dest.copy_(op(*args))


def _fused_rows(layer, feats: torch.Tensor, lowp: torch.dtype | None) -> torch.Tensor | None:
    """The last layer's rows in lowp when train.fused's kernels take this step (CUDA, a
    low-precision walk, rows stored, few enough features), else None."""
    stored = layer.stored_rows
    if lowp is None or stored is None or not fused_kernels.available(feats):
        return None
    return stored.detach().to(lowp).contiguous()


class _BlockedOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, net, groups, blocks, threads, spare, fused, *params):
        ctx.lowp = block_dtype(net, x)  # read before autocast is turned off for the walk
        ctx.fused = fused
        with torch.autocast(x.device.type, enabled=False):  # see blocked_output
            return _BlockedOutput._forward(ctx, x, net, groups, blocks, threads, spare, *params)

    @staticmethod
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _BlockedOutput._backward(ctx, grad_out)

    @staticmethod
    def _forward(ctx, x, net, groups, blocks, threads, spare, *params):  # noqa: ARG004
        layer, a, lowp = net.layers[-1], net.a, ctx.lowp
        feats = layer.features(x)
        fc, ac = (feats, a) if lowp is None else (feats.to(lowp), a.to(lowp))
        ctx.save_for_backward(x, feats)
        ctx.net, ctx.groups, ctx.blocks, ctx.threads, ctx.spare = net, groups, blocks, threads, \
            spare
        # Decided once: the backward takes the kernels exactly when the forward did, with these
        # rows (cast once a step, as the walk casts each block's).
        ctx.fused_rows = rows = _fused_rows(layer, fc, lowp) if ctx.fused else None
        if rows is not None:
            return fused_kernels.forward(fc, rows, a.detach().float().contiguous()) \
                / math.sqrt(net.m)
        out = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        stored = layer.stored_rows

        def compute(i0, i1):
            p = _relu_block(layer, stored, fc, i0, i1, lowp)[0]
            if lowp is None:
                return lambda: out.addmv_(p, a[i0:i1])
            share = torch.mv(p, ac[i0:i1])  # a block's sum in lowp, the sum of blocks in x's
            return lambda: out.add_(share)

        walk(blocks, compute, threads)
        return out / math.sqrt(net.m)

    @staticmethod
    def _backward(ctx, grad_out):
        x, feats = ctx.saved_tensors
        net, n = ctx.net, x.shape[0]
        layer, a = net.layers[-1], net.a
        # One hidden layer has at most one trained group per role.
        want = {g.role: g for g, need in zip(ctx.groups, ctx.needs_input_grad[7:]) if need}

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
        lowp = ctx.lowp
        fc, ac, ec = ((feats, a, e) if lowp is None
                      else (feats.to(lowp), a.to(lowp), e.to(lowp)))
        stored, a_col = layer.stored_rows, a[:, None]

        def compute(i0, i1):
            # The block, relu(P), is turned in place into the masked residual S o e in one pass
            # (threshold_backward: e where P > 0, else 0), so nothing n x block is allocated;
            # a scales the block's rows (i1 - i0 of them) rather than the n x block residual.
            # Without a trained readout only P's signs are read: its relu pass is skipped.
            r, rows_b = _relu_block(layer, stored, fc, i0, i1, lowp, relu=readout is not None)
            if readout is not None:
                _into(readout[i0:i1], torch.mv, r.T, ec[:, 0])
            me = torch.ops.aten.threshold_backward.grad_input(
                ec.expand(r.shape), r, 0, grad_input=r)
            if rows is not None:
                grad = rows[i0:i1]
                _into(grad, torch.mm, me.T, fc)
                grad.mul_(a_col[i0:i1])
            if rank is None and dense_back is None:
                return None  # nothing shared: the threads need not wait for each other
            if rows_b is None:  # sketch_out: its adjoint takes the scaled residual
                share = layer.to_rank(me.mul_(a[i0:i1]), i0, i1)
            else:
                scaled = _scratch("rows_a", tuple(rows_b.shape), rows_b)
                torch.mul(rows_b, ac[i0:i1, None], out=scaled)
                if lowp is None:
                    share = torch.mm(me, scaled, out=_scratch("share", (n, scaled.shape[1]), x))
                else:
                    share = me @ scaled
            acc = rank if rank is not None else dense_back
            return lambda: acc.add_(share)

        fused_rows = ctx.fused_rows
        if fused_rows is None:
            walk(ctx.blocks, compute, ctx.threads)
        else:  # the kernels: no walk, nothing n x block in device memory
            a32, e32 = a.detach().float().contiguous(), e[:, 0].float().contiguous()
            if rows is not None or readout is not None:
                fused_kernels.backward(fc, fused_rows, a32, e32, rows, readout)
            if rank is not None:
                rank = fused_kernels.input_grad(fc, fused_rows, a32, e32)
            elif dense_back is not None:
                dense_back = fused_kernels.input_grad(fc, fused_rows, a32, e32)
        if rank is not None:  # dL/dZ of this shard's neurons; Z was summed over input shards
            rank = layer.sum_inputs(rank)
        grads = {Role.ROWS: rows, Role.READOUT: readout,
                 Role.RANK: None if Role.RANK not in want else rank.T @ x}  # G^T A: V's
        grad_x = None
        if back:
            grad_x = dense_back if dense_back is not None else layer.features_adjoint(rank)
        return grad_x, None, None, None, None, None, None, *(grads[g.role] for g in ctx.groups)


def blocked_output(net: Network, x: torch.Tensor, block: int | None = None,
                   threads: int | None = None, spare: SpareGrads | None = None,
                   fused: bool = True) -> torch.Tensor:
    """f(X) of net's neurons (its last layer's, for a width shard), differentiable: the last
    layer neuron block by neuron block, the layers below it whole.

    threads: how many threads walk the blocks (default walk_threads: torch's thread count on
    the CPU where blocks are large enough; 1 walks them on the calling thread, each op then
    using torch's intra-op threads; ignored on CUDA). spare: where the step's gradients come
    from (SpareGrads; fresh tensors without one).

    Under autocast the layers below run as autocast says, and so do the last layer's block
    products (block_dtype: bf16 GEMMs on tensor cores, each rounded to bf16 as autocast's
    would be), while the walk's sums over blocks and the gradients stay in the net's dtype.
    On CUDA such a step takes train.fused's kernels instead of the walk where they apply (every
    mode but sketch_out, <= 256 features); fused=False keeps the walk.
    """
    n = x.shape[0]
    b = default_train_block(net, n) if block is None else block
    blocks = neuron_blocks(net, b, n)
    if threads is None or net.device.type != "cpu":
        threads = walk_threads(net, n, b) if threads is None else 1
    top = net.depth - 1
    groups = tuple(g for g in net.groups if g.layer is None or g.layer == top)
    return _BlockedOutput.apply(net.last_input(x).to(net.dtype), net, groups, blocks, threads,
                                spare, fused, *(net.parameter(g) for g in groups))
