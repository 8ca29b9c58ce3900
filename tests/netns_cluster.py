"""A two-host Ray cluster on one machine: two network namespaces joined by a veth pair.

Ray does not form a multi-node cluster on 127.0.0.1, so each "host" is a network namespace
with a private address of its own; `ray start --block` runs in each, as root, under
`ip netns exec`. Usage:

    from netns_cluster import two_host_cluster
    from netns_hosts import skip_without_netns

    @skip_without_netns
    def test_something():
        with two_host_cluster() as cluster:
            res = cluster.run([sys.executable, "-c", "import ray; ray.init(); ..."])

two_host_cluster(dashboard=True) also starts the head's dashboard, and with it the Ray Jobs
server, on head_ip:DASHBOARD_PORT (cluster.dashboard_url; needs `ray[default]`, see
dashboard_available()); clients reach it from inside either namespace.

Each node gets GLOO_SOCKET_IFNAME set to its own veth: the namespaces share the machine's
hostname, which resolves to 127.0.0.1 here, and gloo (torch.distributed on CPU, so Ray Train)
would otherwise bind to loopback and tell the other host to connect there.

Ray 2.60's `ray start` turns token authentication on, so every node and driver gets
RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (a 0600 file in the cluster's temp folder);
drivers also get RAY_ADDRESS. Teardown never calls `ray stop` (it would kill every Ray
process on the machine): it kills the cluster's own process groups, then whatever is still
inside its two namespaces, deletes the namespaces (and with them the veth pair) and the
temp folder.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns_hosts import free_subnet, ip_bin, pids_in, run_ip

HEAD_PORT = 6379
DASHBOARD_PORT = 8265
_counter = itertools.count()
_BIN = Path(sys.executable).parent
_TERM_GRACE_S = 5.0

# Inherited from the calling process, these would point nodes or drivers elsewhere:
# fntk_dist.distributed.cluster.connect() sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 for embedded
# clusters, which makes `ray start --address` refuse to join; RAY_AUTH_TOKEN would win over
# RAY_AUTH_TOKEN_PATH in Ray's token loader.
_DROPPED_ENV = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")

_WAIT_FOR_NODES = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False)
want = set(sys.argv[2:])
while True:
    alive = {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
    if want <= set(alive):
        print(json.dumps(alive), flush=True)
        break
    time.sleep(0.2)
"""


def _ray_bin() -> str:
    local = _BIN / "ray"
    return str(local) if local.exists() else (shutil.which("ray") or "ray")


def _write_secret(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _base_env(token_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        # `ip netns exec` resolves argv[0] on PATH: find `ray`/`fntk` even without an
        # activated venv.
        PATH=os.pathsep.join([str(_BIN), env.get("PATH", os.defpath)]),
    )
    return env


@functools.lru_cache(maxsize=1)
def dashboard_available() -> bool:
    """Whether `ray[default]` (the dashboard and Jobs server's dependencies) is installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None
               for m in ("aiohttp", "aiohttp_cors", "opencensus", "prometheus_client"))


_WAIT_FOR_DASHBOARD = """
import sys, time
from ray.job_submission import JobSubmissionClient
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        JobSubmissionClient(sys.argv[1]).list_jobs()
        break
    except Exception as exc:
        if time.monotonic() > deadline:
            sys.exit(f"dashboard at {sys.argv[1]} not up: {exc}")
        time.sleep(0.5)
"""


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"--- {path} ---\n" + "\n".join(text)


def _logs_tail(tmp: Path) -> str:
    paths = [tmp / "head.log", tmp / "worker.log"]
    for node in ("a", "b"):
        logs = tmp / node / "session_latest" / "logs"
        paths += [logs / "gcs_server.out", logs / "raylet.out"]
    return "\n".join(t for t in map(_tail, paths) if t)


@dataclass
class TwoHostCluster:
    head_ns: str
    worker_ns: str
    head_ip: str
    worker_ip: str
    address: str  # "head_ip:port"
    token: str = field(repr=False)
    tmp_dir: Path
    dashboard_url: str = ""  # "http://head_ip:DASHBOARD_PORT" when started with dashboard=True
    head_veth: str = ""
    worker_veth: str = ""
    head_node_id: str = ""
    worker_node_id: str = ""
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def token_path(self, token: str | None = None) -> Path:
        """The 0600 file holding `token` (default: the cluster's own)."""
        if token is None or token == self.token:
            return self.tmp_dir / "token"
        return _write_secret(self.tmp_dir / f"token-{secrets.token_hex(4)}", token)

    def env(self, token: str | None = None) -> dict[str, str]:
        """os.environ plus what a driver of this cluster needs; `token` replaces the cluster's."""
        env = _base_env(self.token_path(token))
        env["RAY_ADDRESS"] = self.address
        return env

    def popen(self, argv: list[str], ns: str | None = None, token: str | None = None,
              **kw: Any) -> subprocess.Popen:
        """Starts argv inside `ns` (default: the head's) in its own process group; teardown
        kills it if it still runs. kw go to Popen; kw["env"] adds to env(token)."""
        env = self.env(token)
        env.update(kw.pop("env", None) or {})
        proc = subprocess.Popen([ip_bin(), "netns", "exec", ns or self.head_ns, *argv],
                                env=env, start_new_session=True, **kw)
        with self._lock:
            self._procs.append(proc)
        return proc

    def run(self, argv: list[str], ns: str | None = None, token: str | None = None,
            timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess:
        """Runs argv inside `ns` (default: the head's) with env(token), output captured as
        text. Like subprocess.run (check=, input=), except that on timeout the whole process
        group is killed before TimeoutExpired is raised."""
        check = kw.pop("check", False)
        data = kw.pop("input", None)
        for given in ("capture_output", "text", "stdout", "stderr"):
            kw.pop(given, None)
        if data is not None:
            kw["stdin"] = subprocess.PIPE
        proc = self.popen(argv, ns=ns, token=token, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kw)
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
            raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
        except BaseException:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check:
            res.check_returncode()
        return res

    def pids(self) -> list[int]:
        """Every process now inside the cluster's two namespaces."""
        return sorted(pids_in(self.head_ns) + pids_in(self.worker_ns))

    def logs_tail(self) -> str:
        """The last lines of the nodes' own output and of their GCS and raylet logs."""
        return _logs_tail(self.tmp_dir)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block is done (so teardown is not cut short)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """A SIGTERM (a cancelled CI job) unwinds like Ctrl-C, so the teardown still runs."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _teardown(procs: list[subprocess.Popen], namespaces: list[str], tmp: Path | None) -> list[str]:
    """Kills, deletes and removes what two_host_cluster made; returns what it could not."""
    problems: list[str] = []
    for p in procs:
        if p.poll() is None:
            _killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + _TERM_GRACE_S
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        # Also after the leader exited: others in its group may still be alive.
        _killpg(p.pid, signal.SIGKILL)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            problems.append(f"process {p.pid} survived SIGKILL")
    # Processes that left the groups (e.g. Ray workers) are still inside the namespaces.
    for ns in namespaces:
        for _ in range(100):
            left = pids_in(ns)
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        else:
            problems.append(f"processes {pids_in(ns)} still in namespace {ns}")
    for ns in namespaces:
        # Deleting a namespace destroys the veth end inside it, and with it the peer.
        res = run_ip("netns", "del", ns, check=False)
        if res.returncode != 0:
            problems.append(f"ip netns del {ns}: {res.stderr.strip()}")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.exists():
            problems.append(f"could not remove {tmp}")
    return problems


def _start_node(argv: list[str], ns: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    prefix = [ip_bin(), "netns", "exec", ns]
    # If this process is SIGKILLed, the node dies with it and Ray's reaper then kills the
    # node's process group. Only from the main thread: the signal follows the forking thread.
    if shutil.which("setpriv") and threading.current_thread() is threading.main_thread():
        prefix += ["setpriv", "--pdeathsig", "KILL", "--"]
    with open(log, "wb") as out:
        return subprocess.Popen([*prefix, *argv], env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(cond: Any, procs: list[subprocess.Popen], deadline: float, what: str,
          tmp: Path) -> None:
    while not cond():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: a Ray node exited with {p.returncode}\n"
                                   f"{_logs_tail(tmp)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: timed out\n{_logs_tail(tmp)}")
        time.sleep(0.1)


@contextlib.contextmanager
def two_host_cluster(head_cpus: int = 1, worker_cpus: int = 1, token: str | None = None, *,
                     object_store_memory: int = 256 * 2**20,
                     start_timeout: float = 90.0,
                     dashboard: bool = False,
                     start_ray: bool = True) -> Iterator[TwoHostCluster]:
    """A Ray head in one fresh namespace and a worker node in another, joined by a veth pair.

    Yields once both nodes are alive (seen by a driver in the head's namespace; raises with
    the nodes' log tails after start_timeout seconds) and, with dashboard=True, once the
    head's Jobs server answers an authenticated client. start_ray=False yields the two bare
    hosts (namespaces, veth pair, temp folder; no Ray node, no node ids), for a test that
    starts Ray itself, as a launch script does; whatever it leaves in the namespaces is killed
    at teardown. Everything is torn down on exit, including on errors and KeyboardInterrupt.
    """
    n = next(_counter)
    tag = f"{os.getpid()}-{n}"
    head_ns, worker_ns = f"fntk-{tag}-a", f"fntk-{tag}-b"
    veth_a, veth_b = f"fv{os.getpid()}x{n % 1000}a", f"fv{os.getpid()}x{n % 1000}b"
    token = token or secrets.token_hex(32)
    made_ns: list[str] = []
    procs: list[subprocess.Popen] = []
    tmp: Path | None = None
    cluster: TwoHostCluster | None = None
    ok = False
    with _sigterm_interrupts():
        try:
            # Short: Ray's unix socket paths live under it.
            tmp = Path(tempfile.mkdtemp(prefix="fntkr-", dir="/tmp"))
            token_path = _write_secret(tmp / "token", token)
            net = free_subnet(os.getpid() + n)
            head_ip, worker_ip = str(net.network_address + 1), str(net.network_address + 2)
            for ns in (head_ns, worker_ns):
                run_ip("netns", "add", ns)
                made_ns.append(ns)
            run_ip("-n", head_ns, "link", "add", veth_a, "type", "veth",
                "peer", "name", veth_b, "netns", worker_ns)
            for ns, dev, ip in ((head_ns, veth_a, head_ip), (worker_ns, veth_b, worker_ip)):
                run_ip("-n", ns, "addr", "add", f"{ip}/{net.prefixlen}", "dev", dev)
                run_ip("-n", ns, "link", "set", dev, "up")
                run_ip("-n", ns, "link", "set", "lo", "up")

            address = f"{head_ip}:{HEAD_PORT}"
            cluster = TwoHostCluster(head_ns=head_ns, worker_ns=worker_ns, head_ip=head_ip,
                                     worker_ip=worker_ip, address=address, token=token,
                                     tmp_dir=tmp, head_veth=veth_a, worker_veth=veth_b)
            if not start_ray:
                yield cluster
                ok = True
                return
            node_env = _base_env(token_path)
            head_env = {**node_env, "GLOO_SOCKET_IFNAME": veth_a}
            worker_env = {**node_env, "GLOO_SOCKET_IFNAME": veth_b}
            common = ["--block", "--num-gpus=0", f"--object-store-memory={object_store_memory}",
                      "--disable-usage-stats"]
            dash = (["--include-dashboard=true", f"--dashboard-host={head_ip}",
                     f"--dashboard-port={DASHBOARD_PORT}"] if dashboard
                    else ["--include-dashboard=false"])
            procs.append(_start_node(
                [_ray_bin(), "start", "--head", f"--node-ip-address={head_ip}",
                 f"--port={HEAD_PORT}", f"--num-cpus={head_cpus}", f"--temp-dir={tmp / 'a'}",
                 *dash, *common],
                head_ns, head_env, tmp / "head.log"))
            deadline = time.monotonic() + start_timeout
            # `ray start` writes this once the head's GCS and raylet are up.
            _wait((tmp / "a" / "ray_current_cluster").exists, procs, deadline,
                  "starting the head", tmp)
            procs.append(_start_node(
                [_ray_bin(), "start", f"--address={address}", f"--node-ip-address={worker_ip}",
                 f"--num-cpus={worker_cpus}", f"--temp-dir={tmp / 'b'}", *common],
                worker_ns, worker_env, tmp / "worker.log"))
            waiter = cluster.popen([sys.executable, "-c", _WAIT_FOR_NODES, address, head_ip,
                                    worker_ip], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
            try:
                _wait(lambda: waiter.poll() is not None, procs, deadline,
                      "waiting for 2 alive nodes", tmp)
            except RuntimeError as exc:
                _killpg(waiter.pid, signal.SIGKILL)
                out, err = waiter.communicate()
                raise RuntimeError(f"{exc}\n--- driver ---\n{err[-3000:]}") from None
            out, err = waiter.communicate()
            if waiter.returncode != 0:
                raise RuntimeError(f"waiting for 2 alive nodes: driver exited with "
                                   f"{waiter.returncode}\n{err[-3000:]}\n{_logs_tail(tmp)}")
            alive = json.loads(out.strip().splitlines()[-1])
            cluster.head_node_id, cluster.worker_node_id = alive[head_ip], alive[worker_ip]
            if dashboard:
                cluster.dashboard_url = f"http://{head_ip}:{DASHBOARD_PORT}"
                left = max(1.0, deadline - time.monotonic())
                res = cluster.run([sys.executable, "-c", _WAIT_FOR_DASHBOARD,
                                   cluster.dashboard_url, str(left)], timeout=left + 30)
                if res.returncode != 0:
                    raise RuntimeError(f"waiting for the dashboard: {res.stderr[-3000:]}\n"
                                       f"{_logs_tail(tmp)}")
            yield cluster
            ok = True
        finally:
            with _signals_deferred():
                extra = list(cluster._procs) if cluster is not None else []
                problems = _teardown(procs + extra, made_ns, tmp)
            if problems:
                msg = "two_host_cluster teardown: " + "; ".join(problems)
                if ok:
                    raise RuntimeError(msg)
                warnings.warn(msg, stacklevel=2)
