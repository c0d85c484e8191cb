"""Prometheus metrics of the IVR, served at /metrics with django-prometheus's.

Each gunicorn worker counts in its own process; a multi-worker deployment
needs PROMETHEUS_MULTIPROC_DIR (see prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

# Redis round trips on loopback take well under a millisecond; webhooks a few.
_FAST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

STATE_OPERATIONS = Counter(
    "callops_ivr_state_operations",
    "Call-state store operations, by operation (get, save, cas, write, restore, delete, extend) and outcome.",
    ["operation", "outcome"],
)
STATE_OPERATION_SECONDS = Histogram(
    "callops_ivr_state_operation_seconds",
    "Latency of call-state store operations.",
    ["operation"],
    buckets=_FAST_BUCKETS,
)
REDIS_FAILURES = Counter(
    "callops_ivr_redis_failures",
    "Redis errors met by the IVR (connection refused, timeouts...), by operation.",
    ["operation"],
)
WEBHOOKS = Counter(
    "callops_ivr_webhooks",
    "Twilio webhooks handled, by webhook and outcome.",
    ["webhook", "outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "callops_ivr_webhook_seconds",
    "Time to answer a Twilio webhook (signature check to TwiML).",
    ["webhook"],
    buckets=_FAST_BUCKETS,
)
STATE_CORRUPT = Counter(
    "callops_ivr_state_corrupt",
    "Stored call states that could not be decoded and were replaced by a fresh start.",
)
STATE_REPAIRED = Counter(
    "callops_ivr_state_repaired",
    "Redis copies of a call state found out of step with the audit trail and restored from it.",
)
REDIS_BEHIND = Counter(
    "callops_ivr_redis_behind",
    "Changes committed to the database whose copy to Redis failed (repaired on the next read).",
)
STATE_MIGRATED = Counter(
    "callops_ivr_state_migrated",
    "Call states read in an older schema and migrated, by the schema version read.",
    ["from_version"],
)
CALLS_ENDED = Counter("callops_ivr_calls_ended", "Calls ended, by outcome.", ["outcome"])


@contextmanager
def timed_state_operation(operation: str) -> Iterator[dict[str, str]]:
    """Times the block; it sets ``outcome`` in the yielded dict (default ok, error on raise)."""
    labels = {"outcome": "ok"}
    started = time.perf_counter()
    try:
        yield labels
    except Exception:
        labels["outcome"] = "error"
        raise
    finally:
        STATE_OPERATION_SECONDS.labels(operation).observe(time.perf_counter() - started)
        STATE_OPERATIONS.labels(operation, labels["outcome"]).inc()
