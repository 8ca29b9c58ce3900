"""What a distributed training run shows, and where the rest of its output goes.

Ray streams every worker's stdout and stderr to the driver, so a two-worker run used to print
DeepSpeed's accelerator banners, op builds, Ray Train's worker-group lines and two progress
bars, with the lines that matter lost among them. Instead:

- each worker sends its own output (DeepSpeed, torch, tracebacks) to RUN/logs/rank<r>.log, by
  file descriptor, so that C-level prints are kept as well;
- rank 0 writes its progress (step, steps, loss) to RUN/logs/progress.json a few times a
  second, and the driver draws the one progress bar from it;
- `fntk train --verbose` keeps Ray's streaming instead (everything, as Ray prints it).

Ray's own logs (the controller's, the raylet's) stay in Ray's session folder, as always.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

LOGS = "logs"
PROGRESS = "progress.json"


def worker_log(out_dir: Path, rank: int) -> Path:
    return Path(out_dir) / LOGS / f"rank{rank}.log"


def send_output_to_log(out_dir: Path, rank: int) -> None:
    """Point this process's stdout and stderr (file descriptors 1 and 2) at its rank's log.

    Appends: a worker group restarted after a failure adds to the same file."""
    path = worker_log(out_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


class FileProgress:
    """The part of tqdm's interface the training loop uses, written to a file the driver
    reads: rank 0 of a Ray Train run has no terminal of its own."""

    def __init__(self, total: int, desc: str, out_dir: Path, every_s: float = 0.25) -> None:
        self.path = Path(out_dir) / LOGS / PROGRESS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.state = {"n": 0, "total": total, "desc": desc, "loss": None}
        self.every_s, self.written = every_s, 0.0

    def update(self, k: int = 1) -> None:
        self.state["n"] += k
        self._write()

    def set_postfix(self, loss: str | None = None, refresh: bool = False) -> None:  # noqa: ARG002
        self.state["loss"] = loss

    def close(self) -> None:
        self._write(force=True)

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.written < self.every_s:
            return
        self.written = now
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.path)  # the reader never sees half a file


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def driver_progress(out_dir: Path, total: int, desc: str, every_s: float = 0.2) -> Iterator[None]:
    """The driver's progress bar, following rank 0's progress file while the body runs.

    A thread draws it, so the main thread stays free to run the trainer and to take Ctrl-C."""
    path = Path(out_dir) / LOGS / PROGRESS
    path.unlink(missing_ok=True)  # an interrupted run's; rank 0 writes where it resumes
    stop = threading.Event()

    def follow() -> None:
        with tqdm(total=total, desc=desc) as bar:
            while True:
                state = _read(path)
                if state is not None:
                    bar.update(int(state["n"]) - bar.n)
                    if state.get("loss") is not None:
                        bar.set_postfix(loss=state["loss"], refresh=False)
                if stop.wait(every_s):
                    return

    thread = threading.Thread(target=follow, name="fntk-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2 * every_s + 1)
