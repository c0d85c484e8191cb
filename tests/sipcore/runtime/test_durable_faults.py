"""Durable transactions under faults, with real `manage.py sipserver` processes, real SIPp
and real Redis (DESIGN.md, "Persistence and ownership"; issue 10's fault tests):

* a node of two sharing one UDP port (SO_REUSEPORT) is killed (SIGKILL) under lossy
  load: the survivor adopts, after the dead node's lease, what the peers retransmit;
  SIPp sees no failed call; the audit stream shows one owner per epoch;
* the node's Redis (a private redis-server, never the shared one) is stopped for 5 s
  under load: calls go on from memory, the node says it is not durable, and when Redis
  is back (empty) every live transaction is stored again;
* the audit end to end: every version a run streamed is recorded exactly once in
  TransactionSnapshotRecord, and a re-delivery records nothing new.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import secrets
import select
import signal
import socket
import time
from collections import defaultdict

import pytest
import redis
from django.core.management import call_command

from sipcore.sip import TransactionKey, TransactionSnapshot, parse_message
from sipcore.store import (
    AUDIT_FIELDS,
    DEFAULT_SHARDS,
    audit_key,
    lease_key,
    shard_of,
    split_record,
    tx_key,
    unpack_snapshot,
)
from tests.sipcore.runtime.support import SippResult, free_udp_tcp_port, run_sipp, scenario, start_node
from tests.sipcore.runtime.test_sipp import invite
from tests.sipcore.store.conftest import delete_store_keys
from tests.support.processes import wait_for


@pytest.fixture
def clean_store(redis_client: redis.Redis) -> redis.Redis:
    """This run's Redis db with no store keys ({sip:*}) left from earlier runs (nothing flushed)."""
    delete_store_keys(redis_client)
    return redis_client


def stored_key(request: str) -> str:
    return str(TransactionKey.for_server(parse_message(request.encode())))


def to_tag(data: bytes) -> str | None:
    return parse_message(data).to_tag


def ack_of(request: str, answer: bytes, user: str = "busy") -> str:
    """The ACK of a non-2xx final response: the INVITE's branch and the response's To tag (RFC 3261 §17.1.1.3)."""
    ack = request.replace("INVITE sip:", "ACK sip:", 1).replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
    return ack.replace(f"To: <sip:{user}@127.0.0.1>", f"To: <sip:{user}@127.0.0.1>;tag={to_tag(answer)}")


def audit_entries(client: redis.Redis) -> dict[str, list[dict[str, str]]]:
    """Every entry of every shard's audit stream, by transaction key, in stream order (no snapshot)."""
    by_key: dict[str, list[dict[str, str]]] = defaultdict(list)
    for shard in range(DEFAULT_SHARDS):
        for _, fields in client.xrange(audit_key(shard)):
            entry = {name.decode(): value.decode() for name, value in fields.items() if name != b"snap"}
            assert set(entry) | {"snap"} == set(AUDIT_FIELDS), entry
            by_key[entry["k"]].append(entry)
    return dict(by_key)


def assert_one_owner_per_epoch(entries: dict[str, list[dict[str, str]]]) -> dict[str, dict[int, str]]:
    """Each transaction: one owner per epoch, epochs never go back, every version once and
    in order. Returns each transaction's owner by epoch."""
    owners: dict[str, dict[int, str]] = {}
    for key, versions in entries.items():
        by_epoch: dict[int, set[str]] = defaultdict(set)
        for entry in versions:
            by_epoch[int(entry["e"])].add(entry["o"])
        assert all(len(nodes) == 1 for nodes in by_epoch.values()), (key, versions)
        epochs = [int(entry["e"]) for entry in versions]
        assert epochs == sorted(epochs), (key, versions)
        numbers = [int(entry["v"]) for entry in versions]
        assert numbers == sorted(set(numbers)), f"{key}: versions repeated or out of order: {versions}"
        owners[key] = {epoch: nodes.pop() for epoch, nodes in by_epoch.items()}
    return owners


def stored_header(client: redis.Redis, key: str) -> dict[str, str] | None:
    value = client.get(tx_key(key))
    return None if value is None else split_record(value)[0]


def stored_state(client: redis.Redis, key: str) -> str:
    value = client.get(tx_key(key))
    assert value is not None, f"{key} is not stored"
    return TransactionSnapshot.from_json(unpack_snapshot(split_record(value)[1])).state


def receive(sock: socket.socket, seconds: float) -> list[bytes]:
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(65535))
        except TimeoutError:
            break
    return got


def drain(sock: socket.socket) -> list[bytes]:
    """What already waits in the socket's buffer."""
    sock.setblocking(False)
    got = []
    try:
        while True:
            got.append(sock.recv(65535))
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return got


def assert_no_failed_call(result: SippResult, calls: int) -> None:
    assert result.stat("FailedCall") == 0, result.failures()
    assert result.stat("SuccessfulCall") == calls, result.failures()
    assert result.returncode == 0, result.output[-3000:]


# --- 1. kill -9 of one node of two sharing the port, under 20% loss -----------------------------------

# T1 500 ms (Timer G 0.5, 1.5, 3.5, 7.5 s...; Timer H 32 s), T4 500 ms (Timer I).
CRASH_TIMERS = ("--t1", "0.5", "--t2", "4", "--t4", "0.5", "--reuse-port", "--dialplan-refresh", "3600")
CRASH_CALLS, CRASH_RATE = 600, 50
# SIPp doubles an INVITE's retransmission interval from 100 ms without a cap: with 8 of them
# the last goes 25.5 s after the INVITE, so a call the dead node held still has two or three
# tries after its lease (3 s) runs out, each lost 20% of the time.
SIPP_LOSSY = ("-lost", "20", "-max_invite_retrans", "8", "-max_non_invite_retrans", "10")


@pytest.mark.slow
def test_kill_9_of_one_node_sharing_the_port_the_survivor_adopts_and_no_call_fails(
    node_env, tmp_path, clean_store
):
    port = free_udp_tcp_port()
    a_id, b_id = f"crash-a-{port}", f"crash-b-{port}"
    a = start_node(node_env, tmp_path, *CRASH_TIMERS, "--node-id", a_id, port=port)
    b = start_node(node_env, tmp_path, *CRASH_TIMERS, "--node-id", b_id, port=port)
    sockets: list[socket.socket] = []
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        # -t un: a socket (a source port) per call, so the kernel spreads the calls over both nodes
        # (-max_socket: SIPp refuses -t un when its default exceeds the open-files limit).
        sipp = pool.submit(
            run_sipp, f"127.0.0.1:{port}", tmp_path, "-sf", scenario("invite_busy"), "-s", "busy",
            "-t", "un", "-max_socket", "1000", "-r", str(CRASH_RATE), "-m", str(CRASH_CALLS), *SIPP_LOSSY, timeout=120,
        )  # fmt: skip
        wait_for(lambda: a.metric("sip_messages_in_total") > 50, timeout=15, what="SIPp's calls to reach A")
        # Peers of our own that leave their 486 un-ACKed: some land on A (the kernel picks by
        # source port), so A surely dies holding transactions a peer will retransmit for.
        held_by_a: dict[str, tuple[socket.socket, str, bytes]] = {}
        for n in range(40):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
            request = invite("busy", sock.getsockname()[1], f"z9hG4bK{secrets.token_hex(6)}", f"raw-{n}@test")
            sock.sendto(request.encode(), ("127.0.0.1", port))
            [answer, *_] = receive(sock, 0.3) or [b""]
            assert answer.startswith(b"SIP/2.0 486"), answer
            header = stored_header(clean_store, stored_key(request))
            assert header is not None, "stored before it was sent"
            if header["o"] == a_id:
                held_by_a[stored_key(request)] = (sock, request, answer)
            else:
                sock.sendto(ack_of(request, answer).encode(), ("127.0.0.1", port))
            if len(held_by_a) >= 3:
                break
        assert held_by_a, "no peer of ours landed on A"

        os.killpg(a.process.pid, signal.SIGKILL)
        a.process.process.wait(5)
        killed = time.monotonic()
        # When A's lease runs out (every shard's was renewed in one pipeline): from then on only.
        lease_left = min(clean_store.pttl(lease_key(shard_of(key), a_id)) for key in held_by_a) / 1000
        assert lease_left > 0, "A's lease was still alive when it died"
        for sock, _, _ in held_by_a.values():
            drain(sock)  # what A sent before it died

        # The peers retransmit their INVITEs (every 0.5 s) to the port B now has alone: B leaves
        # them alone while A's lease lives, then adopts each and answers with A's response.
        answered: dict[str, float] = {}  # arrival of the first answer, seconds after the kill
        owner_of = {sock: key for key, (sock, _, _) in held_by_a.items()}
        while len(answered) < len(held_by_a) and time.monotonic() - killed < 10:
            for key, (sock, request, _) in held_by_a.items():
                if key not in answered:
                    sock.sendto(request.encode(), ("127.0.0.1", port))
            round_ends = time.monotonic() + 0.5
            while (left := round_ends - time.monotonic()) > 0:
                readable, _, _ = select.select(list(owner_of), [], [], left)
                for sock in readable:
                    key = owner_of[sock]
                    _, request, answer = held_by_a[key]
                    got = drain(sock)
                    answered.setdefault(key, time.monotonic() - killed)
                    assert all(to_tag(data) == to_tag(answer) for data in got), "A's own 486, not a new one"
                    sock.sendto(ack_of(request, answer).encode(), ("127.0.0.1", port))
        assert set(answered) == set(held_by_a), f"answered {answered} of {list(held_by_a)}"
        # Nothing A held was answered while its lease lived (20 ms: reading the clock around PTTL).
        assert min(answered.values()) > lease_left - 0.02, (lease_left, answered)
        assert b.metric("sip_adopted_total") >= len(held_by_a)

        result = sipp.result()
        assert_no_failed_call(result, CRASH_CALLS)
        assert result.stat("Retransmissions") > 0  # the loss was real
        for key in held_by_a:  # ACK -> Confirmed -> Timer I (T4): gone from Redis
            wait_for(lambda key=key: stored_header(clean_store, key) is None, timeout=5, what=f"{key} to end")
    finally:
        pool.shutdown(wait=True)
        for sock in sockets:
            sock.close()
        b.process.stop()  # releases what it still holds (Timer H of un-ACKed 486s: 32 s)
        a.process.stop()

    entries = audit_entries(clean_store)
    owners = assert_one_owner_per_epoch(entries)
    for key in held_by_a:
        assert owners[key] == {1: a_id, 2: b_id}, owners[key]
        assert (entries[key][-1]["st"], entries[key][-1]["end"]) == ("Terminated", "1"), entries[key]
    adopted = {key: by_epoch for key, by_epoch in owners.items() if len(by_epoch) > 1}
    # Only B adopted, and only from the dead A (never from itself while alive), once each.
    assert all(by_epoch == {1: a_id, 2: b_id} for by_epoch in adopted.values()), adopted
    assert {by_epoch[1] for by_epoch in owners.values()} == {a_id, b_id}, "both nodes served calls"
    after_expiry = sorted(round(t - lease_left, 3) for t in answered.values())
    print(
        f"lease ran out {lease_left:.2f} s after the kill; answered {after_expiry} s later; adopted {len(adopted)}"
    )


# --- 2. Redis stopped for 5 s under load --------------------------------------------------------------

OUTAGE_TIMERS = (
    "--t1",
    "0.05",
    "--t2",
    "0.5",
    "--t4",
    "0.5",
    "--timer-c",
    "120",
    "--dialplan-refresh",
    "3600",
)
OUTAGE_CALLS, OUTAGE_RATE = 750, 50  # 15 s of calls; Redis is away from ~4 s to ~9 s


def ringing_invite(sock: socket.socket, port: int, n: int) -> str:
    """An INVITE to `noanswer` (ringing until Timer C): a live INVITE server transaction in Proceeding."""
    request = invite("noanswer", sock.getsockname()[1], f"z9hG4bK{secrets.token_hex(6)}", f"ring-{n}@test")
    sock.sendto(request.encode(), ("127.0.0.1", port))
    replies = wait_for(lambda: [r for r in receive(sock, 0.2) if r.startswith(b"SIP/2.0 180")], timeout=5,
                       what="180 Ringing")  # fmt: skip
    assert replies
    return stored_key(request)


@pytest.mark.slow
def test_redis_stopped_for_5_s_under_load_calls_go_on_and_everything_live_is_stored_again(
    node_env, tmp_path, private_redis
):
    node_id = f"outage-{secrets.token_hex(3)}"
    env = {**node_env, "REDIS_URL": private_redis.url}  # a Redis of the test's own: it is stopped below
    node = start_node(env, tmp_path, *OUTAGE_TIMERS, "--node-id", node_id)
    store = redis.Redis.from_url(private_redis.url)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        assert node.metric("sip_node_durable") == 1
        sipp = pool.submit(
            run_sipp, node.address, tmp_path, "-sf", scenario("invite_busy"), "-s", "busy",
            "-r", str(OUTAGE_RATE), "-m", str(OUTAGE_CALLS), timeout=90,
        )  # fmt: skip
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            wait_for(lambda: node.metric("sip_messages_in_total", method="ACK") > 100, timeout=15,
                     what="SIPp's calls")  # fmt: skip
            before = [ringing_invite(sock, node.port, n) for n in range(3)]
            assert all(stored_state(store, key) == "Proceeding" for key in before)

            private_redis.stop()  # SIGTERM; started again below, empty (no persistence)
            stopped = time.monotonic()
            wait_for(
                lambda: node.metric("sip_node_durable") == 0, timeout=3, what="the node to say not durable"
            )
            acks_at_stop = node.metric("sip_messages_in_total", method="ACK")
            during = [ringing_invite(sock, node.port, n) for n in range(3, 6)]
            time.sleep(max(0.0, 5.0 - (time.monotonic() - stopped)))
            assert sipp.running(), "the outage fell inside the load"
            served = node.metric("sip_messages_in_total", method="ACK") - acks_at_stop
            assert served > OUTAGE_RATE * 2, f"only {served} calls completed while Redis was away"
            private_redis.start()

            wait_for(
                lambda: node.metric("sip_node_durable") == 1, timeout=5, what="the node to be durable again"
            )
            live = before + during
            for key in live:  # Redis came back empty: the node stored them again, as its own, epoch 1
                header = stored_header(store, key)
                assert header is not None, f"{key} was not stored again"
                assert (header["o"], header["e"], header["r"]) == (node_id, "1", "")
                assert stored_state(store, key) == "Proceeding"

            result = sipp.result()
            assert_no_failed_call(result, OUTAGE_CALLS)
            # Once SIPp's transactions have ended (Timer I), the ringing INVITEs are all that live,
            # in the node and in Redis alike.
            wait_for(lambda: node.metric("sip_transactions") == len(live), timeout=10, what="SIPp's to end")
            stored = {key.decode() for key in store.scan_iter(match="{sip:*}:tx:*", count=1000)}
            assert stored == {tx_key(key) for key in live}
            assert node.metric("sip_dropped_total", reason="internal_error") == 0
    finally:
        pool.shutdown(wait=True)
        store.close()
        node.process.stop()
    print(f"SIPp: {result.stat('SuccessfulCall')} calls, {result.stat('Retransmissions')} retransmissions")


# --- 3. The audit, end to end ------------------------------------------------------------------------

AUDIT_CALLS = 200
AUDIT_TIMERS = ("--t1", "0.05", "--t2", "0.5", "--t4", "0.5", "--dialplan-refresh", "3600")


def raw_audit(client: redis.Redis) -> list[tuple[int, dict[bytes, bytes]]]:
    return [
        (shard, fields) for shard in range(DEFAULT_SHARDS) for _, fields in client.xrange(audit_key(shard))
    ]


def ingest_once() -> str:
    out = io.StringIO()
    call_command("ingest_sip_audit", "--once", stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_every_streamed_version_is_recorded_exactly_once_and_a_redelivery_adds_nothing(
    node_env, tmp_path, clean_store
):
    from sipcore.audit import rebuild_snapshot
    from sipcore.models import SipTransaction, TransactionOutcome, TransactionSnapshotRecord

    node = start_node(node_env, tmp_path, *AUDIT_TIMERS)
    try:
        result = run_sipp(node.address, tmp_path, "-sf", scenario("invite_busy"), "-s", "busy",
                          "-m", str(AUDIT_CALLS), "-r", "100")  # fmt: skip
        assert_no_failed_call(result, AUDIT_CALLS)
        # ACK -> Confirmed -> Timer I (T4 0.5 s) -> Terminated: the last version of each.
        wait_for(lambda: node.metric("sip_transactions") == 0, timeout=10, what="every transaction to end")
    finally:
        node.process.stop()

    streamed = raw_audit(clean_store)
    entries = audit_entries(clean_store)
    assert len(entries) == AUDIT_CALLS  # one INVITE server transaction per call (its ACK included)
    assert_one_owner_per_epoch(entries)
    expected = {(e["k"], int(e["v"])): (int(e["e"]), e["o"], e["st"]) for es in entries.values() for e in es}
    assert len(expected) == len(streamed)

    report = ingest_once()
    assert f"{len(streamed)} versions recorded, 0 already there, 0 dead-lettered" in report, report
    assert all(clean_store.xlen(audit_key(shard)) == 0 for shard in range(DEFAULT_SHARDS))
    records = TransactionSnapshotRecord.objects.filter(transaction__key__in=entries)
    recorded = list(records.values_list("transaction__key", "version", "epoch", "owner_id", "state"))
    assert len(recorded) == len(expected)  # no version twice
    assert {(k, v): (e, o, st) for k, v, e, o, st in recorded} == expected
    rows = SipTransaction.objects.filter(key__in=entries)
    assert rows.count() == AUDIT_CALLS
    ends = {(row.state, row.outcome, row.final_status, row.terminated_at is not None) for row in rows}
    assert ends == {("Terminated", TransactionOutcome.COMPLETED, 486, True)}
    # Any recorded version rebuilds, from the database alone, the snapshot the node streamed.
    for _, fields in streamed[:: len(streamed) // 40]:
        key, version = fields[b"k"].decode(), int(fields[b"v"])
        assert rebuild_snapshot(key, version) == TransactionSnapshot.from_json(fields[b"snap"]), (
            key,
            version,
        )
    latest = {key: max(int(e["v"]) for e in versions) for key, versions in entries.items()}
    assert {row.key: row.version for row in rows} == latest

    # A re-delivery (an ingester that died between its commit and its XACK): every entry again.
    pipe = clean_store.pipeline(transaction=False)
    for shard, fields in streamed:
        pipe.xadd(audit_key(shard), fields)
    pipe.execute()
    report = ingest_once()
    assert f"0 versions recorded, {len(streamed)} already there, 0 dead-lettered" in report, report
    assert records.count() == len(expected)
    assert all(clean_store.xlen(audit_key(shard)) == 0 for shard in range(DEFAULT_SHARDS))
