"""Asking a live node to move transactions: migration and drain (DESIGN.md,
"Persistence and ownership").

A node listens on its control list in Redis (``sip:control:<node id>``) for
commands, JSON objects pushed by :func:`migrate` (the service the management
command ``sipmigrate``, and later the API and admin, call):

``{"op": "migrate", "keys": [...] | null, "to": "<node>", "reply": "<list>"}``
    The owner stores each transaction (null: every one it holds), releases it
    to ``to`` only, forgets it, then tells ``to`` to adopt them. While the owner
    lives nobody else may adopt them; at no instant do both act: the owner stops
    (its timers and TU state for it gone) before the release is written, and the
    target acts only after adopting (epoch + 1).
``{"op": "adopt", "keys": [...], "reply": "<list>"}``
    Adopt these (released to this node, or their owner is dead).

Progress and the outcome go to the ``reply`` list: ``{"progress": n, "total": t}``
lines, then ``{"done": true, ...counts}``. A dead owner cannot answer: the
service then asks the target to adopt directly (adoption needs the owner's
lease to have expired).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

    from sipcore.node import Node

log = logging.getLogger("sipcore.node")

CONTROL_PREFIX = "sip:control:"
REPLY_PREFIX = "sip:control:reply:"
REPLY_TTL = 300
PROGRESS_EVERY = 100


def control_key(node_id: str) -> str:
    return f"{CONTROL_PREFIX}{node_id}"


# --- the node's side ---


async def serve(node: Node, client: Any) -> None:
    """Run the node's commands until cancelled (BLPOP with a short timeout)."""
    key = control_key(node.config.node_id)
    while True:
        try:
            popped = await client.blpop([key], timeout=1)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away: keep serving SIP; try again
            log.warning("control channel: %s", exc)
            await asyncio.sleep(1.0)
            continue
        if popped is None:
            continue
        try:
            command = json.loads(popped[1])
            result = await handle(node, client, command)
        except Exception as exc:
            log.exception("control command failed")
            command = command if isinstance(command, dict) else {}
            result = {"done": True, "error": str(exc)[:500]}
        reply = command.get("reply")
        if isinstance(reply, str) and reply.startswith(REPLY_PREFIX):
            await _reply(client, reply, result)


async def _reply(client: Any, reply: str, message: dict[str, object]) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.rpush(reply, json.dumps(message))
    pipe.expire(reply, REPLY_TTL)
    await pipe.execute()


async def handle(node: Node, client: Any, command: dict[str, Any]) -> dict[str, object]:
    op = command.get("op")
    keys = command.get("keys")
    if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        return {"done": True, "error": "keys must be a list of strings or null"}
    reply = command.get("reply")

    async def progress(done: int, total: int) -> None:
        if isinstance(reply, str) and reply.startswith(REPLY_PREFIX):
            await _reply(client, reply, {"progress": done, "total": total})

    if op == "migrate":
        target = command.get("to")
        if not isinstance(target, str) or not target or target == node.config.node_id:
            return {"done": True, "error": "migrate needs a target node other than this one"}
        return await migrate_out(node, client, keys, target, progress)
    if op == "adopt":
        if keys is None:
            return {"done": True, "error": "adopt needs keys"}
        return await adopt_in(node, keys, progress)
    return {"done": True, "error": f"unknown op {op!r}"}


async def migrate_out(
    node: Node, client: Any, keys: list[str] | None, target: str, progress: Callable[[int, int], Any]
) -> dict[str, object]:
    store, layer = node.durable_store, node.layer
    if store is None:
        return {"done": True, "error": "this node runs without persistence"}
    await layer.settle()  # every change made so far is stored and sent
    held = {str(tx.key): tx for tx in layer.live_transactions()}
    wanted = list(held) if keys is None else [k for k in keys if k in held]
    missing = [] if keys is None else [k for k in keys if k not in held]
    moved: list[str] = []
    failed: list[str] = []
    for start in range(0, len(wanted), PROGRESS_EVERY):
        chunk = [held[k] for k in wanted[start : start + PROGRESS_EVERY]]
        for tx in chunk:
            layer.detach(tx)  # from now on this node does nothing for it
        try:
            refused = await store.release(chunk, layer.clock(), to=target)
        except Exception as exc:
            log.warning("could not hand %d transactions over to %s: %s", len(chunk), target, exc)
            for tx in chunk:
                layer.install(tx, layer.clock())  # still ours: carry on
            failed += [str(tx.key) for tx in chunk]
            continue
        moved += [str(tx.key) for tx in chunk if tx not in refused]
        failed += [str(tx.key) for tx in chunk if tx in refused]
        await progress(start + len(chunk), len(wanted))
    adopted: dict[str, object] = {}
    if moved:
        adopted = await _ask(client, target, {"op": "adopt", "keys": moved}, timeout=30.0)
    return {
        "done": True,
        "released": len(moved),
        "failed": failed,
        "missing": missing,
        "adopted": adopted.get("adopted", 0),
        "not_adopted": adopted.get("not_adopted", moved if "error" in adopted else []),
        **({"target_error": adopted["error"]} if "error" in adopted else {}),
    }


async def adopt_in(node: Node, keys: list[str], progress: Callable[[int, int], Any]) -> dict[str, object]:
    store, layer = node.durable_store, node.layer
    if store is None:
        return {"done": True, "error": "this node runs without persistence"}
    adopted, not_adopted = 0, []
    for index, txkey in enumerate(keys, 1):
        try:
            stored = await store.load(txkey)
            info = None if stored is None else node.local_info(stored.snapshot.transport)
            tx = None if stored is None else await store.adopt(txkey, info, layer.clock())
        except Exception:
            log.exception("could not adopt %s", txkey)
            tx = None
        if tx is not None and layer.install(tx, layer.clock()):
            adopted += 1
            node.metrics.adopted.inc()
        else:
            not_adopted.append(txkey)
        if index % PROGRESS_EVERY == 0:
            await progress(index, len(keys))
    return {"done": True, "adopted": adopted, "not_adopted": not_adopted}


async def _ask(client: Any, node_id: str, command: dict[str, object], timeout: float) -> dict[str, Any]:
    reply = f"{REPLY_PREFIX}{uuid.uuid4().hex}"
    await client.rpush(control_key(node_id), json.dumps({**command, "reply": reply}))
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        popped = await client.blpop([reply], timeout=max(1, int(left)))
        if popped is None:
            continue
        message = json.loads(popped[1])
        if message.get("done"):
            return dict(message)
    return {"error": f"{node_id} did not answer within {timeout:.0f} s"}


# --- the service (management command, API, admin) ---


@dataclass
class MigrationResult:
    moved: int = 0
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    by_owner: dict[str, dict[str, Any]] = field(default_factory=dict)


class MigrationError(Exception):
    """A migration that cannot start (unknown or dead target, nothing to move...)."""


def live_node_ids(client: redis.Redis) -> set[str]:
    from sipcore.nodes import live_nodes

    return {str(beat["node_id"]) for beat in live_nodes(client)}


def lease_alive(client: redis.Redis, node_id: str) -> bool:
    """Whether ``node_id`` holds its store lease (renewed every second, 3 s TTL): a node
    that does may still act on its transactions, so only it can hand them over."""
    from sipcore.store import lease_key

    return bool(client.exists(lease_key(0, node_id)))


def owners_of(client: redis.Redis, keys: Iterable[str], shards: int) -> dict[str, str | None]:
    """txkey -> owner node (None: not stored)."""
    from sipcore.store import split_record, tx_key

    keys = list(keys)
    values = client.mget([tx_key(k, shards) for k in keys]) if keys else []
    owners: dict[str, str | None] = {}
    for txkey, value in zip(keys, values, strict=True):
        owners[txkey] = None if value is None else split_record(value)[0]["o"]
    return owners


def migrate(
    client: redis.Redis,
    *,
    target: str,
    keys: list[str] | None = None,
    source: str | None = None,
    shards: int = 16,
    timeout: float = 60.0,
    progress: Callable[[int, int], None] | None = None,
) -> MigrationResult:
    """Move ``keys`` (or, with ``source`` alone, every transaction of that node: a
    drain) to the live node ``target``. Synchronous: waits for the nodes' answers."""
    alive = live_node_ids(client)
    if target not in alive:
        raise MigrationError(
            f"target node {target!r} is not live (live: {', '.join(sorted(alive)) or 'none'})"
        )
    if keys is None and source is None:
        raise MigrationError("name transactions (keys) or a node to drain (source)")
    if source is not None and source == target:
        raise MigrationError("source and target are the same node")
    result = MigrationResult()
    if keys is None:
        groups: dict[str, list[str] | None] = {str(source): None}
    else:
        groups = {}
        for txkey, owner in owners_of(client, keys, shards).items():
            if owner is None:
                result.failed.append(txkey)
                result.errors.append(f"{txkey}: not stored (ended, or never existed)")
            elif owner != target:
                listed = groups.setdefault(owner, [])
                assert listed is not None
                listed.append(txkey)
    for owner, owned in groups.items():
        if lease_alive(client, owner):
            command: dict[str, object] = {"op": "migrate", "keys": owned, "to": target}
            answer = _ask_sync(client, owner, command, timeout, progress)
            result.moved += int(answer.get("adopted", 0))
            result.failed += list(answer.get("failed", [])) + list(answer.get("not_adopted", []))
        else:  # a dead owner cannot hand over: the target adopts (its lease has run out)
            adopt = owned if owned is not None else _stored_by(client, owner, shards)
            answer = _ask_sync(client, target, {"op": "adopt", "keys": adopt}, timeout, progress)
            result.moved += int(answer.get("adopted", 0))
            result.failed += list(answer.get("not_adopted", []))
        if "error" in answer:
            result.errors.append(f"{owner}: {answer['error']}")
        if "target_error" in answer:
            result.errors.append(f"{target}: {answer['target_error']}")
        result.by_owner[owner] = answer
    return result


def _stored_by(client: redis.Redis, owner: str, shards: int) -> list[str]:
    """The keys stored with ``owner`` as their owner (a dead node's, for a drain)."""
    from sipcore.store import live_key

    now = time.time()
    keys: list[str] = []
    for shard in range(shards):
        members = client.zrangebyscore(live_key(shard), f"({now}", "+inf")
        keys += [m.decode("utf-8", "surrogateescape") for m in members]
    return [txkey for txkey, stored in owners_of(client, keys, shards).items() if stored == owner]


def _ask_sync(
    client: redis.Redis,
    node_id: str,
    command: dict[str, object],
    timeout: float,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    reply = f"{REPLY_PREFIX}{uuid.uuid4().hex}"
    client.rpush(control_key(node_id), json.dumps({**command, "reply": reply}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        popped = client.blpop([reply], timeout=1)  # under the client's socket timeout (2 s)
        if popped is None:
            continue
        message = json.loads(popped[1])
        if message.get("done"):
            client.delete(reply)
            return dict(message)
        if progress is not None and "progress" in message:
            progress(int(message["progress"]), int(message["total"]))
    return {"error": f"{node_id} did not answer within {timeout:.0f} s"}
