"""What a W&B offline run holds: the history rows of its .wandb transaction log.

wandb 0.31 ships no Python reader for the log, which is LevelDB's log format: a 7-byte file
header, then 32 KiB blocks of chunks, each with a 7-byte header (crc32, length, kind) and
a piece of one serialized wandb Record.
"""

from __future__ import annotations

import json
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def history(run_file: Path) -> list[dict]:
    """The rows logged with run.log(), in order (key -> value; '_step' included)."""
    from wandb.proto import wandb_internal_pb2

    raw = run_file.read_bytes()
    assert raw[:4] == b":W&B", f"{run_file} is not a W&B transaction log"
    pos, record, rows = HEADER, b"", []
    while pos + HEADER <= len(raw):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(raw[pos + 4:pos + 6], "little"), raw[pos + 6]
        chunk = raw[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        record = chunk if kind in (FULL, FIRST) else record + chunk
        if kind in (FULL, LAST):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(record)
            if rec.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                             for i in rec.history.item})
    return rows
