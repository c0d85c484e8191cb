"""Health of every part the platform needs, for ``GET /healthz``.

Each check really talks to its part (a query, a PING, a Celery ping through
the broker) with a short timeout, and reports how long it took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection

from callops.celery import app as celery_app
from callops.redis import get_redis
from sipcore.nodes import live_nodes

WORKER_HEARTBEAT_KEY = "callops:worker-heartbeat"
CELERY_PING_TIMEOUT = 1.0


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
            "status": "ok" if self.ok else "error",
            "required": self.required,
            "latency_ms": round(self.latency_ms, 1),
        }
        if self.error:
            data["error"] = self.error
        data.update(self.detail)
        return data


@dataclass(frozen=True)
class HealthReport:
    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks if check.required)

    @property
    def failing(self) -> list[str]:
        return [check.name for check in self.checks if check.required and not check.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "error",
            "failing": self.failing,
            "checks": {check.name: check.as_dict() for check in self.checks},
        }


def _timed(name: str, required: bool, probe: Callable[[], dict[str, Any]]) -> CheckResult:
    started = time.perf_counter()
    try:
        detail = probe()
    except Exception as exc:  # a health check reports failures, it never raises
        return CheckResult(
            name, False, required, error=f"{type(exc).__name__}: {exc}", latency_ms=_ms(started)
        )
    return CheckResult(name, True, required, detail=detail, latency_ms=_ms(started))


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"vendor": connection.vendor}


def _check_redis() -> dict[str, Any]:
    client = get_redis()
    client.ping()
    detail: dict[str, Any] = {}
    stamp = client.get(WORKER_HEARTBEAT_KEY)
    if stamp is not None:
        detail["last_scheduled_heartbeat_age_s"] = round(time.time() - float(stamp), 1)
    return detail


def _check_celery() -> dict[str, Any]:
    # limit=1: one live worker is enough, and the ping returns as soon as it answers
    # instead of waiting out the timeout for workers that might exist.
    replies = celery_app.control.ping(timeout=CELERY_PING_TIMEOUT, limit=1)
    workers = sorted(name for reply in replies for name in reply)
    if not workers:
        raise RuntimeError(f"no Celery worker answered a ping within {CELERY_PING_TIMEOUT}s")
    return {"answered": workers}


def _check_sip_nodes() -> dict[str, Any]:
    nodes = live_nodes(get_redis())
    return {"nodes": [node.get("node_id") for node in nodes]}


def run_health_checks() -> HealthReport:
    database = _timed("database", True, _check_database)
    if not settings.REDIS_URL:
        missing = "REDIS_URL is not set"
        redis_down = CheckResult("redis", False, True, error=missing)
        return HealthReport(
            (
                database,
                redis_down,
                CheckResult("celery", False, True, error=missing),
                CheckResult("sip", False, False, error=missing),
            )
        )
    redis_check = _timed("redis", True, _check_redis)
    if redis_check.ok:
        celery_check = _timed("celery", True, _check_celery)
        sip_check = _timed("sip", False, _check_sip_nodes)
    else:
        # The broker is Redis: a ping could only hang in reconnect loops.
        unreachable = "broker (Redis) unreachable"
        celery_check = CheckResult("celery", False, True, error=unreachable)
        sip_check = CheckResult("sip", False, False, error=unreachable)
    return HealthReport((database, redis_check, celery_check, sip_check))
