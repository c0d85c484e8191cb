"""RFC 3261 §8.2 refusals that the torture vectors do not cover, metrics and logs, over raw sockets."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.sipcore.runtime.test_sipp import invite


def exchange(
    node, datagrams, *, expect: int = 1, timeout: float = 2.0, family=socket.AF_INET, host="127.0.0.1"
):
    """Send each datagram from one socket; the responses received (decoded), at least ``expect``."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        sock.settimeout(timeout)
        for datagram in datagrams(port):
            sock.sendto(datagram.encode() if isinstance(datagram, str) else datagram, (host, node.port))
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < expect and time.monotonic() < deadline:
            try:
                got.append(sock.recv(65535).decode())
            except TimeoutError:
                break
        return got


def finals(responses):
    return [r.split("\r\n", 1)[0] for r in responses if not r.startswith("SIP/2.0 1")]


def test_merged_request_gets_482(sip_node):
    # Same Call-ID, From tag and CSeq as a live transaction, another branch: a fork merging back (§8.2.2.2).
    def datagrams(port):
        yield invite("noanswer", port, branch="z9hG4bKmerge1", call_id="merge@test")
        yield invite("noanswer", port, branch="z9hG4bKmerge2", call_id="merge@test")

    got = exchange(sip_node, datagrams, expect=4)
    assert "SIP/2.0 482 Loop Detected" in finals(got)
    assert all("z9hG4bKmerge2" in r for r in got if r.startswith("SIP/2.0 482"))


def test_max_forwards_zero_gets_483_but_options_is_answered(sip_node):
    def datagrams(port):
        yield invite("alice", port, branch="z9hG4bKmf0", call_id="mf0@test").replace(
            "Max-Forwards: 70", "Max-Forwards: 0"
        )

    assert finals(exchange(sip_node, datagrams)) == ["SIP/2.0 483 Too Many Hops"]


def test_bye_outside_any_dialog_gets_481_and_creates_no_transaction(sip_node):
    before = sip_node.metric("sip_refused_total", status="481")

    def datagrams(port):
        yield (
            invite("alice", port, branch="z9hG4bKbye", call_id="bye@test")
            .replace("INVITE", "BYE")
            .replace("To: <sip:alice@127.0.0.1>", "To: <sip:alice@127.0.0.1>;tag=nosuchdialog")
        )

    assert finals(exchange(sip_node, datagrams)) == ["SIP/2.0 481 Call/Transaction Does Not Exist"]
    assert sip_node.metric("sip_refused_total", status="481") == before + 1
    assert sip_node.metric("sip_transactions", kind="non_invite_server") == 0


def test_unsupported_require_gets_420_with_unsupported(sip_node):
    def datagrams(port):
        yield invite("alice", port, branch="z9hG4bKreq", call_id="req@test").replace(
            "Content-Length: 0", "Require: 100rel, timer\r\nContent-Length: 0"
        )

    (answer,) = exchange(sip_node, datagrams)
    assert answer.startswith("SIP/2.0 420 Bad Extension\r\n")
    assert "\r\nUnsupported: 100rel, timer\r\n" in answer


def test_refusals_and_drops_are_json_log_lines_with_the_reason(sip_node):
    def datagrams(port):
        yield (
            invite("alice", port, branch="z9hG4bKlog", call_id="log-line@test")
            .replace("INVITE sip", "SUBSCRIBE sip", 1)
            .replace("CSeq: 1 INVITE", "CSeq: 1 SUBSCRIBE")
        )
        yield b"\x00\x01 not sip at all"

    assert finals(exchange(sip_node, datagrams)) == ["SIP/2.0 405 Method Not Allowed"]
    time.sleep(0.3)
    lines = [json.loads(line) for line in sip_node.process.output().splitlines() if line.startswith("{")]
    refused = [
        line for line in lines if line.get("event") == "sip_refuse" and line.get("call_id") == "log-line@test"
    ]
    assert refused
    assert refused[0]["status"] == 405
    assert refused[0]["reason"] == "Method Not Allowed"
    assert any(line.get("event") == "sip_drop" and line.get("reason") == "unparseable" for line in lines)


def test_metrics_count_messages_transactions_timers_and_loop_lag(sip_node):
    def datagrams(port):
        yield invite("busy", port, branch="z9hG4bKmetrics", call_id="metrics@test")

    exchange(sip_node, datagrams, expect=2, timeout=0.5)  # 486 and a Timer G retransmission
    samples = sip_node.metrics()
    assert samples['sip_messages_in_total{method="INVITE",status=""}'] >= 1
    assert samples['sip_messages_out_total{method="INVITE",status="486"}'] >= 1
    assert any(key.startswith('sip_transactions{kind="invite_server",state="Completed"}') for key in samples)
    assert samples["sip_timer_lateness_seconds_count"] >= 1
    assert samples["sip_loop_lag_seconds_count"] >= 1
    assert samples["sip_node_durable"] == 1  # persistence on (the default), Redis up


def test_tcp_garbage_closes_the_connection_and_the_node_serves_on(sip_node):
    with socket.create_connection(("127.0.0.1", sip_node.port), timeout=3) as conn:
        conn.sendall(b"INVITE sip:x SIP/2.0\r\nVia: broken\r\n\r\n")  # no Content-Length: framing is lost
        assert conn.recv(65535) == b""  # closed by the node
    with socket.create_connection(("127.0.0.1", sip_node.port), timeout=3) as conn:
        port = conn.getsockname()[1]
        message = invite("busy", port, branch="z9hG4bKtcp", call_id="tcp@test").replace(
            "SIP/2.0/UDP", "SIP/2.0/TCP"
        )
        conn.sendall(message.encode())
        data = b""
        while b"486" not in data:
            data += conn.recv(65535)
    assert data.startswith(b"SIP/2.0 486 Busy Here\r\n")


@pytest.mark.parametrize("family", [socket.AF_INET6])
def test_ipv6_node_answers(node_env, tmp_path, family):
    import sys

    from tests.sipcore.runtime.support import SipNode, free_udp_tcp_port
    from tests.support.processes import ManagedProcess, wait_for

    port = free_udp_tcp_port()
    process = ManagedProcess(
        "sipserver6",
        [
            sys.executable,
            "manage.py",
            "sipserver",
            "--listen",
            f"udp:[::1]:{port},tcp:[::1]:{port}",
            "--metrics",
            "off",
        ],
        node_env,
        tmp_path,
    )
    try:
        wait_for(lambda: "listening on" in process.output() or not process.alive(), timeout=30, what="listen")
        node = SipNode(process, port, 0)

        def datagrams(local):
            yield invite("busy", local, branch="z9hG4bKv6", call_id="v6@test").replace("127.0.0.1", "[::1]")

        got = exchange(node, datagrams, family=family, host="::1")
        assert finals(got) == ["SIP/2.0 486 Busy Here"]
    finally:
        process.stop()


def test_tcp_idle_connections_are_closed_and_connections_are_limited(node_env, tmp_path):
    from tests.sipcore.runtime.support import start_node

    node = start_node(node_env, tmp_path, "--tcp-idle-timeout", "1", "--tcp-max-connections", "2")
    try:
        first = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        second = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        third = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        assert third.recv(1) == b""  # over the limit: closed at once
        started = time.monotonic()
        assert first.recv(1) == b""  # idle: closed by the sweep
        assert 0.9 <= time.monotonic() - started < 4.0
        assert second.recv(1) == b""
        for sock in (first, second, third):
            sock.close()
        assert node.metric("sip_dropped_total", reason="too_many_connections") == 1
    finally:
        node.process.stop()


def test_an_ack_its_transaction_cannot_take_is_dropped_not_an_internal_error(sip_node):
    # An ACK with the branch of an INVITE still ringing (Proceeding takes no ACK, §17.2.1).
    before = sip_node.metric("sip_dropped_total", reason="invalid_transition")

    def datagrams(port):
        message = invite("noanswer", port, branch="z9hG4bKearlyack", call_id="early-ack@test")
        yield message
        yield message.replace("INVITE sip", "ACK sip", 1).replace("CSeq: 1 INVITE", "CSeq: 1 ACK")

    got = exchange(sip_node, datagrams, expect=1)
    assert got[0].startswith("SIP/2.0 180 Ringing")
    time.sleep(0.2)
    assert sip_node.metric("sip_dropped_total", reason="invalid_transition") == before + 1
    assert sip_node.metric("sip_dropped_total", reason="internal_error") == 0


def test_noanswer_rings_until_timer_c_then_408(sip_node):
    def datagrams(port):
        yield invite("noanswer", port, branch="z9hG4bKtimerc", call_id="timer-c@test")

    started = time.monotonic()
    got = exchange(sip_node, datagrams, expect=2, timeout=6)
    assert finals(got) == ["SIP/2.0 408 Request Timeout"]  # --timer-c 3
    assert 2.9 <= time.monotonic() - started < 6


def test_thousands_of_skippable_bad_messages_on_one_tcp_connection_then_a_good_one(sip_node):
    # Each bad message has a readable Content-Length, so the stream skips it and goes on (framing kept).
    bad = b"INVITE sip:x@127.0.0.1 SIP/7.0\r\nContent-Length: 0\r\n\r\n" * 5000
    with socket.create_connection(("127.0.0.1", sip_node.port), timeout=5) as conn:
        port = conn.getsockname()[1]
        good = invite("busy", port, branch="z9hG4bKaftermany", call_id="after-many@test").replace(
            "SIP/2.0/UDP", "SIP/2.0/TCP"
        )
        conn.sendall(bad + good.encode())
        data = b""
        while b"after-many@test" not in data:
            chunk = conn.recv(65535)
            assert chunk, "the node closed the connection"
            data += chunk
    assert b"SIP/2.0 486 Busy Here" in data
    assert sip_node.metric("sip_dropped_total", reason="internal_error") == 0


def test_beyond_max_transactions_new_requests_get_503_with_retry_after(node_env, tmp_path):
    from tests.sipcore.runtime.support import start_node

    node = start_node(node_env, tmp_path, "--max-transactions", "3", "--metrics", "off")
    try:

        def datagrams(port):
            for index in range(4):  # each rings (noanswer) and stays
                yield invite("noanswer", port, branch=f"z9hG4bKcap{index}", call_id=f"cap{index}@test")

        got = exchange(node, datagrams, expect=4, timeout=2)
        assert sorted(r.split("\r\n", 1)[0] for r in got) == ["SIP/2.0 180 Ringing"] * 3 + [
            "SIP/2.0 503 Service Unavailable"
        ]
        assert any("\r\nRetry-After: 5\r\n" in r for r in got)
    finally:
        node.process.stop()


def test_via_gets_received_and_the_rport_value_and_the_answer_goes_to_the_source(sip_node):
    # RFC 3261 §18.2.1 and RFC 3581 §4: the client wrote an address it is not at, and asked for rport.
    def datagrams(port):
        yield invite("busy", port, branch="z9hG4bKrport", call_id="rport@test").replace(
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKrport",
            "Via: SIP/2.0/UDP 192.0.2.9:5099;branch=z9hG4bKrport;rport",
        )

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(3)
        port = sock.getsockname()[1]
        for datagram in datagrams(port):
            sock.sendto(datagram.encode(), ("127.0.0.1", sip_node.port))
        answer = sock.recv(65535).decode()
    assert answer.startswith("SIP/2.0 486")
    assert (
        f"\r\nVia: SIP/2.0/UDP 192.0.2.9:5099;branch=z9hG4bKrport;received=127.0.0.1;rport={port}\r\n"
        in answer
    )


def test_tcp_answer_after_the_connection_closed_goes_to_a_new_connection_to_sent_by(sip_node):
    # RFC 3261 §18.2.2: the 408 of Timer C (3 s) finds the request's connection closed and opens one
    # to the Via's sent-by, where this test listens.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(8)
        sent_by = listener.getsockname()[1]
        message = invite("noanswer", sent_by, branch="z9hG4bKreconnect", call_id="reconnect@test")
        with socket.create_connection(("127.0.0.1", sip_node.port), timeout=5) as conn:
            conn.sendall(message.replace("SIP/2.0/UDP", "SIP/2.0/TCP").encode())
            data = b""
            while b"180 Ringing" not in data:
                data += conn.recv(65535)
        accepted, _ = listener.accept()
        with accepted:
            accepted.settimeout(5)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += accepted.recv(65535)
    assert answer.startswith(b"SIP/2.0 408 Request Timeout\r\n")
    assert b"reconnect@test" in answer


def test_stateless_answers_to_a_retransmitted_request_carry_the_same_to_tag(sip_node):
    # §8.2.6.2: the same tag on every response to a request, though no transaction remembers it.
    refused = invite("alice", 0, branch="z9hG4bKsametag", call_id="same-tag@test").replace(
        "Content-Length: 0", "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    )
    unparseable = refused.replace("SIP/2.0\r\n", "SIP/7.0\r\n", 1)  # 505

    def datagrams(port):
        for message in (refused, refused, unparseable, unparseable):
            yield message.replace("127.0.0.1:0", f"127.0.0.1:{port}")

    got = exchange(sip_node, datagrams, expect=4)
    assert [r.split("\r\n", 1)[0] for r in got] == ["SIP/2.0 415 Unsupported Media Type"] * 2 + [
        "SIP/2.0 505 Version Not Supported"
    ] * 2
    tags = [next(line for line in r.split("\r\n") if line.startswith("To:")) for r in got]
    assert tags[0] == tags[1]
    assert tags[2] == tags[3]
    assert ";tag=" in tags[0]
    assert ";tag=" in tags[2]
