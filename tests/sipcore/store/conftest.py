"""The store's tests run against the real Redis at REDIS_URL (their own db number).

Every key the store writes carries a ``{sip:<shard>}`` hash tag; the fixture
deletes those keys (by pattern, in this db only) before and after each test.
Nothing is flushed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from django.conf import settings

from sipcore.sip import (
    InviteServerTransaction,
    NonInviteServerTransaction,
    Request,
    Transaction,
    TransportInfo,
    make_response,
    parse_message,
)
from sipcore.store import RedisTransactionStore

T = TypeVar("T")

UDP_A = TransportInfo("UDP", False, ("127.0.0.1", 5060), ("127.0.0.1", 5061))
UDP_B = TransportInfo("UDP", False, ("127.0.0.2", 5060), ("127.0.0.1", 5061))
KEY_PATTERN = "{sip:*"


def sipp_invite(call: int, *, branch: str | None = None) -> Request:
    """An INVITE as SIPp's uac scenario sends it (SDP body included)."""
    sdp = (
        "v=0\r\n"
        "o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
        "s=-\r\n"
        "c=IN IP4 127.0.0.1\r\n"
        "t=0 0\r\n"
        "m=audio 6000 RTP/AVP 0\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
    )
    branch = branch or f"z9hG4bK-{call}-1-0"
    message = (
        "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch={branch}\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:5061>;tag=4242SIPpTag00{call}\r\n"
        "To: service <sip:service@127.0.0.1:5060>\r\n"
        f"Call-ID: {call}-4242@127.0.0.1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: sip:sipp@127.0.0.1:5061\r\n"
        "Max-Forwards: 70\r\n"
        "Subject: Performance Test\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    )
    request = parse_message(message.encode())
    assert isinstance(request, Request)
    return request


def busy_invite(call: int, now: float, transport: TransportInfo = UDP_A) -> InviteServerTransaction:
    """An INVITE server transaction that answered 486 (Completed, Timers G and H running)."""
    request = sipp_invite(call)
    tx = InviteServerTransaction(request, transport, now)
    tx.send_response(make_response(request, 486, to_tag=f"busy{call}"), now)
    tx.drain_outgoing()
    return tx


def ack_for(tx: Transaction) -> Request:
    from sipcore.sip import make_ack

    response = tx.last_response
    assert response is not None
    return make_ack(tx.request, response)


def options_tx(call: int, now: float) -> NonInviteServerTransaction:
    message = (
        "OPTIONS sip:service@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-opt-{call}\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:5061>;tag=o{call}\r\n"
        "To: service <sip:service@127.0.0.1:5060>\r\n"
        f"Call-ID: opt-{call}@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    request = parse_message(message.encode())
    assert isinstance(request, Request)
    return NonInviteServerTransaction(request, UDP_A, now)


def delete_store_keys(client: redis.Redis) -> None:
    keys = list(client.scan_iter(match=KEY_PATTERN, count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


@pytest.fixture
def redis_url() -> str:
    return settings.REDIS_URL


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    delete_store_keys(client)
    yield client
    delete_store_keys(client)
    client.close()


class Stores:
    """Store instances (one per node id) on fresh asyncio clients, inside one event loop."""

    def __init__(self, url: str):
        self.url = url
        self.clients: list[aioredis.Redis] = []

    def __call__(self, node_id: str, **options: Any) -> RedisTransactionStore:
        client = aioredis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        self.clients.append(client)
        return RedisTransactionStore(client, node_id, **options)

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


@pytest.fixture
def run(redis_url: str, sync_redis: redis.Redis) -> Callable[[Callable[[Stores], Awaitable[T]]], T]:
    """Run ``scenario(stores)`` in a fresh event loop; its store clients close after."""

    def runner(scenario: Callable[[Stores], Awaitable[T]]) -> T:
        async def main() -> T:
            stores = Stores(redis_url)
            try:
                return await scenario(stores)
            finally:
                await stores.close()

        return asyncio.run(main())

    return runner


@pytest.fixture
def wall() -> float:
    """A wall-clock start for scripted time (deadlines and key TTLs are wall-clock seconds)."""
    return time.time()
