"""Redis down: a private redis-server of the test's own, killed (SIGKILL) mid-test and
started again, empty, on the same port. The shared Redis is never touched."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from callops.devstack import PrivateRedis
from sipcore.store import RedisTransactionStore, StoreUnavailableError, audit_key, shard_of
from tests.sipcore.store.conftest import UDP_B, ack_for, busy_invite


@pytest.fixture
def killable_redis(tmp_path: Path):
    server = PrivateRedis(tmp_path / "redis")  # --save '' --appendonly no: a restart comes back empty
    server.start()
    yield server
    server.stop()


def kill(server: PrivateRedis) -> None:
    assert server.process is not None
    server.process.kill()
    server.process.wait()


def test_redis_down_commit_does_not_block_and_resync_stores_everything_again(killable_redis, wall):
    before = [busy_invite(n, wall) for n in range(3)]
    during = [busy_invite(n, wall) for n in range(3, 6)]

    async def scenario():
        client = aioredis.Redis.from_url(killable_redis.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        store = RedisTransactionStore(client, "node-a")
        try:
            assert await store.renew_lease()
            assert await store.commit(before, wall) == set()
            kill(killable_redis)
            # The first commit after the crash fails within the store's timeout, refusing nothing.
            before[0].receive(ack_for(before[0]), wall + 0.1)
            assert await asyncio.wait_for(store.commit([before[0]], wall + 0.1), 5.0) == set()
            assert store.durable is False
            # While down, a commit resolves at once (already done when it returns): calls go on.
            pending = store.commit(during, wall + 0.2)
            assert pending.done()
            assert pending.result() == set()
            before[1].handle_timer(wall + 40.0)  # Timer H while down: it ends
            assert before[1].terminated
            assert store.commit([before[1]], wall + 40.0).done()
            assert await store.renew_lease() is False  # still down
            with pytest.raises(StoreUnavailableError):
                await store.release([before[2]], wall)
            killable_redis.start()  # back, empty
            assert await store.renew_lease() is True  # notices, and stores everything again
            assert store.durable is True
            await store.flush()
            loaded = {str(tx.key): await store.load(str(tx.key)) for tx in before + during}
            return loaded, store.epoch_of(str(before[0].key))
        finally:
            await client.aclose()

    loaded, epoch = asyncio.run(scenario())
    assert loaded.pop(str(before[1].key)) is None  # it ended while Redis was away
    assert {key: (s.owner, s.epoch) for key, s in loaded.items()} == dict.fromkeys(loaded, ("node-a", 1))
    assert loaded[str(before[0].key)].snapshot.state == "Confirmed"  # the latest version
    assert loaded[str(before[0].key)].version == before[0].version
    assert epoch == 1
    sync = redis.Redis.from_url(killable_redis.url)
    ended = [
        fields
        for shard in {shard_of(str(before[1].key))}
        for _, fields in sync.xrange(audit_key(shard))
        if fields[b"k"] == str(before[1].key).encode()
    ]
    assert [f[b"end"] for f in ended] == [b"1"]  # its final audit entry made it
    sync.close()


def test_a_restart_between_two_renewals_is_noticed_and_everything_stored_again(killable_redis, wall):
    """No commit failed (Redis came back before the next one), yet it lost every key:
    the lease renewal finds its lease gone before its TTL and resyncs."""
    txs = [busy_invite(n, wall) for n in range(4)]

    async def scenario():
        client = aioredis.Redis.from_url(killable_redis.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        store = RedisTransactionStore(client, "node-a")
        try:
            assert await store.renew_lease()
            assert await store.commit(txs, wall) == set()
            kill(killable_redis)
            killable_redis.start()
            assert await store.renew_lease()
            await store.flush()
            # A fenced write of a key Redis lost would be refused: it is not, it was resynced.
            txs[0].receive(ack_for(txs[0]), wall + 0.1)
            refused = await store.commit([txs[0]], wall + 0.1)
            return refused, [await store.load(str(tx.key)) for tx in txs]
        finally:
            await client.aclose()

    refused, loaded = asyncio.run(scenario())
    assert refused == set()
    assert all(s is not None and s.epoch == 1 for s in loaded)
    assert loaded[0].snapshot.state == "Confirmed"


def test_what_another_node_took_while_redis_was_away_is_reported_lost(killable_redis, wall):
    """Redis comes back empty; before node-a resyncs, node-b (which a retransmission
    reached) creates one of node-a's transactions anew. Node-a's resync is refused
    for it, and on_lost tells the node to drop it; the other is stored again."""
    mine, disputed = busy_invite(70, wall), busy_invite(71, wall)
    lost: list[set] = []

    async def scenario():
        clients = [
            aioredis.Redis.from_url(killable_redis.url, socket_timeout=0.5, socket_connect_timeout=0.5)
            for _ in range(2)
        ]
        a = RedisTransactionStore(clients[0], "node-a", on_lost=lost.append)
        b = RedisTransactionStore(clients[1], "node-b")
        try:
            assert await a.renew_lease()
            assert await a.commit([mine, disputed], wall) == set()
            kill(killable_redis)
            mine.receive(ack_for(mine), wall + 0.1)
            await a.commit([mine], wall + 0.1)
            assert not a.durable
            killable_redis.start()
            await b.renew_lease()
            again = busy_invite(71, wall + 0.2, UDP_B)
            assert await b.commit([again], wall + 0.2) == set()
            assert await a.renew_lease()
            await a.flush()
            return await a.load(str(mine.key)), await a.load(str(disputed.key)), a.epoch_of(str(disputed.key))
        finally:
            for client in clients:
                await client.aclose()

    stored_mine, stored_disputed, epoch = asyncio.run(scenario())
    assert lost == [{disputed}]
    assert epoch is None  # node-a let it go
    assert (stored_mine.owner, stored_mine.snapshot.state) == ("node-a", "Confirmed")
    assert (stored_disputed.owner, stored_disputed.epoch) == ("node-b", 1)


def test_a_pipeline_cut_off_by_the_timeout_leaves_no_late_replies_for_the_next(killable_redis, wall):
    """Redis stalls (CLIENT PAUSE) past the store's timeout while a commit's replies are
    due: the store gives up on that connection, so when Redis answers late those
    replies are not read as the next pipeline's. Scripts flushed meanwhile (as after a
    restart) are loaded again."""
    first = [busy_invite(n, wall) for n in range(3)]
    second = [busy_invite(n, wall) for n in range(3, 8)]

    async def scenario():
        client = aioredis.Redis.from_url(killable_redis.url, socket_timeout=2, socket_connect_timeout=2)
        store = RedisTransactionStore(client, "node-a", timeout=0.3)
        sync = redis.Redis.from_url(killable_redis.url)
        try:
            assert await store.renew_lease()
            assert await store.commit(first[:1], wall) == set()
            sync.execute_command("CLIENT", "PAUSE", 800, "WRITE")  # EVALSHA waits, the store does not
            assert await store.commit(first[1:], wall) == set()
            assert store.durable is False
            await asyncio.sleep(1.0)  # the pause ends; the late replies reach a closed connection
            sync.script_flush()
            assert await store.renew_lease() is True  # resync: everything stored again
            assert await store.commit(second, wall) == set()
            for tx in first:
                tx.receive(ack_for(tx), wall + 0.1)
            assert await store.commit(first, wall + 0.1) == set()
            return [await store.load(str(tx.key)) for tx in first + second]
        finally:
            sync.close()
            await client.aclose()

    loaded = asyncio.run(scenario())
    states = [(s.snapshot.state, s.version) for s in loaded]
    expected = [("Confirmed", tx.version) for tx in first] + [("Completed", tx.version) for tx in second]
    assert states == expected
