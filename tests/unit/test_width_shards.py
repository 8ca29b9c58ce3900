"""Width shards of deep nets (tensor parallelism, models.width) against the whole net.

A shard's pieces are checked two ways: in one process, each shard's weights and fixed
sketches are exactly the whole net's rows and columns; and on a real torch.distributed gloo
group of 2 and 3 processes (the mesh's own all-reduce injected into the model), the shards'
blocked forward and backward give the whole net's output and, slice by slice, its gradients
to 1e-12, for mixed dense / factorized stacks of every mode.
"""

from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fntk_dist.models import build_network
from fntk_dist.models.width import WidthShard, shard_ranges

STACKS = {
    "dense_sketch_in_lowrank": [{"m": 12, "mode": "dense"},
                                {"m": 18, "mode": "sketch_in", "k": 5, "sketch": "srht"},
                                {"m": 12, "mode": "lowrank", "k": 4}],
    "lowrank_sketch_out_dense": [{"m": 12, "mode": "lowrank", "k": 3},
                                 {"m": 18, "mode": "sketch_out", "k": 4, "sketch": "countsketch"},
                                 {"m": 12, "mode": "dense"}],
    "sketch_in_kinds": [{"m": 12, "mode": "sketch_out", "k": 3, "sketch": "srht"},
                        {"m": 12, "mode": "sketch_in", "k": 4, "sketch": "gaussian"},
                        {"m": 18, "mode": "sketch_in", "k": 4, "sketch": "countsketch"},
                        {"m": 12, "mode": "sketch_in", "k": 5, "sketch": "rademacher"}],
}
D, N = 7, 9


def _whole(stack: str, **kw) -> torch.nn.Module:
    return build_network(D, STACKS[stack], train_output=True, seed=3, dtype=torch.float64, **kw)


def _expected(whole_param: torch.Tensor, layer, name: str) -> torch.Tensor:
    """The part of a whole net's tensor (or its gradient) that a shard's layer holds."""
    if name == "V":
        return whole_param[:, layer.inputs[0]:layer.inputs[1]]
    return whole_param[layer.lo:layer.hi]


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("size", [2, 3])
def test_a_shard_holds_exactly_the_whole_nets_rows_and_columns(stack, size):
    whole = _whole(stack)
    for rank in range(size):
        shard = _whole(stack, width=WidthShard(rank, size, lambda t: t))
        for i, (lw, ls) in enumerate(zip(whole.layers, shard.layers)):
            assert (ls.lo, ls.hi) == shard_ranges(lw.m, size)[rank]
            below = shard.layers[i - 1] if i else None
            assert ls.inputs == ((below.lo, below.hi) if below else (0, D))
            for name in ls.factors:
                assert torch.equal(getattr(ls, name), _expected(getattr(lw, name), ls, name))
            if ls.mode == "sketch_in" and i > 0:  # the fixed sketch: columns of the whole one
                eye = torch.eye(lw.k, dtype=torch.float64)
                cols = lw.in_sketch.transpose(eye)[:, ls.inputs[0]:ls.inputs[1]]
                assert torch.equal(ls.in_sketch.matrix, cols)
        assert torch.equal(shard.a, whole.a[shard.lo:shard.hi])


def test_one_shard_is_the_whole_net_and_bad_shards_name_the_argument():
    whole = _whole("dense_sketch_in_lowrank")
    one = _whole("dense_sketch_in_lowrank", width=WidthShard(0, 1, lambda t: t))
    assert all(torch.equal(p, q) for p, q in zip(whole.parameters(), one.parameters()))
    with pytest.raises(ValueError, match="^neurons: a shard of the last layer or of every"):
        _whole("dense_sketch_in_lowrank", neurons=(0, 6), width=WidthShard(0, 2, lambda t: t))
    layers = list(_whole("dense_sketch_in_lowrank").layers)
    with pytest.raises(ValueError, match=r"^inputs: layer 1 holds the columns \(0, 12\)"):
        type(whole)([_whole("dense_sketch_in_lowrank",
                            width=WidthShard(0, 2, lambda t: t)).layers[0], *layers[1:]])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shard_errors(rank: int, size: int, port: int, out: dict) -> None:
    """One rank of the gloo group: the blocked step of its shard against the whole net."""
    from fntk_dist.distributed.mesh import Mesh
    from fntk_dist.distributed.parallelize import (
        gather_whole,
        sum_output,
        sum_shared_gradients,
        width_shard,
    )
    from fntk_dist.train.blocked import blocked_output

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=size)
    mesh = Mesh(size, 1, rank)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, dtype=torch.float64, generator=g)
    y = torch.randn(N, dtype=torch.float64, generator=g)
    errors = {}
    for stack in STACKS:
        whole = _whole(stack)
        ref = blocked_output(whole, x, block=5)
        (0.5 * ((ref - y) ** 2).sum()).backward()
        shard = _whole(stack, width=width_shard(mesh))
        sum_shared_gradients(shard, mesh)
        f = sum_output(blocked_output(shard, x, block=5), mesh)
        (0.5 * ((f - y) ** 2).sum()).backward()
        err = [float((f - ref).detach().abs().max() / ref.detach().abs().max())]
        for lw, ls in zip(whole.layers, shard.layers):
            for name in ls.factors:
                want = _expected(getattr(lw, name).grad, ls, name)
                err.append(float((getattr(ls, name).grad - want).abs().max() / want.abs().max()))
        err.append(float((shard.a.grad - whole.a.grad[shard.lo:shard.hi]).abs().max()))
        # The plain autograd forward (Network.forward) of the shards sums to the whole too, and
        # so does a deep copy's (it shares the group).
        with torch.no_grad():
            err.append(float((sum_output(shard(x), mesh) - whole(x)).abs().max()))
            copied = copy.deepcopy(shard)
            err.append(float((sum_output(copied(x), mesh) - whole(x)).abs().max()))
        gathered = gather_whole(_whole(stack), shard, mesh)
        same = all(torch.equal(p, q) for p, q in zip(gathered.parameters(), whole.parameters()))
        errors[stack] = (max(err), same, mesh.moved["width"])
    out[rank] = errors
    dist.destroy_process_group()


@pytest.mark.parametrize("size", [2, 3])
def test_shards_on_a_gloo_group_give_the_whole_nets_output_and_gradients(size):
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_shard_errors, args=(size, _free_port(), out), nprocs=size, join=True)
        results = dict(out)
    assert sorted(results) == list(range(size))
    for rank, errors in results.items():
        for stack, (err, gathered_exactly, moved) in errors.items():
            assert err < 1e-12, (rank, stack, err)
            assert gathered_exactly, (rank, stack)
            assert moved > 0, (rank, stack)  # the sums went through the group
