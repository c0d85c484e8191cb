"""A real Redis Cluster of the test's own: three masters, no replicas, on loopback.

``redis-server --cluster-enabled yes`` on three free ports (each with its
cluster bus port, +10000, free too), joined by ``redis-cli --cluster create``;
stopped and its files removed when the context ends. Nothing is shared with the
machine's Redis.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

from callops.devstack import find_redis_server

BUS_OFFSET = 10_000  # Redis Cluster's bus listens on port + 10000


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(count: int) -> list[int]:
    """``count`` ports whose bus ports are free too (so below 65535 - 10000)."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20_000, 45_000)
        if port not in ports and _bindable(port) and _bindable(port + BUS_OFFSET):
            ports.append(port)
    return ports


def _ask(port: int, *command: str, timeout: float = 5.0) -> str:
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("redis-cli is not on PATH: a cluster cannot be created")
    done = subprocess.run(
        [cli, "-h", "127.0.0.1", "-p", str(port), *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout + done.stderr


class RedisCluster3:
    """Three masters on loopback; ``with RedisCluster3(tmp) as cluster: cluster.ports``."""

    def __init__(self, directory: Path, masters: int = 3):
        self.directory = Path(directory)
        self.ports = free_cluster_ports(masters)
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.ports]

    def start(self, timeout: float = 30.0) -> None:
        server = find_redis_server()
        for port in self.ports:
            node_dir = self.directory / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            args = [
                server,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(node_dir),
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-node-timeout", "2000",
                "--save", "",
                "--appendonly", "no",
                "--logfile", "redis.log",
            ]  # fmt: skip
            self.processes.append(
                subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while "PONG" not in _ask(port, "PING"):
                self._check_alive(deadline)
                time.sleep(0.05)
        created = _ask(
            self.ports[0],
            "--cluster", "create",
            *(f"127.0.0.1:{port}" for port in self.ports),
            "--cluster-replicas", "0",
            "--cluster-yes",
            timeout=timeout,
        )  # fmt: skip
        if "[OK] All 16384 slots covered" not in created:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created[-2000:]}")
        for port in self.ports:
            while "cluster_state:ok" not in _ask(port, "CLUSTER", "INFO"):
                self._check_alive(deadline)
                time.sleep(0.05)

    def _check_alive(self, deadline: float) -> None:
        for process in self.processes:
            if process.poll() is not None:
                self.stop()
                raise RuntimeError(f"a cluster redis-server exited with {process.returncode}")
        if time.monotonic() > deadline:
            self.stop()
            raise RuntimeError("the Redis Cluster did not come up in time")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def __enter__(self) -> RedisCluster3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
