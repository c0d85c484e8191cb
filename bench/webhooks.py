"""Twilio webhook latency under sustained load: whole IVR calls against gunicorn.

Run from the repository root with REDIS_URL set (``make bench`` does both):
``.venv/bin/python bench/webhooks.py [--quick] [--rate 200] [--duration 45] [--workers 4]``.

What runs:

* gunicorn (sync workers) serving callops, on the real Redis at REDIS_URL and a
  throwaway database of the same kind as DATABASE_URL: a fresh SQLite file, or
  a new PostgreSQL database on that server (dropped afterwards). It is migrated
  and seeded with clients and one job per call, so every call does real work.
* Whole calls, each 8 signed webhooks (X-Twilio-Signature computed with the
  twilio library): voice, client id, job number, confirm, an action (status,
  spoken note or reschedule, in turn), its value, goodbye, and the final status
  callback. Calls start open-loop at a fixed pace so the requests add up to
  ``--rate`` per second; inside a call a request goes out ``--think`` after the
  previous one was due, or as soon as its answer came if that was later.
* Latency is measured from when a request was due to be sent until its whole
  answer was read, so a slow client or a queue in front of the server counts
  against the result (no coordinated omission). Every answer is checked (HTTP
  200 and the words expected at that point of the call), and afterwards the
  database and Redis are checked: every call completed, every note stored, no
  call state left behind.

* CPU: beside wall-clock latency, the CPU time the gunicorn workers spent
  (user + system, read from ``/proc`` before and after each phase) divided by
  the requests they answered. The same server first answers a bare Django view
  (``bench/bare_wsgi.py``: same workers, same middleware, no work) with the same
  pace and body size, so ``x bare`` is what a webhook costs beyond serving any
  Django request at all. CPU time per request is the figure to compare across
  runs: this machine is shared and noisy, and wall time moves with its load.
* Commit modes: the webhooks run once with the configured commit mode
  (asynchronous by default) and once with every commit waiting for its fsync
  (``IVR_ASYNC_COMMIT=0``), each on a freshly started server.

The output is a report: the targets (p99 <= 30 ms at 200 requests/s; a webhook
at most 4x the bare view's CPU) are marked PASS or MISS, and the exit status is
0 either way unless the run itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_RATE = 200.0
TARGET_P99_MS = 30.0
TARGET_CPU_RATIO = 4.0  # webhook CPU per request / bare view CPU per request
REQUESTS_PER_CALL = 8
BENCH_CLIENTS = ("7001", "7002", "7003")


# --- the throwaway database ------------------------------------------------------------------------


@dataclass
class Database:
    url: str
    description: str
    drop: list = field(default_factory=list)  # what to undo afterwards

    def cleanup(self) -> None:
        for undo in reversed(self.drop):
            with contextlib.suppress(Exception):
                undo()


def throwaway_database(workdir: Path) -> Database:
    configured = os.environ.get("DATABASE_URL", "")
    if not configured.startswith(("postgres://", "postgresql://", "pgsql://")):
        path = workdir / "bench.sqlite3"
        return Database(f"sqlite:///{path}", "SQLite (a fresh file)")
    import psycopg

    parts = urllib.parse.urlsplit(configured)
    name = f"{parts.path.lstrip('/') or 'callops'}_bench_{secrets.token_hex(4)}"
    admin_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    database = Database(
        urllib.parse.urlunsplit(parts._replace(path=f"/{name}")), f"PostgreSQL ({name}, dropped after)"
    )
    database.drop.append(drop)
    return database


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the calls -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    webhook: str  # voice, gather, status; or bare (the bare view)
    params: dict[str, str]
    expect: str  # words the answer must contain

    @property
    def path(self) -> str:
        return "/bench/bare/" if self.webhook == "bare" else f"/twilio/{self.webhook}/"


def bare_script(steps: list[Step]) -> list[Step]:
    """A call's worth of requests to the bare view, with the same bodies."""
    return [Step("bare", step.params, "ok") for step in steps]


def call_script(
    index: int, call_sid: str, client_code: str, job_number: str, reschedule_to: str
) -> list[Step]:
    base = {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": f"+52555{index:07d}", "To": "+525550000100",
            "Direction": "inbound", "CallStatus": "in-progress"}  # fmt: skip

    def gather(expect: str, **answer: str) -> Step:
        return Step("gather", {**base, **answer}, expect)

    action = index % 3
    if action == 0:
        chosen = [gather("Elija el nuevo estado", Digits="1"), gather("quedó en progreso", Digits="2")]
    elif action == 1:
        chosen = [gather("Diga su nota", Digits="2"),
                  gather("Guardé su nota", SpeechResult=f"Nota de prueba {index}: cambié el filtro.",
                         Confidence="0.91")]  # fmt: skip
    else:
        chosen = [
            gather("Marque la nueva fecha", Digits="3"),
            gather("quedó programado", Digits=reschedule_to),
        ]
    return [
        Step("voice", base, "Bienvenido"),
        gather("Cliente", Digits=client_code),
        gather(f"Trabajo {' '.join(job_number)}", Digits=job_number),
        gather("Para cambiar el estado", Digits="1"),
        *chosen,
        gather("Gracias por llamar", Digits="0"),
        Step("status", {**base, "CallStatus": "completed", "SequenceNumber": "3", "CallDuration": "40"}, ""),
    ]


@dataclass
class Results:
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    done_at: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    send_lag_ms: list[float] = field(default_factory=list)
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    # The steady window: from when the first calls filled the pipeline to the last call's start.
    steady_from: float = 0.0
    steady_to: float = 0.0

    def rate(self, webhook: str | None = None) -> float:
        """Answers completed per second within the steady window."""
        times = self.done_at[webhook] if webhook else [t for values in self.done_at.values() for t in values]
        inside = sum(1 for t in times if self.steady_from <= t <= self.steady_to)
        return inside / max(self.steady_to - self.steady_from, 1e-9)


class Driver:
    """Plays Twilio: signed requests on fresh connections (as Twilio opens them), timed."""

    def __init__(self, port: int, public_base_url: str, token: str, results: Results):
        from twilio.request_validator import RequestValidator

        self.port = port
        self.base_url = public_base_url
        self.validator = RequestValidator(token)
        self.results = results

    def request_bytes(self, path: str, params: dict[str, str]) -> bytes:
        body = urllib.parse.urlencode(params).encode()
        signature = self.validator.compute_signature(f"{self.base_url}{path}", params)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nX-Twilio-Signature: {signature}\r\n"
            f"I-Twilio-Idempotency-Token: {secrets.token_hex(16)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + body

    async def post(self, payload: bytes) -> tuple[int, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(payload)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = next(
                (int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")),
                None,
            )
            body = await (reader.readexactly(length) if length is not None else reader.read())
            return status, body.decode("utf-8", errors="replace")
        finally:
            writer.close()

    async def run_call(self, steps: list[Step], start: float, think: float, measured: bool) -> None:
        loop = asyncio.get_running_loop()
        previous_done = start
        for number, step in enumerate(steps):
            due = max(start + number * think, previous_done)
            payload = self.request_bytes(step.path, step.params)
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = loop.time()
            try:
                status, body = await self.post(payload)
                problem = "" if status == 200 else f"HTTP {status}: {body[:120]}"
                if not problem and step.expect not in body:
                    problem = f"expected {step.expect!r} in {body[:300]}"
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            done = loop.time()
            previous_done = done
            if not measured:
                continue
            self.results.done_at[step.webhook].append(done)
            self.results.latency_ms[step.webhook].append((done - due) * 1000)
            self.results.send_lag_ms.append((sent - due) * 1000)
            if problem:
                self.results.errors[step.webhook].append(problem)
                return  # the rest of this call would only fail the same way


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)] if ordered else float("nan")


# --- setting the stage --------------------------------------------------------------------------------------


def configure_django(database: Database, workdir: Path, port: int, token: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="callops.settings",
        DATABASE_URL=database.url,
        DEBUG="0",  # production settings: no query logging
        HTTPS_ONLY="0",  # but served over plain HTTP on loopback: no redirect to HTTPS
        SECRET_KEY=secrets.token_urlsafe(48),
        TWILIO_AUTH_TOKEN=token,
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        CALLOPS_VAR_DIR=str(workdir / "var"),
        LOG_LEVEL="WARNING",
        IVR_FALLBACK_NUMBER="",
        PYTHONUNBUFFERED="1",
    )
    os.environ.update(env)
    import django

    django.setup()
    return env


def seed(calls: int) -> list[tuple[str, str]]:
    """Bench clients with one scheduled job per call; (client code, job number) per call."""
    from django.core.management import call_command
    from django.utils import timezone

    from callops.models import Client, Job, JobStatus

    call_command("migrate", "--noinput", verbosity=0)
    clients = [Client.objects.create(code=code, name=f"Bench client {code}") for code in BENCH_CLIENTS]
    when = timezone.localdate() + timedelta(days=2)
    jobs = [
        Job(client=clients[index % len(clients)], number=str(10000 + index), title=f"Bench job {index}",
            address="Av. Reforma 120, CDMX", status=JobStatus.SCHEDULED, scheduled_for=when)
        for index in range(calls)
    ]  # fmt: skip
    Job.objects.bulk_create(jobs, batch_size=1000)
    return [(clients[index % len(clients)].code, str(10000 + index)) for index in range(calls)]


def start_gunicorn(env: dict[str, str], port: int, workers: int, log_path: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "gunicorn", "bench.bare_wsgi:application", "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--worker-class", "sync", "--backlog", "2048", "--timeout", "30",
            "--log-level", "warning"]  # fmt: skip
    log = log_path.open("ab")
    return subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_until_serving(port: int, server: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/bare/", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer (405 for a GET) means it serves
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer within {timeout}s:\n{log_path.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def workers_cpu_seconds(master_pid: int) -> float:
    """User + system CPU of gunicorn's workers (the master's children), from /proc."""
    total = 0
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
        for child in children:
            with contextlib.suppress(OSError):
                # Fields after the parenthesised command: utime is the 14th field, stime the 15th.
                fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


# --- the run ---------------------------------------------------------------------------------------------------


async def warm_up(driver: Driver, scripts: list[list[Step]]) -> None:
    """A few calls one after another (imports, connections, caches), not measured."""
    loop = asyncio.get_running_loop()
    for steps in scripts:
        await driver.run_call(steps, loop.time(), 0.0, measured=False)


async def drive(driver: Driver, scripts: list[list[Step]], rate: float, think: float) -> None:
    """Calls started open-loop at a fixed pace, measured."""
    loop = asyncio.get_running_loop()
    calls_per_second = rate / REQUESTS_PER_CALL
    start = loop.time() + 0.2
    driver.results.steady_from = start + REQUESTS_PER_CALL * think
    driver.results.steady_to = start + (len(scripts) - 1) / calls_per_second
    tasks = [
        asyncio.create_task(driver.run_call(steps, start + index / calls_per_second, think, measured=True))
        for index, steps in enumerate(scripts)
    ]
    await asyncio.gather(*tasks)


def verify(scripts: list[list[Step]], redis_url: str) -> list[str]:
    """After the run: every call closed as completed, every note stored, no state left in Redis."""
    import redis

    from callops.models import CallSession, JobNote

    problems = []
    sids = [steps[0].params["CallSid"] for steps in scripts]
    completed = CallSession.objects.filter(call_sid__in=sids, outcome="completed").count()
    if completed != len(sids):
        problems.append(f"{len(sids) - completed} of {len(sids)} calls not closed as completed")
    notes_expected = sum(1 for steps in scripts if "SpeechResult" in steps[5].params)
    notes = JobNote.objects.filter(call_sid__in=sids).count()
    if notes != notes_expected:
        problems.append(f"{notes} notes stored, {notes_expected} said")
    client = redis.Redis.from_url(redis_url)
    prefix = sids[0][: len("CAbench") + 8]
    left = list(client.scan_iter(match=f"call_state:{{{prefix}*", count=1000))
    if left:
        problems.append(f"{len(left)} call states left in Redis")
    replays = list(client.scan_iter(match=f"call_replay:{{{prefix}*", count=1000))
    for chunk in range(0, len(replays), 500):
        client.delete(*replays[chunk : chunk + 500])  # they would expire anyway; leave Redis as found
    return problems


@dataclass
class Phase:
    name: str
    results: Results
    cpu_seconds: float
    requests: int

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_seconds / max(self.requests, 1)

    @property
    def all_latencies(self) -> list[float]:
        return [value for values in self.results.latency_ms.values() for value in values]


def run_phase(
    name: str, env: dict[str, str], scripts: list[list[Step]], args: argparse.Namespace, workdir: Path
) -> Phase:
    """A freshly started server, a warm-up, then the measured load; CPU read around the load only."""
    port = int(urllib.parse.urlsplit(env["PUBLIC_BASE_URL"]).port or 0)
    log_path = workdir / "gunicorn.log"
    server = start_gunicorn(env, port, args.workers, log_path)
    try:
        wait_until_serving(port, server, log_path)
        results = Results()
        driver = Driver(port, env["PUBLIC_BASE_URL"], env["TWILIO_AUTH_TOKEN"], results)
        warmup = 2 * args.workers
        asyncio.run(warm_up(driver, scripts[:warmup]))
        before = workers_cpu_seconds(server.pid)
        asyncio.run(drive(driver, scripts[warmup:], args.rate, args.think))
        time.sleep(0.2)
        cpu = workers_cpu_seconds(server.pid) - before
    finally:
        stop(server)
    return Phase(name, results, cpu, sum(len(values) for values in results.latency_ms.values()))


def report(phases: list[Phase], rate: float, duration: float, workers: int, database: Database) -> None:
    from django.db import connection

    commits = "WAL, synchronous=NORMAL" if connection.vendor == "sqlite" else "PostgreSQL"
    print(f"\nTwilio webhooks · gunicorn {workers} sync workers · {database.description}, {commits} · Redis at "
          f"{urllib.parse.urlsplit(os.environ['REDIS_URL']).netloc} · {os.cpu_count()} CPUs")  # fmt: skip
    print(f"offered {rate:.0f} req/s for {duration:.0f} s per phase: whole calls of {REQUESTS_PER_CALL} "
          "requests; latency from when each request was due to its last byte; CPU = gunicorn workers' "
          "user+system time / requests\n")  # fmt: skip
    bare = phases[0]
    header = (f"{'phase':<26}{'webhook':<9}{'requests':>9}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
              f"{'max ms':>8}{'errors':>7}{'CPU ms/req':>11}{'x bare':>8}")  # fmt: skip
    print(header)
    print("-" * len(header))
    order = ["bare", "voice", "gather", "status"]
    for phase in phases:
        results = phase.results
        rows = sorted(results.latency_ms.items(), key=lambda item: order.index(item[0]))
        if len(rows) > 1:
            rows.append(("all", phase.all_latencies))
        for row, (name, values) in enumerate(rows):
            errors = (
                sum(len(e) for e in results.errors.values())
                if name in ("all", "bare")
                else len(results.errors[name])
            )
            achieved = results.rate(None if name in ("all", "bare") else name)
            cpu = ratio = ""
            if name in ("all", "bare"):
                cpu = f"{phase.cpu_ms_per_request:.2f}"
                ratio = f"{phase.cpu_ms_per_request / bare.cpu_ms_per_request:.2f}"
            print(f"{phase.name if row == 0 else '':<26}{name:<9}{len(values):>9}{achieved:>8.1f}"
                  f"{percentile(values, 0.5):>8.1f}{percentile(values, 0.99):>8.1f}"
                  f"{max(values, default=math.nan):>8.1f}{errors:>7}{cpu:>11}{ratio:>8}")  # fmt: skip
    print()
    for phase in phases[1:]:
        p99 = percentile(phase.all_latencies, 0.99)
        achieved = phase.results.rate()
        errors = sum(len(e) for e in phase.results.errors.values())
        met = p99 <= TARGET_P99_MS and achieved >= 0.97 * TARGET_RATE and errors == 0
        ratio = phase.cpu_ms_per_request / bare.cpu_ms_per_request
        print(f"{phase.name}: p99 <= {TARGET_P99_MS:.0f} ms at {TARGET_RATE:.0f} req/s: "
              f"{'PASS' if met else 'MISS'} (p99 {p99:.1f} ms at {achieved:.1f} req/s, {errors} errors); "
              f"CPU <= {TARGET_CPU_RATIO:.0f}x bare: {'PASS' if ratio <= TARGET_CPU_RATIO else 'MISS'} "
              f"({phase.cpu_ms_per_request:.2f} ms vs {bare.cpu_ms_per_request:.2f} ms, {ratio:.2f}x)")  # fmt: skip
        for webhook, problems in phase.results.errors.items():
            for problem in problems[:3]:
                print(f"  {webhook}: {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 s of load per phase instead of 45")
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="requests per second offered")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load (default 45, quick 10)")
    parser.add_argument(
        "--workers", type=int, default=max(2, 2 * (os.cpu_count() or 1)), help="gunicorn workers"
    )
    parser.add_argument("--think", type=float, default=0.05, help="seconds between a call's requests")
    parser.add_argument(
        "--no-durable", action="store_true", help="skip the phase with IVR_ASYNC_COMMIT=0 (fsync per commit)"
    )
    args = parser.parse_args(argv)
    if not os.environ.get("REDIS_URL"):
        parser.error("REDIS_URL is not set: run through `make bench`, or point it at a Redis")
    duration = args.duration or (10.0 if args.quick else 45.0)
    warmup = 2 * args.workers
    calls = warmup + math.ceil(args.rate * duration / REQUESTS_PER_CALL)
    modes = [("webhooks, async commit", "1")] + (
        [] if args.no_durable else [("webhooks, durable commit", "0")]
    )

    workdir = Path(tempfile.mkdtemp(prefix="callops-bench-"))
    database = throwaway_database(workdir)
    port, token = free_port(), secrets.token_hex(16)
    try:
        env = configure_django(database, workdir, port, token)
        jobs = seed(calls * len(modes))
        run_id = secrets.token_hex(4)
        from django.utils import timezone

        reschedule_to = (timezone.localdate() + timedelta(days=30)).strftime("%Y%m%d")
        scripts = [
            call_script(index, f"CAbench{run_id}{index:08d}", client_code, job_number, reschedule_to)
            for index, (client_code, job_number) in enumerate(jobs)
        ]
        phases = [
            run_phase("bare Django view", env, [bare_script(s) for s in scripts[:calls]], args, workdir)
        ]
        for number, (name, async_commit) in enumerate(modes):
            mine = scripts[number * calls : (number + 1) * calls]
            phases.append(run_phase(name, {**env, "IVR_ASYNC_COMMIT": async_commit}, mine, args, workdir))
        report(phases, args.rate, duration, args.workers, database)
        problems = verify(scripts, os.environ["REDIS_URL"])
        print("after the run: " + ("; ".join(problems) if problems else "every call completed, every note stored, "
                                   "no call state left in Redis"))  # fmt: skip
        return 0
    finally:
        from django.db import connections

        connections.close_all()
        database.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
