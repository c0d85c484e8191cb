"""Per-node Prometheus metrics, served on the node's own port (``sipserver --metrics``).

Messages in and out are counted per message, so those counters are plain
integers in a dict, turned into Prometheus counter families when scraped
(counting is one dict lookup and an add, no lock, no label resolution). Live
transactions by kind and state are also counted when scraped, not on every
change. Log lines about dropped or refused messages are rate
limited (a flood must not turn into a disk flood); the counters count all.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
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


# Counter families kept as tallies: (name, help).
_TALLIES: dict[str, tuple[str, str]] = {
    "in": ("sip_messages_in", "SIP messages received"),
    "out": ("sip_messages_out", "SIP messages sent"),
    "re": ("sip_retransmissions", "Messages sent again (timer or retransmitted request)"),
}
MAX_LABEL_SETS = 2000  # peers choose methods: beyond this many, new methods count as "other"


class _Tallies(Collector):
    """Exports ``(family, method, status) -> count`` as counter families when scraped."""

    def __init__(self, tallies: dict[tuple[str, str, int | None], int]):
        self._tallies = tallies

    def collect(self) -> Iterator[CounterMetricFamily]:
        snapshot = self._tallies.copy()  # one C-level copy under the GIL: the loop may be counting
        families = {
            kind: CounterMetricFamily(name, text, labels=["method", "status"])
            for kind, (name, text) in _TALLIES.items()
        }
        for (kind, method, status), count in sorted(snapshot.items(), key=repr):
            families[kind].add_metric([method, "" if status is None else str(status)], count)
        yield from families.values()


class NodeMetrics:
    def __init__(self, node_id: str, registry: CollectorRegistry | None = None):
        self.node_id = node_id
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._tallies: dict[tuple[str, str, int | None], int] = {}
        r.register(_Tallies(self._tallies))
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
        self.adopted = Counter(
            "sip_adopted", "Transactions adopted from the store (another owner's, or released)", registry=r
        )
        self.relayed = Counter(
            "sip_relayed", "Messages forwarded to the node owning their transaction", registry=r
        )
        self.durable = Gauge("sip_node_durable", "1 when transactions are stored before sending", registry=r)
        self._tokens = LOG_LINES_PER_SECOND
        self._tokens_at = time.monotonic()
        self.suppressed_logs = 0

    def watch_transactions(self, source: Callable[[], Iterable[Any]]) -> None:
        self.registry.register(_LiveTransactions(source))

    def _count(self, kind: str, method: str, status: int | None) -> None:
        tallies = self._tallies
        key = (kind, method, status)
        count = tallies.get(key)
        if count is None:
            if len(tallies) >= MAX_LABEL_SETS:
                key = (kind, "other", status)
                count = tallies.get(key, 0)
            else:
                count = 0
        tallies[key] = count + 1

    def message_in(self, method: str, status: int | None) -> None:
        self._count("in", method, status)

    def message_out(self, method: str | None, status: int | None, retransmission: bool) -> None:
        self._count("out", method or "", status)
        if retransmission:
            self._count("re", method or "", status)

    def count(self, kind: str, method: str, status: int | None = None) -> int:
        """A tally's value (``kind``: in, out, re), as the next scrape will show it."""
        return self._tallies.get((kind, method, status), 0)

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
