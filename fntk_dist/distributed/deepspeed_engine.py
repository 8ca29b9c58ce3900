"""The DeepSpeed engine of a distributed training run: the train loop's Engine on one rank.

DeepSpeed owns the optimizer step, ZeRO partitioning over the data group (the mesh is its
`mpu`), CPU offload and bf16. Three facts shape it:
- DeepSpeed clips gradients to norm 1 unless told not to: gradient descent must take the
  gradient as it is, so clipping is off.
- Its stage-0 all-reduce takes fp32/bf16/fp16 only, so a float64 run (stage 0; ZeRO 1-3 keep
  float32 master weights and are refused for float64 by fntk_dist.checks) sums its gradients
  over the data group itself.
- The blocked autograd function reads the net's parameters directly (never calling
  net.forward), so under ZeRO-3 they are registered as external parameters of the wrapped
  module: gathered around its forward and its backward.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..models.network import Network
from ..train.blocked import blocked_output
from ..train.parts import Mesh, make_optimizer

TAG = "ckpt"


class BlockedShard(nn.Module):
    """The module DeepSpeed wraps: forward is the shard's blocked output."""

    def __init__(self, net: nn.Module, block: int | None) -> None:
        super().__init__()
        self.net, self.block = net, block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blocked_output(self.net, x, self.block)


def ds_config(cfg: RunConfig, micro_batch: int, data: int) -> dict:
    """DeepSpeed's config: batch bookkeeping, ZeRO stage, offload and precision."""
    ds = cfg.deepspeed
    zero: dict = {"stage": ds.zero_stage}
    conf = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
            "train_batch_size": micro_batch * data, "zero_optimization": zero,
            # The optimizer is plain torch SGD/Adam: GD is the point of the study.
            "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
            "gradient_clipping": 0.0, "steps_per_print": 2**31 - 1}
    if ds.offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.precision == "bf16":
        # torch.autocast inside the engine, float32 parameters: the blocked walk runs its block
        # products in bf16 (train.blocked.block_dtype) and keeps its sums and gradients in
        # float32. DeepSpeed's "bf16" section would cast the parameters but not the fixed
        # sketches (buffers), and the walk's products would mix dtypes.
        conf["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return conf


class DeepSpeedEngine:
    def __init__(self, net: Network, cfg: RunConfig, eta: float, rows: int,
                 mesh: Mesh) -> None:
        import deepspeed

        self.net, self.mesh, self.cfg = net, mesh, cfg
        self.params = [p for p in net.parameters() if p.requires_grad]
        module = BlockedShard(net, cfg.train.block)
        self.engine, *_ = deepspeed.initialize(
            model=module, optimizer=make_optimizer(cfg.train, self.params, eta), mpu=mesh,
            config=ds_config(cfg, rows, mesh.data))
        self.stage3 = cfg.deepspeed.zero_stage == 3
        if self.stage3:
            for p in net.parameters():
                deepspeed.zero.register_external_parameter(module, p)
        self.float64 = net.dtype == torch.float64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine(x)

    def backward(self, loss: torch.Tensor) -> None:
        if self.float64:
            with self.engine.no_sync():
                self.engine.backward(loss)
            for p in self.params:
                self.mesh.sum_data(p.grad)
        else:
            # DeepSpeed averages gradients over the data group; the loss is a sum.
            self.engine.backward(loss * self.mesh.data)
            if self.mesh.data > 1:  # its all-reduce (or reduce-scatter) of every gradient,
                # each of the whole parameter's size (ds_numel: ZeRO-3 partitions it)
                self.mesh.moved["data"] += sum(getattr(p, "ds_numel", p.numel())
                                               * p.element_size() for p in self.params)

    def step(self) -> None:
        self.engine.step()

    def gathered(self) -> contextlib.AbstractContextManager:
        import deepspeed

        return (deepspeed.zero.GatheredParameters(list(self.net.parameters())) if self.stage3
                else contextlib.nullcontext())

    def save(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder), tag=TAG)

    def load(self, folder: Path) -> None:
        self.engine.load_checkpoint(str(folder), tag=TAG)

    def describe(self) -> dict[str, Any]:
        ds = self.cfg.deepspeed
        return {"engine": "deepspeed", "zero_stage": ds.zero_stage, "offload": ds.offload,
                "precision": ds.precision}
