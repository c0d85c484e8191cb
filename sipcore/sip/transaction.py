"""The four RFC 3261 §17 transaction state machines, with RFC 6026's Accepted state.

Sans-IO in the manner of h11 and aioquic: nothing here touches a socket or a
clock. Every call takes ``now`` (seconds); what to send is queued as
:class:`Outgoing` and taken with :meth:`Transaction.drain_outgoing`; every
running timer is an absolute deadline, so :meth:`Transaction.next_deadline`
says when to call :meth:`Transaction.handle_timer`, which fires whatever is due
in deadline order. A timer that fires is gone; a retransmission timer re-arms
from ``now``.

Each machine is one table ``(state, event) -> handler``. An event its state does
not accept raises :class:`InvalidTransitionError` naming both; a message that
does not belong to the transaction raises :class:`TransactionMismatchError`.

Callbacks (register any number, at any time; they run after the transaction has
finished the step that caused them, in the order the step produced them):

* ``on_state_changed(fn)``: ``fn(tx, old_state, new_state)`` on every state change.
* ``on_response(fn)`` (client transactions): ``fn(tx, response)`` for every response
  passed up to the transaction user: each provisional, the first final response,
  and every 2xx retransmission in Accepted (the TU acknowledges 2xx itself).
  Retransmitted non-2xx finals are absorbed (ACKed again) and not passed up.
* ``on_ack(fn)`` (INVITE server): ``fn(tx, ack)`` when the ACK for a non-2xx final
  response arrives (Completed -> Confirmed), and for an ACK matched in Accepted.
* ``on_error(fn)``: ``fn(tx, failure)`` when a timeout (Timers B, F, H, or the
  Proceeding guard) or a transport error ends the transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from sipcore.sip.builders import make_ack, make_response
from sipcore.sip.errors import InvalidTransitionError, TransactionMismatchError
from sipcore.sip.keys import TransactionKey, default_port
from sipcore.sip.message import Request, Response

if TYPE_CHECKING:
    from sipcore.sip.snapshot import TransactionSnapshot

RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})


class TransactionState(StrEnum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    ACCEPTED = "Accepted"  # RFC 6026 §7.1, §8.4
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


class Event(StrEnum):
    REQUEST = "a retransmitted request"
    ACK = "an ACK"
    PROVISIONAL = "a 1xx response"
    SUCCESS = "a 2xx response"
    FAILURE = "a 3xx-6xx response"
    TU_PROVISIONAL = "a 1xx response from the TU"
    TU_SUCCESS = "a 2xx response from the TU"
    TU_FAILURE = "a 3xx-6xx response from the TU"
    TRANSPORT_ERROR = "a transport error"
    TIMER_A = "Timer A"
    TIMER_B = "Timer B"
    TIMER_C = "the Proceeding guard (Timer C)"
    TIMER_D = "Timer D"
    TIMER_E = "Timer E"
    TIMER_F = "Timer F"
    TIMER_G = "Timer G"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_K = "Timer K"
    TIMER_L = "Timer L"
    TIMER_M = "Timer M"
    TIMER_100 = "the 100 Trying timer"


NON_INVITE_STATES = frozenset(
    {
        TransactionState.TRYING,
        TransactionState.PROCEEDING,
        TransactionState.COMPLETED,
        TransactionState.TERMINATED,
    }
)

TIMER_EVENTS: dict[str, Event] = {
    "A": Event.TIMER_A, "B": Event.TIMER_B, "C": Event.TIMER_C, "D": Event.TIMER_D,
    "E": Event.TIMER_E, "F": Event.TIMER_F, "G": Event.TIMER_G, "H": Event.TIMER_H,
    "I": Event.TIMER_I, "J": Event.TIMER_J, "K": Event.TIMER_K, "L": Event.TIMER_L,
    "M": Event.TIMER_M, "100": Event.TIMER_100,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Timings:
    """RFC 3261 §17.1.1.1 and Table 4 values, in seconds."""

    t1: float = 0.5  # RTT estimate
    t2: float = 4.0  # cap on non-INVITE request and INVITE response retransmissions
    t4: float = 5.0  # how long a message may stay in the network
    timer_d: float = 32.0  # at least 32 s on unreliable transports (§17.1.1.2)
    trying_delay: float = 0.2  # send 100 Trying unless the TU answered first (§17.2.1)
    proceeding_guard: float = 180.0  # like Timer C (§16.6): no INVITE client lives forever

    def __post_init__(self) -> None:
        for name in ("t1", "t2", "t4", "trying_delay", "proceeding_guard"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Timings.{name} must be positive, got {getattr(self, name)!r}")
        if self.t2 < self.t1:
            raise ValueError(f"Timings.t2 ({self.t2}) must not be below t1 ({self.t1})")
        if self.timer_d < 32.0:
            raise ValueError(
                f"Timings.timer_d must be at least 32 s (RFC 3261 §17.1.1.2), got {self.timer_d}"
            )

    @property
    def transaction_timeout(self) -> float:
        """64*T1: Timers B, F, H, J, L and M."""
        return 64 * self.t1


@dataclass(frozen=True, slots=True)
class TransportInfo:
    """The transport facts a transaction needs: reliability and the two addresses."""

    protocol: str
    reliable: bool
    local: tuple[str, int]
    remote: tuple[str, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", self.protocol.upper())
        object.__setattr__(self, "local", (str(self.local[0]), int(self.local[1])))
        object.__setattr__(self, "remote", (str(self.remote[0]), int(self.remote[1])))
        if self.reliable != (self.protocol in RELIABLE_TRANSPORTS):
            raise ValueError(
                f"{self.protocol} is {'' if self.protocol in RELIABLE_TRANSPORTS else 'not '}reliable"
            )


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to put on the wire now, and where to."""

    message: Request | Response
    destination: tuple[str, int]


@dataclass(frozen=True, slots=True)
class Timer:
    deadline: float  # absolute, in the caller's clock (epoch seconds in production)
    interval: float  # the backoff interval it was armed with


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a transaction ended without a final exchange: a timeout or a transport error."""

    reason: Literal["timeout", "transport"]
    detail: str


TransactionT = TypeVar("TransactionT", bound="Transaction")
# A handler is an unbound method of the machine's class: (tx, now, event data).
Handler = Callable[[Any, float, object], None]
Kind = Literal["invite_client", "non_invite_client", "invite_server", "non_invite_server"]


@dataclass
class _Callbacks:
    state_changed: list[Callable[..., object]] = field(default_factory=list)
    response: list[Callable[..., object]] = field(default_factory=list)
    ack: list[Callable[..., object]] = field(default_factory=list)
    error: list[Callable[..., object]] = field(default_factory=list)


class Transaction:
    """What the four machines share. Use a concrete class, or ``restore_transaction``."""

    KIND: ClassVar[Kind]
    ROLE: ClassVar[Literal["client", "server"]]
    INITIAL_STATE: ClassVar[TransactionState]
    STATES: ClassVar[frozenset[TransactionState]]
    TABLE: ClassVar[dict[tuple[TransactionState, Event], Handler]]

    request: Request
    transport: TransportInfo
    timings: Timings
    state: TransactionState
    key: TransactionKey
    last_response: Response | None
    created_at: float
    updated_at: float
    version: int  # grows with every change a restore must see

    def __init__(
        self, request: Request, transport: TransportInfo, now: float, timings: Timings | None = None
    ):
        self._check_request(request)
        self._setup(
            request=request,
            transport=transport,
            timings=timings or Timings(),
            state=self.INITIAL_STATE,
            created_at=now,
            updated_at=now,
            last_response=None,
            timers={},
            version=0,
        )
        self._start(now)
        self._notify()

    # --- construction ---

    def _setup(
        self,
        *,
        request: Request,
        transport: TransportInfo,
        timings: Timings,
        state: TransactionState,
        created_at: float,
        updated_at: float,
        last_response: Response | None,
        timers: dict[str, Timer],
        version: int,
        key: TransactionKey | None = None,
    ) -> None:
        self.request = request
        self.transport = transport
        self.timings = timings
        self.state = state
        self.key = key or self._key_of(request)
        self.last_response = last_response
        self.created_at = created_at
        self.updated_at = updated_at
        self.version = version
        self._timers = dict(timers)
        self._outgoing: list[Outgoing] = []
        self._callbacks = _Callbacks()
        self._notifications: list[tuple[list[Callable[..., object]], tuple[object, ...]]] = []

    @classmethod
    def _check_request(cls, request: Request) -> None:
        raise NotImplementedError

    @classmethod
    def events_accepted_in(cls, state: TransactionState) -> frozenset[Event]:
        """The events this machine's table accepts in ``state``."""
        cache = cls.__dict__.get("_accepted")
        if cache is None:
            cache = {}
            for table_state, event in cls.TABLE:
                cache.setdefault(table_state, set()).add(event)
            cache = {state_: frozenset(events) for state_, events in cache.items()}
            cls._accepted = cache  # type: ignore[attr-defined]
        accepted: frozenset[Event] = cache.get(state, frozenset())
        return accepted

    @classmethod
    def _key_of(cls, request: Request) -> TransactionKey:
        if cls.ROLE == "client":
            return TransactionKey.for_client(request)
        return TransactionKey.for_server(request)

    def _start(self, now: float) -> None:
        """What a new transaction does first (send the request, arm timers)."""

    # --- public API ---

    def on_state_changed(self, fn: Callable[..., object]) -> Callable[..., object]:
        self._callbacks.state_changed.append(fn)
        return fn

    def on_response(self, fn: Callable[..., object]) -> Callable[..., object]:
        self._callbacks.response.append(fn)
        return fn

    def on_ack(self, fn: Callable[..., object]) -> Callable[..., object]:
        self._callbacks.ack.append(fn)
        return fn

    def on_error(self, fn: Callable[..., object]) -> Callable[..., object]:
        self._callbacks.error.append(fn)
        return fn

    @property
    def terminated(self) -> bool:
        return self.state is TransactionState.TERMINATED

    @property
    def timers(self) -> dict[str, Timer]:
        """The running timers by name (a copy)."""
        return dict(self._timers)

    def next_deadline(self) -> float | None:
        """The earliest running timer's deadline, or None when no timer runs."""
        return min((timer.deadline for timer in self._timers.values()), default=None)

    def drain_outgoing(self) -> list[Outgoing]:
        """What to put on the wire now; the queue is emptied."""
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``, earliest first; timers not yet due stay."""
        while True:
            due = [(timer.deadline, name) for name, timer in self._timers.items() if timer.deadline <= now]
            if not due:
                return
            _, name = min(due)
            timer = self._timers.pop(name)
            self._dispatch(TIMER_EVENTS[name], now, timer)

    def receive(self, message: Request | Response, now: float) -> None:
        """A message from the network that matched this transaction."""
        event = self._event_for_network(message)
        self._dispatch(event, now, message)

    def transport_error(self, now: float, detail: str = "") -> None:
        """The transport could not send what this transaction queued (§17.1.4, §17.2.4)."""
        self._dispatch(Event.TRANSPORT_ERROR, now, detail or "transport error")

    def terminate(self, now: float) -> None:
        """End the transaction now (its TU is done with it). No-op once terminated."""
        if self.state is not TransactionState.TERMINATED:
            self._move(TransactionState.TERMINATED)
            self._changed(now)
            self._notify()

    @classmethod
    def restore(
        cls: type[TransactionT], snapshot: TransactionSnapshot, transport: TransportInfo | None = None
    ) -> TransactionT:
        """``restore_transaction`` for a snapshot known to be of this class."""
        from sipcore.sip.errors import InvalidSnapshotError
        from sipcore.sip.snapshot import restore_transaction

        if snapshot.kind != cls.KIND:
            raise InvalidSnapshotError(f"a {snapshot.kind} snapshot cannot restore a {cls.__name__}")
        tx = restore_transaction(snapshot, transport)
        assert isinstance(tx, cls)
        return tx

    def snapshot(self) -> TransactionSnapshot:
        """A consistent, self-contained copy of everything a restore needs (taken between inputs)."""
        from sipcore.sip.snapshot import snapshot_of  # snapshot.py builds on this module

        return snapshot_of(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key} {self.state.value}>"

    # --- machinery ---

    def _dispatch(self, event: Event, now: float, data: object) -> None:
        handler = self.TABLE.get((self.state, event))
        if handler is None:
            raise InvalidTransitionError(type(self).__name__, self.state.value, event.value)
        handler(self, now, data)
        self._changed(now)
        self._notify()

    def _changed(self, now: float) -> None:
        self.updated_at = now
        self.version += 1

    def _notify(self) -> None:
        notifications, self._notifications = self._notifications, []
        for callbacks, args in notifications:
            for fn in list(callbacks):
                fn(self, *args)

    def _move(self, state: TransactionState) -> None:
        old, self.state = self.state, state
        if state is TransactionState.TERMINATED:
            self._timers.clear()
        self._notifications.append((self._callbacks.state_changed, (old, state)))

    def _arm(self, name: str, interval: float, now: float) -> None:
        self._timers[name] = Timer(now + interval, interval)

    def _cancel(self, *names: str) -> None:
        for name in names:
            self._timers.pop(name, None)

    def _fail(self, reason: Literal["timeout", "transport"], detail: str) -> None:
        self._notifications.append((self._callbacks.error, (Failure(reason, detail),)))
        self._move(TransactionState.TERMINATED)

    def _on_transport_error(self, now: float, detail: object) -> None:
        self._fail("transport", str(detail))

    def _event_for_network(self, message: Request | Response) -> Event:
        raise NotImplementedError


# ---------------------------------------------------------------------------
# Client transactions
# ---------------------------------------------------------------------------


class _ClientTransaction(Transaction):
    ROLE = "client"

    def _send_request(self) -> None:
        self._outgoing.append(Outgoing(self.request, self.transport.remote))

    def _event_for_network(self, message: Request | Response) -> Event:
        if not isinstance(message, Response):
            raise TransactionMismatchError(f"a client transaction receives responses, not {message.method}")
        if TransactionKey.for_client(message) != self.key:
            raise TransactionMismatchError(
                f"response with branch {message.branch!r} and CSeq {message.cseq} does not match {self.key}"
            )
        if message.status_code < 200:
            return Event.PROVISIONAL
        return Event.SUCCESS if message.status_code < 300 else Event.FAILURE

    def _pass_up(self, response: object) -> None:
        self._notifications.append((self._callbacks.response, (response,)))

    def _absorb(self, now: float, data: object) -> None:
        """Retransmissions the transaction has already handled."""


class InviteClientTransaction(_ClientTransaction):
    """RFC 3261 §17.1.1, with RFC 6026 §8.4's Accepted state."""

    KIND = "invite_client"
    INITIAL_STATE = TransactionState.CALLING
    STATES = frozenset(
        {TransactionState.CALLING, TransactionState.PROCEEDING, TransactionState.COMPLETED,
         TransactionState.ACCEPTED, TransactionState.TERMINATED}
    )  # fmt: skip

    @classmethod
    def _check_request(cls, request: Request) -> None:
        if request.method != "INVITE":
            raise ValueError(f"an INVITE client transaction sends an INVITE, not {request.method}")
        if not request.branch:
            raise ValueError("the request needs a Via branch (see new_branch())")

    @property
    def ack(self) -> Request | None:
        """The ACK this transaction sent for a non-2xx final response (§17.1.1.3)."""
        if self.last_response is None or self.last_response.status_code < 300:
            return None
        return make_ack(self.request, self.last_response)

    def _start(self, now: float) -> None:  # §17.1.1.2
        self._send_request()
        if not self.transport.reliable:
            self._arm("A", self.timings.t1, now)
        self._arm("B", self.timings.transaction_timeout, now)

    def _retransmit(self, now: float, timer: object) -> None:  # Timer A doubles each time
        assert isinstance(timer, Timer)
        self._send_request()
        self._arm("A", timer.interval * 2, now)

    def _timeout(self, now: float, timer: object) -> None:  # Timer B
        self._fail("timeout", "Timer B: no response to the INVITE")

    def _guard_expired(self, now: float, timer: object) -> None:
        # RFC 3261 §16.8 leaves Timer C's outcome to the TU (CANCEL or 408); it
        # hears of it here, and the transaction ends rather than live forever.
        self._fail("timeout", "Proceeding guard: no final response (send CANCEL)")

    def _provisional(self, now: float, response: object) -> None:
        assert isinstance(response, Response)
        if self.state is TransactionState.CALLING:
            self._cancel("A", "B")
            self._move(TransactionState.PROCEEDING)
            self._arm("C", self.timings.proceeding_guard, now)
        elif response.status_code > 100:  # §16.7: a provisional other than 100 resets Timer C
            self._arm("C", self.timings.proceeding_guard, now)
        self.last_response = response
        self._pass_up(response)

    def _success(self, now: float, response: object) -> None:  # RFC 6026 §8.4
        assert isinstance(response, Response)
        self._cancel("A", "B", "C")
        self.last_response = response
        self._move(TransactionState.ACCEPTED)
        self._arm("M", self.timings.transaction_timeout, now)
        self._pass_up(response)

    def _failure(self, now: float, response: object) -> None:  # §17.1.1.2
        assert isinstance(response, Response)
        self._cancel("A", "B", "C")
        self.last_response = response
        self._outgoing.append(Outgoing(make_ack(self.request, response), self.transport.remote))
        self._pass_up(response)
        if self.transport.reliable:  # Timer D is zero on reliable transports
            self._move(TransactionState.COMPLETED)
            self._move(TransactionState.TERMINATED)
        else:
            self._move(TransactionState.COMPLETED)
            self._arm("D", self.timings.timer_d, now)

    def _reack(self, now: float, response: object) -> None:  # retransmitted final: ACK again
        ack = self.ack
        assert ack is not None
        self._outgoing.append(Outgoing(ack, self.transport.remote))

    def _accepted_success(self, now: float, response: object) -> None:
        self._pass_up(response)  # the TU ACKs each 2xx (RFC 6026 §8.4)

    def _end(self, now: float, timer: object) -> None:  # Timers D and M
        self._move(TransactionState.TERMINATED)

    S, E = TransactionState, Event
    TABLE: ClassVar[dict[tuple[TransactionState, Event], Handler]] = {
        (S.CALLING, E.TIMER_A): _retransmit,
        (S.CALLING, E.TIMER_B): _timeout,
        (S.CALLING, E.PROVISIONAL): _provisional,
        (S.CALLING, E.SUCCESS): _success,
        (S.CALLING, E.FAILURE): _failure,
        (S.CALLING, E.TRANSPORT_ERROR): Transaction._on_transport_error,
        (S.PROCEEDING, E.PROVISIONAL): _provisional,
        (S.PROCEEDING, E.SUCCESS): _success,
        (S.PROCEEDING, E.FAILURE): _failure,
        (S.PROCEEDING, E.TIMER_C): _guard_expired,
        (S.PROCEEDING, E.TRANSPORT_ERROR): Transaction._on_transport_error,
        (S.COMPLETED, E.FAILURE): _reack,
        (S.COMPLETED, E.TIMER_D): _end,
        (S.COMPLETED, E.TRANSPORT_ERROR): Transaction._on_transport_error,
        (S.ACCEPTED, E.SUCCESS): _accepted_success,
        (S.ACCEPTED, E.TIMER_M): _end,
    }
    del S, E


class NonInviteClientTransaction(_ClientTransaction):
    """RFC 3261 §17.1.2."""

    KIND = "non_invite_client"
    INITIAL_STATE = TransactionState.TRYING
    STATES = NON_INVITE_STATES

    @classmethod
    def _check_request(cls, request: Request) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"a non-INVITE client transaction cannot send {request.method}")
        if not request.branch:
            raise ValueError("the request needs a Via branch (see new_branch())")

    def _start(self, now: float) -> None:  # §17.1.2.2
        self._send_request()
        if not self.transport.reliable:
            self._arm("E", self.timings.t1, now)
        self._arm("F", self.timings.transaction_timeout, now)

    def _retransmit(self, now: float, timer: object) -> None:
        assert isinstance(timer, Timer)
        self._send_request()
        # Trying: E doubles up to T2; Proceeding: E is T2 (§17.1.2.2).
        interval = min(timer.interval * 2, self.timings.t2)
        if self.state is TransactionState.PROCEEDING:
            interval = self.timings.t2
        self._arm("E", interval, now)

    def _timeout(self, now: float, timer: object) -> None:  # Timer F
        self._fail("timeout", "Timer F: no final response")

    def _provisional(self, now: float, response: object) -> None:
        assert isinstance(response, Response)
        self.last_response = response
        if self.state is TransactionState.TRYING:
            self._move(TransactionState.PROCEEDING)
        self._pass_up(response)

    def _final(self, now: float, response: object) -> None:
        assert isinstance(response, Response)
        self._cancel("E", "F")
        self.last_response = response
        self._pass_up(response)
        self._move(TransactionState.COMPLETED)
        if self.transport.reliable:  # Timer K is zero on reliable transports
            self._move(TransactionState.TERMINATED)
        else:
            self._arm("K", self.timings.t4, now)

    def _end(self, now: float, timer: object) -> None:  # Timer K
        self._move(TransactionState.TERMINATED)

    S, E = TransactionState, Event
    TABLE: ClassVar[dict[tuple[TransactionState, Event], Handler]] = {
        (S.TRYING, E.TIMER_E): _retransmit,
        (S.TRYING, E.TIMER_F): _timeout,
        (S.TRYING, E.PROVISIONAL): _provisional,
        (S.TRYING, E.SUCCESS): _final,
        (S.TRYING, E.FAILURE): _final,
        (S.TRYING, E.TRANSPORT_ERROR): Transaction._on_transport_error,
        (S.PROCEEDING, E.TIMER_E): _retransmit,
        (S.PROCEEDING, E.TIMER_F): _timeout,
        (S.PROCEEDING, E.PROVISIONAL): _provisional,
        (S.PROCEEDING, E.SUCCESS): _final,
        (S.PROCEEDING, E.FAILURE): _final,
        (S.PROCEEDING, E.TRANSPORT_ERROR): Transaction._on_transport_error,
        # Completed buffers retransmissions of the final response (§17.1.2.2).
        (S.COMPLETED, E.PROVISIONAL): _ClientTransaction._absorb,
        (S.COMPLETED, E.SUCCESS): _ClientTransaction._absorb,
        (S.COMPLETED, E.FAILURE): _ClientTransaction._absorb,
        (S.COMPLETED, E.TIMER_K): _end,
    }
    del S, E


# ---------------------------------------------------------------------------
# Server transactions
# ---------------------------------------------------------------------------


class _ServerTransaction(Transaction):
    ROLE = "server"

    def send_response(self, response: Response, now: float) -> None:
        """The transaction user answers the request."""
        self._check_response(response)
        if response.status_code < 200:
            event = Event.TU_PROVISIONAL
        else:
            event = Event.TU_SUCCESS if response.status_code < 300 else Event.TU_FAILURE
        self._dispatch(event, now, response)

    def _check_response(self, response: Response) -> None:
        request = self.request
        problems = []
        if response.branch != request.branch or response.sent_by != request.sent_by:
            problems.append("top Via")
        if response.call_id != request.call_id:
            problems.append("Call-ID")
        if response.from_ != request.from_:
            problems.append("From")
        to, request_to = response.to, request.to
        if to is None or request_to is None or to.uri != request_to.uri:
            problems.append("To")
        elif request_to.tag is not None and to.tag != request_to.tag:
            problems.append("To tag")
        if response.cseq != request.cseq:
            problems.append("CSeq")
        if problems:
            raise TransactionMismatchError(
                f"the response does not belong to {self.key}: {', '.join(problems)} differ from the request"
            )

    def _event_for_network(self, message: Request | Response) -> Event:
        if not isinstance(message, Request):
            raise TransactionMismatchError(
                f"a server transaction receives requests, not a {message.status_code}"
            )
        if TransactionKey.for_server(message) != self.key:
            raise TransactionMismatchError(
                f"{message.method} with branch {message.branch!r} does not match {self.key}"
            )
        if message.method == "ACK":
            if self.key.is_rfc2543:
                # RFC 3261 §17.2.3: the ACK's To tag must be that of the response sent.
                last_tag = self.last_response.to_tag if self.last_response else None
                if message.to_tag != last_tag:
                    raise TransactionMismatchError(
                        f"ACK To tag {message.to_tag!r} is not the response's {last_tag!r}"
                    )
            return Event.ACK
        if message.method != self.request.method:
            raise TransactionMismatchError(
                f"{message.method} does not match a {self.request.method} transaction"
            )
        return Event.REQUEST

    def response_destination(self) -> tuple[str, int]:
        """Where responses go (RFC 3261 §18.2.2, RFC 3581 for rport)."""
        if self.transport.reliable:
            return self.transport.remote  # back on the connection the request came in on
        via = self.request.top_via
        assert via is not None
        port = via.port if via.port is not None else default_port(via.transport)
        if via.maddr:
            return (via.maddr, port)
        if via.rport is not None:
            return self.transport.remote  # source address and port of the request
        return (via.received or self.transport.remote[0], port)

    def _send(self, response: Response) -> None:
        self.last_response = response
        self._outgoing.append(Outgoing(response, self.response_destination()))

    def _resend_last(self, now: float, data: object) -> None:
        """A retransmitted request: send the last response again, if there is one."""
        if self.last_response is not None:
            self._outgoing.append(Outgoing(self.last_response, self.response_destination()))

    def _absorb(self, now: float, data: object) -> None:
        """Retransmissions and late messages the transaction has no more use for."""


class InviteServerTransaction(_ServerTransaction):
    """RFC 3261 §17.2.1, with RFC 6026 §7.1's Accepted state."""

    KIND = "invite_server"
    INITIAL_STATE = TransactionState.PROCEEDING
    STATES = frozenset(
        {TransactionState.PROCEEDING, TransactionState.COMPLETED, TransactionState.CONFIRMED,
         TransactionState.ACCEPTED, TransactionState.TERMINATED}
    )  # fmt: skip

    @classmethod
    def _check_request(cls, request: Request) -> None:
        if request.method != "INVITE":
            raise ValueError(f"an INVITE server transaction serves an INVITE, not {request.method}")

    def _start(self, now: float) -> None:
        # §17.2.1: a 100 Trying unless the TU answers within 200 ms.
        self._arm("100", self.timings.trying_delay, now)

    def _send_trying(self, now: float, timer: object) -> None:
        self._send(make_response(self.request, 100))

    def _provisional(self, now: float, response: object) -> None:
        assert isinstance(response, Response)
        self._cancel("100")
        self._send(response)

    def _success(self, now: float, response: object) -> None:  # RFC 6026 §7.1
        assert isinstance(response, Response)
        self._cancel("100")
        self._send(response)
        self._move(TransactionState.ACCEPTED)
        self._arm("L", self.timings.transaction_timeout, now)

    def _failure(self, now: float, response: object) -> None:  # §17.2.1
        assert isinstance(response, Response)
        self._cancel("100")
        self._send(response)
        self._move(TransactionState.COMPLETED)
        if not self.transport.reliable:
            self._arm("G", self.timings.t1, now)
        self._arm("H", self.timings.transaction_timeout, now)

    def _retransmit_final(self, now: float, timer: object) -> None:  # Timer G: doubles up to T2
        assert isinstance(timer, Timer)
        self._resend_last(now, timer)
        self._arm("G", min(timer.interval * 2, self.timings.t2), now)

    def _ack_timeout(self, now: float, timer: object) -> None:  # Timer H
        self._fail("timeout", "Timer H: no ACK for the final response")

    def _confirmed(self, now: float, ack: object) -> None:
        self._cancel("G", "H")
        self._notifications.append((self._callbacks.ack, (ack,)))
        self._move(TransactionState.CONFIRMED)
        if self.transport.reliable:  # Timer I is zero on reliable transports
            self._move(TransactionState.TERMINATED)
        else:
            self._arm("I", self.timings.t4, now)

    def _accepted_success(self, now: float, response: object) -> None:
        assert isinstance(response, Response)
        self._send(response)  # the TU retransmits its 2xx through Accepted (RFC 6026 §7.1)

    def _accepted_ack(self, now: float, ack: object) -> None:
        self._notifications.append((self._callbacks.ack, (ack,)))

    def _end(self, now: float, timer: object) -> None:  # Timers I and L
        self._move(TransactionState.TERMINATED)

    S, E = TransactionState, Event
    TABLE: ClassVar[dict[tuple[TransactionState, Event], Handler]] = {
        (S.PROCEEDING, E.TIMER_100): _send_trying,
        (S.PROCEEDING, E.REQUEST): _ServerTransaction._resend_last,
        (S.PROCEEDING, E.TU_PROVISIONAL): _provisional,
        (S.PROCEEDING, E.TU_SUCCESS): _success,
        (S.PROCEEDING, E.TU_FAILURE): _failure,
        (S.PROCEEDING, E.TRANSPORT_ERROR): Transaction._on_transport_error,
        (S.COMPLETED, E.TIMER_G): _retransmit_final,
        (S.COMPLETED, E.TIMER_H): _ack_timeout,
        (S.COMPLETED, E.REQUEST): _ServerTransaction._resend_last,
        (S.COMPLETED, E.ACK): _confirmed,
        (S.COMPLETED, E.TRANSPORT_ERROR): Transaction._on_transport_error,
        (S.CONFIRMED, E.ACK): _ServerTransaction._absorb,
        (S.CONFIRMED, E.REQUEST): _ServerTransaction._absorb,
        (S.CONFIRMED, E.TIMER_I): _end,
        (S.ACCEPTED, E.REQUEST): _ServerTransaction._absorb,  # RFC 6026: absorbed, not answered
        (S.ACCEPTED, E.TU_SUCCESS): _accepted_success,
        (S.ACCEPTED, E.ACK): _accepted_ack,
        (S.ACCEPTED, E.TIMER_L): _end,
        (S.ACCEPTED, E.TRANSPORT_ERROR): Transaction._on_transport_error,
    }
    del S, E


class NonInviteServerTransaction(_ServerTransaction):
    """RFC 3261 §17.2.2."""

    KIND = "non_invite_server"
    INITIAL_STATE = TransactionState.TRYING
    STATES = NON_INVITE_STATES

    @classmethod
    def _check_request(cls, request: Request) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"a non-INVITE server transaction cannot serve {request.method}")

    def _provisional(self, now: float, response: object) -> None:
        assert isinstance(response, Response)
        self._send(response)
        if self.state is TransactionState.TRYING:
            self._move(TransactionState.PROCEEDING)

    def _final(self, now: float, response: object) -> None:
        assert isinstance(response, Response)
        self._send(response)
        self._move(TransactionState.COMPLETED)
        if self.transport.reliable:  # Timer J is zero on reliable transports
            self._move(TransactionState.TERMINATED)
        else:
            self._arm("J", self.timings.transaction_timeout, now)

    def _end(self, now: float, timer: object) -> None:  # Timer J
        self._move(TransactionState.TERMINATED)

    S, E = TransactionState, Event
    TABLE: ClassVar[dict[tuple[TransactionState, Event], Handler]] = {
        (S.TRYING, E.REQUEST): _ServerTransaction._absorb,  # nothing to answer with yet
        (S.TRYING, E.TU_PROVISIONAL): _provisional,
        (S.TRYING, E.TU_SUCCESS): _final,
        (S.TRYING, E.TU_FAILURE): _final,
        (S.TRYING, E.TRANSPORT_ERROR): Transaction._on_transport_error,
        (S.PROCEEDING, E.REQUEST): _ServerTransaction._resend_last,
        (S.PROCEEDING, E.TU_PROVISIONAL): _provisional,
        (S.PROCEEDING, E.TU_SUCCESS): _final,
        (S.PROCEEDING, E.TU_FAILURE): _final,
        (S.PROCEEDING, E.TRANSPORT_ERROR): Transaction._on_transport_error,
        (S.COMPLETED, E.REQUEST): _ServerTransaction._resend_last,
        # §17.2.2: further final responses from the TU are discarded.
        (S.COMPLETED, E.TU_SUCCESS): _ServerTransaction._absorb,
        (S.COMPLETED, E.TU_FAILURE): _ServerTransaction._absorb,
        (S.COMPLETED, E.TIMER_J): _end,
        (S.COMPLETED, E.TRANSPORT_ERROR): Transaction._on_transport_error,
    }
    del S, E


TRANSACTION_CLASSES: dict[str, type[Transaction]] = {
    cls.KIND: cls
    for cls in (
        InviteClientTransaction,
        NonInviteClientTransaction,
        InviteServerTransaction,
        NonInviteServerTransaction,
    )
}
