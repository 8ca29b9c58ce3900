"""Joining a Ray cluster, or starting an embedded one that listens on loopback only."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable

from ..errors import UserError

_TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"


class ClusterError(UserError):
    """A cluster that cannot be used; str() is one line naming the address."""


def _probe(address: str, timeout: float) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address: expected host:port, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(
            f"--address: no Ray cluster answers at {address} within {timeout:g} s ({exc})"
        ) from None


def connect(address: str | None, timeout: float = 15.0, min_cpus: int = 1,
            log_to_driver: bool = False) -> str:
    """Connect this process to Ray; returns 'embedded' or the address joined.

    address (or RAY_ADDRESS): join that cluster, after checking within `timeout` seconds that
    something listens there. Neither: start a local cluster bound to 127.0.0.1 with at least
    min_cpus logical CPUs (so every shard actor is scheduled on a small machine).
    log_to_driver: show the workers' output here (Ray Train's progress bar needs it).
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address not in (None, "auto"):
        _probe(address.removeprefix("ray://"), timeout)
    if address is None:
        # Ray reads this when it is imported: unset, a local cluster takes the host's main
        # interface address; "0" makes a single-node cluster bind loopback.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        # Ray turns token authentication on for a new local cluster and announces it on
        # every run; it stays on, the announcement goes.
        logging.getLogger(_TOKEN_SETUP_LOGGER).setLevel(logging.ERROR)
    import ray

    if ray.is_initialized():
        return "existing"
    if address is None:
        # If Ray was imported before this call, its constant is already read: set it too.
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
        _keeping_sigterm(ray.init)(
            num_cpus=max(os.cpu_count() or 1, min_cpus), include_dashboard=False,
            _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=log_to_driver)
        return "embedded"
    _keeping_sigterm(ray.init)(address=address, configure_logging=False,
                               log_to_driver=log_to_driver)
    return address


def _keeping_sigterm(init: Callable) -> Callable:
    """ray.init, keeping this process's SIGTERM handler: Ray's core worker installs its own
    (a stack dump, then exit), which would bypass the driver's clean stop on SIGTERM."""

    def wrapped(**kwargs) -> None:
        before = signal.getsignal(signal.SIGTERM)
        init(**kwargs)
        if callable(before) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, before)

    return wrapped


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
