"""Real processes for the SIP node tests: `manage.py sipserver` and SIPp."""

from __future__ import annotations

import csv
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import ManagedProcess, wait_for

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SIPP = shutil.which("sipp")


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port")


@dataclass
class SipNode:
    process: ManagedProcess
    port: int
    metrics_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, float]:
        """The node's Prometheus samples, by 'name{labels}'."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for key, value in self.metrics().items():
            base, _, rest = key.partition("{")
            if base != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += value
        return total


def consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 (TCP): --processes N metrics."""
    for _ in range(100):
        first = free_udp_tcp_port()
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


def start_node(
    env: dict[str, str], log_dir: Path, *extra: str, port: int | None = None, processes: int = 1
) -> SipNode:
    port = port or free_udp_tcp_port()
    metrics_port = consecutive_free_ports(processes)
    args = [
        sys.executable,
        "manage.py",
        "sipserver",
        "--listen",
        f"udp:127.0.0.1:{port},tcp:127.0.0.1:{port}",
        "--metrics",
        f"127.0.0.1:{metrics_port}",
        "--node-id",
        f"test-{port}",
        *extra,
    ]
    process = ManagedProcess("sipserver", args, env, log_dir)
    wait_for(
        lambda: "listening on" in process.output() or not process.alive(),
        timeout=30,
        what="the sipserver to listen",
    )
    assert process.alive(), process.output()
    return SipNode(process, port, metrics_port)


@dataclass
class SippResult:
    returncode: int
    stats: dict[str, str]
    counts: dict[str, str]
    output: str

    def failures(self) -> dict[str, str]:
        """The non-zero cumulative counters, and the end of SIPp's output (for assertion messages)."""
        counters = {k: v for k, v in self.stats.items() if k.endswith("(C)") and v not in ("0", "")}
        return {**counters, "output": self.output[-1500:]}

    def stat(self, name: str) -> int:
        return int(self.stats[f"{name}(C)"])


def run_sipp(target: str, tmp_path: Path, *args: str, timeout: float = 60) -> SippResult:
    """Run SIPp to completion; its cumulative statistics and per-message counts."""
    assert SIPP, "sipp is not installed (apt-get install sip-tester)"
    run_dir = tmp_path / f"sipp-{time.monotonic_ns()}"
    run_dir.mkdir()
    stat_file = run_dir / "stats.csv"
    argv = [
        SIPP,
        target,
        "-i",
        "127.0.0.1",
        "-p",
        str(free_udp_tcp_port()),
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(stat_file),
        "-trace_counts",
        "-fd",
        "1",
        *args,
    ]
    completed = subprocess.run(
        argv, cwd=run_dir, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = completed.stdout + completed.stderr
    stats = _last_row(stat_file)
    counts_files = sorted(run_dir.glob("*_counts.csv"))
    counts = _last_row(counts_files[-1]) if counts_files else {}
    if not stats:
        raise AssertionError(f"SIPp wrote no statistics (rc {completed.returncode}):\n{output[-3000:]}")
    return SippResult(completed.returncode, stats, counts, output)


def _last_row(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    rows = list(csv.reader(path.read_text().splitlines(), delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def scenario(name: str) -> str:
    return str(SCENARIOS / f"{name}.xml")
