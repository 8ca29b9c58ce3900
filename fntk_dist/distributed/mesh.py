"""The width x data mesh of a distributed training run, as torch.distributed groups.

Rank r sits at (data_rank, width_rank) = divmod(r, width): the ranks of one width group (one
replica of the whole net, split by neurons) are consecutive, so they share a node when they
can. The object is also DeepSpeed's `mpu`: DeepSpeed partitions ZeRO state and averages
gradients over the data group only, and treats the width group as model parallelism. How a
net is split over the width group is fntk_dist.distributed.parallelize's business.

`moved` counts the bytes of the tensors this rank has summed over each group (what its
all-reduces carry), so a run can report the traffic of one training step.

A gloo width group whose ranks share a host sums CPU tensors through shared memory
(distributed.shm_sum: no threads woken, no scheduler ticks waited for); across hosts, on nccl
and for device tensors it is the process group's all-reduce.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from . import shm_sum


class Mesh:
    def __init__(self, width: int, data: int, rank: int) -> None:
        if width * data != dist.get_world_size():
            raise ValueError(f"mesh {width} x {data} does not match {dist.get_world_size()} ranks")
        self.width, self.data, self.rank = width, data, rank
        self.data_rank, self.width_rank = divmod(rank, width)
        self.moved = {"width": 0, "data": 0}
        # Every rank must create every group, in the same order.
        self._width_group = self._data_group = None
        for d in range(data):
            g = dist.new_group([d * width + w for w in range(width)])
            if d == self.data_rank:
                self._width_group = g
        for w in range(width):
            g = dist.new_group([d * width + w for d in range(data)])
            if w == self.width_rank:
                self._data_group = g
        self._shm = _shared_memory_sum(self._width_group, self.data_rank * width,
                                       self.width_rank, width) if width > 1 else None

    # DeepSpeed's mpu interface.
    def get_model_parallel_rank(self) -> int:
        return self.width_rank

    def get_model_parallel_world_size(self) -> int:
        return self.width

    def get_model_parallel_group(self):
        return self._width_group

    def get_data_parallel_rank(self) -> int:
        return self.data_rank

    def get_data_parallel_world_size(self) -> int:
        return self.data

    def get_data_parallel_group(self):
        return self._data_group

    # Collectives over the groups.
    def sum_width(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the width group, in place (a no-op on a width of 1)."""
        if self.width > 1:
            if self._shm is not None and t.device.type == "cpu":
                self._shm.sum_(t)
            else:
                _all_reduce(t, dist.ReduceOp.SUM, self._width_group)
            self.moved["width"] += t.numel() * t.element_size()
        return t

    def max_width(self, t: torch.Tensor) -> torch.Tensor:
        if self.width > 1:
            if self._shm is not None and t.device.type == "cpu":
                self._shm.max_(t)
            else:
                _all_reduce(t, dist.ReduceOp.MAX, self._width_group)
        return t

    def sum_data(self, t: torch.Tensor) -> torch.Tensor:
        if self.data > 1:
            _all_reduce(t, dist.ReduceOp.SUM, self._data_group)
            self.moved["data"] += t.numel() * t.element_size()
        return t

    def max_all(self, t: torch.Tensor) -> torch.Tensor:
        """t's largest value over every rank, in place."""
        if self.data == 1:  # every rank is in the one width group
            return self.max_width(t)
        _all_reduce(t, dist.ReduceOp.MAX, None)
        return t


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp, group) -> None:
    """dist.all_reduce of t in place. nccl reduces device tensors only, so on an nccl group a
    CPU tensor (the resident-memory maxima, the diagnostics' counts) goes through this rank's
    GPU and back."""
    if t.device.type == "cpu" and dist.get_backend(group) == "nccl":
        on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=op, group=group)
        t.copy_(on_gpu)
    else:
        dist.all_reduce(t, op=op, group=group)


def _shared_memory_sum(group, first: int, rank: int, size: int) -> shm_sum.ShmSum | None:
    """The group's shared-memory sum where it is a gloo group whose ranks all see the file its
    first rank made (one host; a collective over the group), else None. The file is removed
    once every rank has mapped it."""
    if dist.get_backend(group) != "gloo":
        return None
    mine = None
    if rank == 0 and shm_sum.usable():
        path = shm_sum.ShmSum.new_path()
        mine = shm_sum.ShmSum(path, 0, size, create=True)
    found = [str(path) if mine is not None else None]
    dist.broadcast_object_list(found, src=first, group=group)
    if found[0] is not None and rank != 0 and shm_sum.usable() and Path(found[0]).exists():
        mine = shm_sum.ShmSum(Path(found[0]), rank, size, create=False)
    seen = [None] * size
    dist.all_gather_object(seen, mine is not None, group=group)
    if found[0] is not None and rank == 0:
        Path(found[0]).unlink(missing_ok=True)  # after the gather: every rank has looked
    return mine if all(seen) else None
