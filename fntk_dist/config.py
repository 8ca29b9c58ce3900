"""A run is a config: YAML validated into typed sections, with dotted command-line overrides.

Every problem (unknown key, wrong type, bad value, unreadable file) is one ConfigError whose
message names the file and the dotted key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from .data.config import DataConfig
from .distributed.config import DeepSpeedConfig, DistConfig
from .errors import ConfigError
from .gram.config import GramConfig
from .models.config import ModelConfig
from .regress.config import RegressConfig
from .track.config import TrackingConfig
from .train.config import TrainConfig

__all__ = ["ConfigError", "RunConfig", "build_config", "dump_config", "load_config",
           "parse_override", "read_yaml_mapping"]


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="run name; default: the config file's stem")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    gram: GramConfig = Field(default_factory=GramConfig)
    regress: RegressConfig = Field(default_factory=RegressConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    dist: DistConfig = Field(default_factory=DistConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    # The file it was read from, if any: the rules checked later (fntk_dist.checks) name it
    # as load_config's own errors do. Not part of the config (never dumped).
    _source: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str | None:
        return self._source


def _format(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and not isinstance(first["input"], dict | list):
        msg += f" (got {first['input']!r})"
    more = len(err.errors()) - 1
    return f"{source}: {key}: {msg}" + (f" (and {more} more)" if more else "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.steps=50' -> (['train', 'steps'], 50); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.problem})") from None
    return parts, value


def _slot(node: dict | list, part: str, text: str) -> str | int:
    """The key of node that an override's dotted part names: an index into a list (from 0)."""
    if isinstance(node, dict):
        return part
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {text!r}: {part} is not an item of a list of {len(node)}")
    return int(part)


def build_config(raw: dict, overrides: list[str] = (), source: str = "config") -> RunConfig:
    """Validate a dict (plus overrides) into a RunConfig. A dotted key reaches into sections
    and into lists by index (model.layers.1.k=64); what it passes through is copied, never
    changed in raw."""
    data = dict(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for p in parts[:-1]:
            key = _slot(node, p, text)
            child = node.get(key) if isinstance(node, dict) else node[key]
            if child is None:
                child = node[key] = {}
            elif isinstance(child, dict | list):
                child = node[key] = type(child)(child)
            else:
                raise ConfigError(f"override {text!r}: {p} is not a section")
            node = child
        node[_slot(node, parts[-1], text)] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (plain
    YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(f"key {key!r} given twice (line "
                                    f"{key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: Path, kind: str, top: str) -> dict:
    """The mapping a YAML file holds; ConfigError naming the file otherwise. kind: what the
    file is ('config', 'sweep'); top: what its top level should hold, for the message."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such {kind} file")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of {top} at the top level")
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config file, apply overrides, validate."""
    path = Path(path)
    raw = read_yaml_mapping(path, "config", "sections")
    cfg = build_config(raw, overrides, str(path))
    cfg = cfg if cfg.name else cfg.model_copy(update={"name": path.stem})
    cfg._source = str(path)
    return cfg


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (what a run folder's config.yaml holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
