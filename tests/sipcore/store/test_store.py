"""RedisTransactionStore against the real Redis: commit, fencing, adoption, release,
hand-over, inspection, size. Scripted ``now`` values start at the wall clock (key
TTLs are computed from them); nothing asserts how fast anything ran."""

from __future__ import annotations

import asyncio
import zlib

import orjson
import pytest

from sipcore.sip import TransactionSnapshot, TransactionState, restore_transaction
from sipcore.store import (
    AUDIT_FIELDS,
    CorruptRecordError,
    RedisTransactionStore,
    audit_key,
    lease_key,
    pack_snapshot,
    shard_of,
    timers_key,
    tx_key,
    unpack_snapshot,
)
from tests.sipcore.store.conftest import UDP_B, ack_for, busy_invite, options_tx


def audit_entries(sync_redis, txkey: str) -> list[dict[str, bytes]]:
    entries = sync_redis.xrange(audit_key(shard_of(txkey)))
    return [
        {name.decode(): value for name, value in fields.items()}
        for _, fields in entries
        if fields[b"k"] == txkey.encode()
    ]


def stream_lengths(sync_redis) -> int:
    return sum(sync_redis.xlen(audit_key(shard)) for shard in range(16))


# --- commit ----------------------------------------------------------------------


def test_commit_stores_snapshot_owner_epoch_timer_and_audit(run, sync_redis, wall):
    tx = busy_invite(1, wall)
    txkey = str(tx.key)

    async def scenario(stores):
        store = stores("node-a")
        refused = await store.commit([tx], wall)
        return refused, await store.load(txkey), store.epoch_of(txkey)

    refused, stored, epoch = run(scenario)
    assert refused == set()
    assert epoch == 1
    assert stored is not None
    assert (stored.owner, stored.epoch, stored.version, stored.released) == ("node-a", 1, tx.version, "")
    assert stored.snapshot == tx.snapshot()
    assert stored.next_deadline == tx.next_deadline() == wall + 0.5  # Timer G = T1 (§17.2.1)
    assert sync_redis.zscore(timers_key(shard_of(txkey)), txkey) == pytest.approx(wall + 0.5)
    # The key outlives its last deadline (Timer H, 64*T1) by the grace, no more.
    ttl = sync_redis.pttl(tx_key(txkey)) / 1000
    assert 32.0 < ttl <= 32.0 + 5.0
    [entry] = audit_entries(sync_redis, txkey)
    assert set(entry) == set(AUDIT_FIELDS)
    assert entry["v"] == str(tx.version).encode()
    assert (entry["e"], entry["o"], entry["kind"], entry["st"], entry["end"]) == (
        b"1",
        b"node-a",
        b"invite_server",
        b"Completed",
        b"0",
    )
    assert float(entry["at"]) == wall
    assert entry["ev"] == str(getattr(tx, "last_event", "") or "").encode()
    # The audit carries the plain snapshot JSON: the ingester needs nothing of the store.
    assert TransactionSnapshot.from_json(entry["snap"]) == tx.snapshot()


def test_one_pipeline_for_a_batch_and_unchanged_transactions_are_not_written_again(run, sync_redis, wall):
    txs = [busy_invite(n, wall) for n in range(50)]

    async def scenario(stores):
        store = stores("node-a")
        assert await store.commit(txs, wall) == set()
        first = (store.pipelines, store.writes)
        assert await store.commit(txs, wall) == set()  # nothing changed: nothing to send
        return first, (store.pipelines, store.writes)

    first, second = run(scenario)
    assert first == (1, 50)
    assert second == first
    assert stream_lengths(sync_redis) == 50


def test_commits_of_consecutive_turns_keep_their_order(run, sync_redis, wall):
    """Turns commit without waiting for each other; the writes still land in order
    (the create before the next version), so nothing is refused."""
    tx = busy_invite(7, wall)

    async def scenario(stores):
        store = stores("node-a")
        first = store.commit([tx], wall)
        tx.receive(ack_for(tx), wall + 0.1)  # Completed -> Confirmed, next turn
        second = store.commit([tx], wall + 0.1)
        results = await first, await second
        return *results, await store.load(str(tx.key)), store.pipelines

    first, second, stored, pipelines = run(scenario)
    assert first == second == set()
    assert pipelines == 1  # queued while none was in flight: one round trip for both
    assert stored.snapshot.state == "Confirmed"
    assert stored.version == tx.version
    assert [e["st"] for e in audit_entries(sync_redis, str(tx.key))] == [b"Completed", b"Confirmed"]


def test_terminated_transaction_is_deleted_after_its_final_audit_entry(run, sync_redis, wall):
    tx = busy_invite(2, wall)
    txkey = str(tx.key)

    async def scenario(stores):
        store = stores("node-a")
        await store.commit([tx], wall)
        tx.receive(ack_for(tx), wall + 0.2)
        await store.commit([tx], wall + 0.2)
        tx.handle_timer(wall + 0.2 + 5.0)  # Timer I = T4 on UDP: Confirmed -> Terminated
        assert tx.terminated
        refused = await store.commit([tx], wall + 5.2)
        return (
            refused,
            await store.load(txkey),
            store.epoch_of(txkey),
            await store.live_keys(shard_of(txkey), wall + 5.2),
        )

    refused, stored, epoch, live = run(scenario)
    assert refused == set()
    assert stored is None
    assert epoch is None
    assert txkey not in live
    assert not sync_redis.exists(tx_key(txkey))
    assert sync_redis.zscore(timers_key(shard_of(txkey)), txkey) is None
    entries = audit_entries(sync_redis, txkey)
    assert [(e["st"], e["end"]) for e in entries] == [
        (b"Completed", b"0"),
        (b"Confirmed", b"0"),
        (b"Terminated", b"1"),
    ]
    assert TransactionSnapshot.from_json(entries[-1]["snap"]).state == "Terminated"


def test_transaction_created_and_ended_in_one_turn_leaves_only_its_audit(run, sync_redis, wall):
    """A reliable non-INVITE transaction ends as it answers (Timer J = 0, §17.2.2)."""
    from sipcore.sip import make_response

    tx = options_tx(1, wall)
    tx.send_response(make_response(tx.request, 200, to_tag="x"), wall)
    tx.terminate(wall)
    txkey = str(tx.key)

    async def scenario(stores):
        store = stores("node-a")
        return await store.commit([tx], wall)

    assert run(scenario) == set()
    assert not sync_redis.exists(tx_key(txkey))
    assert [e["end"] for e in audit_entries(sync_redis, txkey)] == [b"1"]


# --- fencing ---------------------------------------------------------------------


def test_write_with_a_stale_epoch_is_refused_and_nothing_of_it_lands(run, sync_redis, wall):
    tx = busy_invite(3, wall)
    txkey = str(tx.key)

    async def scenario(stores):
        a, b = stores("node-a"), stores("node-b")
        await a.commit([tx], wall)  # node-a never renewed a lease: it counts as dead
        adopted = await b.adopt(txkey, UDP_B, wall + 0.1)
        assert adopted is not None
        assert b.epoch_of(txkey) == 2
        before = (stream_lengths(sync_redis), sync_redis.get(tx_key(txkey)))
        tx.receive(ack_for(tx), wall + 0.2)  # node-a goes on behind its fence
        refused = await a.commit([tx], wall + 0.2)
        after = (stream_lengths(sync_redis), sync_redis.get(tx_key(txkey)))
        return refused, before, after, a.epoch_of(txkey), a.refused_total, await b.load(txkey)

    refused, before, after, a_epoch, refused_total, stored = run(scenario)
    assert refused == {tx}
    assert refused_total == 1
    assert a_epoch is None  # node-a no longer holds it
    assert after == before  # neither the hash nor any audit stream changed
    assert (stored.owner, stored.epoch, stored.snapshot.state) == ("node-b", 2, "Completed")


def test_a_refusal_in_a_batch_leaves_the_others_of_its_shard_stored(run, sync_redis, wall):
    """One script per shard runs every write of that shard; each is fenced on its own."""
    first = busy_invite(50, wall)
    shard = shard_of(str(first.key))
    same = next(tx for n in range(51, 500) if shard_of(str((tx := busy_invite(n, wall)).key)) == shard)

    async def scenario(stores):
        a, b = stores("node-a"), stores("node-b")
        await a.commit([first, same], wall)
        await b.adopt(str(first.key), UDP_B, wall)
        for tx in (first, same):
            tx.receive(ack_for(tx), wall + 0.1)
        refused = await a.commit([first, same], wall + 0.1)
        return refused, await a.load(str(first.key)), await a.load(str(same.key))

    refused, taken, kept = run(scenario)
    assert refused == {first}
    assert (taken.owner, taken.snapshot.state) == ("node-b", "Completed")
    assert (kept.owner, kept.snapshot.state, kept.version) == ("node-a", "Confirmed", same.version)


def test_a_refused_writer_stays_refused(run, wall):
    """After a refusal the node has forgotten the transaction; writing it again is a
    create, which is refused while the key exists."""
    tx = busy_invite(4, wall)

    async def scenario(stores):
        a, b = stores("node-a"), stores("node-b")
        await a.commit([tx], wall)
        await b.adopt(str(tx.key), UDP_B, wall)
        tx.receive(ack_for(tx), wall + 0.1)
        first = await a.commit([tx], wall + 0.1)
        tx.handle_timer(wall + 10)
        second = await a.commit([tx], wall + 10)
        return first, second

    assert run(scenario) == ({tx}, {tx})


def test_new_transaction_is_refused_when_its_key_is_owned_by_a_live_node(run, wall):
    async def scenario(stores):
        a, b = stores("node-a"), stores("node-b")
        await a.renew_lease()
        mine, theirs = busy_invite(5, wall), busy_invite(5, wall, UDP_B)
        assert await a.commit([mine], wall) == set()
        refused = await b.commit([theirs], wall)
        return refused, theirs, await a.load(str(mine.key))

    refused, theirs, stored = run(scenario)
    assert refused == {theirs}
    assert (stored.owner, stored.epoch) == ("node-a", 1)


# --- adoption ----------------------------------------------------------------------


def test_two_nodes_race_to_adopt_a_released_transaction_1000_times(run, wall):
    tx = busy_invite(6, wall)
    txkey = str(tx.key)

    async def scenario(stores):
        a, b, c = stores("node-a"), stores("node-b"), stores("node-c")
        for store in (a, b, c):
            await store.renew_lease()
            store.start_leases()  # the race outlasts a lease: renew every second, as a node does
        await a.commit([tx], wall)
        assert await a.release([tx], wall) == set()
        winners, epochs = [], []
        for _ in range(1000):
            got_b, got_c = await asyncio.gather(b.adopt(txkey, UDP_B, wall), c.adopt(txkey, UDP_B, wall))
            won = [(store, got) for store, got in ((b, got_b), (c, got_c)) if got is not None]
            assert len(won) == 1, "exactly one adopter wins"
            store, adopted = won[0]
            loser = c if store is b else b
            assert loser.epoch_of(txkey) is None
            winners.append(store.node_id)
            epochs.append(store.epoch_of(txkey))
            assert await store.release([adopted], wall) == set()
        for store in (a, b, c):
            await store.drop_leases()
        return winners, epochs

    winners, epochs = run(scenario)
    assert epochs == list(range(2, 1002))  # +1 per adoption, never reused
    assert set(winners) <= {"node-b", "node-c"}


def test_adopt_refuses_while_the_owner_lives_and_what_does_not_exist(run, wall):
    tx = busy_invite(8, wall)

    async def scenario(stores):
        a, b = stores("node-a"), stores("node-b")
        await a.renew_lease()
        await a.commit([tx], wall)
        return await b.adopt(str(tx.key), UDP_B, wall), await b.adopt("s|nope|x", UDP_B, wall)

    assert run(scenario) == (None, None)


def test_adopt_after_lease_expiry_restores_a_transaction_that_runs_on_by_the_rfc_timers(run, wall):
    """RFC 3261 §17.2.1: after a 486 on UDP, Timer G retransmits at T1, 2T1, 4T1... capped
    at T2, and Timer H ends it at 64*T1. The owner dies at +0.2 s; node-b adopts at
    +1.2 s: G (due at +0.5) fires once then, and the schedule goes on from there."""
    tx = busy_invite(9, wall)
    txkey = str(tx.key)

    async def scenario(stores):
        a = stores("node-a", lease_ttl=0.2)
        b = stores("node-b")
        await a.renew_lease()
        await a.commit([tx], wall)
        assert await b.adopt(txkey, UDP_B, wall + 0.1) is None  # node-a's lease lives
        await asyncio.sleep(0.3)  # node-a "crashes": its lease expires
        adopted = await b.adopt(txkey, UDP_B, wall + 1.2)
        return adopted, b.epoch_of(txkey), await b.commit([adopted], wall + 1.2), await b.load(txkey)

    adopted, epoch, refused, stored = run(scenario)
    assert epoch == 2
    assert refused == set()
    assert (stored.owner, stored.epoch, stored.version) == ("node-b", 2, adopted.version)
    assert adopted.transport == UDP_B  # restored with the adopter's transport facts
    assert adopted.state is TransactionState.COMPLETED
    first = adopted.drain_outgoing()
    assert [out.message.status_code for out in first] == [486]  # the G that fell due, once
    assert first[0].destination == ("127.0.0.1", 5061)
    # G re-armed from the adoption time with the doubled interval (T1 -> 2*T1).
    assert adopted.timers["G"].deadline == pytest.approx(wall + 1.2 + 1.0)
    assert adopted.timers["H"].deadline == pytest.approx(wall + 32.0)
    sent = []
    while (deadline := adopted.next_deadline()) is not None:
        adopted.handle_timer(deadline)
        sent.extend((round(deadline - wall, 6), out.message.status_code) for out in adopted.drain_outgoing())
    expected, at, interval = [], 1.2, 1.0
    while at + interval < 32.0:
        at += interval
        expected.append((round(at, 6), 486))
        interval = min(interval * 2, 4.0)
    assert sent == expected
    assert adopted.terminated  # Timer H, at 64*T1 after the 486


def test_adopt_fires_a_timeout_that_fell_due_once_and_ends_it(run, wall):
    tx = busy_invite(10, wall)
    txkey = str(tx.key)

    async def scenario(stores):
        a, b = stores("node-a"), stores("node-b")
        await a.commit([tx], wall)
        adopted = await b.adopt(txkey, UDP_B, wall + 40.0)  # past Timer H
        refused = await b.commit([adopted], wall + 40.0)
        return adopted, refused, await b.load(txkey)

    adopted, refused, stored = run(scenario)
    assert adopted.terminated
    assert adopted.drain_outgoing() == []  # a timeout that fell due sends nothing
    assert refused == set()
    assert stored is None


def test_a_node_restarting_with_the_same_id_adopts_what_its_crashed_process_left(run, wall):
    tx = busy_invite(11, wall)

    async def scenario(stores):
        old = stores("node-a")
        await old.renew_lease()
        await old.commit([tx], wall)
        new = stores("node-a")  # same id, new incarnation; takes the lease over
        await new.renew_lease()
        other = stores("node-b")
        return await new.adopt(str(tx.key), UDP_B, wall), await other.adopt(str(tx.key), UDP_B, wall)

    mine, theirs = run(scenario)
    assert mine is not None
    assert theirs is None  # the new incarnation holds it and is alive


def test_release_keeps_the_epoch_and_a_restarted_node_adopts_its_released_transactions(run, sync_redis, wall):
    txs = [busy_invite(n, wall) for n in range(20, 25)]

    async def scenario(stores):
        old = stores("node-a")
        await old.renew_lease()
        await old.commit(txs, wall)
        txs[0].receive(ack_for(txs[0]), wall + 0.1)  # a change not yet committed: release stores it
        assert await old.release(txs, wall + 0.1) == set()
        assert old.held() == []
        stored = [await old.load(str(tx.key)) for tx in txs]
        new = stores("node-a")
        await new.renew_lease()
        adopted = [await new.adopt(str(tx.key), None, wall + 0.2) for tx in txs]
        return stored, adopted, [new.epoch_of(str(tx.key)) for tx in txs]

    stored, adopted, epochs = run(scenario)
    assert [(s.released, s.epoch) for s in stored] == [("*", 1)] * 5
    assert stored[0].snapshot.state == "Confirmed"
    assert [a.state.value for a in adopted] == ["Confirmed"] + ["Completed"] * 4
    assert epochs == [2] * 5


def test_hand_over_lets_only_the_target_adopt_while_the_owner_lives(run, wall):
    tx = busy_invite(12, wall)
    txkey = str(tx.key)

    async def scenario(stores):
        a, b, c = stores("node-a"), stores("node-b"), stores("node-c")
        for store in (a, b, c):
            await store.renew_lease()
        await a.commit([tx], wall)
        assert await a.hand_over("s|unknown", "node-b", wall) is False
        assert await a.hand_over(txkey, "node-b", wall)
        stored = await a.load(txkey)
        by_c = await c.adopt(txkey, UDP_B, wall)
        by_b = await b.adopt(txkey, UDP_B, wall)
        tx.receive(ack_for(tx), wall + 0.1)  # the old owner cannot write any more
        refused = await a.commit([tx], wall + 0.1)
        return stored, by_c, by_b, b.epoch_of(txkey), refused

    stored, by_c, by_b, epoch, refused = run(scenario)
    assert (stored.released, stored.epoch) == ("node-b", 1)
    assert by_c is None
    assert by_b is not None
    assert epoch == 2
    assert refused == {tx}


def test_handed_over_transaction_is_anyones_once_the_owner_is_dead(run, wall):
    tx = busy_invite(13, wall)

    async def scenario(stores):
        a, c = stores("node-a"), stores("node-c")
        await a.renew_lease()
        await a.commit([tx], wall)
        await a.hand_over(str(tx.key), "node-b", wall)
        await a.drop_leases()  # node-a stops (or dies) before node-b adopts
        return await c.adopt(str(tx.key), UDP_B, wall)

    assert run(scenario) is not None


def test_resync_refuses_what_another_node_took_meanwhile(run, wall):
    """Resync creates a key Redis lost, but never overwrites another owner's epoch."""
    taken, kept = busy_invite(60, wall), busy_invite(61, wall)

    async def scenario(stores):
        a, b = stores("node-a"), stores("node-b")
        await a.commit([taken, kept], wall)  # node-a renews no lease: it counts as dead
        assert await b.adopt(str(taken.key), UDP_B, wall) is not None
        refused = await a.resync([taken, kept])
        return refused, a.durable, await a.load(str(taken.key)), await a.load(str(kept.key))

    refused, durable, stored_taken, stored_kept = run(scenario)
    assert refused == {taken}
    assert durable
    assert (stored_taken.owner, stored_taken.epoch) == ("node-b", 2)
    assert (stored_kept.owner, stored_kept.epoch) == ("node-a", 1)


# --- leases, inspection --------------------------------------------------------------


def test_lease_is_one_key_per_shard_with_a_short_ttl(run, sync_redis):
    async def scenario(stores):
        store = stores("node-a")
        assert await store.renew_lease()
        return store.incarnation

    incarnation = run(scenario)
    for shard in range(16):
        assert sync_redis.get(lease_key(shard, "node-a")) == incarnation.encode()
        assert 0 < sync_redis.pttl(lease_key(shard, "node-a")) <= 3000


def test_live_keys_and_owned_by(run, wall):
    txs_a = [busy_invite(n, wall) for n in range(30, 40)]
    txs_b = [busy_invite(n, wall) for n in range(40, 45)]

    async def scenario(stores):
        a, b = stores("node-a"), stores("node-b")
        await a.commit(txs_a, wall)
        await b.commit(txs_b, wall)
        live = []
        for shard in range(16):
            live.extend(await a.live_keys(shard, wall))
        return live, await a.owned_by("node-a", wall), await a.owned_by("node-b", wall)

    live, owned_a, owned_b = run(scenario)
    assert sorted(live) == sorted(str(tx.key) for tx in txs_a + txs_b)
    assert sorted(owned_a) == sorted(str(tx.key) for tx in txs_a)
    assert sorted(owned_b) == sorted(str(tx.key) for tx in txs_b)


def test_transactions_spread_over_the_shards(wall):
    shards = {shard_of(str(busy_invite(n, wall).key)) for n in range(200)}
    assert len(shards) == 16
    assert all(
        tx_key(str(busy_invite(n, wall).key)).startswith(
            f"{{sip:{shard_of(str(busy_invite(n, wall).key))}}}:tx:"
        )
        for n in range(5)
    )


# --- lazy re-arm ---------------------------------------------------------------------


def test_a_timer_rearm_alone_is_not_written_and_the_stored_snapshot_behaves_the_same(run, sync_redis, wall):
    tx = busy_invite(14, wall)
    txkey = str(tx.key)

    async def scenario(stores):
        a, b = stores("node-a"), stores("node-b")
        await a.commit([tx], wall)
        tx.handle_timer(wall + 0.5)  # Timer G: retransmit, re-arm at +1.5
        assert [o.message.status_code for o in tx.drain_outgoing()] == [486]
        await a.commit([tx], wall + 0.5)
        stored = await a.load(txkey)
        adopted = await b.adopt(txkey, UDP_B, wall + 0.6)  # node-a "crashed" after the re-arm
        return a.skipped_rearms, stored, adopted

    skipped, stored, adopted = run(scenario)
    assert skipped == 1
    assert stored.version == tx.version - 1  # the version before the re-arm
    assert len(audit_entries(sync_redis, txkey)) == 1
    # Restored from the older snapshot: same state, response and Timer H; its G is due,
    # fires once (one more retransmission the peer absorbs) and re-arms from now.
    assert adopted.state is tx.state
    assert adopted.last_response.to_bytes() == tx.last_response.to_bytes()
    assert adopted.timers["H"] == tx.timers["H"]
    assert [o.message.status_code for o in adopted.drain_outgoing()] == [486]
    assert adopted.timers["G"].interval == tx.timers["G"].interval


def test_state_changes_are_always_written_even_with_lazy_rearm(run, wall):
    tx = busy_invite(15, wall)

    async def scenario(stores):
        a = stores("node-a")
        await a.commit([tx], wall)
        tx.handle_timer(wall + 0.5)
        await a.commit([tx], wall + 0.5)
        tx.receive(ack_for(tx), wall + 0.7)
        await a.commit([tx], wall + 0.7)
        return await a.load(str(tx.key))

    stored = run(scenario)
    assert (stored.snapshot.state, stored.version) == ("Confirmed", tx.version)


def test_lazy_rearm_off_writes_every_version(run, sync_redis, wall):
    tx = busy_invite(16, wall)

    async def scenario(stores):
        a = stores("node-a", lazy_rearm=False)
        await a.commit([tx], wall)
        tx.handle_timer(wall + 0.5)
        await a.commit([tx], wall + 0.5)
        return await a.load(str(tx.key))

    assert run(scenario).version == tx.version
    assert len(audit_entries(sync_redis, str(tx.key))) == 2


# --- size and packing ------------------------------------------------------------------


def test_a_completed_invite_server_transaction_takes_at_most_1kb_in_redis(run, sync_redis, wall):
    tx = busy_invite(17, wall)

    async def scenario(stores):
        await stores("node-a").commit([tx], wall)

    run(scenario)
    usage = sync_redis.memory_usage(tx_key(str(tx.key)), samples=0)
    assert usage <= 1024, usage
    stored = sync_redis.get(tx_key(str(tx.key)))
    header, _, _ = stored.rpartition(b"\n")
    assert header.split(b"\n")[:3] == [b"1", str(tx.version).encode(), b"node-a"]  # e, v, o
    assert len(stored) < len(tx.snapshot().to_json()) / 2  # deflated with the preset dictionary


def test_size_holds_for_addresses_and_tags_the_dictionary_does_not_know(run, sync_redis, wall):
    """The preset dictionary is built from SIPp's messages; other peers' text (IPv6
    hosts, long Call-IDs and tags) must fit too."""
    from sipcore.sip import InviteServerTransaction, TransportInfo, make_response, parse_message

    sdp = (
        "v=0\r\no=- 3912345678 3912345678 IN IP6 2001:db8::8f3a:21\r\ns=call\r\n"
        "c=IN IP6 2001:db8::8f3a:21\r\nt=0 0\r\nm=audio 31472 RTP/AVP 0 8 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    )
    text = (
        "INVITE sip:+34912345678@pbx.example.net;user=phone SIP/2.0\r\n"
        "Via: SIP/2.0/UDP [2001:db8::8f3a:21]:5080;branch=z9hG4bKa8f0c1e2d3b4a5968778;rport\r\n"
        'From: "Técnico 17" <sip:tech17@trunk.example.org>;tag=a73kszlfl28sj3k2\r\n'
        "To: <sip:+34912345678@pbx.example.net;user=phone>\r\n"
        "Call-ID: 4f8a9c2e-1b3d-4e5f-a6b7-c8d9e0f1a2b3@2001:db8::8f3a:21\r\n"
        "CSeq: 314159 INVITE\r\n"
        "Contact: <sip:tech17@[2001:db8::8f3a:21]:5080;transport=udp>\r\n"
        "Max-Forwards: 69\r\n"
        "User-Agent: FieldPhone/4.2.1\r\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp.encode())}\r\n\r\n{sdp}"
    )
    request = parse_message(text.encode())
    info = TransportInfo("UDP", False, ("2001:db8::1", 5060), ("2001:db8::8f3a:21", 5080))
    tx = InviteServerTransaction(request, info, wall)
    tx.send_response(make_response(request, 486, to_tag="4c9e2a7f1b"), wall)

    async def scenario(stores):
        await stores("node-with-a-longer-name-01").commit([tx], wall)

    run(scenario)
    usage = sync_redis.memory_usage(tx_key(str(tx.key)), samples=0)
    assert usage <= 1024, (usage, len(tx.snapshot().to_json()))


def test_pack_round_trips_and_unpack_refuses_what_is_not_ours(wall):
    snap = busy_invite(18, wall).snapshot().to_json()
    assert unpack_snapshot(pack_snapshot(snap)) == snap
    with pytest.raises(CorruptRecordError):
        unpack_snapshot(b"\x02" + pack_snapshot(snap)[1:])
    with pytest.raises(CorruptRecordError):
        unpack_snapshot(pack_snapshot(snap)[:-10])
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    with pytest.raises(CorruptRecordError):  # inflates past the bound: refused, not expanded
        unpack_snapshot(b"\x01" + bomb.compress(b"{" * (4 << 20)) + bomb.flush())


def test_load_names_a_corrupt_record(run, sync_redis, wall):
    tx = busy_invite(19, wall)

    async def scenario(stores):
        store = stores("node-a")
        await store.commit([tx], wall)
        record = sync_redis.get(tx_key(str(tx.key)))
        header = record.split(b"\n", 6)[:6]
        sync_redis.set(tx_key(str(tx.key)), b"\n".join([*header, b"\x01garbage"]))
        with pytest.raises(CorruptRecordError):
            await store.load(str(tx.key))
        sync_redis.set(tx_key(str(tx.key)), b"1\n2\nnode-a")  # header cut short
        with pytest.raises(CorruptRecordError):
            await store.load(str(tx.key))

    run(scenario)


def test_stored_snapshot_restores_with_the_pure_core(run, wall):
    tx = busy_invite(26, wall)

    async def scenario(stores):
        store = stores("node-a")
        await store.commit([tx], wall)
        return await store.load(str(tx.key))

    stored = run(scenario)
    restored = restore_transaction(stored.snapshot)
    assert restored.snapshot() == tx.snapshot()
    assert orjson.loads(stored.snapshot.to_json())["state"] == "Completed"


def test_node_id_is_checked():
    with pytest.raises(ValueError, match="node id"):
        RedisTransactionStore(None, "a{b}")  # type: ignore[arg-type]
