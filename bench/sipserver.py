"""The SIP node against Kamailio, driven by SIPp in closed loop, in the same run.

Run from the repository root (``make bench`` does, with REDIS_URL and DATABASE_URL set):
``.venv/bin/python bench/sipserver.py [--calls N] [--quick]``.

For each server and scenario, SIPp keeps ``--concurrency`` calls (default 500) in
flight until ``--calls`` are done, on UDP:

* OPTIONS -> 200 (one non-INVITE transaction per call);
* INVITE -> 486 -> ACK to the ``busy`` rule (one INVITE server transaction per call).

Servers: ``manage.py sipserver`` (one process with persistence off, then on with the
audit ingester running, then ``--processes 2`` off), and Kamailio from Debian's package as a stateful responder
(``t_newtran()`` + ``t_reply()``, configuration generated into a temporary
directory, one UDP worker). Reported: achieved transactions/s, SIPp's failed calls
and retransmissions, and each server's CPU time per transaction: utime+stime of
all its processes (read from /proc before and after) over the calls. SIPp shares
the machine, so tx/s is bounded by SIPp and the cores; CPU per transaction is the
fairer figure. Finally, the node's timer lateness p99 with ~2,000 live INVITE
server transactions retransmitting (Timer G) and waiting for Timer H. The output
is a report; the exit status is 0 unless a server could not start.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "tests" / "sipcore" / "runtime" / "scenarios"
CLK_TCK = os.sysconf("SC_CLK_TCK")

KAMAILIO_CFG = """#!KAMAILIO
debug=0
log_stderror=yes
memdbg=5
memlog=5
fork=yes
children=1
auto_aliases=no
listen=udp:127.0.0.1:{port}
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "textops.so"
modparam("tm", "fr_timer", 32000)
modparam("tm", "wt_timer", 5000)

request_route {{
    if (is_method("ACK")) {{
        t_check_trans();  # the ACK of our 486: absorbed by its transaction
        exit;
    }}
    if (!t_newtran()) {{
        sl_reply_error();
        exit;
    }}
    if (is_method("OPTIONS")) {{
        t_reply("200", "OK");
        exit;
    }}
    if (is_method("INVITE")) {{
        t_reply("486", "Busy Here");
        exit;
    }}
    t_reply("405", "Method Not Allowed");
}}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def group_cpu_seconds(pgid: int) -> float:
    """utime+stime of every live process in process group ``pgid`` (and their reaped children)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: pgrp
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    workdir: Path

    def cpu(self) -> float:
        return group_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def wait_udp(port: int, timeout: float = 30.0) -> None:
    """Until an OPTIONS to the port gets an answer."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.5)
        local = sock.getsockname()[1]
        n = 0
        while time.monotonic() < deadline:
            n += 1
            sock.sendto(
                (
                    f"OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKwait{n}\r\n"
                    f"From: <sip:b@127.0.0.1>;tag=w\r\nTo: <sip:ping@127.0.0.1>\r\nCall-ID: wait{n}\r\n"
                    f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                ).encode(),
                ("127.0.0.1", port),
            )
            try:
                sock.recv(65535)
                return
            except TimeoutError:
                continue
    raise RuntimeError(f"nothing answers on udp:127.0.0.1:{port}")


def start_node(
    processes: int,
    metrics_port: int | None = None,
    persistence: bool = False,
    port: int | None = None,
    node_id: str | None = None,
) -> Server:
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-sipnode-"))
    args = [sys.executable, "manage.py", "sipserver", "--listen", f"udp:127.0.0.1:{port}",
            "--processes", str(processes), "--node-id", node_id or f"bench-{port}", "--grace", "0.5",
            "--persistence", "on" if persistence else "off", "--reuse-port",
            "--metrics", f"127.0.0.1:{metrics_port}" if metrics_port else "off"]  # fmt: skip
    log = (workdir / "node.log").open("wb")
    process = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    name = f"callops x{processes}" + (" +store" if persistence else "")
    server = Server(name, process, port, workdir)
    wait_udp(port)
    return server


class LagSampler(threading.Thread):
    """Samples the audit lag (oldest unacknowledged stream entry, any shard) every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.running = True

    def run(self) -> None:
        from callops.redis import get_redis
        from sipcore.audit import audit_lag

        client = get_redis()
        while self.running:
            with contextlib.suppress(Exception):
                self.samples.append(max(audit_lag(client).values(), default=0.0))
            time.sleep(0.2)

    def p99(self) -> float:
        if not self.samples:
            return float("nan")
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def start_ingester(workdir: Path) -> subprocess.Popen[bytes]:
    log = (workdir / "ingest.log").open("wb")
    args = [sys.executable, "manage.py", "ingest_sip_audit"]
    return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def adoption_after_crash() -> float:
    """Seconds from a kill -9 to the first answer of the survivor (sharing the port) to a
    retransmission of one of the dead node's transactions. The lease (3 s, renewed every
    second) runs out 2-3 s after the kill; adoption must follow within 1 s of that."""
    port = free_port()
    first = start_node(1, persistence=True, port=port, node_id=f"bench-crash-a-{port}")
    second = None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            local = sock.getsockname()[1]
            request = (
                f"INVITE sip:busy@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKcrash\r\n"
                f"From: <sip:b@127.0.0.1>;tag=c\r\nTo: <sip:busy@127.0.0.1>\r\nCall-ID: crash{port}\r\n"
                f"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            sock.sendto(request, ("127.0.0.1", port))
            sock.settimeout(2.0)
            sock.recv(65535)  # the 486
            second = start_node(1, persistence=True, port=port, node_id=f"bench-crash-b-{port}")
            os.killpg(first.process.pid, signal.SIGKILL)
            killed = time.monotonic()
            sock.settimeout(0.1)
            while time.monotonic() - killed < 15:
                sock.sendto(request, ("127.0.0.1", port))  # the peer retransmits every 100 ms
                try:
                    sock.recv(65535)
                    return time.monotonic() - killed
                except TimeoutError:
                    continue
            return float("nan")
    finally:
        first.stop()
        if second is not None:
            second.stop()


def start_kamailio() -> Server | None:
    binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
    modules = next(
        (p for p in Path("/usr/lib").glob("*/kamailio/modules") if (p / "tm.so").exists()),
        Path("/usr/lib/x86_64-linux-gnu/kamailio/modules"),
    )
    if not Path(binary).exists() or not (modules / "tm.so").exists():
        print("kamailio not installed (apt-get install kamailio): no comparison", flush=True)
        return None
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-kamailio-"))
    config = workdir / "kamailio.cfg"
    config.write_text(KAMAILIO_CFG.format(port=port, modules=modules))
    log = (workdir / "kamailio.log").open("wb")
    args = [binary, "-f", str(config), "-DD", "-E", "-m", "256", "-M", "32", "-P", str(workdir / "k.pid"),
            "-Y", str(workdir)]  # fmt: skip
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server("kamailio", process, port, workdir)
    try:
        wait_udp(port)
    except RuntimeError:
        server.stop()
        print((workdir / "kamailio.log").read_text()[-2000:])
        raise
    return server


@dataclass
class Run:
    server: str
    scenario: str
    calls: int
    seconds: float
    successful: int
    failed: int
    retransmissions: int
    cpu: float

    @property
    def rate(self) -> float:
        return self.successful / self.seconds if self.seconds else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu / max(1, self.successful) * 1e6


def run_sipp(server: Server, scenario: str, user: str, calls: int, concurrency: int) -> Run:
    workdir = Path(tempfile.mkdtemp(prefix="bench-sipp-"))
    stats = workdir / "stats.csv"
    xml = (SCENARIOS / f"{scenario}.xml").read_text()
    if "<action>" in xml:  # the test's header checks: Kamailio's 200 has no Allow; measure the exchange
        xml = xml[: xml.index("<action>")] + xml[xml.index("</action>") + len("</action>") :]
        xml = xml.replace('<Reference variables="1,2"/>', "")
    # The tests' scenarios retransmit after 100 ms to keep them short; here SIPp waits the RFC's
    # T1 (500 ms, §17.1.1.1) like a real UAC, or a queue of 500 calls on a slower server turns
    # into one retransmission per request and measures SIPp's impatience, not the server.
    xml = xml.replace('retrans="100"', 'retrans="500"')
    (workdir / "scenario.xml").write_text(xml)
    args = ["sipp", f"127.0.0.1:{server.port}", "-sf", str(workdir / "scenario.xml"), "-s", user,
            "-i", "127.0.0.1", "-p", str(free_port()), "-m", str(calls), "-l", str(concurrency),
            "-r", "1000000", "-nostdin", "-trace_stat", "-stf", str(stats), "-fd", "3600",
            "-max_recv_loops", "10000", "-buff_size", "4194304"]  # fmt: skip
    cpu_before = server.cpu()
    started = time.monotonic()
    subprocess.run(args, cwd=workdir, capture_output=True, timeout=600, check=False)
    seconds = time.monotonic() - started
    cpu = server.cpu() - cpu_before
    rows = list(csv.reader(stats.read_text().splitlines(), delimiter=";"))
    row = dict(zip(rows[0], rows[-1], strict=False))
    shutil.rmtree(workdir, ignore_errors=True)
    return Run(server.name, scenario, calls, seconds, int(row["SuccessfulCall(C)"]), int(row["FailedCall(C)"]),
               int(row["Retransmissions(C)"]), cpu)  # fmt: skip


def lateness_p99(calls: int) -> tuple[float, float]:
    """The node's timer lateness p99 (from its histogram) while ~``calls`` INVITEs wait for an ACK."""
    metrics_port = free_port()
    node = start_node(1, metrics_port)
    try:
        # 486s never ACKed: each transaction retransmits (Timer G) until Timer H (32 s).
        run_sipp_noack(node, calls)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    finally:
        node.stop()
    buckets = []
    live = 0.0
    for line in text.splitlines():
        if line.startswith("sip_timer_lateness_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            buckets.append(
                (float("inf") if bound == "+Inf" else float(bound), float(line.rpartition(" ")[2]))
            )
        if line.startswith('sip_transactions{kind="invite_server"'):
            live += float(line.rpartition(" ")[2])
    total = buckets[-1][1] if buckets else 0.0
    p99 = next((bound for bound, count in buckets if count >= 0.99 * total), float("nan"))
    return p99, live


def run_sipp_noack(server: Server, calls: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-sipp-"))
    scenario = workdir / "noack.xml"
    # The never-ACK scenario with a short pause: SIPp leaves, the node keeps retransmitting.
    scenario.write_text(
        (SCENARIOS / "invite_noack.xml").read_text().replace('milliseconds="4000"', 'milliseconds="1"')
    )
    args = ["sipp", f"127.0.0.1:{server.port}", "-sf", str(scenario), "-s", "busy", "-i", "127.0.0.1",
            "-p", str(free_port()), "-m", str(calls), "-r", "1000", "-l", str(calls), "-nostdin"]  # fmt: skip
    subprocess.run(args, cwd=workdir, capture_output=True, timeout=120, check=False)
    time.sleep(8.0)  # Timer G keeps firing (doubling to T2 = 4 s) for every transaction
    shutil.rmtree(workdir, ignore_errors=True)


class _Sink:
    """A transport that counts what the layer sends: the in-process phase measures our code alone."""

    protocol = "UDP"
    local = ("127.0.0.1", 5060)

    def __init__(self) -> None:
        from sipcore.sip import TransportInfo

        self.sent = 0
        self._info = TransportInfo("UDP", False, self.local, ("127.0.0.1", 5070))

    def info_for(self, remote: tuple[str, int]):  # type: ignore[no-untyped-def]
        return self._info

    def connected(self, remote: tuple[str, int]) -> bool:
        return True

    def send(self, data: bytes, destination: tuple[str, int], on_error: object = None) -> None:
        self.sent += 1

    def close(self) -> None:
        pass


def in_process(calls: int, repeats: int = 5) -> dict[str, float]:
    """CPU us per transaction of parse + layer + UAS core + build, no sockets: median of repeats."""
    import asyncio
    import gc
    import statistics

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "callops.settings")
    from sipcore.dialplan import DEMO_RULES, DialPlan
    from sipcore.layer import TransactionLayer
    from sipcore.metrics import NodeMetrics
    from sipcore.uas import UasCore

    head = (
        "{method} sip:{user}@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{i}\r\n"
        "From: sipp <sip:sipp@127.0.0.1:5070>;tag={i}\r\nTo: <sip:{user}@127.0.0.1:5060>{to_tag}\r\n"
        "Call-ID: {i}@127.0.0.1\r\nCSeq: 1 {method}\r\nContact: <sip:sipp@127.0.0.1:5070>\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )

    async def run(kind: str) -> float:
        layer = TransactionLayer(loop=asyncio.get_running_loop(), metrics=NodeMetrics("bench"))
        layer.attach(UasCore(layer, DialPlan.of(DEMO_RULES)))
        sink = _Sink()
        layer.add_transport(sink)  # type: ignore[arg-type]
        method, user = ("OPTIONS", "ping") if kind == "options" else ("INVITE", "busy")
        requests = [head.format(method=method, user=user, i=i, to_tag="").encode() for i in range(calls)]
        started = time.process_time()
        for index, datagram in enumerate(requests):
            layer.datagram_received(datagram, sink, ("127.0.0.1", 5070))  # type: ignore[arg-type]
            if kind != "options":  # the ACK carries the To tag of the 486 just sent
                tx = next(reversed(layer.server.values()))
                tag = tx.last_response.to_tag if tx.last_response else ""
                ack = head.format(method="ACK", user="busy", i=index, to_tag=f";tag={tag}").encode()
                layer.datagram_received(ack, sink, ("127.0.0.1", 5070))  # type: ignore[arg-type]
            if index % 50 == 49:
                await asyncio.sleep(0)  # a loop turn: the commit and the sends
        await asyncio.sleep(0)
        elapsed = time.process_time() - started
        layer.close()
        return elapsed / calls * 1e6

    results = {}
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    for kind in ("options", "invite_busy"):
        results[kind] = statistics.median(asyncio.run(run(kind)) for _ in range(repeats))
    return results


def completed_transaction_bytes(count: int = 2000) -> float:
    """Bytes retained per non-INVITE server transaction in Completed (OPTIONS answered
    200 through make_response, as the UAS core does), measured with tracemalloc."""
    import gc
    import tracemalloc

    sys.path.insert(0, str(ROOT))
    from sipcore.sip import NonInviteServerTransaction, Response, TransportInfo, make_response, parse_message

    info = TransportInfo("UDP", False, ("127.0.0.1", 5060), ("127.0.0.1", 5070))
    datagrams = [
        (
            f"OPTIONS sip:ping@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{i}\r\n"
            f"From: sipp <sip:sipp@127.0.0.1:5070>;tag={i}\r\nTo: <sip:ping@127.0.0.1:5060>\r\n"
            f"Call-ID: {i}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContact: <sip:sipp@127.0.0.1:5070>\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        for i in range(count)
    ]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = []
    for datagram in datagrams:
        request = parse_message(datagram)
        assert not isinstance(request, Response)
        tx = NonInviteServerTransaction(request, info, now=0.0)
        tx.send_response(
            make_response(request, 200, headers=[("Allow", "INVITE, ACK, CANCEL, OPTIONS, BYE")]), 0.0
        )
        tx.drain_outgoing()
        kept.append(tx)
    del request, tx
    gc.collect()
    retained = (tracemalloc.get_traced_memory()[0] - before) / count
    tracemalloc.stop()
    return retained


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=30000, help="calls per run")
    parser.add_argument("--concurrency", type=int, default=500, help="SIPp -l")
    parser.add_argument("--quick", action="store_true", help="5,000 calls per run")
    args = parser.parse_args()
    calls = 5000 if args.quick else args.calls
    if not shutil.which("sipp"):
        print("sipp not installed (apt-get install sip-tester)")
        return 1
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "callops.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()  # the audit-lag sampler reads Redis through the project's settings
    # The node answers from the dial plan in the database: make sure it is there (busy -> 486).
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)
    seed = "from sipcore.models import DialPlanRule; DialPlanRule.seed()"
    subprocess.run([sys.executable, "manage.py", "shell", "-c", seed], cwd=ROOT, check=True)
    runs: list[Run] = []
    lags: list[float] = []
    scenarios = (("options", "ping"), ("invite_busy", "busy"))
    starters = (
        start_kamailio,
        lambda: start_node(1),
        lambda: start_node(1, persistence=True),
        lambda: start_node(2),
    )
    for starter in starters:
        server = starter()
        if server is None:
            continue
        durable = server.name.endswith("+store")
        ingester = start_ingester(server.workdir) if durable else None
        sampler = LagSampler() if durable else None
        if sampler is not None:
            sampler.start()
        try:
            for scenario, user in scenarios:
                runs.append(run_sipp(server, scenario, user, calls, args.concurrency))
                print(f"  {runs[-1]}", flush=True)
        finally:
            server.stop()
            if sampler is not None:
                time.sleep(2.0)  # the ingester catches up with the end of the run
                sampler.running = False
                sampler.join(5)
                lags.append(sampler.p99())
            if ingester is not None:
                ingester.terminate()
                ingester.wait(15)
            shutil.rmtree(server.workdir, ignore_errors=True)

    print(f"\nSIPp closed loop, -l {args.concurrency}, {calls} calls per run, UDP on loopback "
          f"({os.cpu_count()} cores shared with SIPp)\n")  # fmt: skip
    print(
        f"{'server':<14} {'scenario':<22} {'tx/s':>8} {'failed':>7} {'retrans':>8} {'CPU us/tx':>10} {'vs kamailio':>12}"
    )
    kamailio = {run.scenario: run for run in runs if run.server == "kamailio"}
    for run in runs:
        base = kamailio.get(run.scenario)
        ratio = f"{run.cpu_us / base.cpu_us:.2f}x CPU" if base and run.server != "kamailio" else ""
        label = "OPTIONS" if run.scenario == "options" else "INVITE->486->ACK"
        print(f"{run.server:<14} {label:<22} {run.rate:>8.0f} {run.failed:>7} {run.retransmissions:>8} "
              f"{run.cpu_us:>10.1f} {ratio:>12}")  # fmt: skip
    plain = {run.scenario: run for run in runs if run.server == "callops x1"}
    for run in runs:
        if run.server == "callops x1 +store" and run.scenario in plain:
            label = "OPTIONS" if run.scenario == "options" else "INVITE->486->ACK"
            print(f"persistence on vs off, {label}: {run.cpu_us / plain[run.scenario].cpu_us:.2f}x node CPU "
                  f"({run.rate:.0f} vs {plain[run.scenario].rate:.0f} tx/s)")  # fmt: skip
    if lags:
        print(f"audit lag p99 with persistence on (ingester running, sampled every 0.2 s): {max(lags):.2f} s")
    print(f"adoption after a crash: first retransmission answered {adoption_after_crash():.2f} s after "
          "the kill -9 (the lease, 3 s renewed every 1 s, runs out 2-3 s after it)")  # fmt: skip
    figures = in_process(5000)
    print(f"\ncallops in-process (no sockets, median of 5 x 5,000): OPTIONS {figures['options']:.0f} us CPU/tx, "
          f"INVITE->486->ACK {figures['invite_busy']:.0f} us CPU/tx")  # fmt: skip
    retained = completed_transaction_bytes()
    print(f"\ncallops: {retained:,.0f} bytes retained per non-INVITE server transaction in Completed "
          f"(x 6,000/s x Timer J 32 s = {retained * 6000 * 32 / 1e9:.2f} GB)")  # fmt: skip
    p99, live = lateness_p99(2000)
    print(f"\ncallops x1: timer lateness p99 {p99 * 1000:.1f} ms (histogram bucket bound) with "
          f"{live:.0f} INVITE server transactions live after 2,000 unACKed 486s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
