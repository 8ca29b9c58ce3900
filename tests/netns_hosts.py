"""Network namespaces on this machine, for tests that need two "hosts": the `ip` command,
whether namespaces with veth pairs can be made here (skip_without_netns: root and `ip`), a
private /24 that no route or address of the host uses, and the processes inside a namespace.
netns_cluster builds a two-host Ray cluster on them."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys

import pytest


def ip_bin() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


def run_ip(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([ip_bin(), *args], capture_output=True, text=True, check=check,
                          timeout=timeout)


@functools.lru_cache(maxsize=1)
def netns_available() -> bool:
    """Root, `ip` present, and a throwaway namespace (with a veth pair) can be made and removed."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("ip"):
        return False
    name = f"fntk-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        run_ip("netns", "add", name)
    except (OSError, subprocess.SubprocessError):
        return False
    try:
        run_ip("-n", name, "link", "add", "fp0", "type", "veth", "peer", "name", "fp1")
        run_ip("-n", name, "link", "set", "lo", "up")
        return True
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            run_ip("netns", "del", name, check=False)


skip_without_netns = pytest.mark.skipif(
    not netns_available(),
    reason="needs root and `ip netns` (network namespaces with veth pairs)",
)


_ROUTE_TYPES = {"unicast", "local", "broadcast", "multicast", "anycast", "unreachable",
                "blackhole", "prohibit", "throw", "nat"}


def _taken_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    for line in run_ip("-4", "route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        if words and words[0] in _ROUTE_TYPES:
            words = words[1:]
        if words and words[0] != "default":
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.ip_network(words[0], strict=False))
    for line in run_ip("-4", "-o", "addr").stdout.splitlines():
        words = line.split()
        if "inet" in words:
            nets.append(ipaddress.ip_interface(words[words.index("inet") + 1]).network)
    return nets


def free_subnet(salt: int) -> ipaddress.IPv4Network:
    """A /24 that overlaps no route or address on the host (10.213.X first)."""
    taken = _taken_networks()
    for prefix in ("10.213", "172.29", "192.168"):
        for i in range(256):
            net = ipaddress.ip_network(f"{prefix}.{(salt + i) % 256}.0/24")
            if not any(net.overlaps(t) for t in taken):
                return net
    raise RuntimeError("no free private /24 for the namespaces' veth pair")


def pids_in(ns: str) -> list[int]:
    res = run_ip("netns", "pids", ns, check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]
