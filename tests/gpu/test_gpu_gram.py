"""The Gram on CUDA against the CPU in float64: Gram, cross-Gram and mat-vec; S S^T from
bfloat16 masks bit-identical to the float64 product; TF32 kept out of the terms; the inner loop
free of host synchronisation; blocks sized from device memory; tiles and partials copied to
the host through page-locked memory. Skipped without CUDA; run them
with `bash tools/gpu_check.sh`."""

from __future__ import annotations

import pytest
import torch
from conftest import net_grid, requires_cuda

from fntk_dist import TwoLayerNet, empirical_ntk, ntk_matvec
from fntk_dist.gram.executor import finish_span, span_partial
from fntk_dist.gram.tile_file import TileTarget
from fntk_dist.models import LayerSpec, build_network
from fntk_dist.models.blocks import F32_EXACT, MIN_DEVICE_BLOCK, default_block, device_block
from fntk_dist.ntk.empirical import partial_sums
from fntk_dist.ntk.gram_terms import unit_readout
from fntk_dist.runtime import to_host

pytestmark = [pytest.mark.gpu, requires_cuda]

CUDA = torch.device("cuda")
F64 = torch.float64


def _points(n: int, d: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    return torch.nn.functional.normalize(x, dim=1).to(dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.cpu() - b).abs().max() / b.abs().max())


def _net(mode, sketch, train_output, device, d=32, m=1000, k=8, dtype=F64) -> TwoLayerNet:
    return TwoLayerNet(d, m, mode, None if mode == "dense" else k, sketch, train_output, 0,
                       dtype, device)


@pytest.mark.parametrize("mode,sketch", net_grid())
@pytest.mark.parametrize("train_output", [False, True])
def test_gram_cross_gram_and_matvec_on_cuda_equal_the_cpu(mode, sketch, train_output):
    x, x2 = _points(200, 32, 0), _points(70, 32, 1)
    v = _points(200, 3, 2)
    cpu = _net(mode, sketch, train_output, "cpu")
    gpu = _net(mode, sketch, train_output, CUDA)
    # A block smaller than m makes several blocks; the default is one block on a GPU.
    for block in (None, 96):
        assert _rel(empirical_ntk(gpu, x.to(CUDA), block=block), empirical_ntk(cpu, x)) < 1e-10
        assert _rel(empirical_ntk(gpu, x.to(CUDA), x2.to(CUDA), block=block),
                    empirical_ntk(cpu, x, x2)) < 1e-10
        assert _rel(ntk_matvec(gpu, x.to(CUDA), v.to(CUDA), block=block),
                    ntk_matvec(cpu, x, v)) < 1e-10


def test_deep_gram_and_matvec_on_cuda_equal_the_cpu():
    layers = [LayerSpec(256, "sketch_in", 16, "srht"), LayerSpec(256, "lowrank", 16),
              LayerSpec(512, "dense")]
    nets = [build_network(32, layers, train_output=True, dtype=F64, device=dev)
            for dev in ("cpu", CUDA)]
    x, x2, v = _points(150, 32, 0), _points(40, 32, 1), _points(150, 2, 2)
    assert _rel(empirical_ntk(nets[1], x.to(CUDA), tile=64), empirical_ntk(nets[0], x)) < 1e-10
    assert _rel(empirical_ntk(nets[1], x.to(CUDA), x2.to(CUDA)),
                empirical_ntk(nets[0], x, x2)) < 1e-10
    assert _rel(ntk_matvec(nets[1], x.to(CUDA), v.to(CUDA), tile=64),
                ntk_matvec(nets[0], x, v)) < 1e-10


def test_float32_gram_on_cuda_is_within_1e6_of_the_float64_cpu_gram():
    # Integer weights and points on a grid of 1/8: pre-activations are exact in float32 and
    # float64 alike, so no activation sign can flip between them (a flip would move an entry
    # by about 1/m) and what is measured is the float32 arithmetic of the terms themselves.
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-4, 5, (4096, 64), generator=g).to(F64)
    x = torch.randint(-8, 9, (300, 64), generator=g).to(F64) / 8
    nets = [_net("dense", None, False, dev, d=64, m=4096, dtype=dt)
            for dev, dt in (("cpu", F64), (CUDA, torch.float32))]
    for net in nets:
        with torch.no_grad():
            net.layers[0].W.copy_(w)
    ref = empirical_ntk(nets[0], x)
    got = empirical_ntk(nets[1], x.to(CUDA, torch.float32))
    assert _rel(got.double(), ref) < 1e-6


def test_bfloat16_overlap_is_bit_identical_to_the_float64_product():
    # Counts near 70000 * 0.5 * 0.7 = 24500 (well past bfloat16's 256 and float16's 2048).
    g = torch.Generator(device=CUDA).manual_seed(0)
    s1 = (torch.rand(300, 70000, generator=g, device=CUDA) > 0.5).to(torch.bfloat16)
    s2 = (torch.rand(200, 70000, generator=g, device=CUDA) > 0.3).to(torch.bfloat16)
    got = torch.mm(s1, s2.T, torch.float32)
    want = s1.double() @ s2.double().T
    assert got.dtype == torch.float32 and float(want.max()) > 20000
    assert torch.equal(got.double(), want)
    # What the exact product avoids: a bfloat16 result rounds counts above 256.
    assert not torch.equal((s1 @ s2.T).double(), want)


def _masks_gram(net: TwoLayerNet, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """S(X) S(X2)^T in float64 from IEEE float32 pre-activations (the reference)."""
    layer = net.layers[0]
    prev = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    try:
        with torch.no_grad():
            s1 = (layer(x) > 0).double()
            s2 = (layer(x2) > 0).double()
    finally:
        torch.backends.cuda.matmul.fp32_precision = prev
    return s1 @ s2.T


def test_tf32_on_globally_does_not_reach_the_overlap_counts():
    net = _net("dense", None, False, CUDA, d=512, m=8192, dtype=torch.float32)
    x, x2 = _points(256, 512, 0, torch.float32).to(CUDA), _points(128, 512, 1, torch.float32)
    x2 = x2.to(CUDA)
    want = _masks_gram(net, x, x2)
    prev = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        with torch.no_grad():
            tf32_masks = (net.layers[0](x) > 0).double() @ (net.layers[0](x2) > 0).double().T
        # One block of all 8192 neurons: the very GEMMs the reference ran, so IEEE float32
        # pre-activations agree bit for bit (other shapes may sum in another order).
        part = partial_sums(net, x, x2, 8192, None, True)
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # restored on the way out
    finally:
        torch.backends.cuda.matmul.fp32_precision = prev
    # TF32 does move the pre-activations enough to flip signs: the check below can fail.
    assert not torch.equal(tf32_masks, want)
    (rows,) = [t for t in part.terms if t.key == ("layer0", "W")]
    assert torch.equal(rows.total, want)


@pytest.mark.parametrize("mode,sketch", [("dense", None), ("sketch_in", "srht"),
                                         ("sketch_out", "countsketch"), ("lowrank", None)])
def test_the_inner_loop_never_synchronises_with_the_host(mode, sketch):
    net = _net(mode, sketch, True, CUDA, m=4096, dtype=torch.float32)
    x = _points(512, 32, 0, torch.float32).to(CUDA)
    counts = unit_readout(net.a.detach())  # the one sync, once per net, outside the loop
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        part = partial_sums(net, x[:256], x[256:], 512, None, counts)  # 8 neuron blocks
        sym = partial_sums(net, x[:256], None, 512, None, counts)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # The same sums as the executor's path, which checks and copies to the CPU. countsketch's
    # adjoint is a scatter-add (index_add), whose CUDA atomics add in no fixed order: its
    # float32 rank sums agree to rounding, the others bit for bit.
    for got, span in ((part, ((0, 256), (256, 512))), (sym, ((0, 256), (0, 256)))):
        ref = span_partial(net, x, span, 512)
        for a, b in zip(got.terms, ref.terms):
            for s, t in zip(a.tensors(), b.tensors()):
                if sketch == "countsketch":
                    scale = float(t.abs().max())
                    torch.testing.assert_close(s.cpu(), t, rtol=1e-5, atol=1e-5 * scale)
                else:
                    assert torch.equal(s.cpu(), t)


def test_blocks_come_from_free_device_memory():
    for rows in (1, 1000, 32768, 10**7):
        b = device_block(rows, CUDA)
        assert MIN_DEVICE_BLOCK <= b <= F32_EXACT // 2 and b & (b - 1) == 0
    assert device_block(32768, CUDA) >= device_block(65536, CUDA)
    assert device_block(100, "cpu") is None
    net = _net("sketch_in", "gaussian", False, CUDA, m=1 << 16)
    # Far fewer, larger blocks than the CPU's cache-sized ones at a Gram tile's size.
    assert default_block(net, 8192, CUDA) > 4 * default_block(net, 8192)


def test_partials_and_tiles_reach_the_host_through_page_locked_memory():
    """runtime.to_host: a CUDA tensor comes back equal, on the CPU, page-locked (so the copy
    runs at the link's speed); a CPU tensor is returned as it is. A partial moved to the CPU
    (to travel between shards) and a finished tile (finish_span) take that path."""
    t = torch.randn(300, 200, device=CUDA, dtype=F64)
    host = to_host(t)
    assert host.device.type == "cpu" and host.is_pinned() and torch.equal(host, t.cpu())
    cpu = torch.ones(3)
    assert to_host(cpu) is cpu
    net = _net("lowrank", None, True, CUDA)
    x = _points(64, 32).to(CUDA)
    part = span_partial(net, x, ((0, 64), (0, 64)), 256, cpu=False)
    moved = part.cpu()
    for a, b in zip(moved.terms, part.terms):
        for s, t in zip(a.tensors(), b.tensors()):
            assert s.is_pinned() and torch.equal(s, t.cpu())
    target = TileTarget(None, (64, 64), "float64")
    tile = finish_span(net, x, part, ((0, 64), (0, 64)), target)
    torch.testing.assert_close(torch.from_numpy(tile), empirical_ntk(net, x).cpu(), rtol=1e-12,
                               atol=0)
