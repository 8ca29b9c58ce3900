"""SweepConfig: a base run config and a grid over it, expanded into validated trials.

    name: sweep_smoke
    trial_cpus: 1              # Ray CPUs (and torch threads) per trial
    kind: train                # train (default) | kernel: analytic-only trials, no training
    seed_mode: nested          # nested (default) | independent: a seed per width
    base: {data: {...}, train: {...}}   # any key of a `fntk train` config, shared by all trials
    grid:                      # a mapping (cartesian product) or a list of them (their union)
      mode: [dense, sketch_in]
      m: [64, 256]
      k: [8]
      depth: [1, 2, 3]         # hidden layers, each the flat m/mode/k/sketch
                               # (or layers: [[{m: 64, mode: dense}, {m: 64, mode: lowrank, k: 8}]])

Grid keys are the short names below, the ratios k_per_d and k_per_n (k = round(ratio * d) or
round(ratio * n), at least 1) or any dotted key of a run config (train.steps). Every trial is
validated before any runs, so a bad grid fails at once with one message naming its key.

Seeds. nested: model.seed is the grid's seed at every width, so a seed's nets share their
sketch and first rows across widths, and a width trend rests on paired draws. independent: each
trial's model.seed is derived from the grid's seed and the trial's widths and ranks, so every
width (and rank) draws its own net; the grid's seed stays as the trial's `replicate`.
A kernel sweep's trials never train; their m is raised to k where below (m does not enter the
kernel measures).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import ConfigError, RunConfig, parse_override, read_yaml_mapping
from ..data import load_dataset
from ..errors import UserError

# Short grid keys and the run-config keys they set.
SHORT_KEYS = {
    "mode": "model.mode", "sketch": "model.sketch", "m": "model.m", "k": "model.k",
    "train_output": "model.train_output", "seed": "model.seed",
    "depth": "model.depth", "layers": "model.layers",
    "source": "data.source", "n": "data.n", "d": "data.d",
}
# Grid keys that set the rank from the data's size: k = max(1, round(ratio * d or n)).
RATIO_KEYS = {"k_per_d": "d", "k_per_n": "n"}
# Keys that mean nothing for some modes: dropped there, so a grid over k and mode works.
_UNUSED = {"model.k": ("dense",), "model.sketch": ("dense", "lowrank")}


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="sweep name (W&B group); default: file stem")
    trial_cpus: int = Field(1, ge=1, description="Ray CPUs and torch threads per trial")
    regression: bool = Field(True, description="NTK kernel regression where there is a test split")
    kind: Literal["train", "kernel"] = Field(
        "train", description="train: regression and training; kernel: analytic-only measures")
    seed_mode: Literal["nested", "independent"] = Field(
        "nested", description="nested: one seed's nets shared across widths; independent: "
                              "a seed per width")
    base: dict[str, Any] = Field(default_factory=dict, description="run config shared by trials")
    grid: list[dict[str, list[Any]]] = Field(
        ..., description="mapping of key -> non-empty list of values, or a list of such mappings")

    @field_validator("grid", mode="before")
    @classmethod
    def _one_grid(cls, grid: Any) -> Any:
        return [grid] if isinstance(grid, dict) else grid


def _check_grid(grids: list[dict[str, list[Any]]], source: str) -> None:
    if not grids:
        raise ConfigError(f"{source}: grid: empty list; give at least one mapping of key -> values")
    for g in grids:
        if not g:
            raise ConfigError(f"{source}: grid: empty mapping; give at least one key")
        for key, values in g.items():
            if key not in RATIO_KEYS and not _is_run_key(SHORT_KEYS.get(key, key)):
                raise ConfigError(f"{source}: grid.{key}: unknown key (short keys: "
                                  f"{', '.join([*SHORT_KEYS, *RATIO_KEYS])}; or a run-config "
                                  "key: train.steps)")
            if not values:
                raise ConfigError(f"{source}: grid.{key}: empty list; give at least one value")


def _is_run_key(dotted: str) -> bool:
    """Whether dotted names a leaf of RunConfig (section.field)."""
    section, _, leaf = dotted.partition(".")
    field = RunConfig.model_fields.get(section)
    if field is None or not leaf or "." in leaf:
        return False
    sub = field.annotation
    return isinstance(sub, type) and issubclass(sub, BaseModel) and leaf in sub.model_fields


@dataclass(frozen=True)
class Trial:
    """One point of the grid: its id (also its folder name), its grid values and its config."""

    id: str
    params: dict[str, Any]
    config: RunConfig
    data_fingerprint: str = ""  # its data by content: a finished trial on other data is stale
    replicate: int = 0  # the grid's seed (model.seed too, unless seeds are independent)
    seed_mode: str = "nested"
    kind: str = "train"


def _trial_id(cfg: RunConfig, kind: str = "train") -> str:
    """Readable and unique: the main parameters plus a hash of everything that shapes the run
    (tracking excluded), so a changed base gives new trials rather than reusing stale ones."""
    m, dc = cfg.model, cfg.data
    parts = (["kernel"] if kind == "kernel" else []) + [dc.source,
                                                        f"n{dc.n if dc.n is not None else 'all'}"]
    parts += [f"d{dc.d}"] if dc.source == "sphere" else []
    parts += [f"L{m.hidden_layers}"] if m.hidden_layers > 1 else []
    parts += [m.mode] + ([m.sketch] if m.sketch else []) + [f"m{m.m}"]
    parts += ([f"k{m.k}"] if m.k is not None else []) + (["out"] if m.train_output else [])
    shaping = cfg.model_dump(mode="json", include={"model", "data", "train", "gram"})
    digest = hashlib.sha1(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:8]
    return "-".join(parts + [f"s{m.seed}", digest])


def _validation_message(err: ValidationError, shown: dict[str, str]) -> str:
    """'grid.k: must be <= m=64, got 128': the first problem, named as the sweep file names it."""
    first = err.errors()[0]
    dotted = ".".join(str(p) for p in first["loc"])
    key = shown.get(dotted, f"base.{dotted}")
    msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    msg = msg.removeprefix("Value error, ")
    if "input" in first and not isinstance(first["input"], dict | list):
        msg += f" (got {first['input']!r})"
    return f"{key}: {msg}"


def _independent_seed(seed: int, cfg: RunConfig) -> int:
    """A seed of its own for each (seed, widths, ranks): a hash, so no two widths (or ranks)
    share a draw."""
    layers = cfg.model.layers or [cfg.model]
    text = json.dumps([seed, [[layer.m, layer.k] for layer in layers]])
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)


def _set_ratio_rank(raw: dict, key: str, ratio: Any, source: str) -> None:
    """k from grid.k_per_d / k_per_n and the data section's d or n (which must be given)."""
    size = (raw.get("data") or {}).get(RATIO_KEYS[key])
    if not isinstance(size, int):
        raise ConfigError(f"{source}: grid.{key}: needs data.{RATIO_KEYS[key]} set (in the base "
                          "or the grid)")
    if not isinstance(ratio, int | float) or ratio <= 0:
        raise ConfigError(f"{source}: grid.{key}: expected a positive number, got {ratio!r}")
    _set(raw, "model.k", max(1, round(ratio * size)))


def _set(raw: dict, dotted: str, value: Any) -> None:
    section, leaf = dotted.split(".")
    raw[section] = {**(raw.get(section) or {}), leaf: value}


def expand(sweep: SweepConfig, source: str = "sweep") -> list[Trial]:
    """Every trial of the sweep, validated (configs and data), in grid order, duplicates once."""
    _check_grid(sweep.grid, source)
    trials: dict[str, Trial] = {}
    for g in sweep.grid:
        keys = list(g)
        dotted = [SHORT_KEYS.get(k, k) for k in keys]
        shown = {d: f"grid.{k}" for k, d in zip(keys, dotted)}
        for values in itertools.product(*(g[k] for k in keys)):
            raw = json.loads(json.dumps(sweep.base))  # a deep copy
            point = dict(zip(dotted, values))
            ratios = {d: point.pop(d) for d in list(point) if d in RATIO_KEYS}
            mode = point.get("model.mode", (raw.get("model") or {}).get("mode", "sketch_in"))
            for d, v in point.items():
                _set(raw, d, v)
            for d, v in ratios.items():
                if mode != "dense":
                    _set_ratio_rank(raw, d, v, source)
            model = raw.get("model") or {}
            if (sweep.kind == "kernel" and isinstance(model.get("k"), int) and mode != "dense"
                    and "layers" not in model):
                _set(raw, "model.m", max(model.get("m", 1), model["k"]))
            for d, modes in _UNUSED.items():  # from the grid or the base alike
                if mode in modes:
                    (raw.get(d.split(".")[0]) or {}).pop(d.split(".")[1], None)
            try:
                cfg = RunConfig.model_validate(raw)
            except ValidationError as err:
                raise ConfigError(f"{source}: {_validation_message(err, shown)}") from None
            replicate = cfg.model.seed
            if sweep.seed_mode == "independent":
                seeded = cfg.model.model_copy(update={"seed": _independent_seed(replicate, cfg)})
                cfg = cfg.model_copy(update={"model": seeded})
            tid = _trial_id(cfg, sweep.kind)
            cfg = cfg.model_copy(update={
                "name": tid,
                "tracking": cfg.tracking.model_copy(update={
                    "group": cfg.tracking.group or sweep.name,
                    "tags": [*cfg.tracking.tags, cfg.model.mode, f"m={cfg.model.m}",
                             f"depth={cfg.model.hidden_layers}"]}),
            })
            params = {k: v for k, v in zip(keys, values)
                      if mode not in _UNUSED.get(SHORT_KEYS.get(k, k), ())
                      and not (k in RATIO_KEYS and mode == "dense")}
            trials.setdefault(tid, Trial(tid, params, cfg, replicate=replicate,
                                         seed_mode=sweep.seed_mode, kind=sweep.kind))
    prints = _check_data({t.config.data.model_dump_json(): t.config.data
                          for t in trials.values()}, source)
    return [dataclasses.replace(t, data_fingerprint=prints[t.config.data.model_dump_json()])
            for t in trials.values()]


def _check_data(distinct: dict, source: str) -> dict[str, str]:
    """Load each distinct dataset once (rows asked for beyond a file's, an empty split, ...
    fail here); returns each one's fingerprint by its key."""
    prints = {}
    for key, data in distinct.items():
        try:
            prints[key] = load_dataset(data).fingerprint
        except UserError as err:
            raise ConfigError(f"{source}: {err}") from None
    return prints


def load_sweep(path: str | Path, overrides: list[str] = ()) -> tuple[SweepConfig, list[Trial]]:
    """Read and validate a sweep file (overrides apply to its base); returns it and its trials."""
    path = Path(path)
    raw = read_yaml_mapping(path, "sweep", "name, base and grid")
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"] if not isinstance(p, int))
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{path}: {loc}: {msg.removeprefix('Value error, ')}") from None
    if overrides:
        base = json.loads(json.dumps(sweep.base))
        for text in overrides:
            parts, value = parse_override(text)
            if len(parts) != 2:
                raise ConfigError(f"override {text!r}: expected section.key=value")
            _set(base, ".".join(parts), value)
        sweep = sweep.model_copy(update={"base": base})
    sweep = sweep if sweep.name else sweep.model_copy(update={"name": path.stem})
    return sweep, expand(sweep, str(path))
