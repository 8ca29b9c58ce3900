"""TorchEngine on the CPU: the blocks walked by the process's thread count while the calling
thread runs the step's own ops on one intra-op thread (so OpenMP's spinning workers leave the
walkers their cores), the count put back after, and the numbers those of a one-thread walk."""

from __future__ import annotations

import pytest
import torch

from fntk_dist import TwoLayerNet
from fntk_dist.train.blocked import blocked_output
from fntk_dist.train.config import TrainConfig
from fntk_dist.train.parts import TorchEngine


@pytest.fixture
def two_threads():
    keep = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(keep)


def test_the_caller_runs_alone_while_two_walkers_walk(two_threads):
    # n * block * k = 256 * 1024 * 32 is past MIN_THREADED_WORK: the walk is threaded.
    net = TwoLayerNet(64, 4096, "sketch_in", 32, "gaussian", True, 0, torch.float32)
    ref = TwoLayerNet(64, 4096, "sketch_in", 32, "gaussian", True, 0, torch.float32)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 64, generator=g), torch.randn(256, generator=g)
    engine = TorchEngine(net, TrainConfig(), eta=0.01)
    seen = []
    engine.opt.register_step_pre_hook(lambda *_: seen.append(("step", torch.get_num_threads())))
    out = engine.forward(x)
    out.register_hook(lambda grad: seen.append(("backward", torch.get_num_threads())))
    assert engine.walkers == 2 and torch.get_num_threads() == 2
    engine.backward(0.5 * ((out - y) ** 2).sum())
    engine.step()
    assert seen == [("backward", 1), ("step", 1)] and torch.get_num_threads() == 2
    # The same sums in the same block order as a walk on the calling thread (one intra-op
    # thread, as each walker has: a GEMM split over two threads may round otherwise).
    params = [p for p in ref.parameters() if p.requires_grad]
    torch.set_num_threads(1)
    want = torch.autograd.grad(0.5 * ((blocked_output(ref, x, threads=1) - y) ** 2).sum(),
                               params)
    stepped = [p for p in net.parameters() if p.requires_grad]
    for p, w, q in zip(params, want, stepped, strict=True):
        assert torch.equal(q, p.detach().clone().add_(w, alpha=-0.01))  # SGD's update
