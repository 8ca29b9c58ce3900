"""Ctrl-C and SIGTERM (what schedulers send) as a request to stop at the next safe point.

A long job installs `stop_requests()` around its work and polls `requested()` where stopping
is safe (a training step's end: parameters whole, a checkpoint can be written). A second
signal stops at once (KeyboardInterrupt), for a user who will not wait.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Interrupted(Exception):  # noqa: N818 - it is what happened, not an error in the input
    """The job stopped on a signal at a safe point; str() says where and how to continue."""


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None

    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:  # the second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM set the request while the context is open (main thread only: in
    another thread, or a Ray worker, the request is simply never set)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request._handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
