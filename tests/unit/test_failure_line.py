"""The one line `fntk train --workers` prints when Ray Train gives up: the worker's own error."""

from __future__ import annotations

from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

from fntk_dist.distributed.train_job import failure_line


def test_the_first_failed_workers_last_line_is_the_cause():
    # What a worker's failure looks like: a traceback whose last line names the error.
    cause = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                         "RuntimeError: expected m1 and m2 to have the same dtype\n")
    err = WorkerGroupError("[Rank 1]\n...", {1: cause, 3: ValueError("later")})
    assert str(err).splitlines()[0] == "Training failed due to worker errors:"
    assert failure_line(err) == "worker 1: RuntimeError: expected m1 and m2 to have the same dtype"


def test_without_worker_failures_the_errors_first_line():
    err = ControllerError(OSError("storage is gone\nmore"))
    assert failure_line(err) == "Training failed due to controller error:"
    assert failure_line(KeyError()) == "KeyError"
