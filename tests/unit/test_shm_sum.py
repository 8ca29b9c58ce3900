"""The width group's shared-memory sum (distributed.shm_sum) on real processes, and the mesh
taking it where its ranks share a host."""

from __future__ import annotations

import multiprocessing as mp
import socket
from pathlib import Path

import pytest
import torch

from fntk_dist.distributed import shm_sum
from fntk_dist.distributed.shm_sum import ShmSum

pytestmark = pytest.mark.skipif(not shm_sum.usable(), reason="needs x86-64 and /dev/shm")


def _inputs(rank: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(rank)
    big = shm_sum.SLOT_BYTES // 8 + 1000  # float64: more than one slot, so it goes in chunks
    return {"f64": torch.randn(37, 5, dtype=torch.float64, generator=g),
            "big": torch.randn(big, dtype=torch.float64, generator=g),
            "i64": torch.randint(-50, 50, (9,), generator=g),
            "strided": torch.randn(6, 8, dtype=torch.float32, generator=g).T}


def _rank(path: str, rank: int, size: int, out) -> None:
    s = ShmSum(Path(path), rank, size, create=False)
    got = {}
    for repeat in range(3):  # the slots are reused call after call
        x = _inputs(rank)
        got |= {f"sum_{k}_{repeat}": s.sum_(v.clone()) for k, v in x.items()}
        got[f"max_{repeat}"] = s.max_(x["f64"].clone())
    out.put((rank, {k: v.numpy().copy() for k, v in got.items()}))  # by value


@pytest.mark.parametrize("size", [2, 3])
def test_sum_and_max_are_the_rank_ordered_reductions_on_every_rank(size):
    path = ShmSum.new_path()
    ShmSum(path, 0, size, create=True)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(str(path), r, size, out)) for r in range(size)]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    path.unlink()
    inputs = [_inputs(r) for r in range(size)]
    for key in inputs[0]:
        want = inputs[0][key].clone()
        for x in inputs[1:]:
            want += x[key]  # rank order, as the shared sum adds
        for r in range(size):
            for repeat in range(3):
                assert torch.equal(torch.from_numpy(got[r][f"sum_{key}_{repeat}"]), want), \
                    (key, r)
    want_max = torch.stack([x["f64"] for x in inputs]).amax(0)
    assert all(torch.equal(torch.from_numpy(got[r][f"max_{k}"]), want_max)
               for r in range(size) for k in range(3))


def test_a_peer_that_never_arrives_raises_after_the_timeout():
    path = ShmSum.new_path()
    try:
        lone = ShmSum(path, 0, 2, create=True, timeout_s=0.2)
        with pytest.raises(RuntimeError, match="did not arrive within"):
            lone.sum_(torch.ones(3))
    finally:
        path.unlink()


def _mesh_rank(rank: int, port: int, out) -> None:
    import torch.distributed as dist

    from fntk_dist.distributed.mesh import Mesh

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    mesh = Mesh(2, 1, rank)
    t = mesh.sum_width(torch.full((4,), float(rank + 1), dtype=torch.float64))
    out.put((rank, mesh._shm is not None, t.tolist(), mesh.moved["width"]))
    dist.destroy_process_group()


def test_a_one_host_gloo_width_group_sums_through_shared_memory():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = set(shm_sum.SHM_DIR.glob("fntk-width-*"))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_mesh_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert got == [(0, True, [3.0] * 4, 32), (1, True, [3.0] * 4, 32)]
    assert set(shm_sum.SHM_DIR.glob("fntk-width-*")) == before  # the file is gone
