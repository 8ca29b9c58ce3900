"""The pluggable parts of the one training loop (fntk_dist.train.loop), and their one-process
versions: a mesh (the collectives of a width x data layout), an engine (forward, backward and
optimizer step) and a checkpointer (where a run's state goes and comes back from).

Distributed runs plug in fntk_dist.distributed's mesh, DeepSpeed engine and Ray Train
checkpointer; the loop is the same code either way.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from ..models.network import Network
from .blocked import SpareGrads, blocked_output, default_train_block, walk_threads
from .config import TrainConfig


class Mesh(Protocol):
    """Collectives over a width x data layout of ranks (rank = data_rank * width + width_rank)."""

    width: int
    data: int
    rank: int
    width_rank: int
    data_rank: int
    moved: dict[str, int]  # bytes summed so far over the "width" and the "data" group

    def sum_width(self, t: torch.Tensor) -> torch.Tensor: ...
    def max_width(self, t: torch.Tensor) -> torch.Tensor: ...
    def sum_data(self, t: torch.Tensor) -> torch.Tensor: ...
    def max_all(self, t: torch.Tensor) -> torch.Tensor: ...


class LocalMesh:
    """One process: a 1 x 1 mesh whose collectives return their argument."""

    width = data = 1
    rank = width_rank = data_rank = 0

    def __init__(self) -> None:
        self.moved = {"width": 0, "data": 0}  # nothing is ever moved

    def sum_width(self, t: torch.Tensor) -> torch.Tensor:
        return t

    max_width = sum_data = max_all = sum_width


class Engine(Protocol):
    """Runs the net's shard: its output, the gradients of a loss, and the optimizer's step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> None: ...
    def gathered(self) -> contextlib.AbstractContextManager: ...
    def save(self, folder: Path) -> None: ...
    def load(self, folder: Path) -> None: ...
    def describe(self) -> dict[str, Any]: ...


def make_optimizer(tc: TrainConfig, params: list[torch.nn.Parameter],
                   eta: float) -> torch.optim.Optimizer:
    """Adam for optimizer 'adam'; plain SGD (full-batch or mini-batch GD) otherwise."""
    return (torch.optim.Adam(params, lr=eta) if tc.optimizer == "adam"
            else torch.optim.SGD(params, lr=eta))


class TorchEngine:
    """A torch optimizer around the neuron-blocked output, in this process.

    Where the blocks are walked by several threads (CPU), this thread runs the step's own ops
    (features, loss, optimizer) on one intra-op thread: GNU OpenMP's idle workers spin for
    about 10 ms after each parallel region of this thread (300,000 pauses on these AMD cores)
    and took a core from the walkers: a 2-thread sketch_in step took 0.0333 s, 0.0264 s
    without (tools/bench_step.py --processes 5; docs/DESIGN.md, "Neuron-blocked step")."""

    FILE = "engine.pt"

    def __init__(self, net: Network, tc: TrainConfig, eta: float) -> None:
        self.net, self.block = net, tc.block
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.opt = make_optimizer(tc, self.params, eta)
        # Each step's gradients are written into the last step's (no allocation per step).
        self.spare = SpareGrads()
        self.threads = torch.get_num_threads()  # the walkers', fixed now
        self.walkers = 1  # of the last forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        block = default_train_block(self.net, n) if self.block is None else self.block
        self.walkers = walk_threads(self.net, n, block, self.threads)
        with _caller_alone(self.walkers > 1):  # the block chosen here, not again inside
            return blocked_output(self.net, x, block, threads=self.walkers, spare=self.spare)

    def backward(self, loss: torch.Tensor) -> None:
        self.spare.recycle(self.params)  # zero_grad(set_to_none=True), the memory kept
        with _caller_alone(self.walkers > 1):
            loss.backward()

    def step(self) -> None:
        with _caller_alone(self.walkers > 1):
            self.opt.step()

    def gathered(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def save(self, folder: Path) -> None:
        torch.save({"net": self.net.state_dict(), "optimizer": self.opt.state_dict()},
                   folder / self.FILE)

    def load(self, folder: Path) -> None:
        state = torch.load(folder / self.FILE, map_location=self.net.device, weights_only=True)
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["optimizer"])

    def describe(self) -> dict[str, Any]:
        return {"engine": "torch", "zero_stage": None, "offload": False, "precision": "fp32"}


@contextlib.contextmanager
def _caller_alone(alone: bool) -> Iterator[None]:
    """This thread on one intra-op thread inside (where `alone`), its count put back after."""
    if not alone:
        yield
        return
    keep = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(keep)


class Checkpointer(Protocol):
    """save(step, write, metrics): write(folder) fills a checkpoint; latest(): the folder of the
    newest one (None without one), for as long as the context is open."""

    def save(self, step: int, write: Callable[[Path], None], metrics: dict) -> None: ...
    def latest(self) -> contextlib.AbstractContextManager[Path | None]: ...


CHECKPOINTS = "checkpoints"  # a run folder's checkpoints, in one process or on Ray Train
_STEP_DIR = re.compile(r"checkpoint_(\d+)")


class FolderCheckpointer:
    """Checkpoints of a one-process run: RUN/checkpoints/checkpoint_<step>/, the last two kept.
    Each is filled under a temporary name and renamed whole, so a killed run leaves only whole
    checkpoints behind."""

    KEEP = 2

    def __init__(self, out_dir: Path) -> None:
        self.root = Path(out_dir) / CHECKPOINTS

    def _done(self) -> list[Path]:
        found = [(int(m[1]), p) for p in self.root.glob("checkpoint_*")
                 if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, step: int, write: Callable[[Path], None], metrics: dict) -> None:
        tmp = self.root / f".tmp_checkpoint_{step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        final = self.root / f"checkpoint_{step:06d}"
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self._done()[: -self.KEEP]:
            shutil.rmtree(old, ignore_errors=True)

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        done = self._done()
        yield done[-1] if done else None
