"""Rules that span config sections, checked once, before any work or worker starts.

Every job calls its check with the number of training points (which the sections alone do not
know); a broken rule is one ConfigError naming the key, so `fntk` exits 2 with one line and
nothing is started or written.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .config import RunConfig
from .data import Dataset
from .errors import ConfigError

T = TypeVar("T")


def distributed(cfg: RunConfig) -> bool:
    """Whether the job runs on Ray (dist.workers, dist.address or dist.grid set)."""
    dc = cfg.dist
    return dc.workers is not None or dc.address is not None or dc.grid is not None


@dataclass(frozen=True)
class TrainPlan:
    """How a training run is laid out: width x data ranks (1 x 1 in one process)."""

    distributed: bool
    width: int
    data: int
    batch: int  # points per step, all data ranks together

    @property
    def workers(self) -> int:
        return self.width * self.data


@dataclass(frozen=True)
class GramPlan:
    distributed: bool
    workers: int  # actors (1 in one process)
    tile: int  # rows per tile
    grid: tuple[int, int] | None  # (width shards, row groups) as dist.grid says; None: chosen


def _mesh(cfg: RunConfig) -> tuple[int, int]:
    dc = cfg.dist
    workers = dc.workers or 1
    width = dc.width or (workers // dc.data if dc.data else 1)
    data = dc.data or max(1, workers // width)
    if width * data != workers:
        raise ConfigError(f"dist: width * data = {width} * {data} = {width * data} must equal "
                          f"dist.workers = {workers}")
    # Every hidden layer is split by neurons over the width group (tensor parallelism); the
    # ranks k are not split (each shard sums its part of the n x k Z).
    specs = cfg.model.layer_specs
    for i, spec in enumerate(specs):
        if spec.m % width:
            key = "model.m" if cfg.model.layers is None else f"model.layers.{i}.m"
            raise ConfigError(f"dist.width: {width} does not divide {key} = {spec.m}")
    return width, data


def batch_size(cfg: RunConfig, n: int) -> int:
    """Points per step, all data ranks together: n for gd or an unset train.batch_size."""
    tc = cfg.train
    return n if tc.optimizer == "gd" or tc.batch_size is None else tc.batch_size


def check_model(cfg: RunConfig, d: int) -> None:
    """The net can be built for inputs of dimension d (e.g. an srht sketch needs k <= d
    padded to a power of two). Builds one neuron only: cheap at any width."""
    if (cfg.model.hidden_layers == 1 and cfg.model.mode == "sketch_in" and cfg.model.k is not None
            and cfg.model.k > d):  # deeper, a rank above the fan-in is refused when built
        warnings.warn(f"model.k: sketch_in maps the d={d} inputs to k={cfg.model.k} > d "
                      "features, a sketch that does not reduce", UserWarning, stacklevel=2)
    try:
        cfg.model.build(d, neurons=(0, 1))
    except ConfigError:
        raise
    except ValueError as err:  # the net's constructor names its argument
        raise ConfigError(str(err) if str(err).startswith("model.") else f"model.{err}") from None


def _naming_the_file(check: Callable[..., T]) -> Callable[..., T]:
    """A broken rule of a config read from a file names the file, as load_config does."""

    @functools.wraps(check)
    def checked(cfg: RunConfig, *args: object) -> T:
        try:
            return check(cfg, *args)
        except ConfigError as err:
            if cfg.source is None or str(err).startswith(cfg.source):
                raise
            raise ConfigError(f"{cfg.source}: {err}") from None

    return checked


@_naming_the_file
def check_train(cfg: RunConfig, data: Dataset) -> TrainPlan:
    """The layout of `fntk train` on data; ConfigError for a broken rule."""
    tc, ds = cfg.train, cfg.deepspeed
    n, d = data.n, data.d
    if cfg.dist.grid is not None:
        raise ConfigError("dist.grid: shapes the actors of fntk gram and fntk regress; training "
                          "lays its workers out as dist.width x dist.data")
    if tc.lr is None and n > tc.gram_max_n:
        raise ConfigError(f"train.lr: required when n={n} > train.gram_max_n={tc.gram_max_n} "
                          "(the step size is otherwise read off the n x n Gram)")
    if tc.lr is None and not np.any(data.x):
        raise ConfigError("train.lr: every training point is zero, so the NTK Gram at "
                          "initialisation vanishes and eta = lr_scale / lambda_max(H(0)) is "
                          "undefined; set train.lr (or check the data)")
    if tc.batch_size is not None and tc.batch_size > n:
        raise ConfigError(f"train.batch_size: {tc.batch_size} exceeds the {n} training points")
    batch = batch_size(cfg, n)
    check_model(cfg, d)
    if not distributed(cfg):
        _refuse_unused(cfg)
        return TrainPlan(False, 1, 1, batch)
    width, data = _mesh(cfg)
    if batch < data:
        raise ConfigError(f"dist.data: {data} data-parallel replicas need at least one point "
                          f"each, but a step holds {batch}")
    if ds.offload and ds.zero_stage == 0:
        raise ConfigError("deepspeed.offload: needs deepspeed.zero_stage >= 1 (ZeRO offloads "
                          "its partitioned optimizer state)")
    if ds.zero_stage > 0 and cfg.model.dtype == "float64":
        raise ConfigError(f"deepspeed.zero_stage: ZeRO stage {ds.zero_stage} keeps float32 "
                          "master weights, so a float64 model would train in float32; use "
                          "model.dtype float32, or deepspeed.zero_stage 0 for float64")
    if ds.precision == "bf16" and cfg.model.dtype != "float32":
        raise ConfigError("deepspeed.precision: bf16 mixed precision keeps float32 master "
                          f"weights; set model.dtype float32 (it is {cfg.model.dtype})")
    return TrainPlan(True, width, data, batch)


def _refuse_unused(cfg: RunConfig) -> None:
    """Mesh and DeepSpeed settings in a one-process training run would be silently ignored."""
    for key in ("width", "data"):
        if getattr(cfg.dist, key) is not None:
            raise ConfigError(f"dist.{key}: sets the mesh of a distributed run; add --workers "
                              "(or dist.workers), or drop it")
    defaults = type(cfg.deepspeed)()
    for key, value in cfg.deepspeed:
        if value != getattr(defaults, key):
            raise ConfigError(f"deepspeed.{key}: applies to distributed training only; add "
                              "--workers (or dist.workers), or drop it")


@_naming_the_file
def check_gram(cfg: RunConfig, n: int, d: int) -> GramPlan:
    """The layout of `fntk gram` for n points of dimension d; ConfigError for a broken rule."""
    check_model(cfg, d)
    workers, grid = cfg.dist.workers or 1, cfg.dist.grid
    if grid is not None:
        if cfg.dist.workers is not None and grid[0] * grid[1] != workers:
            raise ConfigError(f"dist.grid: {grid[0]} x {grid[1]} = {grid[0] * grid[1]} actors, "
                              f"but dist.workers = {workers}")
        workers = grid[0] * grid[1]
        if grid[0] > cfg.model.m:
            raise ConfigError(f"dist.grid: {grid[0]} width shards but only m={cfg.model.m} "
                              "neurons to shard")
    tile = cfg.gram.tile or min(n, 1024)
    if tile > n:
        raise ConfigError(f"gram.tile: {tile} rows per tile exceeds the n={n} points; tiles "
                          "must partition the rows")
    if cfg.gram.dtype == "float64" and cfg.model.dtype == "float32":
        raise ConfigError("gram.dtype: float64 tiles of a float32 net hold float32-accurate "
                          "entries; set model.dtype float64 too (or gram.dtype float32)")
    if cfg.gram.factor_tasks == "ray" and not distributed(cfg):
        raise ConfigError("gram.factor_tasks: ray runs the factor's tasks on the Gram's Ray "
                          "cluster; give --workers N or --address (or factor_tasks threads)")
    return GramPlan(distributed(cfg), workers, tile, grid)
