"""What a resumable result is: the settings that shape it and the data it was computed on.

A tile store, a training checkpoint and a sweep trial are reused only by a run of the same
identity. The data enter by their contents (Dataset.fingerprint), not by a path: a file
replaced under the same name is other data. When identities differ, the keys that differ are
named, so the message says what changed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .config import RunConfig
from .data import Dataset


def run_identity(cfg: RunConfig, data: Dataset, sections: tuple[str, ...],
                 **extra: Any) -> dict[str, Any]:
    """The config sections that shape a result, the data's fingerprint, and extra values."""
    return {**cfg.model_dump(mode="json", include=set(sections)),
            "data_fingerprint": data.fingerprint, **extra}


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix or "(all)"]
    out = []
    for key in sorted(set(old) | set(new), key=str):
        out += differing_keys(old.get(key), new.get(key), f"{prefix}{key}" if not prefix
                              else f"{prefix}.{key}")
    return out
