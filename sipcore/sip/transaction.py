"""The four RFC 3261 §17 transaction state machines, with RFC 6026's Accepted state.

Sans-IO in the manner of h11 and aioquic: nothing here touches a socket or a
clock. Every call takes ``now`` (seconds); what to send is queued as
:class:`Outgoing` and taken with :meth:`Transaction.drain_outgoing`; every
running timer is an absolute deadline, so :meth:`Transaction.next_deadline`
says when to call :meth:`Transaction.handle_timer`, which fires whatever is due
in deadline order. A timer that fires is gone; a retransmission timer re-arms
from ``now``.

Each machine is one table ``(state, event) -> Transition(action, target)``: the
action does the side effects (send, arm timers, tell the TU) and the machine
then moves to ``target``, so the state graph is in the table alone
(:meth:`Transaction.transitions`). A timer that is zero on reliable transports
(D, I, J, K) is not armed: its row runs at once, in the same step. An event the
state does not accept raises :class:`InvalidTransitionError` naming both; a
message that does not belong to the transaction raises
:class:`TransactionMismatchError`. ``terminate()`` (the TU is done) is the one
way out that is not in the tables: it ends any state.

Messages are private: a request given to a constructor, a response given to
``send_response`` and a message received are copied as they come in;
``request``, ``last_response`` and each ``Outgoing.message`` are copies. Nothing a
caller holds can change what the transaction retransmits or snapshots.

Callbacks (register any number, at any time; they run after the transaction has
finished the step that caused them, in the order the step produced them: the
action's, then the state change):

* ``on_state_changed(fn)``: ``fn(tx, old_state, new_state)`` on every state change.
* ``on_response(fn)`` (client transactions): ``fn(tx, response)`` for every response
  passed up to the transaction user: each provisional, the first final response,
  every 2xx retransmission in Accepted, and a 2xx from another fork after a
  3xx-6xx (the TU acknowledges every 2xx itself, and ends that dialog, §13.2.2.4).
  Retransmitted non-2xx finals are absorbed (ACKed again) and not passed up.
* ``on_ack(fn)`` (INVITE server): ``fn(tx, ack)`` when the ACK for a non-2xx final
  response arrives (Completed -> Confirmed), and for an ACK matched in Accepted.
* ``on_error(fn)``: ``fn(tx, failure)`` on a timeout or a transport error. Most end
  the transaction; two do not: the Proceeding guard (the TU should CANCEL; the
  transaction waits 64*T1 more for the final response, and ACKs it), and a
  transport error in an INVITE server transaction (RFC 6026 §7.1: it keeps its
  state). ``tx.terminated`` tells which.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar, Final, Literal, TypeVar

from sipcore.sip.builders import make_ack, make_response
from sipcore.sip.errors import (
    InvalidSnapshotError,
    InvalidTransitionError,
    ParseError,
    TransactionMismatchError,
)
from sipcore.sip.keys import TransactionKey, default_port
from sipcore.sip.limits import ParserLimits
from sipcore.sip.message import Request, Response, parse_message
from sipcore.sip.snapshot import SCHEMA_VERSION, TransactionSnapshot, check_snapshot_data
from sipcore.sip.timers import (
    DEFAULT_TIMINGS,
    MAX_CLOCK,
    RELIABLE_TRANSPORTS,
    Timer,
    Timings,
    TransportInfo,
    check_clock,
    new_timer,
)

__all__ = [
    "RELIABLE_TRANSPORTS",
    "TRANSACTION_CLASSES",
    "Event",
    "Failure",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "Outgoing",
    "Shape",
    "Timer",
    "Timings",
    "Transaction",
    "TransactionState",
    "Transition",
    "TransportInfo",
    "restore_transaction",
]


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


# ``Transaction.last_event`` names the last event a machine ran a table row for by
# its member name, lower-cased ("request", "tu_success", "timer_g", "transport_error"),
# a stable identifier for stores and audit trails (the values are prose for
# errors); besides these, "created", "restored" and "terminate" (see last_event).
EVENT_IDS: Final[Mapping[Event, str]] = {event: event.name.lower() for event in Event}

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


def _on_doubling(interval: float, first: float, cap: float) -> bool:
    """Whether ``interval`` is one of first, 2*first, 4*first... capped at ``cap``."""
    value = first
    while value < cap:  # at most log2(MAX_INTERVAL / MIN_INTERVAL) = 44 steps
        if interval == value:
            return True
        value *= 2
    return interval == cap


# The intervals each timer can be armed with (checked on restore): retransmission
# timers double from T1 (A up to 64*T1, where Timer B has ended the transaction;
# E and G up to T2), every other timer has one value.
LEGAL_INTERVALS: dict[str, Callable[[Timings, float], bool]] = {
    "A": lambda t, v: _on_doubling(v, t.t1, t.transaction_timeout),
    "B": lambda t, v: v == t.transaction_timeout,
    "C": lambda t, v: v == t.proceeding_guard,
    "D": lambda t, v: v == t.timer_d,
    "E": lambda t, v: _on_doubling(v, t.t1, t.t2),
    "F": lambda t, v: v == t.transaction_timeout,
    "G": lambda t, v: _on_doubling(v, t.t1, t.t2),
    "H": lambda t, v: v == t.transaction_timeout,
    "I": lambda t, v: v == t.t4,
    "J": lambda t, v: v == t.transaction_timeout,
    "K": lambda t, v: v == t.t4,
    "L": lambda t, v: v == t.transaction_timeout,
    "M": lambda t, v: v == t.transaction_timeout,
    "100": lambda t, v: v == t.trying_delay,
}


# Each retransmission timer runs beside the timeout that ends its retransmissions,
# both armed at the same instant: the timeout at 64*T1 (§17.1.1.2 A/B, §17.1.2.2 E/F,
# §17.2.1 G/H), the retransmission at T1 or later. So the timeout is never more than
# 64*T1 after the retransmission's deadline; a snapshot that says otherwise would
# retransmit for as long as it likes.
RETRANSMISSION_LIMITS: tuple[tuple[str, str], ...] = (("A", "B"), ("E", "F"), ("G", "H"))


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to put on the wire now, and where to."""

    message: Request | Response
    destination: tuple[str, int]


# Built for every message sent: through the slots' descriptors, as
# sipcore.sip.timers.new_timer does (the frozen __init__ costs twice as much).
_set_message = Outgoing.__dict__["message"].__set__
_set_destination = Outgoing.__dict__["destination"].__set__


def _new_outgoing(message: Request | Response, destination: tuple[str, int]) -> Outgoing:
    outgoing: Outgoing = object.__new__(Outgoing)
    _set_message(outgoing, message)
    _set_destination(outgoing, destination)
    return outgoing


@dataclass(frozen=True, slots=True)
class _ViaRoute:
    """What a compacted server transaction keeps of the top Via to address its responses."""

    maddr: str | None
    port: int
    rport: bool
    received: str | None


@functools.lru_cache(maxsize=64)
def _plain_route(port: int) -> _ViaRoute:
    """Responses to the sent-by's port, nothing else said (immutable: shared)."""
    return _ViaRoute(None, port, False, None)


def _via_route_of(request: Request) -> _ViaRoute | None:
    """What responses to ``request`` need of its top Via (RFC 3261 §18.2.2, RFC 3581 §4)."""
    seeds = request.headers._seeds.get("via")
    if not seeds:
        return None
    top = seeds[0]  # groups: protocol, version, transport, host, port, params
    port = int(top[5]) if top[5] is not None else default_port(top[3])
    params = top[6].lower()
    if "maddr" not in params and "received" not in params and "rport" not in params:
        return _plain_route(port)  # the common case, without building the Via
    via = request.top_via
    assert via is not None
    return _ViaRoute(via.maddr, port, via.rport is not None, via.received)


@dataclass(frozen=True, slots=True)
class Failure:
    """A timeout or a transport error, as the TU hears of it."""

    reason: Literal["timeout", "transport"]
    detail: str


TransactionT = TypeVar("TransactionT", bound="Transaction")
MessageT = TypeVar("MessageT", Request, Response)
# An action is an unbound method of the machine's class: (tx, now, event data).
Action = Callable[[Any, float, object], None]
Handler = Action  # the name earlier versions used
Kind = Literal["invite_client", "non_invite_client", "invite_server", "non_invite_server"]
ResponseClass = Literal["none", "1xx", "2xx", "3xx-6xx"]
ANY_RESPONSE: frozenset[ResponseClass] = frozenset({"none", "1xx", "2xx", "3xx-6xx"})


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of a machine's table: ``action`` does the side effects, then the
    machine is in ``target``."""

    action: Action
    target: TransactionState


@dataclass(frozen=True, slots=True)
class Shape:
    """What a transaction holds in one state, for each transport kind: the timers
    running (None: the state does not last there, its timer being zero) and the
    classes its last response may have. A restore accepts a snapshot only if it
    has one of its state's shapes."""

    unreliable: frozenset[str] | None
    reliable: frozenset[str] | None
    responses: frozenset[ResponseClass]


def _shape(unreliable: str | None, reliable: str | None, responses: str) -> Shape:
    return Shape(
        None if unreliable is None else frozenset(unreliable.split()),
        None if reliable is None else frozenset(reliable.split()),
        frozenset(responses.split()),  # type: ignore[arg-type]
    )


def _response_class(response: Response | None) -> ResponseClass:
    if response is None:
        return "none"
    if response.status_code < 200:
        return "1xx"
    return "2xx" if response.status_code < 300 else "3xx-6xx"


class Transaction:
    """What the four machines share. Use a concrete class, or ``restore_transaction``."""

    KIND: ClassVar[Kind]
    ROLE: ClassVar[Literal["client", "server"]]
    INITIAL_STATE: ClassVar[TransactionState]
    STATES: ClassVar[frozenset[TransactionState]]
    TABLE: ClassVar[Mapping[tuple[TransactionState, Event], Transition]]
    SHAPES: ClassVar[Mapping[TransactionState, tuple[Shape, ...]]]

    transport: TransportInfo
    timings: Timings
    state: TransactionState
    key: TransactionKey
    created_at: float
    updated_at: float
    version: int  # grows with every change a restore must see
    # What last changed the transaction, for a store to record beside its snapshot
    # (not part of the snapshot): the id (EVENT_IDS) of the last event a table row
    # ran for, a zero-length timer's included (a TU_SUCCESS on TCP ends with
    # "timer_j"); "created" after construction, "restored" after a restore,
    # "terminate" after terminate() ended it.
    last_event: str

    def __init__(
        self, request: Request, transport: TransportInfo, now: float, timings: Timings | None = None
    ):
        check_clock(now)
        self._check_request(request)
        # Positional: this runs for every transaction created (keyword calls cost more).
        self._setup(
            request.copy(), transport, timings or DEFAULT_TIMINGS, self.INITIAL_STATE, now, now, None, {}, 0
        )
        self.last_event = "created"
        self._start(now)
        if self._immediate:
            self._run_immediate(now)
        if self._notifications:
            self._notify()

    # --- construction ---

    def _setup(  # noqa: PLR0917 - positional on the hot path (see __init__)
        self,
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
        request_wire: bytes | None = None,
        response_wire: bytes | None = None,
    ) -> None:
        """Adopt messages nobody else holds (copied or freshly parsed); ``timers`` too."""
        self._request_object: Request | None = request  # None once compacted
        self._request_wire = request_wire
        self._method = request.method
        self._response_object: Response | None = last_response  # None once compacted
        self._response_wire = response_wire
        self._via_route: _ViaRoute | None = None  # read off the request's top Via once
        self.transport = transport
        self.timings = timings
        self.state = state
        self.key = key or self._key_of(request)
        self.created_at = created_at
        self.updated_at = updated_at
        self.version = version
        self._timers = timers
        self._immediate: list[str] = []
        self._outgoing: list[Outgoing] = []
        self._state_changed_callbacks: list[Callable[..., object]] = []
        self._response_callbacks: list[Callable[..., object]] = []
        self._ack_callbacks: list[Callable[..., object]] = []
        self._error_callbacks: list[Callable[..., object]] = []
        # (callbacks, arguments) queued by a step, run once it is done (_notify).
        self._notifications: list[tuple[list[Callable[..., object]], tuple[object, ...]]] = []

    @classmethod
    def _check_request(cls, request: Request) -> None:
        raise NotImplementedError

    @classmethod
    def transitions(cls) -> tuple[tuple[TransactionState, Event, TransactionState], ...]:
        """The state graph: one ``(state, event, next state)`` row per table entry."""
        return tuple((state, event, row.target) for (state, event), row in cls.TABLE.items())

    @classmethod
    def events_accepted_in(cls, state: TransactionState) -> frozenset[Event]:
        """The events this machine's table accepts in ``state``."""
        return frozenset(event for table_state, event in cls.TABLE if table_state is state)

    @classmethod
    def _key_of(cls, request: Request) -> TransactionKey:
        if cls.ROLE == "client":
            return TransactionKey.for_client(request)
        return TransactionKey.for_server(request)

    def _start(self, now: float) -> None:
        """What a new transaction does first (send the request, arm timers)."""

    # --- messages: objects, or only their bytes once compacted ---

    @property
    def _request(self) -> Request:
        request = self._request_object
        if request is None:  # compacted: parsed again from the bytes kept (a rare read)
            assert self._request_wire is not None
            return _parse_own(self._request_wire, Request)
        return request

    @property
    def _last_response(self) -> Response | None:
        response = self._response_object
        if response is None and self._response_wire is not None and self._request_object is None:
            return _parse_own(self._response_wire, Response)  # compacted
        return response

    @property
    def compacted(self) -> bool:
        """True once only the messages' bytes are kept (see ``_compact``)."""
        return self._request_object is None

    def _compact(self) -> None:
        """Keep the request and the last response as bytes only.

        A transaction that has nothing left to do but resend its final response
        and absorb retransmissions (a non-INVITE server transaction in Completed,
        RFC 3261 §17.2.2) needs its key, its method, the response's bytes and
        where they go; the parsed messages (lines, matches, typed values) are
        several times larger than their bytes. Reads of ``request`` and
        ``last_response``, a snapshot and a resend work from the bytes.
        """
        request, response = self._request_object, self._response_object
        if request is None:
            return
        if self._request_wire is None:
            self._request_wire = request.to_bytes()
        if response is not None and self._response_wire is None:
            self._response_wire = response.to_bytes()
        if self._via_route is None:
            self._via_route = _via_route_of(request)
        self._request_object = self._response_object = None

    # --- public API ---

    @property
    def request(self) -> Request:
        """The request (a copy: changing it changes nothing here)."""
        if self._request_object is None:
            return self._request  # compacted: freshly parsed, nobody else holds it
        return self._request_object.copy()

    @property
    def last_response(self) -> Response | None:
        """The last response sent (server) or received (client), as a copy."""
        if self._response_object is None:
            return self._last_response  # none, or compacted: freshly parsed
        return self._response_object.copy()

    def on_state_changed(self, fn: Callable[..., object]) -> Callable[..., object]:
        self._state_changed_callbacks.append(fn)
        return fn

    def on_response(self, fn: Callable[..., object]) -> Callable[..., object]:
        self._response_callbacks.append(fn)
        return fn

    def on_ack(self, fn: Callable[..., object]) -> Callable[..., object]:
        self._ack_callbacks.append(fn)
        return fn

    def on_error(self, fn: Callable[..., object]) -> Callable[..., object]:
        self._error_callbacks.append(fn)
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
        timers = self._timers
        if not timers:
            return None
        return min([timer.deadline for timer in timers.values()])

    def drain_outgoing(self) -> list[Outgoing]:
        """What to put on the wire now; the queue is emptied."""
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``, earliest first; timers not yet due stay.

        Each timer fires at most once per call (a retransmission timer re-arms from
        ``now``). When a timer that ends the transaction is due, the retransmissions
        also due are dropped: catching up after a restore, a transaction whose
        timeout fell due while stored ends without sending anything.
        """
        check_clock(now)
        fired: set[str] = set()
        while self.state is not TransactionState.TERMINATED:
            due = sorted(
                (timer.deadline, name)
                for name, timer in self._timers.items()
                if timer.deadline <= now and name not in fired
            )
            if not due:
                return
            if any(self._target_of(name) is TransactionState.TERMINATED for _, name in due):
                due = [(deadline, name) for deadline, name in due if self._target_of(name) is not self.state]
            name = due[0][1]
            fired.add(name)
            self._dispatch(TIMER_EVENTS[name], now, self._timers.pop(name))

    def receive(self, message: Request | Response, now: float) -> None:
        """A message from the network that matched this transaction."""
        if not -MAX_CLOCK <= now <= MAX_CLOCK:  # False for NaN too
            check_clock(now)  # raises
        event = self._event_for_network(message)
        self._dispatch(event, now, message)

    def transport_error(self, now: float, detail: str = "") -> None:
        """The transport could not send what this transaction queued (§17.1.4, §17.2.4)."""
        check_clock(now)
        self._dispatch(Event.TRANSPORT_ERROR, now, detail or "transport error")

    def terminate(self, now: float) -> None:
        """End the transaction now (its TU is done with it). No-op once terminated."""
        check_clock(now)
        if self.state is not TransactionState.TERMINATED:
            self._move(TransactionState.TERMINATED)
            self.last_event = "terminate"
            self._changed(now)
            self._notify()

    @classmethod
    def restore(
        cls: type[TransactionT], snapshot: TransactionSnapshot, transport: TransportInfo | None = None
    ) -> TransactionT:
        """``restore_transaction`` for a snapshot known to be of this class."""
        if snapshot.kind != cls.KIND:
            raise InvalidSnapshotError(f"a {snapshot.kind} snapshot cannot restore a {cls.__name__}")
        tx = restore_transaction(snapshot, transport)
        if not isinstance(tx, cls):  # pragma: no cover - TRANSACTION_CLASSES maps kind to class
            raise InvalidSnapshotError(f"{snapshot.kind} did not restore a {cls.__name__}")
        return tx

    def snapshot(self) -> TransactionSnapshot:
        """A consistent, self-contained copy of everything a restore needs (taken between inputs)."""
        if self._request_wire is None:
            self._request_wire = bytes(self._request)
        if self._response_wire is None and (response := self._response_object) is not None:
            self._response_wire = bytes(response)  # (once compacted, the wire is all there is)
        return TransactionSnapshot(
            schema_version=SCHEMA_VERSION,
            kind=self.KIND,
            state=self.state._value_,  # .value is a Python-level property of Enum
            key=str(self.key),
            request=self._request_wire,
            last_response=self._response_wire,
            timers=tuple(sorted([(name, timer.deadline, timer.interval) for name, timer in timers.items()]))
            if (timers := self._timers)
            else (),
            transport=self.transport,
            timings=self.timings,
            created_at=self.created_at,
            updated_at=self.updated_at,
            version=self.version,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key} {self.state.value}>"

    # --- machinery ---

    def _target_of(self, timer_name: str) -> TransactionState | None:
        row = self.TABLE.get((self.state, TIMER_EVENTS[timer_name]))
        return None if row is None else row.target

    def _dispatch(self, event: Event, now: float, data: object) -> None:
        # _step, written out: every input runs through here.
        row = self.TABLE.get((self.state, event))
        if row is None:
            raise InvalidTransitionError(type(self).__name__, self.state.value, event.value)
        row.action(self, now, data)
        self.last_event = EVENT_IDS[event]
        if row.target is not self.state:
            self._move(row.target)
        if self._immediate:
            self._run_immediate(now)
        self.updated_at = now  # as _changed
        self.version += 1
        if self._notifications:
            self._notify()

    def _step(self, event: Event, now: float, data: object) -> None:
        row = self.TABLE.get((self.state, event))
        if row is None:
            raise InvalidTransitionError(type(self).__name__, self.state.value, event.value)
        row.action(self, now, data)
        self.last_event = EVENT_IDS[event]
        if row.target is not self.state:
            self._move(row.target)

    def _run_immediate(self, now: float) -> None:
        """Fire the zero-length timers the last step armed (reliable transports)."""
        while self._immediate:
            name = self._immediate.pop(0)
            self._step(TIMER_EVENTS[name], now, new_timer(now, 0.0))

    def _changed(self, now: float) -> None:
        self.updated_at = now
        self.version += 1

    def _notify(self) -> None:
        # Every callback of the step runs even if one raises (the step has happened;
        # a TU that missed Terminated would keep the transaction forever); the
        # first exception is raised once all have run.
        notifications, self._notifications = self._notifications, []
        errors: list[Exception] = []
        for callbacks, args in notifications:
            if not callbacks:
                continue
            for fn in list(callbacks):
                try:
                    fn(self, *args)
                except Exception as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]

    def _move(self, state: TransactionState) -> None:
        old, self.state = self.state, state
        if state is TransactionState.TERMINATED:
            self._timers.clear()
            self._immediate.clear()
        self._notifications.append((self._state_changed_callbacks, (old, state)))

    def _arm(self, name: str, interval: float, now: float) -> None:
        if interval == 0:  # a timer that is zero on reliable transports fires in this step
            self._timers.pop(name, None)
            self._immediate.append(name)
        else:
            self._timers[name] = new_timer(now + interval, interval)

    def _cancel(self, *names: str) -> None:
        timers = self._timers
        if timers:
            for name in names:
                timers.pop(name, None)

    def _tell_error(self, reason: Literal["timeout", "transport"], detail: str) -> None:
        self._notifications.append((self._error_callbacks, (Failure(reason, detail),)))

    def _on_transport_error(self, now: float, detail: object) -> None:
        self._tell_error("transport", str(detail))

    def _absorb(self, now: float, data: object) -> None:
        """Retransmissions and late messages the transaction has no more use for."""

    def _end(self, now: float, timer: object) -> None:
        """A timer whose only effect is the move to Terminated (D, I, J, K, L, M)."""

    def _event_for_network(self, message: Request | Response) -> Event:
        raise NotImplementedError

    def _emit(self, message: Request | Response, destination: tuple[str, int]) -> None:
        self._outgoing.append(_new_outgoing(message.copy(), destination))


# ---------------------------------------------------------------------------
# Client transactions
# ---------------------------------------------------------------------------


class _ClientTransaction(Transaction):
    ROLE = "client"

    def _send_request(self) -> None:
        self._emit(self._request, self.transport.remote)

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

    def _keep(self, response: object) -> Response:
        assert isinstance(response, Response)
        self._response_object = response.copy()
        self._response_wire = None
        return response

    def _pass_up(self, response: object) -> None:
        self._notifications.append((self._response_callbacks, (response,)))

    def _store_and_pass_up(self, now: float, response: object) -> None:
        self._pass_up(self._keep(response))


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
        if self._last_response is None or self._last_response.status_code < 300:
            return None
        return make_ack(self._request, self._last_response)

    def _start(self, now: float) -> None:  # §17.1.1.2
        self._send_request()
        if not self.transport.reliable:
            self._arm("A", self.timings.t1, now)
        self._arm("B", self.timings.transaction_timeout, now)

    def _retransmit(self, now: float, timer: object) -> None:  # Timer A doubles each time
        assert isinstance(timer, Timer)
        self._send_request()
        # Capped at 64*T1, where Timer B has ended the transaction: the interval stays finite.
        self._arm("A", min(timer.interval * 2, self.timings.transaction_timeout), now)

    def _timeout(self, now: float, timer: object) -> None:  # Timer B in Calling
        self._tell_error("timeout", "Timer B: no response to the INVITE")

    def _guard_expired(self, now: float, timer: object) -> None:
        # RFC 3261 §16.8 leaves Timer C's outcome to the TU: it hears of it here and
        # sends CANCEL (§9.1). The transaction stays to ACK the 487 (or whatever
        # final comes, §17.1.1.2), for at most 64*T1 more: §9.1 lets a client that
        # has no final response by then consider the INVITE cancelled.
        self._tell_error("timeout", "Proceeding guard: no final response (send CANCEL)")
        self._arm("B", self.timings.transaction_timeout, now)

    def _cancelled_timeout(self, now: float, timer: object) -> None:  # Timer B after the guard
        self._tell_error("timeout", "Timer B: no final response after the Proceeding guard")

    def _first_provisional(self, now: float, response: object) -> None:  # §17.1.1.2
        self._cancel("A", "B")
        self._arm("C", self.timings.proceeding_guard, now)
        self._store_and_pass_up(now, response)

    def _provisional(self, now: float, response: object) -> None:
        assert isinstance(response, Response)
        # §16.7: a provisional other than 100 resets Timer C (not once it has fired).
        if response.status_code > 100 and "C" in self._timers:
            self._arm("C", self.timings.proceeding_guard, now)
        self._store_and_pass_up(now, response)

    def _success(self, now: float, response: object) -> None:  # RFC 6026 §8.4
        self._cancel("A", "B", "C")
        self._arm("M", self.timings.transaction_timeout, now)
        self._store_and_pass_up(now, response)

    def _failure(self, now: float, response: object) -> None:  # §17.1.1.2
        self._cancel("A", "B", "C")
        final = self._keep(response)
        self._outgoing.append(Outgoing(make_ack(self._request, final), self.transport.remote))
        self._pass_up(final)
        # Timer D is zero on reliable transports (§17.1.1.2).
        self._arm("D", 0.0 if self.transport.reliable else self.timings.timer_d, now)

    def _ack_again(self, now: float, response: object) -> None:
        # §17.1.1.2: each final retransmission is ACKed again; a final from another
        # fork carries its own To tag, and so does its ACK (§17.1.1.3).
        assert isinstance(response, Response)
        self._outgoing.append(Outgoing(make_ack(self._request, response), self.transport.remote))

    def _pass_up_only(self, now: float, response: object) -> None:
        # A 2xx in Accepted (RFC 6026 §8.4), or from another fork after a 3xx-6xx
        # (the TU ACKs it and ends that dialog with BYE, RFC 3261 §13.2.2.4).
        self._pass_up(response)

    S, E, T = TransactionState, Event, Transition
    TABLE: ClassVar[Mapping[tuple[TransactionState, Event], Transition]] = {
        (S.CALLING, E.TIMER_A): T(_retransmit, S.CALLING),
        (S.CALLING, E.TIMER_B): T(_timeout, S.TERMINATED),
        (S.CALLING, E.PROVISIONAL): T(_first_provisional, S.PROCEEDING),
        (S.CALLING, E.SUCCESS): T(_success, S.ACCEPTED),
        (S.CALLING, E.FAILURE): T(_failure, S.COMPLETED),
        (S.CALLING, E.TRANSPORT_ERROR): T(Transaction._on_transport_error, S.TERMINATED),  # §17.1.4
        (S.PROCEEDING, E.PROVISIONAL): T(_provisional, S.PROCEEDING),
        (S.PROCEEDING, E.SUCCESS): T(_success, S.ACCEPTED),
        (S.PROCEEDING, E.FAILURE): T(_failure, S.COMPLETED),
        (S.PROCEEDING, E.TIMER_C): T(_guard_expired, S.PROCEEDING),
        (S.PROCEEDING, E.TIMER_B): T(_cancelled_timeout, S.TERMINATED),
        (S.PROCEEDING, E.TRANSPORT_ERROR): T(Transaction._on_transport_error, S.TERMINATED),
        (S.COMPLETED, E.PROVISIONAL): T(Transaction._absorb, S.COMPLETED),  # late, out of order
        (S.COMPLETED, E.SUCCESS): T(_pass_up_only, S.COMPLETED),  # another fork's 2xx
        (S.COMPLETED, E.FAILURE): T(_ack_again, S.COMPLETED),
        (S.COMPLETED, E.TIMER_D): T(Transaction._end, S.TERMINATED),
        (S.COMPLETED, E.TRANSPORT_ERROR): T(Transaction._on_transport_error, S.TERMINATED),
        (S.ACCEPTED, E.PROVISIONAL): T(Transaction._absorb, S.ACCEPTED),
        (S.ACCEPTED, E.SUCCESS): T(_pass_up_only, S.ACCEPTED),
        # A 3xx-6xx from another fork after a 2xx: ACKed so its server stops
        # retransmitting; the 2xx already decided the outcome.
        (S.ACCEPTED, E.FAILURE): T(_ack_again, S.ACCEPTED),
        (S.ACCEPTED, E.TIMER_M): T(Transaction._end, S.TERMINATED),
    }
    SHAPES: ClassVar[Mapping[TransactionState, tuple[Shape, ...]]] = {
        S.CALLING: (_shape("A B", "B", "none"),),
        S.PROCEEDING: (_shape("C", "C", "1xx"), _shape("B", "B", "1xx")),  # B: after the guard
        S.COMPLETED: (_shape("D", None, "3xx-6xx"),),
        S.ACCEPTED: (_shape("M", "M", "2xx"),),
        S.TERMINATED: (Shape(frozenset(), frozenset(), ANY_RESPONSE),),
    }
    del S, E, T


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

    def _retransmit_trying(self, now: float, timer: object) -> None:  # E doubles up to T2
        assert isinstance(timer, Timer)
        self._send_request()
        self._arm("E", min(timer.interval * 2, self.timings.t2), now)

    def _retransmit_proceeding(self, now: float, timer: object) -> None:  # E is T2 (§17.1.2.2)
        self._send_request()
        self._arm("E", self.timings.t2, now)

    def _timeout(self, now: float, timer: object) -> None:  # Timer F
        self._tell_error("timeout", "Timer F: no final response")

    def _final(self, now: float, response: object) -> None:
        self._cancel("E", "F")
        self._store_and_pass_up(now, response)
        # Timer K is zero on reliable transports (§17.1.2.2).
        self._arm("K", 0.0 if self.transport.reliable else self.timings.t4, now)

    S, E, T = TransactionState, Event, Transition
    _provisional = _ClientTransaction._store_and_pass_up
    TABLE: ClassVar[Mapping[tuple[TransactionState, Event], Transition]] = {
        (S.TRYING, E.TIMER_E): T(_retransmit_trying, S.TRYING),
        (S.TRYING, E.TIMER_F): T(_timeout, S.TERMINATED),
        (S.TRYING, E.PROVISIONAL): T(_provisional, S.PROCEEDING),
        (S.TRYING, E.SUCCESS): T(_final, S.COMPLETED),
        (S.TRYING, E.FAILURE): T(_final, S.COMPLETED),
        (S.TRYING, E.TRANSPORT_ERROR): T(Transaction._on_transport_error, S.TERMINATED),  # §17.1.4
        (S.PROCEEDING, E.TIMER_E): T(_retransmit_proceeding, S.PROCEEDING),
        (S.PROCEEDING, E.TIMER_F): T(_timeout, S.TERMINATED),
        (S.PROCEEDING, E.PROVISIONAL): T(_provisional, S.PROCEEDING),
        (S.PROCEEDING, E.SUCCESS): T(_final, S.COMPLETED),
        (S.PROCEEDING, E.FAILURE): T(_final, S.COMPLETED),
        (S.PROCEEDING, E.TRANSPORT_ERROR): T(Transaction._on_transport_error, S.TERMINATED),
        # Completed buffers retransmissions of the final response (§17.1.2.2).
        (S.COMPLETED, E.PROVISIONAL): T(Transaction._absorb, S.COMPLETED),
        (S.COMPLETED, E.SUCCESS): T(Transaction._absorb, S.COMPLETED),
        (S.COMPLETED, E.FAILURE): T(Transaction._absorb, S.COMPLETED),
        (S.COMPLETED, E.TIMER_K): T(Transaction._end, S.TERMINATED),
    }
    SHAPES: ClassVar[Mapping[TransactionState, tuple[Shape, ...]]] = {
        S.TRYING: (_shape("E F", "F", "none"),),
        S.PROCEEDING: (_shape("E F", "F", "1xx"),),
        S.COMPLETED: (_shape("K", None, "2xx 3xx-6xx"),),
        S.TERMINATED: (Shape(frozenset(), frozenset(), ANY_RESPONSE),),
    }
    del S, E, T


# ---------------------------------------------------------------------------
# Server transactions
# ---------------------------------------------------------------------------


class _ServerTransaction(Transaction):
    ROLE = "server"

    def send_response(self, response: Response, now: float) -> None:
        """The transaction user answers the request (the response is copied)."""
        if not -MAX_CLOCK <= now <= MAX_CLOCK:  # False for NaN too
            check_clock(now)  # raises
        self._check_response(response)
        status_code = response.status_code
        if status_code < 200:
            event = Event.TU_PROVISIONAL
        else:
            event = Event.TU_SUCCESS if status_code < 300 else Event.TU_FAILURE
        self._dispatch(event, now, response.copy())

    def _check_response(self, response: Response) -> None:
        """The response answers this transaction's request (RFC 3261 §8.2.6.2, §17.2.3):
        the same top Via, Call-ID, From and CSeq, and its To (a tag added unless the
        request had one); TransactionMismatchError naming what differs otherwise."""
        request = self._request_object or self._request  # (parsed again once compacted)
        # A response built from the request (make_response) holds the request's own
        # checked values for these headers: its seeds are the same objects, immutable
        # matches on the lines, so they are equal without reading anything off them.
        # Otherwise, or for a To that got a tag, compare values as below.
        seeds, request_seeds = response.headers._seeds, request.headers._seeds
        vias, request_vias = seeds.get("via"), request_seeds.get("via")
        if (
            vias
            and request_vias
            and vias[0] is request_vias[0]
            and seeds.get("call-id") is request_seeds.get("call-id")
            and seeds.get("from") is request_seeds.get("from")
            and seeds.get("cseq") is request_seeds.get("cseq")
            and (
                (to_seed := seeds.get("to")) is (request_to_seed := request_seeds.get("to"))
                or (
                    to_seed is not None
                    and request_to_seed is not None
                    and _to_text_answers(str(to_seed[0]), str(request_to_seed[0]))
                )
            )
        ):
            return
        problems = []
        if response.branch != request.branch or response.sent_by != request.sent_by:
            problems.append("top Via")
        if response.call_id != request.call_id:
            problems.append("Call-ID")
        # Equal checked text is an equal value: the typed values are built only
        # when the response spells a header otherwise (make_response copies them).
        from_text, request_from_text = _seed_text(response, "from"), _seed_text(request, "from")
        if (from_text is None or from_text != request_from_text) and response.from_ != request.from_:
            problems.append("From")
        to_text, request_to_text = _seed_text(response, "to"), _seed_text(request, "to")
        if to_text is not None and request_to_text is not None and _to_text_answers(to_text, request_to_text):
            pass
        elif (to := response.to) is None or (request_to := request.to) is None or to.uri != request_to.uri:
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
        if message.method == "ACK":
            # Its own key first; an RFC 2543 ACK may also have the one without its To tag.
            if TransactionKey.for_server(message) != self.key and self.key not in (
                TransactionKey.server_keys_for(message)
            ):
                raise TransactionMismatchError(
                    f"ACK with branch {message.branch!r} does not match {self.key}"
                )
            if self.key.legacy:
                # RFC 3261 §17.2.3: the ACK's To tag must be that of the response sent.
                last_response = self._last_response
                last_tag = last_response.to_tag if last_response else None
                if message.to_tag != last_tag:
                    raise TransactionMismatchError(
                        f"ACK To tag {message.to_tag!r} is not the response's {last_tag!r}"
                    )
            return Event.ACK
        if TransactionKey.for_server(message) != self.key:
            raise TransactionMismatchError(
                f"{message.method} with branch {message.branch!r} does not match {self.key}"
            )
        if message.method != self._method:
            raise TransactionMismatchError(f"{message.method} does not match a {self._method} transaction")
        return Event.REQUEST

    def response_destination(self) -> tuple[str, int]:
        """Where responses go (RFC 3261 §18.2.2, RFC 3581 for rport)."""
        transport = self.transport
        if transport.reliable:
            return transport.remote  # back on the connection the request came in on
        route = self._via_route
        if route is None:  # read once: the request is the transaction's own, never changed
            route = self._via_route = _via_route_of(self._request)
            assert route is not None  # a server transaction's request has a Via (its key)
        if route.maddr:
            return (route.maddr, route.port)
        if route.rport:
            return transport.remote  # source address and port of the request
        return (route.received or transport.remote[0], route.port)

    def _send(self, response: Response) -> None:
        """Send ``response`` (the transaction's own copy) and keep it as the last one."""
        self._response_object = response
        self._response_wire = None
        self._emit(response, self.response_destination())

    def _send_given(self, now: float, response: object) -> None:
        assert isinstance(response, Response)
        self._cancel("100")
        self._send(response)

    def _resend_last(self, now: float, data: object) -> None:
        """A retransmitted request: send the last response again, if there is one."""
        last_response = self._last_response
        if last_response is not None:
            self._emit(last_response, self.response_destination())


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
        self._send(make_response(self._request, 100))

    def _success(self, now: float, response: object) -> None:  # RFC 6026 §7.1
        self._send_given(now, response)
        self._arm("L", self.timings.transaction_timeout, now)

    def _failure(self, now: float, response: object) -> None:  # §17.2.1
        self._send_given(now, response)
        if not self.transport.reliable:
            self._arm("G", self.timings.t1, now)
        self._arm("H", self.timings.transaction_timeout, now)

    def _retransmit_final(self, now: float, timer: object) -> None:  # Timer G: doubles up to T2
        assert isinstance(timer, Timer)
        self._resend_last(now, timer)
        self._arm("G", min(timer.interval * 2, self.timings.t2), now)

    def _ack_timeout(self, now: float, timer: object) -> None:  # Timer H
        self._tell_error("timeout", "Timer H: no ACK for the final response")

    def _confirmed(self, now: float, ack: object) -> None:
        self._cancel("G", "H")
        self._notifications.append((self._ack_callbacks, (ack,)))
        # Timer I is zero on reliable transports (§17.2.1).
        self._arm("I", 0.0 if self.transport.reliable else self.timings.t4, now)

    def _accepted_ack(self, now: float, ack: object) -> None:
        self._notifications.append((self._ack_callbacks, (ack,)))

    S, E, T = TransactionState, Event, Transition
    # RFC 6026 §7.1: a transport error while sending a response does not discard
    # the transaction's state; the TU hears of it and timers end the transaction.
    TABLE: ClassVar[Mapping[tuple[TransactionState, Event], Transition]] = {
        (S.PROCEEDING, E.TIMER_100): T(_send_trying, S.PROCEEDING),
        (S.PROCEEDING, E.REQUEST): T(_ServerTransaction._resend_last, S.PROCEEDING),
        (S.PROCEEDING, E.TU_PROVISIONAL): T(_ServerTransaction._send_given, S.PROCEEDING),
        (S.PROCEEDING, E.TU_SUCCESS): T(_success, S.ACCEPTED),
        (S.PROCEEDING, E.TU_FAILURE): T(_failure, S.COMPLETED),
        (S.PROCEEDING, E.TRANSPORT_ERROR): T(Transaction._on_transport_error, S.PROCEEDING),
        (S.COMPLETED, E.TIMER_G): T(_retransmit_final, S.COMPLETED),
        (S.COMPLETED, E.TIMER_H): T(_ack_timeout, S.TERMINATED),
        (S.COMPLETED, E.REQUEST): T(_ServerTransaction._resend_last, S.COMPLETED),
        (S.COMPLETED, E.ACK): T(_confirmed, S.CONFIRMED),
        (S.COMPLETED, E.TRANSPORT_ERROR): T(Transaction._on_transport_error, S.COMPLETED),
        (S.CONFIRMED, E.ACK): T(Transaction._absorb, S.CONFIRMED),
        (S.CONFIRMED, E.REQUEST): T(Transaction._absorb, S.CONFIRMED),
        (S.CONFIRMED, E.TIMER_I): T(Transaction._end, S.TERMINATED),
        (S.ACCEPTED, E.REQUEST): T(Transaction._absorb, S.ACCEPTED),  # RFC 6026: absorbed, not answered
        # The TU retransmits its 2xx through Accepted (RFC 6026 §7.1).
        (S.ACCEPTED, E.TU_SUCCESS): T(_ServerTransaction._send_given, S.ACCEPTED),
        (S.ACCEPTED, E.ACK): T(_accepted_ack, S.ACCEPTED),
        (S.ACCEPTED, E.TIMER_L): T(Transaction._end, S.TERMINATED),
        (S.ACCEPTED, E.TRANSPORT_ERROR): T(Transaction._on_transport_error, S.ACCEPTED),
    }
    SHAPES: ClassVar[Mapping[TransactionState, tuple[Shape, ...]]] = {
        # The 100 Trying timer runs until the first response is sent, and no longer.
        S.PROCEEDING: (_shape("100", "100", "none"), _shape("", "", "1xx")),
        S.COMPLETED: (_shape("G H", "H", "3xx-6xx"),),
        S.CONFIRMED: (_shape("I", None, "3xx-6xx"),),
        S.ACCEPTED: (_shape("L", "L", "2xx"),),
        S.TERMINATED: (Shape(frozenset(), frozenset(), ANY_RESPONSE),),
    }
    del S, E, T


class NonInviteServerTransaction(_ServerTransaction):
    """RFC 3261 §17.2.2."""

    KIND = "non_invite_server"
    INITIAL_STATE = TransactionState.TRYING
    STATES = NON_INVITE_STATES

    @classmethod
    def _check_request(cls, request: Request) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"a non-INVITE server transaction cannot serve {request.method}")

    def _final(self, now: float, response: object) -> None:
        assert isinstance(response, Response)
        self._response_object = response
        self._response_wire = None
        destination = self.response_destination()
        # Timer J is zero on reliable transports (§17.2.2).
        self._arm("J", 0.0 if self.transport.reliable else self.timings.transaction_timeout, now)
        self._compact()  # §17.2.2: from now on it only resends this response, kept as bytes
        # The transaction's copy goes out as it is: the transaction keeps none of it now.
        self._outgoing.append(_new_outgoing(response, destination))

    S, E, T = TransactionState, Event, Transition
    _provisional = _ServerTransaction._send_given
    TABLE: ClassVar[Mapping[tuple[TransactionState, Event], Transition]] = {
        (S.TRYING, E.REQUEST): T(Transaction._absorb, S.TRYING),  # nothing to answer with yet
        (S.TRYING, E.TU_PROVISIONAL): T(_provisional, S.PROCEEDING),
        (S.TRYING, E.TU_SUCCESS): T(_final, S.COMPLETED),
        (S.TRYING, E.TU_FAILURE): T(_final, S.COMPLETED),
        (S.TRYING, E.TRANSPORT_ERROR): T(Transaction._on_transport_error, S.TERMINATED),  # §17.2.4
        (S.PROCEEDING, E.REQUEST): T(_ServerTransaction._resend_last, S.PROCEEDING),
        (S.PROCEEDING, E.TU_PROVISIONAL): T(_provisional, S.PROCEEDING),
        (S.PROCEEDING, E.TU_SUCCESS): T(_final, S.COMPLETED),
        (S.PROCEEDING, E.TU_FAILURE): T(_final, S.COMPLETED),
        (S.PROCEEDING, E.TRANSPORT_ERROR): T(Transaction._on_transport_error, S.TERMINATED),
        (S.COMPLETED, E.REQUEST): T(_ServerTransaction._resend_last, S.COMPLETED),
        # §17.2.2: further final responses from the TU are discarded.
        (S.COMPLETED, E.TU_SUCCESS): T(Transaction._absorb, S.COMPLETED),
        (S.COMPLETED, E.TU_FAILURE): T(Transaction._absorb, S.COMPLETED),
        (S.COMPLETED, E.TIMER_J): T(Transaction._end, S.TERMINATED),
        (S.COMPLETED, E.TRANSPORT_ERROR): T(Transaction._on_transport_error, S.TERMINATED),
    }
    SHAPES: ClassVar[Mapping[TransactionState, tuple[Shape, ...]]] = {
        S.TRYING: (_shape("", "", "none"),),
        S.PROCEEDING: (_shape("", "", "1xx"),),
        S.COMPLETED: (_shape("J", None, "2xx 3xx-6xx"),),
        S.TERMINATED: (Shape(frozenset(), frozenset(), ANY_RESPONSE),),
    }
    del S, E, T


TRANSACTION_CLASSES: dict[str, type[Transaction]] = {
    cls.KIND: cls
    for cls in (
        InviteClientTransaction,
        NonInviteClientTransaction,
        InviteServerTransaction,
        NonInviteServerTransaction,
    )
}


# ---------------------------------------------------------------------------
# Restore: a snapshot back into its machine, checked against the machine's tables
# ---------------------------------------------------------------------------


def restore_transaction(snapshot: TransactionSnapshot, transport: TransportInfo | None = None) -> Transaction:
    """The transaction ``snapshot`` describes, carrying on from where it was.

    ``transport`` replaces the stored transport facts (restoring on another node);
    its reliability must match the stored one. Nothing is sent. A snapshot that
    does not describe a transaction that could exist raises InvalidSnapshotError
    naming the problem.
    """
    check_snapshot_data(snapshot)
    cls = TRANSACTION_CLASSES.get(snapshot.kind)
    if cls is None:
        raise InvalidSnapshotError(f"unknown transaction kind {snapshot.kind!r}")
    try:
        state = TransactionState(snapshot.state)
    except ValueError:
        raise InvalidSnapshotError(f"unknown state {snapshot.state!r}") from None
    if state not in cls.STATES:
        raise InvalidSnapshotError(f"state {state.value} is not a state of {cls.__name__}")

    request = _parse(snapshot.request, "request", Request)
    try:
        cls._check_request(request)
        key = cls._key_of(request)
    except ValueError as exc:
        raise InvalidSnapshotError(f"request method does not fit {cls.__name__}: {exc}") from None
    if snapshot.key != str(key):
        raise InvalidSnapshotError(f"key {snapshot.key!r} does not match the request's key {str(key)!r}")

    last_response = None
    if snapshot.last_response is not None:
        last_response = _parse(snapshot.last_response, "last response", Response)
        _check_response_matches(last_response, request)

    transport_info = transport or snapshot.transport
    if transport_info.reliable != snapshot.transport.reliable:
        raise InvalidSnapshotError(
            f"the new transport ({transport_info.protocol}) must be as reliable as the stored one "
            f"({snapshot.transport.protocol}): the timers were armed for it"
        )

    timers = {name: Timer(deadline, interval) for name, deadline, interval in snapshot.timers}
    _check_shape(cls, state, last_response, frozenset(timers), transport_info.reliable)
    for name, timer in sorted(timers.items()):
        if not LEGAL_INTERVALS[name](snapshot.timings, timer.interval):
            raise InvalidSnapshotError(
                f"timer {name} has interval {timer.interval!r}, which these timings never arm it with"
            )
    for retransmit, timeout in RETRANSMISSION_LIMITS:
        if retransmit in timers and timeout in timers:
            gap = timers[timeout].deadline - timers[retransmit].deadline
            if gap > snapshot.timings.transaction_timeout:
                raise InvalidSnapshotError(
                    f"timer {timeout} is due {gap!r} s after timer {retransmit}, more than 64*T1: "
                    f"no transaction arms them so"
                )

    tx = cls.__new__(cls)
    tx._setup(
        request=request,
        transport=transport_info,
        timings=snapshot.timings,
        state=state,
        created_at=snapshot.created_at,
        updated_at=snapshot.updated_at,
        last_response=last_response,
        timers=timers,
        version=snapshot.version,
        key=key,
        request_wire=snapshot.request,
        response_wire=snapshot.last_response,
    )
    tx.last_event = "restored"
    if cls is NonInviteServerTransaction and state is TransactionState.COMPLETED:
        tx._compact()
    return tx


def _check_shape(
    cls: type[Transaction],
    state: TransactionState,
    response: Response | None,
    timers: frozenset[str],
    reliable: bool,
) -> None:
    """The snapshot has one of its state's shapes, or the error says how it differs."""
    shapes = cls.SHAPES[state]
    response_class = _response_class(response)
    fitting = [shape for shape in shapes if response_class in shape.responses]
    if not fitting:
        allowed = sorted({kind for shape in shapes for kind in shape.responses} - {"none"})
        if response is None:
            raise InvalidSnapshotError(
                f"state {state.value} needs the last response ({' or '.join(allowed)}), and there is none"
            )
        what = "no response" if not allowed else f"a {' or '.join(allowed)} response"
        raise InvalidSnapshotError(
            f"state {state.value} of {cls.__name__} holds {what}, not a {response.status_code}"
        )
    running = [shape.reliable if reliable else shape.unreliable for shape in fitting]
    if all(expected is None for expected in running):
        raise InvalidSnapshotError(
            f"state {state.value} of {cls.__name__} does not last on a reliable transport "
            "(its timer is zero there)"
        )
    candidates = [expected for expected in running if expected is not None]
    if timers in candidates:
        return
    expected = candidates[0]
    if stray := sorted(timers - frozenset().union(*candidates)):
        raise InvalidSnapshotError(f"timer {', '.join(stray)} cannot run in state {state.value}")
    options = " or ".join(", ".join(sorted(option)) for option in candidates)
    if missing := sorted(expected - timers):
        raise InvalidSnapshotError(
            f"state {state.value} needs timer {', '.join(missing)}, which is not running (it runs {options})"
        )
    raise InvalidSnapshotError(f"state {state.value} runs timer {options}, not {', '.join(sorted(timers))}")


# The bytes of a message this transaction held and serialized itself: they
# parsed (or were built through checked adds) once, perhaps under larger limits
# than the defaults, so they are read back without limits of their own.
_OWN_LIMITS: Final = ParserLimits(**{item.name: 2**31 - 1 for item in fields(ParserLimits)})


def _parse_own(data: bytes, expected: type[MessageT]) -> MessageT:
    message = parse_message(data, limits=_OWN_LIMITS)
    assert isinstance(message, expected)
    return message


def _seed_text(message: Request | Response, key: str) -> str | None:
    """The checked text of a single-valued known header, as the parser or ``Headers.add`` kept it."""
    seed = message.headers._seeds.get(key)
    return None if seed is None else str(seed[0])


def _to_text_answers(to_text: str, request_to_text: str) -> bool:
    """A response's To (checked text) fits the request's: the same text, or the
    request's name-addr (no parameters: it ends with its URI's ">") with parameters
    added: the same URI, and no request To tag to compare (§8.2.6.2)."""
    return to_text == request_to_text or (
        request_to_text.endswith(">") and to_text.startswith(request_to_text + ";")
    )


def _parse(data: bytes, what: str, expected: type) -> Any:
    try:
        message = parse_message(data)
    except ParseError as exc:
        raise InvalidSnapshotError(f"the stored {what} does not parse: {exc}") from None
    if not isinstance(message, expected):
        raise InvalidSnapshotError(f"the stored {what} is not a {expected.__name__.lower()}")
    return message


def _check_response_matches(response: Response, request: Request) -> None:
    problems = []
    if response.call_id != request.call_id:
        problems.append("Call-ID")
    if response.cseq != request.cseq:
        problems.append("CSeq")
    if response.branch != request.branch:
        problems.append("Via branch")
    if problems:
        raise InvalidSnapshotError(
            f"the last response does not answer the request: {', '.join(problems)} differ"
        )
