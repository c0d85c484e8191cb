"""Health of every part the platform needs, for ``GET /healthz``.

A health check must never be what takes the service down. So:

* **Bounded.** Each probe has a short timeout of its own: a dedicated Redis
  client (no retries, sub-second socket timeouts), a statement timeout on the
  database query. Celery is not pinged through the broker in the request (that
  waited out a reply timeout per request while no worker answered); workers
  stamp a sorted set with Redis's own clock every few seconds and the check
  reads the age of the freshest stamp: one round trip, never a wait.
* **Cheap.** A report is kept for ``HEALTH_CACHE_SECONDS`` in the process and,
  shared by every web process, in Redis. Only one request at a time refreshes
  it (a per-process lock plus a Redis ``SET NX`` lease); the others answer at
  once with the last report, marked stale, or "checking" when there is none.
* **Discreet.** The report holds versions, worker names, node ids and error
  texts; :func:`public_view` strips them for anonymous callers (see views.py).

Where the truth is: each probe reads its part directly; the cached report is a
copy that is at most a couple of seconds old and says how old it is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import django
import redis
from django.conf import settings
from django.db import connection, transaction
from redis.backoff import NoBackoff
from redis.retry import Retry

from sipcore.nodes import live_nodes

logger = logging.getLogger(__name__)

# Stamped by the beat-scheduled task (callops.tasks.record_worker_heartbeat):
# proves beat schedules and a worker executes; shown, not required.
WORKER_HEARTBEAT_KEY = "callops:worker-heartbeat"
# Celery worker liveness: member = worker hostname, score = Redis server time
# (seconds) of its last beat. Written by every worker process every
# WORKER_BEAT_INTERVAL seconds (see WorkerHeartbeat).
WORKERS_KEY = "callops:celery-workers"
WORKER_BEAT_INTERVAL = 2.0
WORKER_FORGET_AFTER = 3600  # stamps older than this are pruned (a worker long gone)
# The shared report and the lease of whoever is refreshing it.
REPORT_KEY = "callops:health:report"
REFRESH_LEASE_KEY = "callops:health:refreshing"
REPORT_KEEP_SECONDS = 60  # how long a report may be served stale while a refresh runs
MAX_WORKERS_SHOWN = 20

# Redis's clock, not ours: workers and web processes on different machines agree.
_STAMP_WORKER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return tostring(now)
"""
# Release the refresh lease only if it is still ours.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    required: bool
    detail: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    latency_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": "ok" if self.ok else "failing",
            "required": self.required,
            "latency_ms": round(self.latency_ms, 1),
        }
        if self.error:
            data["error"] = self.error
        data.update(self.detail)
        return data

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> CheckResult:
        known = {"status", "required", "latency_ms", "error"}
        return cls(
            name,
            data.get("status") == "ok",
            bool(data.get("required")),
            detail={key: value for key, value in data.items() if key not in known},
            error=str(data.get("error", "")),
            latency_ms=float(data.get("latency_ms", 0.0)),
        )


@dataclass(frozen=True)
class HealthReport:
    checks: tuple[CheckResult, ...]
    checked_at: float = 0.0  # wall-clock seconds when the probes ran

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks if check.required)

    @property
    def failing(self) -> list[str]:
        return [check.name for check in self.checks if check.required and not check.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "failing",
            "failing": self.failing,
            "checked_at": self.checked_at,
            "checks": {check.name: check.as_dict() for check in self.checks},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HealthReport:
        checks = tuple(CheckResult.from_dict(name, value) for name, value in data["checks"].items())
        return cls(checks, float(data["checked_at"]))


@dataclass(frozen=True)
class HealthAnswer:
    """What /healthz says: a report (None while the first one is being made) and its age."""

    report: HealthReport | None
    age_s: float = 0.0
    stale: bool = False  # another request is refreshing it; this is the previous one

    @property
    def ok(self) -> bool:
        return self.report is not None and self.report.ok

    def full_view(self) -> dict[str, Any]:
        """Everything, for staff and the health token."""
        if self.report is None:
            return {"status": "checking", "failing": [], "checks": {}}
        return {
            **self.report.as_dict(),
            "age_s": round(self.age_s, 3),
            "stale": self.stale,
            "versions": versions(),
        }

    def public_view(self) -> dict[str, Any]:
        """Only ok/failing and the part names: nothing about versions, hosts or errors."""
        if self.report is None:
            return {"status": "checking", "failing": [], "checks": {}}
        return {
            "status": "ok" if self.report.ok else "failing",
            "failing": self.report.failing,
            "checks": {
                check.name: {"status": "ok" if check.ok else "failing"} for check in self.report.checks
            },
        }


# --- the probes ------------------------------------------------------------------------------


def _timed(name: str, required: bool, probe: Callable[[], dict[str, Any]]) -> CheckResult:
    started = time.perf_counter()
    try:
        detail = probe()
    except Exception as exc:  # a health check reports failures, it never raises
        return CheckResult(name, False, required, error=_describe(exc), latency_ms=_ms(started))
    return CheckResult(name, True, required, detail=detail, latency_ms=_ms(started))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


_health_clients: dict[str, redis.Redis] = {}
_health_clients_lock = threading.Lock()


def health_redis(url: str | None = None) -> redis.Redis:
    """A Redis client for health only: its own small pool, short timeouts, no retries.

    The app's client (callops.redis) retries and waits seconds, which is right for
    a webhook's write and wrong for a probe that must answer in well under one.
    """
    url = url or settings.REDIS_URL
    client = _health_clients.get(url)
    if client is None:
        with _health_clients_lock:
            client = _health_clients.get(url)
            if client is None:
                timeout = settings.HEALTH_REDIS_TIMEOUT
                client = redis.Redis.from_url(
                    url,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    retry=Retry(backoff=NoBackoff(), retries=0),
                    max_connections=8,
                )
                _health_clients[url] = client
    return client


def _check_database() -> dict[str, Any]:
    # A statement timeout bounds a database that accepts connections but does not
    # answer (locks, overload); connect_timeout (config.py) bounds one that doesn't.
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, true)", [str(settings.HEALTH_DB_TIMEOUT_MS)]
            )
        cursor.execute("SELECT 1")
        cursor.fetchone()
    if connection.vendor == "postgresql":
        version = str(connection.pg_version)
    else:
        version = str(connection.Database.sqlite_version)
    return {"vendor": connection.vendor, "server_version": version}


@dataclass(frozen=True)
class _RedisFacts:
    server_time: float
    version: str
    workers: list[tuple[str, float]]  # (hostname, server time of its last beat), newest first
    beat_stamp: float | None


def _read_redis(client: redis.Redis) -> _RedisFacts:
    """Everything the report needs from Redis, in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.info("server")
    pipe.zrevrange(WORKERS_KEY, 0, MAX_WORKERS_SHOWN - 1, withscores=True)
    pipe.get(WORKER_HEARTBEAT_KEY)
    (seconds, micros), info, workers, beat_stamp = pipe.execute()
    return _RedisFacts(
        server_time=seconds + micros / 1e6,
        version=str(info.get("redis_version", "")),
        workers=[(name.decode(errors="replace"), float(score)) for name, score in workers],
        beat_stamp=float(beat_stamp) if beat_stamp is not None else None,
    )


def _check_celery(facts: _RedisFacts) -> CheckResult:
    """Ok when some worker stamped its heartbeat within HEALTH_WORKER_MAX_AGE; the ages either way."""
    max_age = settings.HEALTH_WORKER_MAX_AGE
    ages = [(name, round(facts.server_time - stamp, 1)) for name, stamp in facts.workers]
    detail: dict[str, Any] = {
        "workers": [{"hostname": name, "age_s": age} for name, age in ages],
        "max_age_s": max_age,
        "live": sum(1 for _, age in ages if age <= max_age),
    }
    if facts.beat_stamp is not None:
        detail["last_scheduled_heartbeat_age_s"] = round(time.time() - facts.beat_stamp, 1)
    if detail["live"]:
        return CheckResult("celery", True, True, detail=detail)
    seen = f"the freshest is {ages[0][1]}s old" if ages else "none has beaten"
    error = f"no Celery worker beat within {max_age}s ({seen})"
    return CheckResult("celery", False, True, detail=detail, error=error)


def run_health_checks(redis_error: BaseException | None = None) -> HealthReport:
    """Probe every part now. ``redis_error``: Redis already failed this request; don't wait on it twice."""
    checked_at = time.time()
    database = _timed("database", True, _check_database)
    if not settings.REDIS_URL:
        return _without_redis(database, "REDIS_URL is not set", checked_at)
    if redis_error is not None:
        return _without_redis(database, _describe(redis_error), checked_at)
    client = health_redis()
    started = time.perf_counter()
    try:
        facts = _read_redis(client)
    except Exception as exc:
        return _without_redis(database, _describe(exc), checked_at, latency_ms=_ms(started))
    version = {"server_version": facts.version}
    redis_check = CheckResult("redis", True, True, detail=version, latency_ms=_ms(started))
    celery_check = _check_celery(facts)
    sip_check = _check_sip_nodes(client)
    return HealthReport(
        (database, redis_check, celery_check, sip_check, _check_sip_peers(database)), checked_at
    )


def _check_sip_nodes(client: redis.Redis) -> CheckResult:
    """Live SIP nodes from their heartbeats; failing (not required: calls still go
    through) while a node with persistence on cannot store (Redis away from it)."""
    started = time.perf_counter()
    try:
        beats = live_nodes(client)
    except Exception as exc:
        return CheckResult("sip", False, False, error=_describe(exc), latency_ms=_ms(started))
    not_durable = [str(b["node_id"]) for b in beats if b.get("persistence") and not b.get("durable")]
    detail = {"nodes": [b.get("node_id") for b in beats], "not_durable": not_durable}
    error = f"not durable (serving from memory): {', '.join(not_durable)}" if not_durable else None
    return CheckResult("sip", not not_durable, False, detail=detail, error=error, latency_ms=_ms(started))


def _check_sip_peers(database: CheckResult) -> CheckResult:
    """Each enabled SipPeer's last probe (status, code, RTT), as the node wrote it to its row.

    Shown, not required, unless some peer is flagged ``required``: then the
    check is required and fails while such a peer is not up (down, or never
    probed yet). A peer not flagged never fails health, whatever its status.
    """
    from sipcore.models import PeerStatus, SipPeer  # the app registry is ready by the first request

    if not database.ok:  # don't wait on it twice; the database check already fails
        return CheckResult("sip_peers", False, False, error="database unreachable")
    started = time.perf_counter()
    try:
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT set_config('statement_timeout', %s, true)",
                        [str(settings.HEALTH_DB_TIMEOUT_MS)],
                    )
            peers = SipPeer.summary()
    except Exception as exc:  # reported, never raised
        return CheckResult("sip_peers", False, False, error=_describe(exc), latency_ms=_ms(started))
    required = sorted(name for name, peer in peers.items() if peer["required"])
    not_up = [name for name in required if peers[name]["status"] != PeerStatus.UP]
    error = f"required SIP peer(s) not up: {', '.join(not_up)}" if not_up else ""
    return CheckResult(
        "sip_peers", not not_up, bool(required), detail={"peers": peers}, error=error, latency_ms=_ms(started)
    )


def _without_redis(
    database: CheckResult, error: str, checked_at: float, latency_ms: float = 0.0
) -> HealthReport:
    # The broker is Redis, and the workers and SIP nodes beat into it: without it
    # neither can be known, and waiting on a ping could only hang in reconnects.
    unreachable = "broker (Redis) unreachable" if settings.REDIS_URL else error
    return HealthReport(
        (
            database,
            CheckResult("redis", False, True, error=error, latency_ms=latency_ms),
            CheckResult("celery", False, True, error=unreachable),
            CheckResult("sip", False, False, error=unreachable),
            _check_sip_peers(database),  # from the database: known without Redis
        ),
        checked_at,
    )


# --- the cache: one refresh at a time, everyone else answered at once --------------------------


class _ProcessCache:
    """This process's latest report, and the lock of the one thread refreshing it."""

    def __init__(self) -> None:
        self.report: HealthReport | None = None
        self.refreshing = threading.Lock()


_cache = _ProcessCache()


def _shared_report(client: redis.Redis) -> HealthReport | None:
    raw = client.get(REPORT_KEY)
    if raw is None:
        return None
    try:
        return HealthReport.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: refresh over it


def current_health(now: float | None = None) -> HealthAnswer:
    """The latest report, refreshed by this request only if it is old and nobody else is at it."""
    now = time.time() if now is None else now
    ttl = settings.HEALTH_CACHE_SECONDS
    best = _cache.report
    if best is not None and now - best.checked_at < ttl:
        return HealthAnswer(best, now - best.checked_at)

    client = health_redis() if settings.REDIS_URL else None
    redis_error: BaseException | None = None
    if client is not None:
        try:
            shared = _shared_report(client)
        except redis.RedisError as exc:
            redis_error = exc  # the refresh reports it rather than waiting on Redis again
        else:
            if shared is not None and (best is None or shared.checked_at > best.checked_at):
                best = _cache.report = shared
            if best is not None and now - best.checked_at < ttl:
                return HealthAnswer(best, now - best.checked_at)

    if not _cache.refreshing.acquire(blocking=False):
        return _stale(best, now)  # another thread of this process is refreshing
    try:
        lease = uuid.uuid4().hex
        if client is not None and redis_error is None:
            try:
                if not client.set(REFRESH_LEASE_KEY, lease, nx=True, px=_lease_ms()):
                    return _stale(best, now)  # another process is refreshing
            except redis.RedisError as exc:
                redis_error = exc
        report = run_health_checks(redis_error)
        _log_change(best, report)
        _cache.report = report
        if client is not None and redis_error is None:
            try:
                pipe = client.pipeline(transaction=False)
                pipe.set(REPORT_KEY, json.dumps(report.as_dict()), ex=REPORT_KEEP_SECONDS)
                pipe.eval(_RELEASE_LEASE, 1, REFRESH_LEASE_KEY, lease)
                pipe.execute()
            except redis.RedisError:
                logger.warning("health: could not share the report", exc_info=True)
        return HealthAnswer(report, max(0.0, time.time() - report.checked_at))
    finally:
        _cache.refreshing.release()


def _log_change(before: HealthReport | None, after: HealthReport) -> None:
    """Log when the verdict changes, not on every probe (views.healthz keeps Django quiet on 503s)."""
    if before is not None and before.failing == after.failing:
        return
    if after.ok:
        logger.info("health: ok")
    else:
        errors = {check.name: check.error for check in after.checks if check.required and not check.ok}
        logger.warning("health: failing %s", ", ".join(after.failing), extra={"errors": errors})


def _lease_ms() -> int:
    """Longer than a refresh can take (every probe bounded), so a crashed refresher is outlived."""
    worst = 3 * settings.HEALTH_REDIS_TIMEOUT + settings.HEALTH_DB_TIMEOUT_MS / 1000
    return max(1000, int(worst * 1000))


def _stale(best: HealthReport | None, now: float) -> HealthAnswer:
    if best is None or now - best.checked_at > REPORT_KEEP_SECONDS:
        return HealthAnswer(None)
    return HealthAnswer(best, now - best.checked_at, stale=True)


def forget_cached_health() -> None:
    """Drop this process's and the shared report (tests, and after changing health settings)."""
    _cache.report = None
    if settings.REDIS_URL:
        with contextlib.suppress(redis.RedisError):
            health_redis().delete(REPORT_KEY, REFRESH_LEASE_KEY)


# --- Celery worker liveness ------------------------------------------------------------------


def stamp_worker(client: redis.Redis, hostname: str) -> float:
    """Record that worker ``hostname`` is alive now; returns Redis's time of the stamp."""
    return float(client.eval(_STAMP_WORKER, 1, WORKERS_KEY, hostname, WORKER_FORGET_AFTER))


class WorkerHeartbeat:
    """A daemon thread in a Celery worker's main process stamping WORKERS_KEY.

    A thread, not a task: it beats while the pool is busy with long tasks, and
    it stops (the stamp ages) when the process hangs, is stopped or dies.
    Started by the ``worker_ready`` signal, stopped by ``worker_shutdown``
    (which also removes the stamp: a worker that left on purpose is not missed).
    """

    def __init__(self, hostname: str, interval: float = WORKER_BEAT_INTERVAL):
        self.hostname = hostname
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="callops-worker-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 1)
        with contextlib.suppress(redis.RedisError):
            health_redis().zrem(WORKERS_KEY, self.hostname)

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                stamp_worker(health_redis(), self.hostname)
            except redis.RedisError:
                if not failing:
                    logger.warning("worker heartbeat: Redis unreachable", exc_info=True)
                failing = True
            else:
                failing = False
            self._stop.wait(self.interval)


_running_heartbeat: list[WorkerHeartbeat] = []  # at most one, in a worker's main process


def start_worker_heartbeat(hostname: str | None) -> None:
    if not _running_heartbeat:
        heartbeat = WorkerHeartbeat(hostname or f"celery@{socket.gethostname()}:{os.getpid()}")
        heartbeat.start()
        _running_heartbeat.append(heartbeat)


def stop_worker_heartbeat() -> None:
    while _running_heartbeat:
        _running_heartbeat.pop().stop()


def versions() -> dict[str, str]:
    """Software versions for the detailed view."""
    return {"django": django.get_version(), "redis-py": redis.__version__}
