"""SIP node liveness: each node keeps a heartbeat key alive in Redis.

A node whose key has expired is dead; the transactions it owned are orphans
that the Celery timer sweep serves and a live node may adopt.

The per-node key (with its TTL) is the truth. Beside it, ``NODES_INDEX`` is a
sorted set of node ids scored by when their heartbeat expires, so readers find
the nodes in O(nodes) without a SCAN of the whole keyspace. The index is only a
directory: a reader lists the members whose key still exists and drops the
ones whose expiry has passed (one single-key command: a member re-beaten in the
meantime has a later score and stays). Both writes of a beat go in one MULTI,
and each command touches one key, so the layout is Redis Cluster ready.
"""

from __future__ import annotations

import json
import time

import redis

HEARTBEAT_PREFIX = "sip:node:"
NODES_INDEX = "sip:nodes"
HEARTBEAT_TTL = 15  # seconds; a node beats every second (sipcore.node.HEARTBEAT_INTERVAL)
INDEX_TTL = 24 * 3600  # the index itself goes when no node has beaten for this long


def heartbeat_key(node_id: str) -> str:
    return f"{HEARTBEAT_PREFIX}{node_id}"


def beat(client: redis.Redis, node_id: str, info: dict[str, object], ttl: int = HEARTBEAT_TTL) -> None:
    """Record that ``node_id`` is alive for the next ``ttl`` seconds."""
    now = time.time()
    payload = {"node_id": node_id, "at": now, **info}
    pipe = client.pipeline(transaction=True)
    pipe.set(heartbeat_key(node_id), json.dumps(payload), ex=ttl)
    pipe.zadd(NODES_INDEX, {node_id: now + ttl})
    pipe.expire(NODES_INDEX, INDEX_TTL)
    pipe.execute()


def forget(client: redis.Redis, node_id: str) -> None:
    """A node that stops on purpose: gone at once, not after its TTL."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(heartbeat_key(node_id))
    pipe.zrem(NODES_INDEX, node_id)
    pipe.execute()


def live_nodes(client: redis.Redis) -> list[dict[str, object]]:
    """Every node whose heartbeat has not expired, by node id (two round trips, no SCAN)."""
    pipe = client.pipeline(transaction=False)
    pipe.zremrangebyscore(NODES_INDEX, "-inf", f"({time.time()}")
    pipe.zrange(NODES_INDEX, 0, -1)
    _, members = pipe.execute()
    ids = sorted(member.decode(errors="replace") for member in members)
    if not ids:
        return []
    values = client.pipeline(transaction=False)
    for node_id in ids:
        values.get(heartbeat_key(node_id))
    nodes: list[dict[str, object]] = []
    for node_id, raw in zip(ids, values.execute(), strict=True):
        if raw is None:  # expired (or forgotten) since its last beat: dead
            continue
        try:
            nodes.append(json.loads(raw))
        except ValueError:
            nodes.append({"node_id": node_id, "error": "unreadable heartbeat"})
    return nodes
