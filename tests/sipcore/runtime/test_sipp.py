"""SIPp against a real `manage.py sipserver` process, on UDP and TCP."""

from __future__ import annotations

import time

import pytest

from tests.sipcore.runtime.support import run_sipp, scenario, start_node
from tests.support.processes import wait_for


def assert_all_succeeded(result, calls):
    assert result.stat("SuccessfulCall") == calls, result.output[-3000:]
    assert result.stat("FailedCall") == 0, result.stats
    assert result.returncode == 0, result.output[-3000:]


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_builtin_uac_calls_all_succeed(sip_node, tmp_path, transport):
    # INVITE, 100/180, 200 with SDP, ACK, BYE, 200 (the dial plan's catch-all rule).
    result = run_sipp(
        sip_node.address,
        tmp_path,
        "-sn",
        "uac",
        "-t",
        transport,
        "-m",
        "40",
        "-r",
        "100",
        "-l",
        "20",
        "-d",
        "50",
        "-s",
        "alice",
    )
    assert_all_succeeded(result, 40)
    assert result.stat("Retransmissions") == 0


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_options_answered_with_allow_and_accept(sip_node, tmp_path, transport):
    result = run_sipp(
        sip_node.address,
        tmp_path,
        "-sf",
        scenario("options"),
        "-t",
        transport,
        "-m",
        "50",
        "-r",
        "200",
        "-s",
        "ping",
    )
    assert_all_succeeded(result, 50)


def test_invite_busy_gets_486_and_the_ack_completes_it(sip_node, tmp_path):
    before = sip_node.metric("sip_messages_in_total", method="ACK")
    result = run_sipp(
        sip_node.address, tmp_path, "-sf", scenario("invite_busy"), "-m", "30", "-r", "100", "-s", "busy"
    )
    assert_all_succeeded(result, 30)
    assert result.counts["2_486_Recv"] == "30"
    assert result.counts["2_486_Retrans"] == "0"  # every ACK reached the node and stopped Timer G
    assert sip_node.metric("sip_messages_in_total", method="ACK") - before == 30


def test_unavailable_gets_503_with_retry_after(sip_node, tmp_path):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        port = sock.getsockname()[1]
        sock.sendto(invite("unavailable", port).encode(), ("127.0.0.1", sip_node.port))
        answers = []
        while not answers or answers[-1].startswith("SIP/2.0 1"):
            answers.append(sock.recv(65535).decode())
    assert answers[-1].startswith("SIP/2.0 503 Service Unavailable\r\n")
    assert "\r\nRetry-After: 60\r\n" in answers[-1]


def test_without_ack_the_486_is_retransmitted_per_timer_g_until_timer_h(sip_node, tmp_path):
    # T1 = 50 ms, T2 = 500 ms: Timer G fires at 0.05, 0.15, 0.35, 0.75, 1.25, 1.75, 2.25, 2.75 s,
    # and Timer H (64*T1 = 3.2 s) ends the transaction before the next (3.25 s): 8 retransmissions.
    before = sip_node.metric("sip_retransmissions_total", status="486")
    result = run_sipp(sip_node.address, tmp_path, "-sf", scenario("invite_noack"), "-m", "1", "-s", "busy")
    assert result.counts["2_486_Recv"] == "1"
    assert result.counts["2_486_Retrans"] == "8", result.counts
    assert sip_node.metric("sip_retransmissions_total", status="486") - before == 8
    time.sleep(0.3)
    assert sip_node.metric("sip_transactions", kind="invite_server") == 0


@pytest.mark.parametrize(("transport", "retransmissions"), [("u1", "8"), ("t1", "0")])
def test_a_2xx_never_acked_is_retransmitted_until_64_t1_then_the_node_sends_bye(
    sip_node, tmp_path, transport, retransmissions
):
    # RFC 3261 §13.3.1.4. T1 = 50 ms, T2 = 500 ms: on UDP the 200 goes again at 0.05, 0.15, 0.35,
    # 0.75, 1.25, 1.75, 2.25, 2.75 s (on TCP never); at 64*T1 = 3.2 s the node gives up on the
    # ACK and sends BYE (on TCP over the connection the INVITE came on).
    byes_before = sip_node.metric("sip_messages_out_total", method="BYE")
    result = run_sipp(
        sip_node.address,
        tmp_path,
        "-sf",
        scenario("invite_noack_bye"),
        "-t",
        transport,
        "-m",
        "1",
        "-s",
        "answer",
    )
    assert_all_succeeded(result, 1)
    assert result.counts["3_200_Recv"] == "1"
    assert result.counts["3_200_Retrans"] == retransmissions, result.counts
    assert result.counts["4_BYE_Recv"] == "1"
    assert sip_node.metric("sip_messages_out_total", method="BYE") - byes_before == 1  # SIPp's 200 stops it
    wait_for(
        lambda: sip_node.metric("sip_transactions", kind="non_invite_client") == 0,
        timeout=5,
        what="the BYE's client transaction to end",
    )
    assert sip_node.metric("sip_transactions", kind="invite_server") == 0


def test_cancel_of_a_ringing_call_gets_200_and_487(sip_node, tmp_path):
    result = run_sipp(
        sip_node.address, tmp_path, "-sf", scenario("cancel"), "-m", "20", "-r", "100", "-s", "noanswer"
    )
    assert_all_succeeded(result, 20)
    assert result.counts["4_200_Recv"] == "20"
    assert result.counts["5_487_Recv"] == "20"


def invite(user: str, port: int, branch: str = "z9hG4bKtest1", call_id: str = "call-1@test") -> str:
    return (
        f"INVITE sip:{user}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:{user}@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:t@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n"
    )


def test_thirty_percent_loss_both_ways_calls_complete_or_time_out_by_the_timers(node_env, tmp_path):
    # SIPp drops 30% of what it sends and of what it receives; both ends retransmit: SIPp with
    # T1 = 100 ms and T2 = 400 ms, at most 12 times (4.3 s, inside the node's 64*T1 = 6.4 s Timer J,
    # as RFC 3261's Timer F would keep it), the node its 2xx until the ACK (§13.3.1.4) and its
    # responses to retransmitted requests. A call may only fail by running out of retransmissions.
    node = start_node(node_env, tmp_path, "--t1", "0.1", "--t2", "0.4", "--dialplan-refresh", "3600")
    try:
        result = run_sipp(node.address, tmp_path, "-sf", scenario("uac_retrans"), "-s", "alice", "-m", "40",
                          "-r", "40", "-l", "40", "-lost", "30", "-T2", "400", "-max_retrans", "12")  # fmt: skip
        timed_out = result.stat("FailedMaxUDPRetrans")
        assert result.stat("SuccessfulCall") + timed_out == 40, result.failures()
        assert timed_out <= 2, result.failures()
        assert result.stat("Retransmissions") > 0  # the loss was real
        assert node.metric("sip_retransmissions_total") > 0
        assert node.metric("sip_dropped_total", reason="internal_error") == 0
    finally:
        node.process.stop()
