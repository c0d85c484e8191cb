"""A flood of random bytes and truncated messages from another process while SIPp calls go on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.sipcore.runtime.support import run_sipp

ROOT = Path(__file__).resolve().parents[3]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_flood_of_garbage_leaves_the_node_up_bounded_and_serving(sip_node, tmp_path):
    warm = run_sipp(sip_node.address, tmp_path, "-sn", "uac", "-m", "200", "-r", "200", "-s", "alice")
    assert warm.stat("SuccessfulCall") == 200
    rss_before = rss_kib(sip_node.process.pid)
    errors_before = sip_node.metric("sip_parse_errors_total")
    flood = subprocess.Popen(
        [sys.executable, "-m", "tests.sipcore.runtime.flood", "127.0.0.1", str(sip_node.port), "10", "3000"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Calls alongside the flood, for as long as it lasts (about 10 s at 50 calls/s).
        result = run_sipp(sip_node.address, tmp_path, "-sn", "uac", "-m", "500", "-r", "50", "-s", "alice",
                          timeout=90)  # fmt: skip
    finally:
        sent = int(flood.communicate(timeout=30)[0])
    assert sent > 20_000
    assert result.stat("SuccessfulCall") == 500, result.failures()
    assert sip_node.process.alive()
    parse_errors = sip_node.metric("sip_parse_errors_total") - errors_before
    assert parse_errors > sent * 0.5, (parse_errors, sent)
    assert sip_node.metric("sip_dropped_total", reason="internal_error") == 0
    growth_mib = (rss_kib(sip_node.process.pid) - rss_before) / 1024
    assert growth_mib < 40, f"RSS grew {growth_mib:.1f} MiB during the flood"
    # Refusals are logged, but rate limited: a flood does not become a disk flood.
    assert (
        sip_node.process.output().count('"sip_refuse"') + sip_node.process.output().count('"sip_drop"') < 2000
    )
