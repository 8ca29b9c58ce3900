"""The two-namespace Ray cluster harness: drivers connect, wrong tokens are refused, and
teardown leaves nothing behind, also when the test body fails."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_cluster import TwoHostCluster, two_host_cluster
from netns_hosts import skip_without_netns

pytestmark = [pytest.mark.slow, skip_without_netns]

ONE_TASK_PER_NODE = """
import json, sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]

@ray.remote(num_cpus=1)
def node_ip():
    return ray.util.get_node_ip_address()

refs = {
    n["NodeManagerAddress"]: node_ip.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
    for n in nodes
}
print(json.dumps({"alive": len(nodes), "ran_on": {k: ray.get(r, timeout=120)
                                                   for k, r in refs.items()}}))
"""

CONNECT = """
import sys
import ray
ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False)
print("CONNECTED", len(ray.nodes()))
"""

# Leaves Ray worker processes on both nodes (detached actors outlive their driver).
DETACHED_ACTORS = """
import sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init(address=sys.argv[1], namespace="fntk-teardown", configure_logging=False,
         log_to_driver=False)

@ray.remote(num_cpus=0)
class Idle:
    def ping(self):
        return ray.util.get_node_ip_address()

actors = [Idle.options(name=f"idle-{i}", lifetime="detached", scheduling_strategy=(
    NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))).remote()
    for i, n in enumerate(ray.nodes()) if n["Alive"]]
print(sorted(ray.get([a.ping.remote() for a in actors], timeout=120)))
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[TwoHostCluster]:
    with two_host_cluster() as c:
        yield c


def test_driver_runs_a_task_on_each_host(cluster: TwoHostCluster) -> None:
    res = cluster.run([sys.executable, "-c", ONE_TASK_PER_NODE, cluster.address], timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["alive"] == 2
    assert out["ran_on"] == {cluster.head_ip: cluster.head_ip,
                             cluster.worker_ip: cluster.worker_ip}


def test_driver_with_a_wrong_token_is_refused(cluster: TwoHostCluster) -> None:
    wrong = secrets.token_hex(32)
    try:
        res = cluster.run([sys.executable, "-c", CONNECT, cluster.address], token=wrong,
                          timeout=60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"a driver with a wrong token hung instead of being refused: {exc.stderr}")
    assert res.returncode != 0
    assert "CONNECTED" not in res.stdout
    assert "authentication" in (res.stdout + res.stderr).lower(), res.stderr[-3000:]
    # The refused driver did not harm the cluster: the right token still connects.
    ok = cluster.run([sys.executable, "-c", CONNECT, cluster.address], timeout=120)
    assert ok.returncode == 0 and "CONNECTED 2" in ok.stdout, ok.stderr[-3000:]


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (tells a reused pid apart); None if gone or
    dead (a zombie waits for init to reap it: killed processes reparented to it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.split()}


def test_teardown_after_a_failure_leaves_nothing() -> None:
    with pytest.raises(RuntimeError, match="test body failed"):
        with two_host_cluster() as c:
            res = c.run([sys.executable, "-c", DETACHED_ACTORS, c.address], timeout=180)
            assert res.returncode == 0, res.stderr[-3000:]
            assert res.stdout.strip().splitlines()[-1] == str(sorted([c.head_ip, c.worker_ip]))
            # A driver still running at teardown, as a hung test would leave it.
            c.popen([sys.executable, "-c", "import time; time.sleep(600)"],
                    ns=c.worker_ns, stdout=subprocess.DEVNULL)
            procs = {pid: _start_time(pid) for pid in c.pids()}
            names = {c.head_ns, c.worker_ns}
            assert names <= _netns_names()
            links = [subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True,
                                    text=True).stdout for ns in (c.head_ns, c.worker_ns)]
            veths = (c.head_veth, c.worker_veth)
            assert veths[0] in links[0] and veths[1] in links[1]
            tmp = c.tmp_dir
            raise RuntimeError("test body failed")

    # Ray's own processes and ours: both nodes, their workers and the hung driver.
    assert len(procs) >= 6, procs
    survivors = [pid for pid, start in procs.items()
                 if start is not None and _start_time(pid) == start]
    assert survivors == []
    assert not names & _netns_names()
    assert not any((Path("/run/netns") / name).exists() for name in names)
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not any(v in host_links for v in veths)
    assert not tmp.exists()
