"""The transaction layer of a SIP node: match, create, drive timers, commit, send.

Data flows one way (DESIGN.md, "The SIP node")::

    transport -> TransactionLayer.message_received -> transaction.receive / the TU
    transaction changed -> dirty set -> commit (store seam, once per loop turn) -> send

* Matching: requests by their server key (RFC 3261 §17.2.3, an ACK counted as
  INVITE), responses by their client key (§17.1.3). A CANCEL matching no
  transaction of its own gets one, and the TU hears of it with the INVITE it
  cancels (§9.2). Stray responses and ACKs that match nothing (the ACK of a 2xx
  is its own transaction, §17.1.1.3) go to the TU.
* Timers: one :class:`DeadlineScheduler` holds every transaction's (and the
  TU's timed objects') ``next_deadline()`` in a heap, with one asyncio timer
  handle for the earliest; a fired timer is gone from its transaction, so it
  cannot fire twice.
* The store seam: every change marks the transaction dirty. Once per loop turn
  the layer drains what the dirty transactions queued to send, hands the
  transactions to ``store.commit`` and puts their messages on the wire only
  after it returns (store before send). A transaction the store refuses
  (fenced by another owner) is dropped and sends nothing.
* Adoption (a durable store, DESIGN.md "Persistence and ownership"): a message
  matching nothing in memory may belong to a transaction another node (or this
  node's previous process) stored. A new request costs nothing extra: its
  transaction is created as usual and the store refuses its first write when
  the key exists; the layer then asks the store to adopt the stored one and
  hands it the request again. An ACK, a CANCEL or a response that matches
  nothing asks the store at once. Messages for a key being adopted wait for
  that one lookup; if a live owner holds it, they are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import inspect
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sipcore.sip import (
    InvalidTransitionError,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Outgoing,
    ParseError,
    Request,
    Response,
    Timings,
    Transaction,
    TransactionKey,
    TransactionMismatchError,
    TransportInfo,
    Via,
    parse_message,
)
from sipcore.sip.keys import default_port

if TYPE_CHECKING:
    from sipcore.metrics import NodeMetrics
    from sipcore.relay import Relay
    from sipcore.transport import Transport

log = logging.getLogger("sipcore.node")

Address = tuple[str, int]


RECENT_DATAGRAMS = 20_000  # retransmissions come within seconds: enough for ~5 s at 4,000/s
MAX_ADOPTING = 10_000  # keys waiting for a store lookup: beyond, a miss is dropped (the peer retransmits)
ADOPT_CONCURRENCY = 32  # lookups on the wire at once (each holds one of the store's connections)


class Timed(Protocol):
    """Anything the scheduler serves: a transaction, or a timed object of the TU."""

    def next_deadline(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from: the transport it arrived on and the peer's address."""

    transport: Transport
    remote: Address
    relayed: bool = False  # forwarded by another node (sipcore.relay): never relayed again

    def transport_info(self) -> TransportInfo:
        return self.transport.info_for(self.remote)


class TransactionUser(Protocol):
    """The core above the layer (UAS core, client endpoint)."""

    def request_received(self, request: Request, source: Source, now: float) -> None:
        """A request matching no transaction (not an ACK): answer statelessly or create one."""

    def ack_received(self, ack: Request, source: Source, now: float) -> bool:
        """An ACK matching no transaction: the ACK of a 2xx (§13.3.1.4), or a stray.
        True when it was the TU's (a dialog it knows)."""

    def cancel_received(
        self, cancel_tx: NonInviteServerTransaction, invite_tx: Transaction, now: float
    ) -> None:
        """A new CANCEL, with its own transaction, for a live INVITE server transaction (§9.2)."""

    def response_received(self, response: Response, source: Source, now: float) -> None:
        """A response matching no client transaction (a 2xx retransmission, a stray)."""

    def transaction_terminated(self, tx: Transaction, now: float) -> None:
        """``tx`` ended and left the layer."""

    def transaction_adopted(self, tx: Transaction, now: float) -> None:
        """``tx`` was adopted from the store: rebuild what the TU kept for it."""


CommitResult = Collection[Transaction] | Awaitable[Collection[Transaction]]


class TransactionStore(Protocol):
    """The seam between "a transaction changed" and "its messages go on the wire".

    ``commit`` receives the transactions that changed during one loop turn (a
    terminated one included, so a store can delete it) and returns the ones it
    refused to store (another owner holds them); their messages are not sent.
    It may be a coroutine: the layer awaits it, keeping commits in order.
    """

    def commit(self, changed: Sequence[Transaction], now: float) -> CommitResult: ...


class AdoptingStore(TransactionStore, Protocol):
    """A durable store: it can hand over a transaction stored by another node
    (``sipcore.store.RedisTransactionStore``)."""

    durable: bool

    async def adopt(self, txkey: str, transport_info: TransportInfo | None, now: float) -> Transaction | None:
        """The stored transaction, now owned here (epoch + 1), its due timers fired;
        None when a live owner holds it or nothing is stored."""

    def forget(self, txkey: str) -> None:
        """The layer dropped ``txkey``: stop tracking it (Redis untouched)."""

    async def load(self, txkey: str) -> object | None:
        """What is stored under ``txkey`` (None: nothing)."""


class MemoryStore:
    """Persistence off: transactions live in the node's memory only."""

    durable = False

    def commit(self, changed: Sequence[Transaction], now: float) -> CommitResult:
        return ()


class DeadlineScheduler:
    """One asyncio timer for every deadline: a heap with lazy invalidation.

    ``update(item)`` records the item's current ``next_deadline()``; an older
    heap entry for it is stale and skipped when it surfaces. Only when the
    earliest deadline moves earlier is the single timer handle re-armed.
    Deadlines are in ``clock()`` time (epoch seconds, so they mean the same to
    every node); the handle is armed in the loop's monotonic time.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float],
        fire: Callable[[Timed, float], None],
        on_lateness: Callable[[float], None] | None = None,
    ):
        self._loop = loop
        self._clock = clock
        self._fire = fire
        self._on_lateness = on_lateness
        self._heap: list[tuple[float, int, Timed]] = []
        self._armed: dict[Timed, float] = {}
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = float("inf")
        self._closed = False

    def __len__(self) -> int:
        return len(self._armed)

    def update(self, item: Timed) -> None:
        deadline = item.next_deadline()
        if deadline is None:
            self._armed.pop(item, None)
            return
        if self._armed.get(item) == deadline:
            return
        self._armed[item] = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), item))
        if deadline < self._handle_at:
            self._arm(deadline)
        if len(self._heap) > 2 * len(self._armed) + 1024:
            self._compact()

    def forget(self, item: Timed) -> None:
        self._armed.pop(item, None)

    def close(self) -> None:
        """Fire nothing more (a stopping node: the state it releases is the last)."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _compact(self) -> None:
        armed = self._armed
        self._heap = [entry for entry in self._heap if armed.get(entry[2]) == entry[0]]
        heapq.heapify(self._heap)

    def _arm(self, deadline: float) -> None:
        if self._closed:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle_at = deadline
        delay = max(0.0, deadline - self._clock())
        self._handle = self._loop.call_at(self._loop.time() + delay, self._run)

    def _run(self) -> None:
        self._handle, self._handle_at = None, float("inf")
        now = self._clock()
        heap, armed = self._heap, self._armed
        while heap and heap[0][0] <= now:
            deadline, _, item = heapq.heappop(heap)
            if armed.get(item) != deadline:
                continue  # stale: the item moved or left
            del armed[item]
            if self._on_lateness is not None:
                self._on_lateness(now - deadline)
            self._fire(item, now)
        while heap and armed.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        if heap:
            self._arm(heap[0][0])


class TransactionLayer:
    """Transactions of one node, by key; see the module docstring."""

    def __init__(
        self,
        *,
        timings: Timings | None = None,
        store: TransactionStore | None = None,
        clock: Callable[[], float] = time.time,
        loop: asyncio.AbstractEventLoop | None = None,
        metrics: NodeMetrics | None = None,
    ):
        self.timings = timings or Timings()
        self.store: TransactionStore = store or MemoryStore()
        adopt = getattr(self.store, "adopt", None)
        self._adopter: AdoptingStore | None = self.store if callable(adopt) else None  # type: ignore[assignment]
        # Created here and not yet stored once: a refusal of their first write means the
        # key exists (another node stored it), so the stored one is adopted instead.
        self._unstored: set[Transaction] = set()
        # Keys being adopted -> the messages that wait for the outcome.
        self._adopting: dict[TransactionKey, list[tuple[Request | Response, Source]]] = {}
        self._adoptions: set[asyncio.Future[None]] = set()
        self._adopt_slots = asyncio.Semaphore(ADOPT_CONCURRENCY)
        self.relay: Relay | None = None  # set by the node: forwards to a transaction's live owner
        self.clock = clock
        self.loop = loop or asyncio.get_running_loop()
        self.metrics = metrics
        self.core: TransactionUser | None = None
        self.server: dict[TransactionKey, Transaction] = {}
        self.client: dict[TransactionKey, Transaction] = {}
        # §8.2.2.2: (Call-ID, From tag, CSeq) of each live server transaction, to spot merged requests.
        self._origins: dict[tuple[str | None, str | None, int, str], Transaction] = {}
        self._origin_of: dict[Transaction, tuple[str | None, str | None, int, str]] = {}
        self._transports: dict[tuple[str, Address], Transport] = {}
        self._sent: dict[Transaction, int] = {}  # hash of the last bytes sent per transaction
        self._dirty: dict[Transaction, None] = {}
        # Datagrams that started recent server transactions (bounded, oldest out first).
        self._recent: dict[bytes, tuple[Transaction, Request]] = {}
        self._recent_of: dict[Transaction, bytes] = {}
        self._datagram: bytes | None = None
        self._flush_scheduled = False
        self._commit_tail: asyncio.Future[None] | None = None
        self.accepting = True  # False while draining: new requests are dropped
        self.scheduler = DeadlineScheduler(
            self.loop, clock, self._fire, metrics.timer_lateness.observe if metrics else None
        )

    # --- wiring ---

    def attach(self, core: TransactionUser) -> None:
        self.core = core

    def add_transport(self, transport: Transport) -> None:
        self._transports[(transport.protocol, transport.local)] = transport

    def transport_for(self, info: TransportInfo) -> Transport | None:
        return self._transports.get((info.protocol, info.local))

    def transport_at(self, protocol: str, local: Address) -> Transport | None:
        """The listener at ``local``, else the first of ``protocol`` (a relayed message)."""
        found = self._transports.get((protocol, local))
        if found is None:
            found = next((t for (p, _), t in self._transports.items() if p == protocol), None)
        return found

    @property
    def transports(self) -> list[Transport]:
        return list(self._transports.values())

    def live(self) -> int:
        return len(self.server) + len(self.client)

    # --- inbound ---

    def datagram_received(
        self, data: bytes, transport: Transport, remote: Address, relayed: bool = False
    ) -> None:
        if not data.strip(b"\r\n"):
            return  # RFC 5626 §3.5.1 keep-alive (CRLF): nothing to parse
        recent = self._recent.get(data)
        if recent is not None and self._retransmission(data, recent, remote):
            return
        try:
            message = parse_message(data)
        except ParseError as exc:
            self.refuse_unparseable(data, exc, transport, remote)
            return
        self._datagram = data
        try:
            self.message_received(message, transport, remote, relayed)
        finally:
            self._datagram = None

    def _retransmission(self, data: bytes, recent: tuple[Transaction, Request], remote: Address) -> bool:
        """A datagram byte for byte like one that started a live server transaction: the same
        request again (its key is in its bytes), handed over without parsing it again."""
        tx, request = recent
        if self.server.get(tx.key) is not tx:  # not expected: _remove forgets the datagram
            del self._recent[data]
            self._recent_of.pop(tx, None)
            return False
        if self.metrics is not None:
            self.metrics.message_in(request.method, None)
        try:
            tx.receive(request, self.clock())
        except (InvalidTransitionError, TransactionMismatchError) as exc:
            self.drop("invalid_transition", remote, request, error=str(exc)[:200])
            return True
        self._touch(tx)
        return True

    def message_received(
        self, message: Request | Response, transport: Transport, remote: Address, relayed: bool = False
    ) -> None:
        now = self.clock()
        metrics = self.metrics
        try:
            if type(message) is Request:
                if metrics is not None:
                    metrics.message_in(message.method, None)
                self._request(message, Source(transport, remote, relayed), now)
            else:
                assert isinstance(message, Response)
                if metrics is not None:
                    metrics.message_in(_cseq_method(message), message.status_code)
                self._response(message, Source(transport, remote, relayed), now)
        except (InvalidTransitionError, TransactionMismatchError) as exc:
            # The peer sent what its transaction's state does not take (an ACK while the INVITE
            # is still proceeding...): the message is dropped, the transaction goes on.
            reason = "invalid_transition" if isinstance(exc, InvalidTransitionError) else "mismatch"
            self.drop(reason, remote, message, error=str(exc)[:200])
        except Exception:  # a bug of ours: a peer's message must still never take the node down
            if metrics is None or metrics.may_log():
                log.exception("error handling a message from %s", remote)
            if metrics is not None:
                metrics.dropped("internal_error")

    def _request(self, request: Request, source: Source, now: float, *, adopt: bool = True) -> None:
        # An RFC 2543 ACK may belong to an INVITE keyed without its To tag (§17.2.3).
        keys = TransactionKey.server_keys_for(request)
        tx = next((found for key in keys if (found := self.server.get(key)) is not None), None)
        if tx is not None:
            tx.receive(request, now)  # a retransmission, or the ACK of a non-2xx final (§17.2.1)
            self._touch(tx)
            return
        core = self.core
        assert core is not None, "attach() a transaction user first"
        adopter = self._adopter if adopt else None
        if adopter is not None and keys[0] in self._adopting:
            self._adopting[keys[0]].append((request, source))  # its transaction is on its way
            return
        if request.method == "ACK":
            if not core.ack_received(request, source, now) and adopter is not None:
                self._adopt_then(keys[0], request, source)  # the ACK of a stored INVITE's final
            return
        if source.transport.protocol == "UDP":
            stamp_via(request, source.remote)
        if not self.accepting:
            self.drop("draining", source.remote, request)
            return
        if request.method == "CANCEL":  # §9.2
            invited = TransactionKey.cancelled_by(request)
            invite = self.server.get(invited)
            if invite is None and adopter is not None:
                self._adopt_then(invited, request, source)
                return
            if invite is not None:
                cancel_tx = self.create_server_transaction(request, source, now)
                assert isinstance(cancel_tx, NonInviteServerTransaction)
                core.cancel_received(cancel_tx, invite, now)
                return
        core.request_received(request, source, now)

    def _response(self, response: Response, source: Source, now: float, *, adopt: bool = True) -> None:
        if response.cseq is None:
            self.drop("no_cseq", source.remote, response)
            return
        key = TransactionKey.for_client(response)
        tx = self.client.get(key)
        if tx is None:
            if self._adopter is not None and adopt:
                self._adopt_then(key, response, source)
                return
            assert self.core is not None
            self.core.response_received(response, source, now)
            return
        tx.receive(response, now)
        self._touch(tx)

    # --- what the TU calls ---

    def merged_with(self, request: Request) -> Transaction | None:
        """A live server transaction with this request's Call-ID, From tag and CSeq (§8.2.2.2)."""
        cseq = request.cseq
        if cseq is None:
            return None
        return self._origins.get((request.call_id, request.from_tag, cseq.number, cseq.method))

    def create_server_transaction(self, request: Request, source: Source, now: float) -> Transaction:
        info = source.transport_info()
        tx: Transaction
        if request.method == "INVITE":
            tx = InviteServerTransaction(request, info, now, self.timings)
        else:
            tx = NonInviteServerTransaction(request, info, now, self.timings)
        self.server[tx.key] = tx
        if self._datagram is not None:  # remember its bytes: a retransmission skips the parser
            self._recent[self._datagram] = (tx, request)
            self._recent_of[tx] = self._datagram
            if len(self._recent) > RECENT_DATAGRAMS:
                oldest = next(iter(self._recent))
                self._recent_of.pop(self._recent.pop(oldest)[0], None)
        cseq = request.cseq
        assert cseq is not None
        origin = (request.call_id, request.from_tag, cseq.number, cseq.method)
        self._origins[origin] = tx
        self._origin_of[tx] = origin
        if self._adopter is not None:
            self._unstored.add(tx)
        self._touch(tx)
        return tx

    def respond(self, tx: Transaction, response: Response, now: float) -> None:
        """The TU answers through a server transaction."""
        assert isinstance(tx, InviteServerTransaction | NonInviteServerTransaction)
        if tx.terminated:
            return
        tx.send_response(response, now)
        self._touch(tx)

    def create_client_transaction(
        self, request: Request, transport: Transport, destination: Address, now: float
    ) -> Transaction:
        """Start a client transaction: the request goes out with the next commit (§17.1)."""
        info = transport.info_for(destination)
        tx: Transaction
        if request.method == "INVITE":
            tx = InviteClientTransaction(request, info, now, self.timings)
        else:
            tx = NonInviteClientTransaction(request, info, now, self.timings)
        if tx.key in self.client:
            raise ValueError(f"a client transaction {tx.key} is already running")
        self.client[tx.key] = tx
        if self._adopter is not None:
            self._unstored.add(tx)
        self._touch(tx)
        return tx

    def send_stateless(self, message: Request | Response, transport: Transport, destination: Address) -> None:
        """Send outside any transaction (stateless answers, the ACK of a 2xx)."""
        self._send(transport, message, destination, None)

    def terminate(self, tx: Transaction, now: float) -> None:
        tx.terminate(now)
        self._touch(tx)

    def drop(
        self, reason: str, remote: Address, message: Request | Response | None = None, **extra: object
    ) -> None:
        """Count and log (one JSON line) a message the node refuses to handle."""
        if self.metrics is not None:
            self.metrics.dropped(reason)
        if self.metrics is None or self.metrics.may_log():
            what: dict[str, object] = {}
            if isinstance(message, Request):
                what = {"method": message.method, "call_id": message.call_id}
            elif isinstance(message, Response):
                what = {"status": message.status_code, "call_id": message.call_id}
            log.info(
                "sip message dropped",
                extra={
                    "event": "sip_drop",
                    "reason": reason,
                    "remote": f"{remote[0]}:{remote[1]}",
                    **what,
                    **extra,
                },
            )

    def refused(self, status: int, reason: str, request: Request, remote: Address) -> None:
        """Log (one JSON line) a request the node answered statelessly with an error."""
        if self.metrics is not None:
            self.metrics.refused(status)
        if self.metrics is None or self.metrics.may_log():
            log.info(
                "sip request refused",
                extra={
                    "event": "sip_refuse",
                    "status": status,
                    "reason": reason,
                    "method": request.method,
                    "call_id": request.call_id,
                    "remote": f"{remote[0]}:{remote[1]}",
                },
            )

    # --- RFC 3261 §8.2.6: a stateless answer to what fails to parse ---

    def refuse_unparseable(
        self, data: bytes, error: ParseError, transport: Transport, remote: Address
    ) -> None:
        if self.metrics is not None:
            self.metrics.parse_error(error.status_code)
        answer = stateless_error_response(data, error)
        if answer is None:
            self.drop("unparseable", remote, None, error=str(error)[:200])
            return
        if self.metrics is None or self.metrics.may_log():
            log.info(
                "sip request refused",
                extra={
                    "event": "sip_refuse",
                    "status": error.status_code,
                    "reason": str(error)[:200],
                    "remote": f"{remote[0]}:{remote[1]}",
                },
            )
        self._send_bytes(transport, answer, remote, None, None, error.status_code)

    # --- timers, commit, send ---

    def _fire(self, item: Timed, now: float) -> None:
        try:
            item.handle_timer(now)
        except Exception:
            log.exception("error firing the timer of %r", item)
            if self.metrics is not None:
                self.metrics.dropped("internal_error")
        if isinstance(item, Transaction):
            self._touch(item)
        else:
            self.scheduler.update(item)

    def _touch(self, tx: Transaction) -> None:
        self._dirty[tx] = None
        if tx.terminated:
            self._remove(tx)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _remove(self, tx: Transaction) -> None:
        table = self.server if tx.ROLE == "server" else self.client
        if table.get(tx.key) is tx:
            del table[tx.key]
            origin = self._origin_of.pop(tx, None)
            if origin is not None and self._origins.get(origin) is tx:
                del self._origins[origin]
            self.scheduler.forget(tx)
            self._sent.pop(tx, None)
            self._unstored.discard(tx)
            datagram = self._recent_of.pop(tx, None)
            if datagram is not None:
                self._recent.pop(datagram, None)
            if self.core is not None:
                self.core.transaction_terminated(tx, self.clock())

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch = list(self._dirty)
        self._dirty.clear()
        if not batch:
            return
        now = self.clock()
        outgoing = [(tx, tx.drain_outgoing()) for tx in batch]
        for tx in batch:
            if not tx.terminated:
                self.scheduler.update(tx)
        try:
            result = self.store.commit(batch, now)
        except Exception:
            log.exception("the store failed to commit %d transactions; sending anyway", len(batch))
            result = ()
        if inspect.isawaitable(result):
            previous = self._commit_tail
            self._commit_tail = asyncio.ensure_future(self._release_after(previous, result, outgoing))
        else:
            self._release(result, outgoing)

    async def _release_after(
        self,
        previous: asyncio.Future[None] | None,
        result: Awaitable[Collection[Transaction]],
        outgoing: list[tuple[Transaction, list[Outgoing]]],
    ) -> None:
        if previous is not None:
            await asyncio.shield(previous)  # commits release in the order they were made
        try:
            refused = await result
        except Exception:
            log.exception("the store failed to commit; sending anyway")
            refused = ()
        self._release(refused, outgoing)

    def _release(
        self, refused: Collection[Transaction], outgoing: list[tuple[Transaction, list[Outgoing]]]
    ) -> None:
        unstored = self._unstored
        for tx, outs in outgoing:
            if refused and tx in refused:
                first_write = tx in unstored
                self._fenced(tx)
                if first_write and tx.ROLE == "server":
                    # Its first write found the key taken: the request belongs to a stored
                    # transaction. Adopt that one and hand it the request again.
                    transport = self._transports.get((tx.transport.protocol, tx.transport.local))
                    if transport is not None:
                        source = Source(transport, tx.transport.remote)
                        self._adopt_then(tx.key, tx.request, source)
                unstored.discard(tx)
                continue
            if unstored:
                unstored.discard(tx)
            if not outs:
                continue
            transport = self._transports.get((tx.transport.protocol, tx.transport.local))
            for out in outs:
                if transport is None:
                    self.drop("no_transport", out.destination, out.message)
                    continue
                destination = out.destination
                if tx.ROLE == "server" and tx.transport.reliable and not transport.connected(destination):
                    destination = reconnect_address(tx.request, destination)
                self._send(transport, out.message, destination, tx)

    def _fenced(self, tx: Transaction) -> None:
        """The store says another node owns ``tx``: forget it, send nothing more for it."""
        if self.metrics is not None:
            self.metrics.dropped("fenced" if tx not in self._unstored else "stored_elsewhere")
        self._remove(tx)
        if self._adopter is not None:
            self._adopter.forget(str(tx.key))

    # --- adoption (a durable store) ---

    def _adopt_then(self, key: TransactionKey, message: Request | Response, source: Source) -> None:
        """Ask the store for ``key``; then handle ``message`` (and what queued meanwhile)."""
        assert self._adopter is not None
        waiting = self._adopting.get(key)
        if waiting is not None:
            waiting.append((message, source))
            return
        if not self._adopter.durable:  # Redis is down: serve from memory, as without a store
            self._replay(None, [(message, source)], stored=False)
            return
        if len(self._adopting) >= MAX_ADOPTING:
            self.drop("adoption_backlog", source.remote, message)
            return
        self._adopting[key] = [(message, source)]
        future = asyncio.ensure_future(self._adopt(key, source))
        self._adoptions.add(future)
        future.add_done_callback(self._adoptions.discard)

    async def _adopt(self, key: TransactionKey, source: Source) -> None:
        assert self._adopter is not None
        try:
            async with self._adopt_slots:
                tx = await self._adopter.adopt(str(key), source.transport_info(), self.clock())
        except Exception:
            log.exception("adopting %s failed", key)
            tx = None
        stored = False
        if tx is None and any(type(m) is Request and m.method == "CANCEL" for m, _ in self._adopting[key]):
            with contextlib.suppress(Exception):  # a CANCEL of nothing stored anywhere gets its 481
                stored = await self._adopter.load(str(key)) is not None
        waiting = self._adopting.pop(key, [])
        if tx is not None and self.install(tx, self.clock()) and self.metrics is not None:
            self.metrics.adopted.inc()
        owner = None if tx is not None else self._adopter.owners_seen.get(str(key))
        self._replay(tx, waiting, stored=stored, owner=owner)

    def _replay(
        self,
        tx: Transaction | None,
        waiting: list[tuple[Request | Response, Source]],
        *,
        stored: bool,
        owner: str | None = None,
    ) -> None:
        """Handle what waited for an adoption: to ``tx`` when adopted, to the live ``owner``
        through the relay when another node holds it, else as without a store."""
        now = self.clock()
        for message, origin in waiting:
            if owner is not None and not origin.relayed and self._relay_to(owner, message, origin):
                continue
            try:
                if type(message) is not Request:
                    assert isinstance(message, Response)  # to the adopted transaction, or the TU's strays
                    self._response(message, origin, now, adopt=False)
                elif tx is not None or (message.method == "CANCEL" and not stored):
                    self._request(message, origin, now, adopt=False)
                elif message.method != "ACK":  # (an ACK: the TU saw it already)
                    # Stored, but a live owner elsewhere holds it: its own timers carry on.
                    self.drop("owned_elsewhere", origin.remote, message)
            except (InvalidTransitionError, TransactionMismatchError) as exc:
                self.drop("invalid_transition", origin.remote, message, error=str(exc)[:200])

    def _relay_to(self, owner: str, message: Request | Response, origin: Source) -> bool:
        if self.relay is None or origin.transport.protocol != "UDP":
            return False
        if not self.relay.forward(owner, message.to_bytes(), origin.transport.local, origin.remote):
            return False
        if self.metrics is not None:
            self.metrics.relayed.inc()
        return True

    def install(self, tx: Transaction, now: float) -> bool:
        """Take ``tx`` (restored from the store) into the layer: matched, timed, committed
        before anything it queued is sent. False if a transaction with its key is live here."""
        table = self.server if tx.ROLE == "server" else self.client
        if tx.key in table:
            return False
        table[tx.key] = tx
        if tx.ROLE == "server":
            cseq = tx.request.cseq
            if cseq is not None:
                origin = (tx.request.call_id, tx.request.from_tag, cseq.number, cseq.method)
                self._origins[origin] = tx
                self._origin_of[tx] = origin
        self._touch(tx)
        if self.core is not None:
            self.core.transaction_adopted(tx, now)
        return True

    def detach(self, tx: Transaction) -> None:
        """Stop acting for ``tx`` (handed over to another node): no timer, no TU state,
        no match; the store is not told (the hand-over writes it)."""
        self._dirty.pop(tx, None)
        self._remove(tx)

    def lost(self, txs: Collection[Transaction]) -> None:
        """The store found these taken by another node (a resync after Redis was away, or
        after this node's lease lapsed): drop them, send nothing more for them."""
        for tx in txs:
            table = self.server if tx.ROLE == "server" else self.client
            if table.get(tx.key) is tx:
                self._fenced(tx)

    def live_transactions(self) -> list[Transaction]:
        return [*self.server.values(), *self.client.values()]

    def _send(
        self, transport: Transport, message: Request | Response, destination: Address, tx: Transaction | None
    ) -> None:
        data = message.to_bytes()
        retransmission = False
        if tx is not None:
            # A transaction resends only what it sent last (the request until a response
            # comes, then the last response, or the ACK of a non-2xx final): the same
            # bytes as the previous send of this transaction are a retransmission.
            digest = hash(data)
            retransmission = self._sent.get(tx) == digest
            self._sent[tx] = digest
        if type(message) is Request:
            method, status = message.method, None
        else:
            assert isinstance(message, Response)
            method, status = _cseq_method(message), message.status_code
        self._send_bytes(transport, data, destination, tx, method, status, retransmission)

    def _send_bytes(  # noqa: PLR0917 - the hot path: no keyword overhead
        self,
        transport: Transport,
        data: bytes,
        destination: Address,
        tx: Transaction | None,
        method: str | None,
        status: int | None,
        retransmission: bool = False,
    ) -> None:
        if self.metrics is not None:
            self.metrics.message_out(method, status, retransmission)
        try:
            # A datagram send fails now or never (raised here); a stream send may fail later.
            on_error = None if tx is None or transport.protocol == "UDP" else self._send_failed(tx)
            transport.send(data, destination, on_error=on_error)
        except (OSError, ValueError) as exc:
            if tx is not None:
                self._send_failed(tx)(exc)
            else:
                self.drop("send_failed", destination, None, error=str(exc))

    def _send_failed(self, tx: Transaction) -> Callable[[Exception], None]:
        def failed(exc: Exception) -> None:  # §17.1.4, §17.2.4: inform the transaction
            if tx.terminated:
                return
            try:
                tx.transport_error(self.clock(), str(exc))
            except ValueError:
                return  # its state takes no transport error any more (it already moved on)
            self._touch(tx)

        return failed

    # --- stopping ---

    async def settle(self) -> None:
        """Commit what changed this turn and wait until every commit made so far is done."""
        self._flush()
        while self._commit_tail is not None and not self._commit_tail.done():
            await asyncio.shield(self._commit_tail)

    async def drain(self, timeout: float) -> int:
        """Stop taking new requests; wait until live transactions end or ``timeout``. Returns those left."""
        self.accepting = False
        deadline = self.loop.time() + timeout
        while self.live() and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        return self.live()

    def close(self) -> None:
        self.scheduler.close()


def reconnect_address(request: Request, closed: Address) -> Address:
    """RFC 3261 §18.2.2: the request's connection is gone; open one to received (or the
    sent-by host) and the sent-by port."""
    via = request.top_via
    if via is None:
        return closed
    port = via.port if via.port is not None else default_port(via.transport)
    return ((via.received or via.host).strip("[]"), port)


def stamp_via(request: Request, remote: Address) -> None:
    """RFC 3261 §18.2.1 and RFC 3581 §4: note on the top Via where the request came from.

    ``received`` when the sent-by host is not the source address; ``rport``'s
    value when the client asked for it. The response copies the Via, so the
    client sees both, and responses go where RFC 3581 says. Nothing to do for
    the common case of a client that sent from the address it wrote.
    """
    via = request.top_via
    if via is None:
        return
    host = via.host.strip("[]")
    wants_rport = via.rport is True
    if host == remote[0] and not wants_rport:
        return
    params = [(name, value) for name, value in via.params if name not in ("received", "rport")]
    params.append(("received", remote[0]))
    if via.rport is not None:
        params.append(("rport", str(remote[1])))
    port = f":{via.port}" if via.port is not None else ""
    top = f"{via.protocol_name}/{via.protocol_version}/{via.transport} {via.host}{port}" + "".join(
        f";{name}" if value is None else f";{name}={value}" for name, value in params
    )
    others = [_via_text(other) for other in request.via[1:]]
    try:
        request.headers.set("Via", ", ".join([top, *others]))
    except ParseError:
        return  # a Via that parsed as written but not as rebuilt: answer it unstamped


def _via_text(via: Via) -> str:
    port = f":{via.port}" if via.port is not None else ""
    params = "".join(f";{name}" if value is None else f";{name}={value}" for name, value in via.params)
    return f"{via.protocol_name}/{via.protocol_version}/{via.transport} {via.host}{port}{params}"


def _cseq_method(message: Request | Response) -> str:
    cseq = message.cseq
    return cseq.method if cseq is not None else "?"


# Headers a response must copy from the request (§8.2.6.2), long and compact spellings.
_COPIED: dict[bytes, bytes] = {
    b"via": b"Via",
    b"v": b"Via",
    b"from": b"From",
    b"f": b"From",
    b"to": b"To",
    b"t": b"To",
    b"call-id": b"Call-ID",
    b"i": b"Call-ID",
    b"cseq": b"CSeq",
}
_MAX_SALVAGED_LINE = 4096


def stateless_error_response(data: bytes, error: ParseError) -> bytes | None:
    """The error response to an unparseable request, or None to drop it (RFC 3261 §8.2.6, §18.3).

    Only requests get an answer, never an ACK (§17.1.1.3) or a response
    (§18.1.2). The answer copies Via, From, To, Call-ID and CSeq as written;
    without all five (or with a line too long to trust) it is dropped. One
    pass over the header section: linear in the datagram.
    """
    crlf = b"\r\n" in data[:1024]
    separator = b"\r\n" if crlf else b"\n"  # bare LF line ends, as parse_message tolerates
    head_end = data.find(separator * 2)
    head = data if head_end < 0 else data[:head_end]
    lines = head.split(separator)
    start = lines[0].split(b" ", 1)[0]
    if not start or start.startswith(b"SIP/") or start.upper() == b"ACK":
        return None
    copied: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        if len(line) > _MAX_SALVAGED_LINE:
            return None
        name, colon, value = line.partition(b":")
        canonical = _COPIED.get(name.strip(b" \t").lower()) if colon else None
        if canonical is not None:
            value = value.strip(b" \t")
            if not value or b"\r" in value or b"\n" in value:
                return None
            copied.setdefault(canonical, []).append(value)
    if len(copied) < 5:
        return None
    from sipcore.sip.builders import REASON_PHRASES

    code = error.status_code
    out = [f"SIP/2.0 {code} {REASON_PHRASES.get(code, 'Bad Request')}".encode()]
    for canonical in (b"Via", b"From", b"To", b"Call-ID", b"CSeq"):
        values = copied[canonical] if canonical == b"Via" else copied[canonical][:1]
        for value in values:
            tagged = value
            if canonical == b"To" and b";tag=" not in value.lower():
                tag = stateless_tag(
                    copied[b"Via"][0], copied[b"Call-ID"][0], copied[b"From"][0], copied[b"CSeq"][0]
                )
                tagged = value + b";tag=" + tag.encode()
            out.append(canonical + b": " + tagged)
    reason = str(error).replace("\r", " ").replace("\n", " ")[:120]
    out.append(b"Warning: 399 callops " + _quoted(reason))
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"


def stateless_tag(*parts: object) -> str:
    """A To tag derived from what identifies a request: the same for each retransmission of it."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8", "surrogateescape"), digest_size=8, key=_TAG_KEY)
    return digest.hexdigest()


_TAG_KEY = secrets.token_bytes(16)  # per process: tags are not guessable across nodes


def _quoted(text: str) -> bytes:
    cleaned = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\' else "?" for ch in text)
    return f'"{cleaned}"'.encode()
