"""Per-node Prometheus metrics, served on the node's own port (``sipserver --metrics``).

Counters are cached per label set, so counting a message is a dict lookup and
an increment. Live transactions by kind and state are counted when scraped,
not on every change. Log lines about dropped or refused messages are rate
limited (a flood must not turn into a disk flood); the counters count all.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
LOOP_LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOG_LINES_PER_SECOND = 20.0


class _LiveTransactions(Collector):
    def __init__(self, source: Callable[[], Iterable[Any]]):
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "sip_transactions", "Live SIP transactions by kind and state", labels=["kind", "state"]
        )
        for (kind, state), count in sorted(Tally((tx.KIND, tx.state.value) for tx in self._source()).items()):
            family.add_metric([kind, state], count)
        yield family


class NodeMetrics:
    def __init__(self, node_id: str, registry: CollectorRegistry | None = None):
        self.node_id = node_id
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._in = Counter("sip_messages_in", "SIP messages received", ["method", "status"], registry=r)
        self._out = Counter("sip_messages_out", "SIP messages sent", ["method", "status"], registry=r)
        self._retransmissions = Counter(
            "sip_retransmissions",
            "Messages sent again (timer or retransmitted request)",
            ["method", "status"],
            registry=r,
        )
        self._parse_errors = Counter(
            "sip_parse_errors", "Messages that failed to parse", ["status"], registry=r
        )
        self._dropped = Counter("sip_dropped", "Messages dropped, by reason", ["reason"], registry=r)
        self._refused = Counter(
            "sip_refused", "Requests refused statelessly, by status", ["status"], registry=r
        )
        self.timer_lateness = Histogram(
            "sip_timer_lateness_seconds",
            "How late transaction timers fire",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "sip_loop_lag_seconds",
            "Event loop lag (a periodic sleep's overshoot)",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.durable = Gauge("sip_node_durable", "1 when transactions are stored before sending", registry=r)
        self._cache: dict[tuple[str, str | None, int | None], Any] = {}
        self._tokens = LOG_LINES_PER_SECOND
        self._tokens_at = time.monotonic()
        self.suppressed_logs = 0

    def watch_transactions(self, source: Callable[[], Iterable[Any]]) -> None:
        self.registry.register(_LiveTransactions(source))

    def _child(self, kind: str, counter: Counter, method: str | None, status: int | None) -> Any:
        key = (kind, method, status)
        child = self._cache.get(key)
        if child is None:
            if len(self._cache) > 2000:  # peers choose methods: bound the label sets
                method = "other"
                key = (kind, method, status)
                child = self._cache.get(key)
            if child is None:
                child = self._cache[key] = counter.labels(method or "", "" if status is None else str(status))
        return child

    def message_in(self, method: str, status: int | None) -> None:
        self._child("in", self._in, method, status).inc()

    def message_out(self, method: str | None, status: int | None, retransmission: bool) -> None:
        self._child("out", self._out, method, status).inc()
        if retransmission:
            self._child("re", self._retransmissions, method, status).inc()

    def parse_error(self, status: int) -> None:
        self._parse_errors.labels(str(status)).inc()

    def dropped(self, reason: str) -> None:
        self._dropped.labels(reason).inc()

    def refused(self, status: int) -> None:
        self._refused.labels(str(status)).inc()

    def may_log(self) -> bool:
        """A token bucket: at most LOG_LINES_PER_SECOND drop/refusal lines a second."""
        now = time.monotonic()
        self._tokens = min(
            LOG_LINES_PER_SECOND, self._tokens + (now - self._tokens_at) * LOG_LINES_PER_SECOND
        )
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.suppressed_logs += 1
        return False

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    async def watch_loop_lag(self, interval: float = 0.25) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(0.0, loop.time() - started - interval))
