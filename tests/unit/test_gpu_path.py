"""What of the GPU path runs on a CPU: the overlap's dtype dispatch and the exact bfloat16
product's signature, the TF32 guard, block sizes, the sync-free partial sums, the GPU
benchmark's and the tile profile's code paths at toy sizes and tools/gpu_check.sh without
CUDA."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fntk_dist import TwoLayerNet
from fntk_dist.gram.executor import span_partial
from fntk_dist.gram.tiles import PHASES
from fntk_dist.models.blocks import (
    CPU_BLOCK_ACTIVATIONS,
    default_block,
    device_block,
    neuron_blocks,
)
from fntk_dist.ntk import gram_partial
from fntk_dist.ntk.empirical import partial_sums
from fntk_dist.ntk.gram_terms import overlap_dtype, unit_readout
from fntk_dist.runtime import ieee_float32

ROOT = Path(__file__).parents[2]


def test_overlap_masks_are_bfloat16_on_cuda_and_float32_elsewhere():
    assert overlap_dtype(torch.device("cuda")) is torch.bfloat16
    assert overlap_dtype(torch.device("cuda", 3)) is torch.bfloat16
    assert overlap_dtype(torch.device("cpu")) is torch.float32


def test_the_exact_bfloat16_product_is_float32_out_and_a_plain_one_is_not():
    # The call the CUDA path makes, checked against torch's own shape and dtype rules.
    s = torch.empty(5, 7, dtype=torch.bfloat16, device="meta")
    out = torch.empty(5, 5, device="meta")
    assert torch.mm(s, s.T, torch.float32, out=out).dtype == torch.float32
    # Why it is needed: a bfloat16 result has 8 bits, so a count of 257 comes back as 256.
    ones = torch.ones(1, 257, dtype=torch.bfloat16)
    assert float(ones @ ones.T) == 256.0


def test_ieee_float32_holds_tf32_off_on_cuda_and_restores_the_setting():
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        with ieee_float32(torch.device("cuda")):
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == "tf32"
        with pytest.raises(KeyError), ieee_float32(torch.device("cuda")):
            raise KeyError("restored on the way out of an error too")
        assert matmul.fp32_precision == "tf32"
        with ieee_float32(torch.device("cpu")):
            assert matmul.fp32_precision == "tf32"  # the CPU's float32 is IEEE already
    finally:
        matmul.fp32_precision = before


def test_cpu_blocks_keep_the_cache_heuristic():
    net = TwoLayerNet(16, 1 << 16, "sketch_in", 8)
    assert device_block(4096, "cpu") is None and device_block(4096, torch.device("cpu")) is None
    for rows in (1, 100, 4096, 1 << 20):
        want = max(64, min(net.m_local, CPU_BLOCK_ACTIVATIONS // rows))
        assert default_block(net, rows) == default_block(net, rows, "cpu") == want
        assert neuron_blocks(net, None, rows, "cpu") == neuron_blocks(net, None, rows)


@pytest.mark.parametrize("moved", [False, True])
def test_partial_sums_without_checks_equal_gram_partial(moved):
    net = TwoLayerNet(12, 300, "lowrank", 5, None, True, 0, torch.float64)
    if moved:  # a trained readout away from +-1: the weighted, non-count path
        with torch.no_grad():
            net.a.mul_(1.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 12, generator=g, dtype=torch.float64)
    counts = unit_readout(net.a.detach())
    assert counts == (not moved)
    for x2 in (None, x[:15]):
        want = gram_partial(net, x, x2, block=64)
        got = partial_sums(net, x, x2, 64, None, counts)
        for a, b in zip(got.terms, want.terms):
            assert all(torch.equal(s, t) for s, t in zip(a.tensors(), b.tensors()))
    tile = span_partial(net, x, ((0, 40), (0, 15)), 64)
    want = gram_partial(net, x, x[:15], block=64)
    for a, b in zip(tile.terms, want.terms):
        assert all(torch.equal(s, t) for s, t in zip(a.tensors(), b.tensors()))


def test_bench_gpu_runs_its_code_path_on_the_cpu(tmp_path):
    out = tmp_path / "report"
    log = tmp_path / "pytest.log"
    log.write_text("....\n==== 4 passed in 1.00s ====\n")
    cmd = [sys.executable, str(ROOT / "tools" / "bench_gpu.py"), "--device", "cpu", "--small",
           "--repeats", "1", "--out", str(out), "--pytest-log", str(log), "--pytest-rc", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert set(report["peak"]) == {"float32", "float64", "bf16"} and report["sizes"] == "small"
    assert all(v["tflops"] > 0 for v in report["peak"].values())
    assert {(g["mode"], g["dtype"]) for g in report["gram"]} == {
        (mode, dt) for mode in ("sketch_in", "dense") for dt in ("float32", "float64")}
    for g in report["gram"]:
        assert g["overlap_tflops"] > 0 and g["gram_tflops"] > 0
        assert g["max_rel"] < (1e-10 if g["dtype"] == "float64" else 1e-5)
    assert [s["bf16_autocast"] for s in report["step"]] == [True, False]
    assert report["step"][1]["tflops"] > 0
    assert report["tests"] == {"rc": 0, "summary": "4 passed in 1.00s"}
    # The scaling section: real one-device jobs (1 and 10 tiles) against the model's CPU rates.
    assert [(s["n"], s["tiles"], s["dtype"]) for s in report["scaling"]] == [
        (256, 1, "float32"), (512, 10, "float32"), (256, 1, "float64")]
    for s in report["scaling"]:
        assert 0 < s["compute_s"] and 0 < s["median_s"] and s["store_bytes_s"] > 0
        assert s["flush_bytes_s"] > 0  # a commit's write of its tile (inf: none measured)
        assert s["stated_rates"] == "cpu"
        for p in (s["predicted_stated"], s["predicted_measured"]):
            assert 0 < p["compute_s"] < p["s"]  # writing the tile files costs something
        # Where a tile's seconds went: every phase the job times, and the model's account.
        for phases in (s["phases_s"], s["predicted_phases_s"]):
            assert list(phases) == list(PHASES) and phases["wait"] == 0
            assert all(phases[k] > 0 for k in PHASES if k != "wait")
        assert sum(s["phases_s"].values()) * s["tiles"] <= s["max_s"]
    text = (out / "report.md").read_text()
    assert text.startswith("# GPU check: CPU") and "| dense n=256 m=2048 d=64 | float64 |" in text
    assert "| sketch_in n=512 tile=128 m=2048 d=64 k=16 | float32 | 10 |" in text
    assert "commit's write GB/s |" in text
    assert "| sketch_in n=512 tile=128 | float32 | " in text  # the phases' table
    # --render remakes the Markdown from the JSON alone (how docs/gpu is regenerated).
    again = subprocess.run([*cmd[:2], "--render", str(out / "report.json")], capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 0 and again.stdout == text, again.stderr


def test_the_tile_profile_runs_its_code_path_on_the_cpu():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "profile_tile_host.py"),
                           "--device", "cpu"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 11 and lines[-1].startswith("finish_span without a file")
    assert all(float(line.split()[-3]) >= 0 for line in lines)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a machine with nvidia-smi")
def test_gpu_check_without_cuda_is_one_line_and_exit_0(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--out",
                           str(tmp_path / "r")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.splitlines() == [
        "gpu_check: no CUDA device here (nvidia-smi absent or failing): nothing to check"]
    assert not (tmp_path / "r").exists()


def test_span_partial_asks_again_once_the_readout_moves():
    # span_partial asks whether a is +-1 once per net; a readout changed in place (as an
    # optimizer step changes it) must be asked again, or S S^T would be counted unweighted.
    net = TwoLayerNet(12, 300, "dense", None, None, True, 0, torch.float64)
    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for scale in (1.0, 1.5):
        with torch.no_grad():
            net.a.mul_(scale)
        tile = span_partial(net, x, ((0, 30), (0, 30)), 64)
        want = gram_partial(net, x, block=64)
        for a, b in zip(tile.terms, want.terms):
            assert all(torch.equal(s, t) for s, t in zip(a.tensors(), b.tensors()))
