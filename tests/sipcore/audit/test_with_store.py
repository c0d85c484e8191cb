"""End to end with the real store: what RedisTransactionStore appends is what the audit records.

Node A stores an INVITE server transaction version by version, hands it over to
node B mid-way, B adopts it (epoch 2) and carries it to its end. Every stored
version is recorded exactly once, with its owner and epoch, and rebuilds.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from django.conf import settings

from sipcore.audit import ingest_batch, rebuild_snapshot, stream_name
from sipcore.models import SipTransaction, TransactionSnapshotRecord
from sipcore.sip import InviteServerTransaction, make_ack, make_response
from tests.sipcore.audit.support import SHARDS, UDP, invite

pytestmark = pytest.mark.django_db


def _drop_store_keys(client) -> None:
    """The store's keys in the test Redis db (this suite's own database number)."""
    keys = list(client.scan_iter(match="{sip:*", count=1000))
    if keys:
        client.delete(*keys)


async def _run(base: float) -> list:
    from sipcore.store import RedisTransactionStore

    client_a = aioredis.Redis.from_url(settings.REDIS_URL)
    client_b = aioredis.Redis.from_url(settings.REDIS_URL)
    a = RedisTransactionStore(client_a, "node-a", lazy_rearm=False)
    b = RedisTransactionStore(client_b, "node-b", lazy_rearm=False)
    stored = []
    try:
        await a.renew_lease()
        await b.renew_lease()
        request = invite("z9hG4bKe2e", "e2e@atlanta.example.com")
        tx = InviteServerTransaction(request, UDP, base)

        async def commit(store, now):
            assert await store.commit([tx], now) == set()
            stored.append(tx.snapshot())

        await commit(a, base)
        tx.send_response(make_response(request, 180, to_tag="1"), base + 0.1)
        await commit(a, base + 0.1)
        final = make_response(request, 486, to_tag="1")
        tx.send_response(final, base + 0.5)
        await commit(a, base + 0.5)
        assert await a.hand_over(str(tx.key), "node-b", base + 0.6)
        adopted = await b.adopt(str(tx.key), UDP, base + 0.6)
        assert adopted is not None
        tx = adopted
        await commit(b, base + 0.7)
        tx.handle_timer(tx.next_deadline())  # Timer G
        await commit(b, tx.updated_at)
        tx.receive(make_ack(request, final), tx.updated_at + 0.1)
        await commit(b, tx.updated_at)
        tx.handle_timer(tx.next_deadline())  # Timer I
        await commit(b, tx.updated_at)
        await b.flush()
    finally:
        await client_a.aclose()
        await client_b.aclose()
    return stored


def test_every_version_the_store_appends_is_recorded_once(r):
    _drop_store_keys(r)
    try:
        stored = asyncio.run(_run(time.time()))
        total = sum(ingest_batch(r, shard, "e2e", claim_idle_ms=0) for shard in SHARDS)
        key = str(stored[0].key)
        versions = sorted({snap.version: snap for snap in stored}.values(), key=lambda s: s.version)
        assert total == len(versions)
        tx = SipTransaction.objects.get(key=key)
        assert (tx.state, tx.owner_id, tx.epoch, tx.outcome, tx.final_status) == (
            "Terminated", "node-b", 2, "completed", 486,
        )  # fmt: skip
        rows = list(
            TransactionSnapshotRecord.objects.filter(transaction=tx)
            .order_by("version")
            .values_list("version", "owner", "epoch")
        )
        assert [v for v, _, _ in rows] == [snap.version for snap in versions]
        assert {(owner, epoch) for _, owner, epoch in rows} == {("node-a", 1), ("node-b", 2)}
        for snap in versions:
            assert rebuild_snapshot(key, snap.version) == snap
        assert all(r.xlen(stream_name(shard)) == 0 for shard in SHARDS)
    finally:
        _drop_store_keys(r)
