"""The neuron-blocked output and its gradients against plain autograd, every mode and depth."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import torch
from conftest import net_grid

from fntk_dist import TwoLayerNet
from fntk_dist.models import LayerSpec, build_network
from fntk_dist.train.blocked import SpareGrads, blocked_output
from fntk_dist.train.walkers import walk


def blocked_and_autograd(net, block):
    """(output, gradients) of the loss 1/2 |f(x) - y|^2, blocked and by plain autograd."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(11, 9, generator=g, dtype=torch.float64)
    y = torch.randn(11, generator=g, dtype=torch.float64)
    params = [p for p in net.parameters() if p.requires_grad]
    ref = torch.autograd.grad(0.5 * ((net(x) - y) ** 2).sum(), params)
    out = blocked_output(net, x, block)
    got = torch.autograd.grad(0.5 * ((out - y) ** 2).sum(), params)
    return out, net(x), got, ref


@pytest.mark.parametrize("mode,sketch", net_grid())
@pytest.mark.parametrize("train_output", [False, True])
@pytest.mark.parametrize("block", [1, 7, None])
def test_blocked_gradients_match_autograd(mode, sketch, train_output, block):
    net = TwoLayerNet(9, 50, mode, None if mode == "dense" else 4, sketch, train_output, 3,
                      torch.float64)
    out, plain, got, ref = blocked_and_autograd(net, block)
    assert torch.allclose(out, plain, atol=1e-13)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode,sketch", net_grid())
@pytest.mark.parametrize("train_output", [False, True])
@pytest.mark.parametrize("block", [1, 7, None])
def test_deep_blocked_gradients_match_autograd(mode, sketch, train_output, block):
    # Depth 2 and 3, every kind at the top (the blocked layer) and in the middle (autograd's).
    k = None if mode == "dense" else 4
    for specs in ([LayerSpec(12, "sketch_in", 5, "srht"), LayerSpec(30, mode, k, sketch)],
                  [LayerSpec(12, "dense"), LayerSpec(10, mode, k, sketch),
                   LayerSpec(25, "lowrank", 3)]):
        net = build_network(9, specs, train_output=train_output, seed=3, dtype=torch.float64)
        out, plain, got, ref = blocked_and_autograd(net, block)
        assert torch.allclose(out, plain, rtol=0, atol=1e-13)
        for a, b in zip(got, ref):
            assert float((a - b).abs().max()) <= 1e-12 * float(b.abs().max())


def _threaded_and_serial(net, threads, dtype=torch.float64):
    """(output, gradients) of the parameters and of the input, walked by `threads` threads and
    by the calling thread alone (block 7, so every thread gets several blocks)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(13, net.d, generator=g, dtype=dtype, requires_grad=True)
    y = torch.randn(13, generator=g, dtype=dtype)
    params = [p for p in net.parameters() if p.requires_grad] + [x]
    got = []
    for t in (threads, 1):
        out = blocked_output(net, x, 7, threads=t)
        got.append((out, torch.autograd.grad(0.5 * ((out - y) ** 2).sum(), params)))
    return got


def _nets(mode, sketch, train_output):
    k = None if mode == "dense" else 4
    yield TwoLayerNet(9, 50, mode, k, sketch, train_output, 3, torch.float64)
    yield TwoLayerNet(9, 50, mode, k, sketch, train_output, 3, torch.float64, neurons=(11, 47))
    yield build_network(9, [LayerSpec(12, "dense"), LayerSpec(10, "sketch_in", 5, "srht"),
                            LayerSpec(40, mode, k, sketch)],
                        train_output=train_output, seed=3, dtype=torch.float64)


@pytest.mark.parametrize("mode,sketch", net_grid())
@pytest.mark.parametrize("train_output", [False, True])
def test_threaded_walk_equals_one_thread(mode, sketch, train_output):
    # Depth 1, a width shard and depth 3 (the input's gradient through the rank space or, dense,
    # summed over blocks), by 2 and by 3 threads (more threads than this machine's cores).
    for net in _nets(mode, sketch, train_output):
        for threads in (2, 3):
            (out, got), (ref_out, ref) = _threaded_and_serial(net, threads)
            out, ref_out = out.detach(), ref_out.detach()
            assert float((out - ref_out).abs().max()) <= 1e-12 * float(ref_out.abs().max())
            for a, b in zip(got, ref, strict=True):
                assert float((a - b).abs().max()) <= 1e-12 * float(b.abs().max())


def test_threaded_walk_float32():
    net = TwoLayerNet(9, 50, "lowrank", 4, train_output=True, seed=3)
    (out, got), (ref_out, ref) = _threaded_and_serial(net, 2, torch.float32)
    assert torch.allclose(out, ref_out, rtol=1e-5, atol=1e-6)
    for a, b in zip(got, ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_threaded_walk_keeps_the_thread_settings():
    # The walkers set their own intra-op threads to 1; neither this thread's setting nor the
    # default a thread started later picks up may change.
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        net = TwoLayerNet(9, 50, "sketch_in", 4, seed=3, dtype=torch.float64)
        out = blocked_output(net, torch.randn(13, 9, dtype=torch.float64), 7, threads=5)
        out.sum().backward()
        assert torch.get_num_threads() == 3
        seen = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert seen == [3]
    finally:
        torch.set_num_threads(before)


def test_a_failing_block_is_raised_and_stops_the_walk():
    blocks = [(i, i + 1) for i in range(12)]
    done = []

    def compute(i0, i1):
        if i0 == 5:
            raise ValueError("block 5")
        return lambda: done.append(i0)

    with pytest.raises(ValueError, match="block 5"):
        walk(blocks, compute, 3)
    # Blocks 0..2 committed before block 5 was computed (its thread's previous one was 2);
    # blocks 3 and 4 may have; nothing after 5 can, and commits came in block order.
    assert done == list(range(len(done))) and 3 <= len(done) <= 5


@pytest.mark.parametrize("threads", [1, 2])
def test_spare_grads_are_refilled_in_place(threads):
    # A training step writes its gradients into the last step's tensors: same memory, and the
    # same numbers as a step with fresh gradients (walked by threads too: a walker must not
    # hold on to the step's gradients, or autograd copies them).
    net = TwoLayerNet(9, 50, "lowrank", 4, train_output=True, seed=3, dtype=torch.float64)
    params = [p for p in net.parameters() if p.requires_grad]
    x = torch.randn(13, 9, dtype=torch.float64)
    spare = SpareGrads()
    blocked_output(net, x, 7, threads, spare).square().sum().backward()
    first = [p.grad.data_ptr() for p in params]  # not the tensors: a held one is not reused
    spare.recycle(params)
    assert all(p.grad is None for p in params)
    x2 = torch.randn(13, 9, dtype=torch.float64)
    blocked_output(net, x2, 7, threads, spare).square().sum().backward()
    # U's rows and a are written by the walk into the recycled tensors; V's gradient is a
    # product formed after it (k x d, not of the width's size).
    assert [p.grad.data_ptr() for p in params[:2]] == first[:2]
    ref = torch.autograd.grad(net(x2).square().sum(), params)
    for p, r in zip(params, ref, strict=True):
        assert torch.allclose(p.grad, r, rtol=1e-12, atol=1e-12)


def test_a_forked_child_walks_with_threads_of_its_own():
    # The parent's walker threads are not in a forked child: it must start its own, not queue
    # work for threads that do not exist there (and hang).
    net = TwoLayerNet(9, 50, "lowrank", 4, seed=3, dtype=torch.float64)
    x = torch.randn(13, 9, dtype=torch.float64)
    want = blocked_output(net, x, 7, threads=2).detach()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_walk_in_child, (net, x)).get(timeout=60)
    assert torch.equal(got, want)


def _walk_in_child(net, x):
    return blocked_output(net, x, 7, threads=2).detach()


@pytest.mark.parametrize("depth", [1, 3])
def test_the_step_runs_under_bf16_autocast(depth):
    """Autocast (bf16 mixed precision) used to fail in the blocked walk ('expected out tensor
    to have dtype BFloat16'): the walk's sums and gradients stay float32 while the lower layers
    run under autocast, and so do the last layer's block products (block_dtype)."""
    torch.manual_seed(0)
    x, y = torch.randn(48, 10), torch.randn(48)
    specs = [LayerSpec(40, "sketch_in", 6, "gaussian"),
             *[LayerSpec(32, "lowrank", 4)] * (depth - 1)]
    grads = {}
    for autocast in (False, True):
        net = build_network(10, specs, train_output=True, seed=1, dtype=torch.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = blocked_output(net, x, block=16)
            loss = 0.5 * ((out.float() - y) ** 2).sum()
        loss.backward()
        assert out.dtype == torch.float32
        grads[autocast] = [p.grad.clone() for p in net.parameters() if p.requires_grad]
        assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads[autocast])
    for plain, mixed in zip(grads[False], grads[True], strict=True):
        assert not torch.equal(plain, mixed)  # bf16 products: close, not equal
        assert (plain - mixed).norm() <= 0.05 * plain.norm()


@pytest.mark.parametrize("mode,sketch", net_grid())
@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_block_products_are_as_accurate_as_bf16_allows(mode, sketch, threads):
    """Under bf16 autocast the blocked gradients are within bf16's reach of the float64 ones,
    and not within float32's: the products did run in bf16, in every mode that stores its
    rows; sketch_out's fast sketches stay float32-exact. bf16's reach is a few percent, not
    2^-8: pre-activations rounded to bf16 flip a few activation bits, and each
    flip moves a row's gradient by a whole term of its sum (as under plain autocast)."""
    k = None if mode == "dense" else 4
    ref_net = TwoLayerNet(9, 300, mode, k, sketch, True, 3, torch.float64)
    net = TwoLayerNet(9, 300, mode, k, sketch, True, 3, torch.float32)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 9, generator=g, dtype=torch.float64)
    y = torch.randn(40, generator=g, dtype=torch.float64)

    def grads(net, x, autocast):
        params = [p for p in net.parameters() if p.requires_grad]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = blocked_output(net, x, 64, threads=threads)
        return torch.autograd.grad(0.5 * ((out.double() - y) ** 2).sum(), params)

    want = grads(ref_net, x, False)
    for autocast in (False, True):
        got = grads(net, x.float(), autocast)
        err = max(float((a.double() - b).norm() / b.norm()) for a, b in zip(got, want))
        if autocast and mode != "sketch_out":
            assert 1e-5 < err < 0.1, err
        else:
            assert err < 1e-5, err
