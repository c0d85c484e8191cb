"""SIP node liveness: each node keeps a heartbeat key alive in Redis.

A node whose key has expired is dead; the transactions it owned are orphans
that the Celery timer sweep serves and a live node may adopt.
"""

from __future__ import annotations

import json
import time

import redis

HEARTBEAT_PREFIX = "sip:node:"
HEARTBEAT_TTL = 15  # seconds; a node beats every TTL/3


def heartbeat_key(node_id: str) -> str:
    return f"{HEARTBEAT_PREFIX}{node_id}"


def beat(client: redis.Redis, node_id: str, info: dict[str, object], ttl: int = HEARTBEAT_TTL) -> None:
    """Record that ``node_id`` is alive for the next ``ttl`` seconds."""
    payload = {"node_id": node_id, "at": time.time(), **info}
    client.set(heartbeat_key(node_id), json.dumps(payload), ex=ttl)


def live_nodes(client: redis.Redis) -> list[dict[str, object]]:
    """Every node whose heartbeat has not expired, by node id."""
    keys = sorted(client.scan_iter(match=f"{HEARTBEAT_PREFIX}*", count=500))
    values = client.mget(keys) if keys else []
    nodes = []
    for key, raw in zip(keys, values, strict=True):
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            nodes.append(json.loads(raw))
        except ValueError:
            nodes.append({"node_id": key.decode()[len(HEARTBEAT_PREFIX) :], "error": "unreadable heartbeat"})
    return nodes
