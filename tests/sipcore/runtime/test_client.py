"""The client side: `await endpoint.request(...)` and `manage.py sipsend` against SIPp UASs and a node."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sipcore.endpoint import RequestFailed, client_endpoint
from sipcore.sip import Timings
from tests.sipcore.runtime.support import SCENARIOS, SIPP, _last_row, free_udp_tcp_port

ROOT = Path(__file__).resolve().parents[3]
FAST = Timings(t1=0.05, t2=0.5, t4=0.5)


class SippUas:
    """SIPp as a UAS for one call, in the background; its per-message counts when done."""

    def __init__(self, tmp_path: Path, scenario: str, pause_ms: int = 0, **fill: str):
        self.port = free_udp_tcp_port()
        self.dir = tmp_path / f"uas-{self.port}"
        self.dir.mkdir()
        xml = (SCENARIOS / f"{scenario}.xml").read_text().replace("PAUSE", str(pause_ms))
        for placeholder, text in fill.items():
            xml = xml.replace(placeholder, text)
        (self.dir / "scenario.xml").write_text(xml)
        assert SIPP, "sipp is not installed (apt-get install sip-tester)"
        self.process = subprocess.Popen(
            [SIPP, "-sf", "scenario.xml", "-i", "127.0.0.1", "-p", str(self.port), "-m", "1", "-nostdin",
             "-trace_counts", "-trace_stat", "-stf", "stats.csv", "-fd", "1"],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.3)  # SIPp binds its socket

    def counts(self) -> dict[str, str]:
        self.process.wait(15)
        files = sorted(self.dir.glob("*_counts.csv"))
        assert files, "SIPp wrote no counts"
        return _last_row(files[-1])


def request(uri: str, method: str = "OPTIONS", timings: Timings = FAST, linger: float = 0.0):
    """The final response (or RequestFailed) and how long it took; ``linger``: seconds the
    endpoint stays open after it, to take what else comes (other forks)."""

    async def send():
        async with client_endpoint(timings=timings) as endpoint:
            started = time.monotonic()
            try:
                result = await endpoint.request(method, uri), time.monotonic() - started
            except RequestFailed as exc:
                result = exc, time.monotonic() - started
            await asyncio.sleep(linger)
            return result

    return asyncio.run(send())


def test_request_gets_the_final_response_of_a_sipp_uas(tmp_path):
    uas = SippUas(tmp_path, "uas_options")
    response, _ = request(f"sip:uas@127.0.0.1:{uas.port}")
    assert response.status_code == 200
    counts = uas.counts()
    assert counts["0_OPTIONS_Recv"] == "1"
    assert counts["0_OPTIONS_Retrans"] == "0"


def test_request_is_retransmitted_per_timer_e_while_the_uas_delays(tmp_path):
    # T1 = 50 ms: Timer E fires at 0.05, 0.15 and 0.35 s; the 200 comes at 0.4 s.
    uas = SippUas(tmp_path, "uas_options", pause_ms=400)
    response, elapsed = request(f"sip:uas@127.0.0.1:{uas.port}")
    assert response.status_code == 200
    assert 0.35 < elapsed < 3.0
    assert uas.counts()["0_OPTIONS_Retrans"] == "3"


def test_when_the_proceeding_guard_fires_the_invite_is_cancelled_and_the_487_acked(tmp_path):
    """RFC 3261 §16.8/§9.1: Timer C's outcome is a CANCEL; the request returns the 487."""
    uas = SippUas(tmp_path, "uas_ring_until_cancel")
    guard = dataclasses.replace(FAST, proceeding_guard=1.0)
    response, elapsed = request(f"sip:uas@127.0.0.1:{uas.port}", "INVITE", guard)
    assert not isinstance(response, RequestFailed), response
    assert response.status_code == 487
    assert 1.0 <= elapsed < 5.0
    counts = uas.counts()
    assert uas.process.returncode == 0, counts
    assert counts["2_CANCEL_Recv"] == "1"
    assert counts["5_ACK_Recv"] == "1"


@pytest.mark.parametrize("first", ["200 OK", "486 Busy Here"])
def test_a_2xx_from_another_fork_after_the_first_final_is_acked_and_ended_with_bye(tmp_path, first):
    """§13.2.2.4: every 2xx is ACKed; a dialog other than the first final's gets a BYE, once."""
    uas = SippUas(tmp_path, "uas_forks", FIRST=first)
    response, _ = request(f"sip:uas@127.0.0.1:{uas.port}", "INVITE", linger=1.0)
    assert not isinstance(response, RequestFailed), response
    assert (response.status_code, response.to_tag) == (int(first[:3]), "fork1")
    counts = uas.counts()
    assert uas.process.returncode == 0, counts  # the To tag checks passed, no second BYE came
    assert counts["2_ACK_Recv"] == "1"
    assert counts["4_ACK_Recv"] == "1"
    assert counts["5_BYE_Recv"] == "1"


def test_timer_f_ends_a_request_the_uas_never_answers(tmp_path):
    # Timer E: 0.05, 0.15, 0.35, 0.75, 1.25, 1.75, 2.25, 2.75 s (T2 = 0.5 s); Timer F = 64*T1 = 3.2 s.
    uas = SippUas(tmp_path, "uas_silent")
    failure, elapsed = request(f"sip:uas@127.0.0.1:{uas.port}")
    assert isinstance(failure, RequestFailed)
    assert failure.failure.reason == "timeout"
    assert "Timer F" in str(failure)
    assert 3.2 <= elapsed < 6.0
    assert uas.counts()["0_OPTIONS_Retrans"] == "8"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipsend_prints_the_nodes_answer(sip_node, transport):
    completed = subprocess.run(
        [sys.executable, "manage.py", "sipsend", f"sip:busy@127.0.0.1:{sip_node.port};transport={transport}",
         "-X", "INVITE"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert completed.returncode == 1, completed.stderr
    assert completed.stdout.startswith("SIP/2.0 486 Busy Here\n")  # text mode: CRLF read as LF
    assert f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:" in completed.stdout


def test_sipsend_reports_timer_f_with_exit_status_2():
    port = free_udp_tcp_port()  # nothing listens there
    completed = subprocess.run(
        [sys.executable, "manage.py", "sipsend", f"sip:ping@127.0.0.1:{port}", "--t1", "0.05"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "Timer F" in completed.stderr
