"""An append-only journal of JSON records, one line each: O(1) per update of a manifest.

Rewriting a whole manifest after every tile costs O(T) per tile, O(T^2) per job. Appending one
line costs O(1); the owner folds the journal into the manifest now and then (compaction).
An append is flushed and fsynced before it returns. A process killed in the middle of one
leaves a torn last line, which `replay` skips (and so would it any garbled line).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def append(path: Path, record: dict) -> None:
    """Adds one record as one line, durably."""
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def replay(path: Path) -> list[dict]:
    """The whole records in `path`, oldest first; none when it does not exist."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    records = []
    # Only a line with its newline was appended whole: the text after the last one is torn.
    for line in raw.split(b"\n")[:-1]:
        try:
            rec = json.loads(line)
        except ValueError:  # also UnicodeDecodeError: a line torn inside a character
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records
