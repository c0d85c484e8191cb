"""Durable transactions with real `manage.py sipserver` processes and the real Redis:
a graceful restart carries on what the node released, and a node sharing the port
adopts what a killed (kill -9) node stored, on the peer's retransmission."""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import socket
import threading
import time

from sipcore.sip import TransactionKey, parse_message
from sipcore.store import audit_key, shard_of, split_record, tx_key
from tests.sipcore.runtime.support import free_udp_tcp_port, start_node
from tests.sipcore.runtime.test_sipp import invite
from tests.support.processes import wait_for


def receive_all(sock: socket.socket, seconds: float) -> list[tuple[float, bytes]]:
    """Everything that arrives within ``seconds``, with arrival times."""
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append((time.monotonic(), sock.recv(65535)))
        except TimeoutError:
            break
    return got


def to_tag(data: bytes) -> str | None:
    return parse_message(data).to_tag


def stored_key(request: str) -> str:
    return str(TransactionKey.for_server(parse_message(request.encode())))


class Receiver(threading.Thread):
    """Records every datagram with its arrival time while the test starts processes."""

    def __init__(self, sock: socket.socket):
        super().__init__(daemon=True)
        self.sock = sock
        self.got: list[tuple[float, bytes]] = []
        self.running = True

    def run(self) -> None:
        self.sock.settimeout(0.05)
        while self.running:
            try:
                self.got.append((time.monotonic(), self.sock.recv(65535)))
            except TimeoutError:
                continue

    def stop(self) -> list[tuple[float, bytes]]:
        self.running = False
        self.join(2)
        return self.got


# T1 100 ms, T2 500 ms: Timer G at 0.1, 0.3, 0.7 s then every 0.5 s; Timer H at 6.4 s.
RESTART_TIMERS = ("--t1", "0.1", "--t2", "0.5", "--t4", "0.5")
RESTART_G_SCHEDULE = 3 + 11


def test_sigterm_releases_and_a_restart_with_the_same_id_carries_on(node_env, tmp_path, redis_client):
    port = free_udp_tcp_port()
    node = start_node(node_env, tmp_path, *RESTART_TIMERS, port=port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        request = invite("busy", sock.getsockname()[1], branch=f"z9hG4bK{secrets.token_hex(6)}")
        receiver = Receiver(sock)
        receiver.start()
        sock.sendto(request.encode(), ("127.0.0.1", port))
        wait_for(lambda: receiver.got, timeout=2, what="the 486")
        stopped_at = time.monotonic()
        os.killpg(node.process.pid, signal.SIGTERM)
        assert node.process.process.wait(5) == 0
        assert time.monotonic() - stopped_at < 1.5, "with persistence the node releases, it does not wait"
        record, _ = split_record(redis_client.get(tx_key(stored_key(request))))
        assert record["r"] == "*", record  # released to anyone
        assert record["o"] == f"test-{port}", record
        sent_while_down = len(receiver.got)

        restarted = start_node(node_env, tmp_path, *RESTART_TIMERS, port=port)  # the same id: test-<port>
        try:
            wait_for(
                lambda: not redis_client.exists(tx_key(stored_key(request))),
                timeout=10,
                what="the transaction to time out (Timer H) and leave Redis",
            )
            assert restarted.metric("sip_adopted_total") == 1
        finally:
            restarted.process.stop()
        answers = receiver.stop()
    assert all(data.startswith(b"SIP/2.0 486") for _, data in answers)
    assert {to_tag(data) for _, data in answers} == {to_tag(answers[0][1])}, "one response, retransmitted"
    assert len(answers) > sent_while_down, "the restarted node retransmitted it"
    assert len(answers) <= 1 + RESTART_G_SCHEDULE, [round(t - stopped_at, 3) for t, _ in answers]
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(answers)]
    assert min(gaps) > 0.05, f"a retransmission sent twice: gaps {gaps}"  # T1 = 100 ms apart at least


def test_a_node_sharing_the_port_adopts_what_a_killed_node_stored(node_env, tmp_path, redis_client):
    port = free_udp_tcp_port()
    timers = ("--t1", "0.5", "--t2", "4", "--t4", "0.5", "--reuse-port")  # Timer H: 32 s
    first = start_node(node_env, tmp_path, *timers, "--node-id", f"crash-a-{port}", port=port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        peer = sock.getsockname()[1]
        request = invite("busy", peer, branch=f"z9hG4bK{secrets.token_hex(6)}")
        sock.sendto(request.encode(), ("127.0.0.1", port))
        [(_, answer)] = receive_all(sock, 0.3)
        assert answer.startswith(b"SIP/2.0 486")
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.process.wait(5)
        second = start_node(node_env, tmp_path, *timers, "--node-id", f"crash-b-{port}", port=port)
        try:
            time.sleep(3.2)  # the killed node's lease (3 s) runs out
            sock.sendto(request.encode(), ("127.0.0.1", port))  # the peer retransmits its INVITE
            adopted = receive_all(sock, 0.4)
            assert adopted, "the surviving node answered the retransmission"
            assert all(data == answer or to_tag(data) == to_tag(answer) for _, data in adopted)
            assert second.metric("sip_adopted_total") == 1
            ack = request.replace("INVITE sip:", "ACK sip:", 1).replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
            ack = ack.replace("To: <sip:busy@127.0.0.1>", f"To: <sip:busy@127.0.0.1>;tag={to_tag(answer)}")
            sock.sendto(ack.encode(), ("127.0.0.1", port))
            key = stored_key(request)
            wait_for(  # ACK -> Confirmed -> Timer I (T4) -> Terminated: removed from Redis
                lambda: not redis_client.exists(tx_key(key)), timeout=5, what="the transaction to end"
            )
        finally:
            second.process.stop()
    entries = [
        {name.decode(): value.decode() for name, value in fields.items() if name != b"snap"}
        for _, fields in redis_client.xrange(audit_key(shard_of(key)))
        if fields[b"k"] == key.encode()
    ]
    owners = {}
    for entry in entries:
        owners.setdefault(entry["e"], set()).add(entry["o"])
    assert owners == {"1": {f"crash-a-{port}"}, "2": {f"crash-b-{port}"}}, entries  # one owner per epoch
    assert entries[-1]["end"] == "1"
    assert entries[-1]["st"] == "Terminated"
    versions = [int(entry["v"]) for entry in entries]
    assert versions == sorted(set(versions)), "every stored version once, in order"
