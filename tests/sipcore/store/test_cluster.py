"""The store against a real 3-master Redis Cluster the test starts: every script
touches one slot ({sip:<shard>} hash tags), pipelines split by slot, scripts load
on every master."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

from sipcore.store import RedisTransactionStore, shard_of, tx_key
from tests.sipcore.store.conftest import UDP_B, ack_for, busy_invite
from tests.support.redis_cluster import RedisCluster3

pytestmark = pytest.mark.slow  # starts three redis-servers and forms a cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with RedisCluster3(Path(tmp_path_factory.mktemp("cluster"))) as running:
        yield running


def test_commit_fencing_and_adoption_across_shards_on_a_cluster(cluster, wall):
    txs = [busy_invite(n, wall) for n in range(100, 160)]

    async def scenario():
        def client() -> RedisCluster:
            return RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in cluster.startup_nodes],
                socket_timeout=2,
            )

        clients = [client(), client(), client()]
        a, b, c = (
            RedisTransactionStore(cl, name)
            for cl, name in zip(clients, ("node-a", "node-b", "node-c"), strict=True)
        )
        try:
            for store in (a, b, c):
                assert await store.renew_lease()  # one pipeline over 16 shards, split by slot
            assert await a.commit(txs, wall) == set()  # one batch over every shard
            assert a.pipelines == 1
            per_master = []
            for host, port in cluster.startup_nodes:
                node = clients[0].get_node(host=host, port=port)
                per_master.append(await clients[0].execute_command("DBSIZE", target_nodes=node))
            stored = [await a.load(str(tx.key)) for tx in txs]
            # Fencing: node-b adopts what node-a released; node-a's next write is refused.
            moved = txs[:10]
            assert await a.hand_over(str(moved[0].key), "node-b", wall)
            assert await c.adopt(str(moved[0].key), UDP_B, wall) is None
            adopted = [await b.adopt(str(moved[0].key), UDP_B, wall)]
            assert await a.release(moved[1:], wall) == set()
            adopted += await asyncio.gather(*(b.adopt(str(tx.key), UDP_B, wall) for tx in moved[1:]))
            for tx in moved:
                tx.receive(ack_for(tx), wall + 0.1)
            refused = await a.commit(moved, wall + 0.1)
            for tx in adopted:
                tx.receive(ack_for(tx), wall + 0.2)
            assert await b.commit(adopted, wall + 0.2) == set()
            owned = sorted(await b.owned_by("node-b", wall))
            after = [await b.load(str(tx.key)) for tx in moved]
            return per_master, stored, refused, adopted, owned, after
        finally:
            for cl in clients:
                await cl.aclose()

    per_master, stored, refused, adopted, owned, after = asyncio.run(scenario())
    assert all(count > 0 for count in per_master), per_master  # the shards spread over the 3 masters
    assert len({shard_of(str(tx.key)) for tx in txs}) == 16
    assert all(s is not None and (s.owner, s.epoch) == ("node-a", 1) for s in stored)
    assert refused == set(txs[:10])
    assert all(tx is not None for tx in adopted)
    assert owned == sorted(str(tx.key) for tx in txs[:10])
    assert [(s.owner, s.epoch, s.snapshot.state) for s in after] == [("node-b", 2, "Confirmed")] * 10
    assert tx_key(str(txs[0].key)).startswith("{sip:")
