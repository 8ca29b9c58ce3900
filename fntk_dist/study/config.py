"""SweepConfig: a base run config and a grid over it, expanded into validated trials.

    name: sweep_smoke
    trial_cpus: 1              # Ray CPUs (and torch threads) per trial
    base: {data: {...}, train: {...}}   # any key of a `fntk train` config, shared by all trials
    grid:                      # a mapping (cartesian product) or a list of them (their union)
      mode: [dense, sketch_in]
      m: [64, 256]
      k: [8]
      depth: [1, 2, 3]         # hidden layers, each the flat m/mode/k/sketch
                               # (or layers: [[{m: 64, mode: dense}, {m: 64, mode: lowrank, k: 8}]])

Grid keys are the short names below or any dotted key of a run config (train.steps). Every
trial is validated before any runs, so a bad grid fails at once with one message naming its key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# Keys that mean nothing for some modes: dropped there, so a grid over k and mode works.
_UNUSED = {"model.k": ("dense",), "model.sketch": ("dense", "lowrank")}


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="sweep name (W&B group); default: file stem")
    trial_cpus: int = Field(1, ge=1, description="Ray CPUs and torch threads per trial")
    regression: bool = Field(True, description="NTK kernel regression where there is a test split")
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
            if not _is_run_key(SHORT_KEYS.get(key, key)):
                raise ConfigError(f"{source}: grid.{key}: unknown key (short keys: "
                                  f"{', '.join(SHORT_KEYS)}; or a run-config key: train.steps)")
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


def _trial_id(cfg: RunConfig) -> str:
    """Readable and unique: the main parameters plus a hash of everything that shapes the run
    (tracking excluded), so a changed base gives new trials rather than reusing stale ones."""
    m, dc = cfg.model, cfg.data
    parts = [dc.source, f"n{dc.n if dc.n is not None else 'all'}"]
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
            mode = point.get("model.mode", (raw.get("model") or {}).get("mode", "sketch_in"))
            for d, v in point.items():
                _set(raw, d, v)
            for d, modes in _UNUSED.items():  # from the grid or the base alike
                if mode in modes:
                    (raw.get(d.split(".")[0]) or {}).pop(d.split(".")[1], None)
            try:
                cfg = RunConfig.model_validate(raw)
            except ValidationError as err:
                raise ConfigError(f"{source}: {_validation_message(err, shown)}") from None
            tid = _trial_id(cfg)
            cfg = cfg.model_copy(update={
                "name": tid,
                "tracking": cfg.tracking.model_copy(update={
                    "group": cfg.tracking.group or sweep.name,
                    "tags": [*cfg.tracking.tags, cfg.model.mode, f"m={cfg.model.m}",
                             f"depth={cfg.model.hidden_layers}"]}),
            })
            params = {k: v for k, v in zip(keys, values)
                      if mode not in _UNUSED.get(SHORT_KEYS.get(k, k), ())}
            trials.setdefault(tid, Trial(tid, params, cfg))
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
