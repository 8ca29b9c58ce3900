"""The width x data mesh of a distributed training run, as torch.distributed groups.

Rank r sits at (data_rank, width_rank) = divmod(r, width): the ranks of one width group (one
replica of the whole net, split by neurons) are consecutive, so they share a node when they
can. The object is also DeepSpeed's `mpu`: DeepSpeed partitions ZeRO state and averages
gradients over the data group only, and treats the width group as model parallelism. How a
net is split over the width group is fntk_dist.distributed.parallelize's business.

`moved` counts the bytes of the tensors this rank has summed over each group (what its
all-reduces carry), so a run can report the traffic of one training step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


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
            _all_reduce(t, dist.ReduceOp.SUM, self._width_group)
            self.moved["width"] += t.numel() * t.element_size()
        return t

    def max_width(self, t: torch.Tensor) -> torch.Tensor:
        if self.width > 1:
            _all_reduce(t, dist.ReduceOp.MAX, self._width_group)
        return t

    def sum_data(self, t: torch.Tensor) -> torch.Tensor:
        if self.data > 1:
            _all_reduce(t, dist.ReduceOp.SUM, self._data_group)
            self.moved["data"] += t.numel() * t.element_size()
        return t

    def max_all(self, t: torch.Tensor) -> torch.Tensor:
        """t's largest value over every rank, in place."""
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
