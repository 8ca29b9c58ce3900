"""Sums over the ranks of one host through shared memory, waiting by spinning, not sleeping.

Width sharding sums an n x k tensor over the width group several times a step (the rank-space
activations of each factorized layer, each way). On gloo each all-reduce hands the tensor between
threads and sleeps until a peer's bytes arrive; on the 2-core VMs this project is measured on a
128 KiB all-reduce took 0.34 ms at the median, but 4 ms at the 90th percentile and up to 7.5 ms
(a sleeping thread woken on the next scheduler tick), and five of them a step made a depth-3
net's width-sharded step barely faster than one worker's (issue 11). Ranks on one host need no
transport at all: here each rank copies its tensor into its own slot of a shared file in
/dev/shm, raises its flag, spins until every peer's flag is up, and adds the slots in rank
order, so every rank gets the same bits (as DeepSpeed's shared-memory all-reduce does for CPU
inference, which takes float32 and narrower only and the whole world only).

Ordering: the flags are plain stores and loads of 8-byte words, which is enough on x86-64
(stores are seen in program order, loads are not reordered with loads); the mesh uses this
class only there. A peer that never arrives (it died) raises after `timeout_s`, so Ray Train
sees a failed worker, as it would from gloo's own timeout.
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from pathlib import Path

import torch

SHM_DIR = Path("/dev/shm")
SLOT_BYTES = 4 << 20  # per rank; a larger tensor goes through in slot-sized chunks
_LINE = 8  # int64 words per flag: one 64-byte cache line each, so flags do not share lines
_SPINS = 2000  # polls between yields to the scheduler while a peer has not arrived


def usable() -> bool:
    """Whether this host can take the shared-memory path (x86-64 ordering, /dev/shm)."""
    return platform.machine() in ("x86_64", "AMD64") and SHM_DIR.is_dir()


class ShmSum:
    """sum_(t) / max_(t): t reduced over the `size` ranks that opened the same file, in place.

    Every rank must call in the same order with tensors of the same shape and dtype (as for any
    collective). Rank 0 of the group creates the file at new_path() and hands its path to the
    others; once all have mapped it the file can be unlinked (distributed.mesh does), so
    nothing outlives the processes."""

    def __init__(self, path: Path, rank: int, size: int, create: bool,
                 timeout_s: float = 1800.0) -> None:
        self.rank, self.size, self.timeout_s = rank, size, timeout_s
        header = 2 * size * _LINE * 8  # arrived[r] and done[r], one line each
        nbytes = header + size * SLOT_BYTES
        if create:
            with open(path, "wb") as f:
                f.truncate(nbytes)
        raw = torch.from_file(str(path), shared=True, size=nbytes, dtype=torch.uint8)
        self._flags = raw[:header].view(torch.int64).numpy().reshape(2, size, _LINE)
        self._slots = raw[header:].view(size, SLOT_BYTES)
        self._raw, self._calls = raw, 0

    @staticmethod
    def new_path() -> Path:
        return SHM_DIR / f"fntk-width-{os.getpid()}-{uuid.uuid4().hex[:12]}"

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, torch.add)

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, torch.maximum)

    def _reduce(self, t: torch.Tensor, op) -> torch.Tensor:
        flat = t.view(-1) if t.is_contiguous() else t.contiguous().view(-1)
        per = max(1, SLOT_BYTES // t.element_size())
        for i0 in range(0, flat.numel(), per):
            self._chunk(flat[i0:i0 + per], op)
        if not t.is_contiguous():  # the sums went into a contiguous copy
            t.copy_(flat.view(t.shape))
        return t

    def _chunk(self, part: torch.Tensor, op) -> None:
        self._calls += 1
        call, arrived, done = self._calls, self._flags[0, :, 0], self._flags[1, :, 0]
        # My slot was read by every peer in the last call: wait until they are done with it.
        self._wait(lambda: done.min() >= call - 1, "finish the previous sum")
        nbytes = part.numel() * part.element_size()
        slots = [s[:nbytes].view(part.dtype) for s in self._slots]
        slots[self.rank].copy_(part)
        arrived[self.rank] = call
        self._wait(lambda: arrived.min() >= call, "arrive")
        # Rank order on every rank: the same bits everywhere.
        part.copy_(slots[0])
        for s in slots[1:]:
            op(part, s, out=part)
        done[self.rank] = call

    def _wait(self, ready, what: str) -> None:
        if ready():
            return
        start, spins = time.monotonic(), 0
        while not ready():
            spins += 1
            if spins % _SPINS == 0:
                os.sched_yield()  # a peer that shares this core gets it
                if time.monotonic() - start > self.timeout_s:
                    raise RuntimeError(
                        f"width group: a peer rank did not {what} within {self.timeout_s:.0f} s "
                        f"(shared-memory sum, rank {self.rank} of {self.size})")
