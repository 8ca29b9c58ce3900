"""Threads that walk neuron blocks side by side, each with single-threaded torch ops.

A factorized layer's blocks are small GEMMs (n x k x block with k ~ 32): split across torch's
intra-op threads, each one is a short parallel region and the threads mostly synchronise. Here
each of T Python threads takes every T-th block whole instead (torch ops release the GIL), and
the blocks' contributions to shared sums are added in block order ("commits", one at a time),
so a sum is formed in exactly the order of a walk on one thread.

torch.set_num_threads is process-wide in one respect: besides the calling thread's own
OpenMP/MKL setting it stores the default that threads pick up on their first torch op. The
walker threads set their own setting to 1 once, when they start, and the starting thread puts
the process default back before it returns, so no other thread's setting changes.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import torch

Block = tuple[int, int]


class _Aborted(Exception):
    """Another walker failed: this one stops at its next commit (the failure is raised)."""


class _Walker:
    """One daemon thread with one intra-op thread, serving jobs from its queue for its life."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.ready = threading.Event()
        threading.Thread(target=self._serve, name="fntk-block-walker", daemon=True).start()

    def _serve(self) -> None:
        torch.get_num_threads()  # torch's lazy per-thread init first, so it cannot undo the 1
        torch.set_num_threads(1)
        self.ready.set()
        while True:
            fn, done = self.jobs.get()
            try:
                done.set_result(fn())
            except BaseException as err:  # handed to the caller, which raises it
                done.set_exception(err)
            # Not held while waiting for the next job: the job's closure holds the step's
            # gradients, which autograd takes over without a copy only if nobody else does.
            del fn, done


_WALKERS: list[_Walker] = []
_START = threading.Lock()


def _forget_walkers() -> None:
    """In a forked child: the parent's walker threads do not exist there; start afresh."""
    global _START
    _WALKERS.clear()
    _START = threading.Lock()


os.register_at_fork(after_in_child=_forget_walkers)


def _walkers(count: int) -> list[_Walker]:
    with _START:
        if len(_WALKERS) < count:
            keep = torch.get_num_threads()
            new = [_Walker() for _ in range(count - len(_WALKERS))]
            for w in new:
                w.ready.wait()
            torch.set_num_threads(keep)  # the process default the walkers' set(1) overwrote
            _WALKERS.extend(new)
        return _WALKERS[:count]


class _Turns:
    """Commits in block order: commit(i, fn) runs fn once blocks 0..i-1 have committed."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.next = 0
        self.skipped: set[int] = set()
        self.failed = False

    def commit(self, i: int, fn: Callable[[], None] | None) -> None:
        if fn is None:  # nothing to add: block i's turn passes once it comes, without waiting
            with self.cond:
                self.skipped.add(i)
                self._advance()
            return
        with self.cond:
            self.cond.wait_for(lambda: self.next == i or self.failed)
            if self.failed:
                raise _Aborted
            fn()
            self.next += 1
            self._advance()

    def _advance(self) -> None:
        while self.next in self.skipped:
            self.skipped.discard(self.next)
            self.next += 1
        self.cond.notify_all()

    def fail(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()


# compute(i0, i1) does a block's own work (writing only its rows and this thread's buffers) and
# returns its commit: the call that adds the block's share into the shared sums (None: none).
Compute = Callable[[int, int], Callable[[], None] | None]


def walk(blocks: Sequence[Block], compute: Compute, threads: int) -> None:
    """Runs compute on every block and each returned commit in block order: on the calling
    thread (threads == 1, torch's intra-op threads inside each op) or on `threads` walker
    threads, thread j taking blocks j, j + threads, ... (one intra-op thread each). Blocks
    without a commit wait for no other's."""
    if threads <= 1 or len(blocks) < 2:
        for i0, i1 in blocks:
            commit = compute(i0, i1)
            if commit is not None:
                commit()
        return
    threads = min(threads, len(blocks))
    turns = _Turns()
    grad_mode = torch.is_grad_enabled()  # thread-local: the caller's (off inside autograd)

    def part(j: int) -> None:
        try:
            with torch.set_grad_enabled(grad_mode):
                for i in range(j, len(blocks), threads):
                    turns.commit(i, compute(*blocks[i]))
        except _Aborted:
            pass
        except BaseException:
            turns.fail()
            raise

    done = []
    for j, w in enumerate(_walkers(threads)):
        f: Future = Future()
        w.jobs.put((lambda j=j: part(j), f))
        done.append(f)
    for f in done:
        f.exception()  # wait for every part before raising, so none still writes
    for f in done:
        f.result()
