"""The transaction layer in-process on real loopback sockets: the store seam and the scheduler."""

from __future__ import annotations

import asyncio
import random
import socket
import time

from sipcore.dialplan import DEMO_RULES, DialPlan
from sipcore.layer import DeadlineScheduler, TransactionLayer
from sipcore.sip import Timings
from sipcore.transport import UdpTransport
from sipcore.uas import UasCore
from tests.sipcore.runtime.test_sipp import invite


class SlowStore:
    """A store whose commit takes a while and can refuse (another owner): what issue 10 plugs in."""

    def __init__(self, refuse_call_ids=()):
        self.refuse_call_ids = set(refuse_call_ids)
        self.committed: list[tuple[float, list[str]]] = []

    async def commit(self, changed, now):
        await asyncio.sleep(0.05)
        self.committed.append((time.monotonic(), [tx.request.call_id for tx in changed]))
        return [tx for tx in changed if tx.request.call_id in self.refuse_call_ids]


async def serve(store, timings=None):
    layer = TransactionLayer(timings=timings or Timings(t1=0.05, t2=0.5, t4=0.5), store=store)
    layer.attach(UasCore(layer, DialPlan.of(DEMO_RULES)))
    transport = await UdpTransport.listen(layer, "127.0.0.1", 0)
    return layer, transport


async def ask(
    port: int, datagram: bytes, sock: socket.socket, wait: float = 1.0
) -> list[tuple[float, bytes]]:
    sock.sendto(datagram, ("127.0.0.1", port))
    got = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            got.append((time.monotonic(), sock.recv(65535)))
        except BlockingIOError:
            await asyncio.sleep(0.005)
    return got


def test_messages_leave_only_after_the_store_committed_the_change():
    async def scenario():
        store = SlowStore()
        layer, transport = await serve(store)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            port = sock.getsockname()[1]
            got = await ask(transport.local[1], invite("busy", port, call_id="seam@test").encode(), sock, 0.3)
        transport.close()
        layer.close()
        return store, got

    store, got = asyncio.run(scenario())
    assert got, "the 486 was sent"
    first_sent = got[0][0]
    first_commit = next(at for at, call_ids in store.committed if "seam@test" in call_ids)
    assert got[0][1].startswith(b"SIP/2.0 486")
    assert first_commit <= first_sent  # stored, then sent


def test_a_transaction_the_store_refuses_sends_nothing_and_is_dropped():
    async def scenario():
        store = SlowStore(refuse_call_ids={"fenced@test"})
        layer, transport = await serve(store)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            port = sock.getsockname()[1]
            got = await ask(
                transport.local[1], invite("busy", port, call_id="fenced@test").encode(), sock, 0.4
            )
            live = layer.live()
        transport.close()
        layer.close()
        return got, live

    got, live = asyncio.run(scenario())
    assert got == []
    assert live == 0


class Ticker:
    """A timed item: fires at each deadline of its list, once each."""

    def __init__(self, deadlines):
        self.deadlines = sorted(deadlines)
        self.fired: list[tuple[float, float]] = []

    def next_deadline(self):
        return self.deadlines[0] if self.deadlines else None

    def handle_timer(self, now):
        while self.deadlines and self.deadlines[0] <= now:
            self.fired.append((self.deadlines.pop(0), now))


def test_one_scheduler_fires_every_deadline_once_in_order_with_one_timer_handle():
    async def scenario():
        loop = asyncio.get_running_loop()
        scheduler: DeadlineScheduler

        def fire(item, now):
            item.handle_timer(now)
            scheduler.update(item)

        scheduler = DeadlineScheduler(loop, time.time, fire)
        start = time.time()
        rng = random.Random(17)
        items = [Ticker([start + rng.uniform(0.01, 0.4) for _ in range(3)]) for _ in range(500)]
        for item in items:
            scheduler.update(item)
            scheduler.update(item)  # unchanged deadline: no second heap entry
        assert len(scheduler._heap) == len(items)
        await asyncio.sleep(0.6)
        return items

    items = asyncio.run(scenario())
    assert all(not item.deadlines for item in items)
    assert sum(len(item.fired) for item in items) == 1500
    assert all(now >= deadline for item in items for deadline, now in item.fired)
    assert all([d for d, _ in item.fired] == sorted(d for d, _ in item.fired) for item in items)


def test_terminated_transactions_leave_the_layer():
    async def scenario():
        layer, transport = await serve(None, Timings(t1=0.01, t2=0.04, t4=0.05))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            port = sock.getsockname()[1]
            await ask(transport.local[1], invite("busy", port, call_id="ends@test").encode(), sock, 0.05)
            live_before = layer.live()
            await asyncio.sleep(0.9)  # Timer H = 64*T1 = 0.64 s without an ACK
            live_after = layer.live()
        transport.close()
        layer.close()
        return live_before, live_after, len(layer.scheduler)

    live_before, live_after, scheduled = asyncio.run(scenario())
    assert live_before == 1
    assert live_after == 0
    assert scheduled == 0


def test_a_byte_identical_retransmission_reaches_its_transaction_and_leaves_with_it():
    async def scenario():
        layer, transport = await serve(None, Timings(t1=0.01, t2=0.04, t4=0.05))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            port = sock.getsockname()[1]
            request = invite("noanswer", port, call_id="again@test").encode()
            first = await ask(transport.local[1], request, sock, 0.1)
            remembered = len(layer._recent)
            again = await ask(transport.local[1], request, sock, 0.1)  # the INVITE retransmitted
            live = layer.live()
            cancel = request.replace(b"INVITE sip", b"CANCEL sip", 1).replace(b"1 INVITE", b"1 CANCEL")
            await ask(transport.local[1], cancel, sock, 0.1)
            await asyncio.sleep(1.0)  # 487 unACKed: Timer H (0.64 s) ends the INVITE transaction
            left = len(layer._recent), len(layer._recent_of), layer.live()
        transport.close()
        layer.close()
        return first, remembered, again, live, left

    first, remembered, again, live, left = asyncio.run(scenario())
    assert [data.split(b"\r\n", 1)[0] for _, data in first] == [b"SIP/2.0 180 Ringing"]
    assert remembered == 1
    assert [data.split(b"\r\n", 1)[0] for _, data in again] == [b"SIP/2.0 180 Ringing"]  # §17.2.1: resent
    assert live == 1  # the same transaction, not a second one (nor a 482)
    assert left == (0, 0, 0)
