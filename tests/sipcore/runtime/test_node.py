"""The sipserver process: graceful stop, heartbeat, several processes on one port."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from sipcore.nodes import NODES_INDEX, live_nodes
from tests.sipcore.runtime.conftest import FAST_TIMERS
from tests.sipcore.runtime.support import free_udp_tcp_port, run_sipp, scenario, start_node
from tests.sipcore.runtime.test_sipp import invite
from tests.support.processes import wait_for


def options(port: int, branch: str) -> bytes:
    return (
        f"OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:ping@127.0.0.1>\r\n"
        f"Call-ID: {branch}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_sigterm_stops_taking_new_requests_finishes_live_ones_and_exits_0(node_env, tmp_path, redis_client):
    # Persistence off: the node itself lets its live transactions finish (with persistence
    # on it releases them at once instead: test_durable.py).
    node = start_node(node_env, tmp_path, *FAST_TIMERS[:-2], "--grace", "2", "--persistence", "off")
    try:
        _sigterm_scenario(node, redis_client)
    finally:
        node.process.stop()


def _sigterm_scenario(node, redis_client):
    key = f"sip:node:test-{node.port}"
    wait_for(lambda: redis_client.get(key), timeout=10, what="the node's heartbeat")
    assert json.loads(redis_client.get(key))["pid"] == node.process.pid
    assert f"test-{node.port}" in [beat["node_id"] for beat in live_nodes(redis_client)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        port = sock.getsockname()[1]
        sock.sendto(invite("busy", port).encode(), ("127.0.0.1", node.port))
        assert sock.recv(65535).startswith(b"SIP/2.0 486")  # and no ACK: Timer G runs for 3.2 s
        os.killpg(node.process.pid, signal.SIGTERM)
        time.sleep(0.2)
        sock.sendto(options(port, "z9hG4bKafterstop"), ("127.0.0.1", node.port))
        got = []
        try:
            while True:
                got.append(sock.recv(65535))
        except TimeoutError:
            pass
    assert got, "the live INVITE transaction went on retransmitting its 486 after SIGTERM"
    assert all(answer.startswith(b"SIP/2.0 486") for answer in got), got  # the new OPTIONS: unanswered
    assert node.process.process.wait(10) == 0
    assert redis_client.get(key) is None  # the heartbeat is withdrawn
    assert redis_client.zscore(NODES_INDEX, f"test-{node.port}") is None  # and its index entry
    assert "sip_node_stopped" in node.process.output()


def test_processes_share_one_port_with_reuseport_and_stop_together(node_env, tmp_path, redis_client):
    port = free_udp_tcp_port()
    node = start_node(node_env, tmp_path, "--processes", "2", *FAST_TIMERS, port=port, processes=2)
    try:
        keys = [f"sip:node:test-{port}-{index}" for index in (0, 1)]
        wait_for(
            lambda: all(redis_client.get(key) for key in keys), timeout=15, what="both nodes' heartbeats"
        )
        # One socket per call (-t un): the kernel spreads the calls' source ports over both processes.
        result = run_sipp(node.address, tmp_path, "-sf", scenario("options"), "-m", "200", "-r", "400",
                          "-t", "un", "-max_socket", "1000")  # fmt: skip
        assert result.stat("SuccessfulCall") == 200, result.stats
        answered = [node_metrics(node.metrics_port + index) for index in (0, 1)]
        assert all(count > 0 for count in answered), answered
        os.killpg(node.process.pid, signal.SIGTERM)
        assert node.process.process.wait(15) == 0
        assert all(redis_client.get(key) is None for key in keys)
    finally:
        node.process.stop()  # no-op once it exited; else its group is stopped


def node_metrics(port: int) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith('sip_messages_in_total{method="OPTIONS"')
    )


@pytest.mark.slow  # about 13 s: the heartbeat beats every 5 s
def test_redis_down_the_node_keeps_serving_and_beats_again_when_it_is_back(node_env, tmp_path, private_redis):
    import redis

    env = {**node_env, "REDIS_URL": private_redis.url}
    node = start_node(env, tmp_path, *FAST_TIMERS)
    client = redis.Redis.from_url(private_redis.url, socket_connect_timeout=1)
    key = f"sip:node:test-{node.port}"
    try:
        wait_for(lambda: client.get(key), timeout=10, what="the first heartbeat")
        private_redis.stop()
        result = run_sipp(node.address, tmp_path, "-sn", "uac", "-m", "50", "-r", "100", "-s", "alice")
        assert result.stat("SuccessfulCall") == 50, result.failures()
        wait_for(lambda: "heartbeat failed" in node.process.output(), timeout=10, what="a failed heartbeat")
        assert node.process.alive()
        private_redis.start()
        client.delete(key)
        wait_for(lambda: client.get(key), timeout=10, what="the heartbeat after Redis came back")
    finally:
        node.process.stop()
