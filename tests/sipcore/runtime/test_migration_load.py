"""Migration under load (issue 10): 1,000 ringing INVITEs drained from one live node to
another while SIPp, losing 10% of its messages, retransmits. Real `manage.py sipserver`
processes sharing one UDP port (SO_REUSEPORT), real SIPp, real Redis.

SIPp sends from one socket, so the kernel hands every datagram of it to one node (the
owner of every call). That node is drained mid-run (`manage.py sipmigrate --drain`): it
hands each transaction over (stores, releases to the target, forgets) and the target
adopts them. Every CANCEL, ACK and retransmission still reaches the drained node, which
relays it (sipcore.relay) to the new owner; the new owner answers each call's CANCEL with
its 487. So: no call fails, each call gets its 487 from one node only, the drained node
sends no 487, and the store holds nothing once the transactions end.
"""

from __future__ import annotations

import concurrent.futures
import io
import re
import secrets
import socket
import time

import pytest
import redis
from django.core.management import call_command

from sipcore.store import DEFAULT_SHARDS, live_key
from tests.sipcore.runtime.support import SipNode, free_udp_tcp_port, run_sipp, scenario, start_node
from tests.sipcore.runtime.test_durable_faults import (
    assert_no_failed_call,
    assert_one_owner_per_epoch,
    audit_entries,
)
from tests.sipcore.runtime.test_migration import ack_of, cancel_of
from tests.sipcore.runtime.test_sipp import invite
from tests.sipcore.store.conftest import delete_store_keys
from tests.support.processes import wait_for

# T1 250 ms: Timer G (the 487 again while its ACK is lost) at 0.25, 0.75, 1.75, 3.75 s...;
# Timer J of each CANCEL's transaction (64*T1) 16 s; Timer I (T4) 0.5 s. Timer C far off.
TIMERS = (
    "--t1", "0.25", "--t2", "4", "--t4", "0.5", "--timer-c", "120", "--reuse-port",
    "--dialplan-refresh", "3600",
)  # fmt: skip
CALLS, RATE = 1000, 200  # all placed within 5 s; each rings 15 s (the scenario's pause) before its CANCEL
# -trace_err: what SIPp found unexpected goes to <scenario>_<pid>_errors.log in its run directory.
SIPP_LOSSY = ("-lost", "10", "-max_invite_retrans", "8", "-max_non_invite_retrans", "10", "-trace_err")
TX_PATTERN = "{sip:*}:tx:*"


@pytest.fixture
def clean_store(redis_client: redis.Redis) -> redis.Redis:
    """This run's Redis db with no store keys ({sip:*}) left from earlier runs (nothing flushed)."""
    delete_store_keys(redis_client)
    return redis_client


def live(node: SipNode) -> int:
    return int(node.metric("sip_transactions"))


def first_487s(node: SipNode) -> int:
    """487s this node sent for INVITEs, not counting its retransmissions (Timer G)."""
    sent = node.metric("sip_messages_out_total", method="INVITE", status="487")
    again = node.metric("sip_retransmissions_total", method="INVITE", status="487")
    return int(sent - again)


def store_down_lines(node: SipNode) -> list[str]:
    return [line for line in node.process.output().splitlines() if '"event": "sip_store_down"' in line]


@pytest.mark.slow
def test_draining_a_node_of_1000_ringing_invites_under_lossy_load_loses_none_and_answers_each_once(
    node_env, tmp_path, clean_store
):
    port = free_udp_tcp_port()
    ids = (f"load-a-{port}", f"load-b-{port}")
    nodes = {
        node_id: start_node(node_env, tmp_path, *TIMERS, "--node-id", node_id, port=port) for node_id in ids
    }
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        time.sleep(1.5)  # both heartbeats carry their relay addresses
        sipp = pool.submit(
            run_sipp, f"127.0.0.1:{port}", tmp_path, "-sf", scenario("ring_then_cancel"), "-s", "noanswer",
            "-r", str(RATE), "-l", str(CALLS), "-m", str(CALLS), *SIPP_LOSSY, timeout=80,
        )  # fmt: skip
        # One SIPp socket: one node gets (and owns) every call. All of them ring before a CANCEL
        # is sent (15 s after each 180).
        wait_for(
            lambda: sum(live(node) for node in nodes.values()) >= CALLS, timeout=12, what="every call to ring"
        )
        owner = max(ids, key=lambda node_id: live(nodes[node_id]))
        target = next(node_id for node_id in ids if node_id != owner)
        drained, adopter = nodes[owner], nodes[target]
        assert (live(drained), live(adopter)) == (CALLS, 0), "the kernel sent SIPp's datagrams to one node"
        assert first_487s(drained) == 0
        assert sipp.running()

        out = io.StringIO()
        drain_started = time.monotonic()
        call_command("sipmigrate", "--drain", owner, "--to", target, stdout=out)
        drain_took = time.monotonic() - drain_started
        answered_by_owner = drained.metric("sip_messages_out_total", method="INVITE", status="487")
        found = re.search(r"(\d+) transactions moved to (\S+)", out.getvalue())
        assert found, out.getvalue()
        moved = int(found.group(1))
        assert (moved, found.group(2)) == (CALLS, target), out.getvalue()
        assert "not moved" not in out.getvalue(), out.getvalue()
        assert live(drained) == 0, "the drained node acts for nothing any more"
        assert live(adopter) == CALLS
        cancels = sum(node.metric("sip_messages_in_total", method="CANCEL") for node in nodes.values())
        assert cancels == 0, "the drain ended before the first CANCEL (15 s of ringing)"

        result = sipp.result()
        went_down = [line for node in nodes.values() for line in store_down_lines(node)]
        assert not went_down, (
            f"a store took Redis for down; {result.stat('FailedCall')} failed calls: {went_down}"
        )
        assert_no_failed_call(result, CALLS)
        assert result.stat("Retransmissions") > 0, "the loss was real"

        # Each call's 487 came from one node, once (the rest are its Timer G retransmissions), and
        # that node is the adopter: the drained node sent none, neither before nor after the drain.
        assert (
            drained.metric("sip_messages_out_total", method="INVITE", status="487") == answered_by_owner == 0
        )
        assert first_487s(adopter) == CALLS
        assert first_487s(drained) + first_487s(adopter) == CALLS
        # What SIPp kept sending to the drained node (every CANCEL at least, and the ACKs) was relayed.
        relayed = drained.metric("sip_relayed_total")
        assert relayed >= CALLS, relayed
        assert adopter.metric("sip_messages_in_total", method="CANCEL") >= CALLS
        assert adopter.metric("sip_adopted_total") == moved
        assert drained.metric("sip_adopted_total") == 0

        # ACK -> Confirmed -> Timer I ends each INVITE; Timer J (16 s) each CANCEL: then nothing is
        # left in the store (records, and the index of live ones).
        wait_for(lambda: live(adopter) == 0, timeout=30, what="every transaction to end")
        wait_for(
            lambda: not any(clean_store.scan_iter(match=TX_PATTERN, count=1000)),
            timeout=5,
            what="the store to be empty",
        )
        assert all(clean_store.zcard(live_key(shard)) == 0 for shard in range(DEFAULT_SHARDS))
    finally:
        pool.shutdown(wait=True)
        for node in nodes.values():
            node.process.stop()

    # The audit: one owner per epoch; each INVITE was the drained node's (epoch 1), then the
    # adopter's (epoch 2), never both at once; each CANCEL only the adopter's.
    owners = assert_one_owner_per_epoch(audit_entries(clean_store))
    invites = {key: by_epoch for key, by_epoch in owners.items() if key.endswith("|INVITE")}
    cancels = {key: by_epoch for key, by_epoch in owners.items() if key.endswith("|CANCEL")}
    assert len(invites) == CALLS
    assert all(by_epoch == {1: owner, 2: target} for by_epoch in invites.values()), invites
    assert len(cancels) == CALLS
    assert all(by_epoch == {1: target} for by_epoch in cancels.values()), cancels
    print(
        f"\n{CALLS} calls; {moved} moved from {owner} to {target} in {drain_took:.2f} s; "
        f"{int(relayed)} messages relayed; SIPp retransmissions {result.stat('Retransmissions')}"
    )


def test_sipmigrate_waits_for_a_node_slower_than_the_redis_socket_timeout(redis_client):
    """A live owner (heartbeat and lease) that does not answer its control list within --timeout:
    the command says so, it does not crash. Here the owner never answers; a busy one (the drain
    above: its target adopts 1,000 transactions, the owner says nothing meanwhile) answers after
    more than 2 s. The command's client has a 2 s socket timeout: its BLPOP must block less."""
    from sipcore.control import control_key
    from sipcore.nodes import beat, forget
    from sipcore.store import lease_key

    source, target = f"silent-{secrets.token_hex(3)}", f"idle-{secrets.token_hex(3)}"
    for node_id in (source, target):
        beat(redis_client, node_id, {"durable": True, "persistence": True, "transactions": 0})
    redis_client.set(lease_key(0, source), "incarnation", ex=30)
    err = io.StringIO()
    try:
        call_command("sipmigrate", "--drain", source, "--to", target, "--timeout", "4", stderr=err)
    finally:
        for node_id in (source, target):
            forget(redis_client, node_id)
        redis_client.delete(lease_key(0, source), control_key(source))
    assert f"{source}: {source} did not answer within 4 s" in err.getvalue()


BURST = 300  # of each: well over the store's pool of connections (redis-py's default, 100)


def test_a_burst_of_messages_for_transactions_the_node_does_not_hold_keeps_its_store_durable(
    node_env, tmp_path
):
    """What a drained node gets in a CANCEL burst: messages for transactions it does not hold, one
    store lookup each (ACKs, and CANCELs of INVITEs stored nowhere: 481). Sent at once, they must
    not exhaust the store's connections, which the store would take for Redis being down (it was,
    before adoption lookups were bounded: the node then answered handed-over CANCELs itself)."""
    node = start_node(node_env, tmp_path, *TIMERS)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            peer = sock.getsockname()[1]
            for n in range(BURST):
                request = invite("noanswer", peer, f"z9hG4bK{secrets.token_hex(6)}", f"burst-{n}@test")
                sock.sendto(cancel_of(request).encode(), ("127.0.0.1", node.port))
                sock.sendto(ack_of(request, secrets.token_hex(4)).encode(), ("127.0.0.1", node.port))

            def answered() -> tuple[float, float] | None:
                samples = node.metrics()
                cancels = samples.get('sip_messages_in_total{method="CANCEL",status=""}', 0.0)
                refusals = samples.get('sip_messages_out_total{method="CANCEL",status="481"}', 0.0)
                return (cancels, refusals) if cancels and cancels == refusals else None

            # a 481 for each CANCEL that arrived (nothing is stored for it anywhere)
            arrived, _ = wait_for(answered, timeout=10, what="a 481 for each CANCEL")
            time.sleep(0.5)
            assert answered() == (arrived, arrived), "every CANCEL of the burst had arrived"
        assert arrived > 150, f"only {arrived} CANCELs of the burst reached the node"
        assert node.metric("sip_messages_in_total", method="ACK") > 150
        assert store_down_lines(node) == [], "the node took a burst of lookups for Redis being down"
        assert node.metric("sip_node_durable") == 1
    finally:
        node.process.stop()
