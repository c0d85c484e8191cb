"""The transaction layer over the real Redis store, in one process: adoption of a
transaction another node stored, and fencing (a node whose write is refused sends
nothing more). Messages go to a recording transport; Redis is the real one."""

from __future__ import annotations

import asyncio
import os
import secrets

import pytest
from django.conf import settings

from sipcore.dialplan import DEMO_RULES, DialPlan
from sipcore.layer import TransactionLayer
from sipcore.sip import TransactionKey, TransportInfo, parse_message
from sipcore.store import RedisTransactionStore, default_client, split_record, tx_key
from sipcore.uas import UasCore

PEER = ("127.0.0.1", 5070)


class Recorder:
    """A UDP transport that records what the layer sends."""

    protocol = "UDP"
    local = ("127.0.0.1", 5060)

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def info_for(self, remote):  # type: ignore[no-untyped-def]
        return TransportInfo("UDP", False, self.local, remote)

    def connected(self, remote) -> bool:  # type: ignore[no-untyped-def]
        return True

    def send(self, data: bytes, destination, on_error=None) -> None:  # type: ignore[no-untyped-def]
        self.sent.append(data)

    def close(self) -> None:
        pass


def invite(branch: str, to_tag: str = "", method: str = "INVITE") -> bytes:
    tag = f";tag={to_tag}" if to_tag else ""
    return (
        f"{method} sip:busy@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n"
        f"From: <sip:a@127.0.0.1:5070>;tag=a1\r\nTo: <sip:busy@127.0.0.1:5060>{tag}\r\n"
        f"Call-ID: {branch}@test\r\nCSeq: 1 {method}\r\nContact: <sip:a@127.0.0.1:5070>\r\n"
        f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def to_tag(response: bytes) -> str:
    return parse_message(response).to_tag or ""


class Node:
    def __init__(self, node_id: str, store: RedisTransactionStore, layer: TransactionLayer, wire: Recorder):
        self.node_id, self.store, self.layer, self.wire = node_id, store, layer, wire

    def receive(self, data: bytes) -> None:
        self.layer.datagram_received(data, self.wire, PEER)  # type: ignore[arg-type]


async def start(node_id: str) -> Node:
    store = RedisTransactionStore(default_client(settings.REDIS_URL), node_id)
    await store.renew_lease()
    layer = TransactionLayer(store=store, loop=asyncio.get_running_loop())
    layer.attach(UasCore(layer, DialPlan.of(DEMO_RULES)))
    wire = Recorder()
    layer.add_transport(wire)  # type: ignore[arg-type]
    return Node(node_id, store, layer, wire)


async def settle(*nodes: Node) -> None:
    for _ in range(3):
        for node in nodes:
            await node.layer.settle()
            await node.store.flush()
        await asyncio.sleep(0.05)


def unique() -> str:
    return f"t{os.getpid()}-{secrets.token_hex(4)}"


@pytest.fixture
def run():
    def runner(coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run(coroutine)

    return runner


def test_a_retransmission_reaching_another_node_is_answered_by_the_adopted_transaction(run):
    async def scenario() -> None:
        a, b = await start(unique()), await start(unique())
        branch = f"z9hG4bK{secrets.token_hex(6)}"
        a.receive(invite(branch))
        await settle(a)
        [first] = a.wire.sent
        assert first.startswith(b"SIP/2.0 486")
        a.layer.scheduler.close()  # A dies: no timer of it fires again...
        await a.store.drop_leases()  # ...and its lease is gone

        b.receive(invite(branch))  # the peer retransmits; B's new transaction finds the key taken
        await settle(b)
        assert b.wire.sent, "B adopted the stored transaction and answered the retransmission"
        assert all(m.startswith(b"SIP/2.0 486") for m in b.wire.sent)
        assert {to_tag(m) for m in b.wire.sent} == {to_tag(first)}  # the same response, not a new one
        key = str(TransactionKey.for_server(parse_message(invite(branch))))
        stored = await b.store.load(key)
        assert stored is not None
        assert (stored.owner, stored.epoch) == (b.node_id, 2)

        b.receive(invite(branch, to_tag(first), "ACK"))  # its ACK reaches the adopted transaction
        await settle(b)
        assert (
            b.layer.server[TransactionKey.for_server(parse_message(invite(branch)))].state.value
            == "Confirmed"
        )

    run(scenario())


def test_a_fenced_node_drops_the_transaction_and_sends_nothing_more(run):
    async def scenario() -> None:
        a, b = await start(unique()), await start(unique())
        branch = f"z9hG4bK{secrets.token_hex(6)}"
        a.receive(invite(branch))
        await settle(a)
        assert len(a.wire.sent) == 1
        key = TransactionKey.for_server(parse_message(invite(branch)))
        # Behind A's back (its lease lapsed, say, in a long pause): B adopts it.
        await a.store.drop_leases()
        assert await b.store.adopt(str(key), b.wire.info_for(PEER), a.layer.clock()) is not None
        await a.store.renew_lease()  # A is back and renews, unaware

        a.receive(invite(branch, to_tag(a.wire.sent[0]), "ACK"))  # a change A must store: refused
        await settle(a)
        assert key not in a.layer.server, "a refused write drops the transaction"
        sent = len(a.wire.sent)
        a.receive(invite(branch))  # a retransmission to A: B, alive, owns it
        await asyncio.sleep(0.8)  # past Timer G's first interval (T1 = 0.5 s)
        await settle(a)
        assert len(a.wire.sent) == sent == 1, a.wire.sent
        assert key not in a.layer.server
        stored = await b.store.load(str(key))
        assert stored is not None
        assert (stored.owner, stored.epoch) == (b.node_id, 2)
        record, _ = split_record(await a.store.client.get(tx_key(str(key))))
        assert record["e"] == "2"

    run(scenario())
