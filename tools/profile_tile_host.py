"""Where one Gram tile's time goes between the device and its file: the partial and the finish
on the device, the copy to the host (pageable into fresh memory, page-locked, a reused
pageable buffer), then each part of staging its file (sha256, the Arrow IPC encoding, a plain
write) and stage_tile whole; median [min, max] of 3 calls after a warm-up.

    python tools/profile_tile_host.py [--device cuda]   # cpu: toy sizes, to run the code

CUDA size: one 16384 x 16384 float32 tile of a sketch_in net (m = 65536, d = 1024, k = 128),
bench_gpu.py's Gram. docs/gpu/README.md has an H100's figures.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from fntk_dist.gram.executor import finish_span, span_partial
from fntk_dist.gram.tile_file import TileTarget, _write_ipc, stage_tile
from fntk_dist.memory import keep_freed_memory
from fntk_dist.models.config import ModelConfig
from fntk_dist.ntk.empirical import finish_gram
from fntk_dist.runtime import synchronize


def timed(label: str, fn: Callable[[], object], device: torch.device) -> None:
    fn()
    synchronize(device)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    print(f"{label:42s} {statistics.median(times):.4f} [{min(times):.4f}, {max(times):.4f}]",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    device = torch.device(ap.parse_args().device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    keep_freed_memory()
    n, m, d, k = (16384, 65536, 1024, 128) if device.type == "cuda" else (1024, 2048, 64, 16)
    net = ModelConfig(mode="sketch_in", m=m, k=k, sketch="gaussian",
                      dtype="float32").build(d, device=device)
    x = torch.nn.functional.normalize(torch.randn(n, d, dtype=torch.float64), dim=1)
    x = x.float().to(device)
    span = ((0, n), (0, n))
    part = span_partial(net, x, span, None, cpu=False)
    timed("partial on the device", lambda: span_partial(net, x, span, None, cpu=False), device)
    h = finish_gram(net, part, x)
    timed("finish on the device", lambda: finish_gram(net, part, x), device)
    timed("h.cpu(), fresh pageable memory", lambda: h.cpu(), device)
    pinned = torch.empty(h.shape, dtype=h.dtype, pin_memory=device.type == "cuda")
    timed("into a page-locked buffer", lambda: pinned.copy_(h), device)
    pageable = torch.empty(h.shape, dtype=h.dtype)
    timed("into a reused pageable buffer", lambda: pageable.copy_(h), device)
    arr = h.cpu().numpy()
    timed("a fresh array of the tile's size, written", lambda: np.ones_like(arr), device)
    timed("sha256 of the tile", lambda: hashlib.sha256(arr).hexdigest(), device)
    timed("Arrow IPC encoding into memory", lambda: _write_ipc(arr, pa.BufferOutputStream()),
          device)
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain"
        timed("a plain file write", lambda: plain.write_bytes(memoryview(arr).cast("B")),
              device)
        target = TileTarget(str(Path(tmp) / "tile.arrow"), tuple(arr.shape), "float32")
        timed("stage_tile (encode, hash, write)",
              lambda: Path(stage_tile(target, arr).tmp).unlink(), device)
    away = TileTarget(None, tuple(arr.shape), "float32")
    timed("finish_span without a file", lambda: finish_span(net, x, part, span, away), device)


if __name__ == "__main__":
    main()
