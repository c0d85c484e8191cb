"""The node's counters as Prometheus scrapes them (no process: the collector itself)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sipcore.metrics import MAX_LABEL_SETS, NodeMetrics


def samples(metrics: NodeMetrics) -> dict[tuple[str, str, str], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, sample.labels.get("method", ""), sample.labels.get("status", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "method" in sample.labels
    }


def test_messages_are_counted_per_method_and_status():
    metrics = NodeMetrics("n1")
    for _ in range(3):
        metrics.message_in("OPTIONS", None)
    metrics.message_out("OPTIONS", 200, retransmission=False)
    metrics.message_out("INVITE", 486, retransmission=False)
    metrics.message_out("INVITE", 486, retransmission=True)

    seen = samples(metrics)
    assert seen[("sip_messages_in_total", "OPTIONS", "")] == 3
    assert seen[("sip_messages_out_total", "OPTIONS", "200")] == 1
    assert seen[("sip_messages_out_total", "INVITE", "486")] == 2
    assert seen[("sip_retransmissions_total", "INVITE", "486")] == 1
    assert ("sip_retransmissions_total", "OPTIONS", "200") not in seen
    assert metrics.count("out", "INVITE", 486) == 2


def test_label_sets_are_bounded_whatever_methods_peers_send():
    metrics = NodeMetrics("n1")
    for i in range(MAX_LABEL_SETS + 500):
        metrics.message_in(f"M{i}", None)
    metrics.message_in("M0", None)  # a method seen before the bound keeps its own series

    seen = samples(metrics)
    assert len(seen) == MAX_LABEL_SETS + 1  # the bound, plus the one "other" series
    assert seen[("sip_messages_in_total", "other", "")] == 500
    assert seen[("sip_messages_in_total", "M0", "")] == 2
