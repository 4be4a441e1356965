"""Separate hosts on one machine, for tests: a Ray head and worker nodes that each have an address of their
own. Two kinds:

- `NetnsHosts`: truly separate network stacks. A Linux bridge holds 10.<s>.0.1/24 in this machine's
  namespace (the head's node address); each worker node is a network namespace joined to the bridge by a
  veth pair, with 10.<s>.0.k/24 on its end and loopback up, and runs `ray start` inside it. A process in
  one namespace cannot bind another's address, which is what catches a data plane that gives every rank
  the same host. Needs root and `ip netns`. No route leaves the bridge: the traffic stays on the machine.
- `LoopbackHosts`: Ray's own test cluster, each node on a distinct loopback address (127.0.0.4, .5, …;
  not .1, which Ray replaces by the machine's interface address). Always available, but any process may
  bind any loopback address, so it cannot tell a wrong bind from a right one.

Both end every process they started by pid and remove what they created (namespaces, veths, bridge)."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
JOIN_S = 60


def netns_available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    name = f"dfa-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_all_in(ns: str) -> None:
    """SIGKILL every process of namespace `ns` (all started by this helper), by pid."""
    for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


class NetnsHosts:
    """A head (this machine's namespace, `head_cpus`) and one worker node per entry of `workers` (its
    CPUs), joined one after the other (nodes started at once on one machine race for the session's
    files)."""

    def __init__(self, workers: list[int], head_cpus: int = 2):
        self.tag = secrets.token_hex(2)
        self.subnet = f"10.{int(self.tag, 16) % 200 + 20}.0"
        self.bridge = f"dfab{self.tag}"
        self.head_ip = f"{self.subnet}.1"
        self.spaces: list[str] = []
        self.veths: dict[str, str] = {}
        self.procs: list[subprocess.Popen] = []
        self.temp = tempfile.mkdtemp(prefix="dfa-ns-", dir="/tmp")
        try:
            _sh("ip", "link", "add", self.bridge, "type", "bridge")
            _sh("ip", "addr", "add", f"{self.head_ip}/24", "dev", self.bridge)
            _sh("ip", "link", "set", self.bridge, "up")
            self.port = _free_port()
            self._start(None, self.head_ip, ["--head", f"--port={self.port}", f"--num-cpus={head_cpus}",
                                             *[f"--{p}={_free_port()}" for p in (
                                                 "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                 "runtime-env-agent-port", "metrics-export-port")]])
            self.address = f"{self.head_ip}:{self.port}"
            self.nodes = [self.head_ip]
            for k, cpus in enumerate(workers, start=2):
                self.add(f"{self.subnet}.{k}", cpus)
        except BaseException:
            self.close()
            raise

    def add(self, ip: str, cpus: int) -> None:
        ns, k = f"dfa{self.tag}-n{ip.rsplit('.', 1)[1]}", ip.rsplit(".", 1)[1]
        host, peer = f"dfa{self.tag}h{k}", f"dfa{self.tag}p{k}"
        _sh("ip", "netns", "add", ns)
        self.spaces.append(ns)
        _sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
        self.veths[ip] = host
        _sh("ip", "link", "set", peer, "netns", ns)
        _sh("ip", "link", "set", host, "master", self.bridge)
        _sh("ip", "link", "set", host, "up")
        _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", peer)
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        self._start(ns, ip, [f"--address={self.address}", f"--num-cpus={cpus}"])
        self.nodes.append(ip)
        self._wait_alive(ip)

    def _start(self, ns: str | None, ip: str, args: list[str]) -> None:
        cmd = [RAY, "start", "--block", f"--node-ip-address={ip}", "--num-gpus=0", "--disable-usage-stats", *args]
        if "--head" in args:
            cmd += [f"--temp-dir={self.temp}", "--include-dashboard=false"]
        if ns:
            cmd = ["ip", "netns", "exec", ns, *cmd]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        log = open(Path(self.temp) / f"start-{ip}.log", "w")
        self.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))
        if "--head" in args:
            self._wait_alive(ip)

    def _wait_alive(self, ip: str) -> None:
        """Until the GCS lists node `ip` as alive (asked from a throwaway process: the test's own driver
        connects once the cluster is whole)."""
        probe = ("import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False); "
                 "sys.exit(0 if any(n['Alive'] and n['NodeManagerAddress'] == sys.argv[2] for n in ray.nodes()) else 1)")
        deadline = time.monotonic() + JOIN_S
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    log = (Path(self.temp) / f"start-{ip}.log").read_text()
                    raise RuntimeError(f"a ray start exited: {log[-2000:]}")
            address = f"{self.head_ip}:{getattr(self, 'port', 0)}"
            if subprocess.run([sys.executable, "-c", probe, address, ip], capture_output=True,
                              timeout=JOIN_S).returncode == 0:
                return
        raise TimeoutError(f"node {ip} did not join within {JOIN_S} s")

    def remove(self, ip: str) -> None:
        """The host is gone: every process in its namespace killed (by pid)."""
        _kill_all_in(self.spaces[self.nodes.index(ip) - 1])

    def isolate(self, a: str, b: str, on: bool = True) -> None:
        """Cut (or restore) traffic between two worker hosts; each still reaches the head."""
        for ip in (a, b):
            _sh("ip", "link", "set", "dev", self.veths[ip], "type", "bridge_slave", "isolated", "on" if on else "off")

    def close(self) -> None:
        for ns in self.spaces:
            _kill_all_in(ns)
        for p in self.procs:  # the head's `ray start --block` ends its own processes on SIGTERM
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for ns in self.spaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.temp, ignore_errors=True)


class LoopbackHosts:
    """Ray's test cluster, each node on its own loopback address."""

    def __init__(self, workers: list[int], head_cpus: int = 2):
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "include_dashboard": False, "node_ip_address": "127.0.0.4"})
        self.handles = {}
        self.head_ip, self.nodes = "127.0.0.4", ["127.0.0.4"]
        for k, cpus in enumerate(workers, start=5):
            ip = f"127.0.0.{k}"
            self.handles[ip] = self.cluster.add_node(num_cpus=cpus, node_ip_address=ip)
            self.nodes.append(ip)
        self.cluster.wait_for_nodes()
        self.address = self.cluster.address

    def remove(self, ip: str) -> None:
        self.cluster.remove_node(self.handles.pop(ip))

    def close(self) -> None:
        self.cluster.shutdown()
