"""Training on CUDA against the CPU in float64: the blocked step's gradients, the step free of
host synchronisation, and `fntk train` / `fntk gram` with device cuda. Skipped without CUDA;
run them with `bash tools/gpu_check.sh`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import net_grid, requires_cuda

from fntk_dist import TwoLayerNet
from fntk_dist.cli.main import main
from fntk_dist.gram import load_gram
from fntk_dist.models import LayerSpec, build_network
from fntk_dist.train import fused
from fntk_dist.train.blocked import blocked_output

pytestmark = [pytest.mark.gpu, requires_cuda]

CUDA = torch.device("cuda")
F64 = torch.float64


def _data(n: int, d: int, dtype: torch.dtype = F64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=F64), dim=1)
    return x.to(dtype), torch.randn(n, generator=g, dtype=F64).to(dtype)


def _grads(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, block: int | None):
    out = blocked_output(net, x, block)
    (0.5 * ((out - y) ** 2).sum()).backward()
    return out.detach().cpu(), [p.grad.cpu() for p in net.parameters() if p.requires_grad]


@pytest.mark.parametrize("mode,sketch", net_grid())
def test_blocked_step_on_cuda_equals_the_cpu(mode, sketch):
    x, y = _data(96, 32)
    got = {}
    for dev in ("cpu", CUDA):
        net = TwoLayerNet(32, 1000, mode, None if mode == "dense" else 8, sketch, True, 0, F64,
                          dev)
        got[str(dev)] = _grads(net, x.to(dev), y.to(dev), 96)
    (out_c, g_c), (out_g, g_g) = got["cpu"], got["cuda"]
    assert float((out_g - out_c).abs().max() / out_c.abs().max()) < 1e-10
    for a, b in zip(g_g, g_c):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-10


def test_deep_blocked_step_on_cuda_equals_the_cpu():
    layers = [LayerSpec(128, "sketch_in", 16, "srht"), LayerSpec(256, "lowrank", 16)]
    x, y = _data(64, 32)
    got = [_grads(build_network(32, layers, train_output=True, dtype=F64, device=dev),
                  x.to(dev), y.to(dev), 64) for dev in ("cpu", CUDA)]
    for a, b in zip(got[1][1], got[0][1]):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-10


@pytest.mark.parametrize("mode,sketch", net_grid())
def test_bf16_autocast_step_on_cuda_is_within_bf16_of_float64(mode, sketch):
    # The block products in bf16 on tensor cores (block_dtype), the sums in float32: within
    # bf16's reach of the float64 CPU gradients (a few percent: bf16 pre-activations flip a few
    # activation bits), and not within float32's (they did run in bf16), except sketch_out,
    # whose fast sketches stay float32.
    x, y = _data(256, 32)
    k = None if mode == "dense" else 8
    _, want = _grads(TwoLayerNet(32, 4096, mode, k, sketch, True, 0, F64), x, y, 1024)
    net = TwoLayerNet(32, 4096, mode, k, sketch, True, 0, torch.float32, CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = blocked_output(net, x.float().to(CUDA), 1024)
    (0.5 * ((out.double() - y.to(CUDA)) ** 2).sum()).backward()
    got = [p.grad.cpu() for p in net.parameters() if p.requires_grad]
    assert all(g.dtype == torch.float32 for g in got)
    err = max(float((a.double() - b).norm() / b.norm()) for a, b in zip(got, want))
    assert (err < 1e-5) if mode == "sketch_out" else (1e-5 < err < 0.1), err


@pytest.mark.parametrize("n,m,c", [(300, 517, 40), (8192, 4096, 128), (70, 130, 200)])
def test_fused_kernels_equal_float64_on_their_bf16_inputs(n, m, c):
    # Products of bf16 inputs are exact in float32 and the kernels sum them in float32, so
    # they match float64 of the same inputs (e, or a, rounded to bf16 where the kernel puts it
    # into the masked matrix) to float32 sums, at sizes that end inside a tile and a range.
    assert fused.available(torch.empty(1, c, device=CUDA))
    g = torch.Generator().manual_seed(0)
    f, r = (torch.randn(rows, c, generator=g).bfloat16() for rows in (n, m))
    a, e = torch.randn(m, generator=g), torch.randn(n, generator=g)
    s = f.double() @ r.double().T
    want = {"out": s.relu() @ a.double(), "a": s.relu().T @ e.double(),
            "rows": a.double()[:, None] * (((s > 0) * e.bfloat16().double()[:, None]).T
                                           @ f.double()),
            "input": e.double()[:, None] * (((s > 0) * a.bfloat16().double()) @ r.double())}
    f, r, a, e = (t.to(CUDA) for t in (f, r, a, e))
    got = {"out": fused.forward(f, r, a), "rows": torch.empty(m, c, device=CUDA),
           "a": torch.empty(m, device=CUDA), "input": fused.input_grad(f, r, a, e)}
    fused.backward(f, r, a, e, got["rows"], got["a"])
    for key, w in want.items():
        err = float((got[key].cpu().double() - w).norm() / w.norm())
        assert err < 2e-5, (key, err)


FUSED_NETS = {
    "dense": lambda: TwoLayerNet(64, 8192, "dense", None, None, True, 0, torch.float32, CUDA),
    "sketch_in": lambda: TwoLayerNet(64, 8192, "sketch_in", 32, "srht", True, 0, torch.float32,
                                     CUDA),
    "lowrank": lambda: TwoLayerNet(64, 8192, "lowrank", 32, None, True, 0, torch.float32, CUDA),
    "deep": lambda: build_network(64, [LayerSpec(256, "sketch_in", 16, "srht"),
                                       LayerSpec(4096, "lowrank", 32)], train_output=True,
                                  dtype=torch.float32, device=CUDA),
}


@pytest.mark.parametrize("kind", sorted(FUSED_NETS))
def test_the_bf16_step_takes_the_fused_kernels_and_agrees_with_the_walk(kind):
    # lowrank's V and the deep net's lower layers take the input's gradient (the third kernel).
    x, y = (t.to(CUDA) for t in _data(512, 64, torch.float32))
    grads = {}
    for kernels in (True, False):
        net = FUSED_NETS[kind]()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = blocked_output(net, x, 1024, fused=kernels)
        (0.5 * ((out - y) ** 2).sum()).backward()
        grads[kernels] = [p.grad.clone() for p in net.parameters() if p.requires_grad]
    for a, b in zip(*grads.values()):  # both bf16 products: a few flipped bits apart, not more
        assert 0 < float((a - b).norm() / b.norm()) < 0.05


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("mode,sketch", [("dense", None), ("sketch_in", "srht"),
                                         ("sketch_out", "countsketch"), ("lowrank", None)])
def test_the_training_step_never_synchronises_with_the_host(mode, sketch, autocast):
    net = TwoLayerNet(64, 8192, mode, None if mode == "dense" else 32, sketch, True, 0,
                      torch.float32, CUDA)
    x, y = (t.to(CUDA) for t in _data(512, 64, torch.float32))
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = 0.5 * ((blocked_output(net, x, 1024) - y) ** 2).sum()
        loss.backward()
        opt.step()
        return loss.detach()

    first = step()  # warms the allocator and the optimizer's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert float(losses[-1]) < float(first)


SMALL = {
    "model": {"mode": "sketch_in", "m": 2048, "k": 16, "sketch": "srht", "dtype": "float64"},
    "data": {"source": "sphere", "n": 64, "d": 32},
    "train": {"steps": 30, "ntk_every": 10},
    "gram": {"tile": 24},
    "tracking": {"wandb": False},
}


def _run(tmp_path: Path, command: str, name: str, *overrides: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / name
    assert main([command, str(path), *overrides, "--out", str(out), "--quiet"]) == 0
    return out


def test_fntk_train_on_cuda_follows_the_cpu_curve(tmp_path):
    runs = {dev: _run(tmp_path, "train", dev, f"train.device={dev}") for dev in ("cpu", "cuda")}
    loss = {dev: np.array([v for v in pq.read_table(run / "metrics.parquet")["loss"].to_pylist()
                           if v is not None]) for dev, run in runs.items()}
    assert len(loss["cuda"]) == 31 and loss["cuda"][-1] < loss["cuda"][0] / 10
    assert np.abs(loss["cuda"] - loss["cpu"]).max() <= 1e-9 * loss["cpu"][0]
    summary = {dev: json.loads((run / "summary.json").read_text()) for dev, run in runs.items()}
    assert abs(summary["cuda"]["lambda_min_0"] - summary["cpu"]["lambda_min_0"]) < 1e-10


def test_fntk_gram_on_cuda_equals_the_cpu_gram(tmp_path):
    runs = {dev: _run(tmp_path, "gram", dev, f"gram.device={dev}") for dev in ("cpu", "cuda")}
    h = {dev: load_gram(run) for dev, run in runs.items()}
    assert np.abs(h["cuda"] - h["cpu"]).max() <= 1e-10 * np.abs(h["cpu"]).max()
    assert json.loads((runs["cuda"] / "summary.json").read_text())["device"] == "cuda"
