"""Versioned transaction snapshots that restore anywhere and carry on.

A snapshot is plain, immutable data taken between inputs: the state, the
request and last response as they travel, every running timer as an absolute
deadline with its backoff interval, the transport facts and timings. It shares
nothing mutable with the live transaction.

Restoring sends nothing. Deadlines that passed while the snapshot was stored
fire at the first ``handle_timer(now)``, in deadline order, each exactly once
(a fired timer is not in the snapshot), so nothing fires twice and a stale
retransmission timer fires once and re-arms from ``now``.

Every restore is checked; a snapshot that does not describe a transaction that
could exist raises :class:`InvalidSnapshotError` naming the problem. Older
schema versions are migrated on the way in, one function per version step.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from sipcore.sip.errors import InvalidSnapshotError, ParseError
from sipcore.sip.message import Request, Response, parse_message
from sipcore.sip.transaction import (
    TIMER_EVENTS,
    TRANSACTION_CLASSES,
    Timer,
    Timings,
    Transaction,
    TransactionState,
    TransportInfo,
)

SCHEMA_VERSION: Final = 2

# Timers each state must have running, by kind, for unreliable and reliable
# transports (a zero-length timer is never armed: the state is left at once).
_T = TransactionState
REQUIRED_TIMERS: Final[dict[str, dict[TransactionState, tuple[frozenset[str], frozenset[str]]]]] = {
    "invite_client": {
        _T.CALLING: (frozenset({"A", "B"}), frozenset({"B"})),
        _T.PROCEEDING: (frozenset({"C"}), frozenset({"C"})),
        _T.COMPLETED: (frozenset({"D"}), frozenset({"D"})),  # reliable: never Completed (D = 0)
        _T.ACCEPTED: (frozenset({"M"}), frozenset({"M"})),
    },
    "non_invite_client": {
        _T.TRYING: (frozenset({"E", "F"}), frozenset({"F"})),
        _T.PROCEEDING: (frozenset({"E", "F"}), frozenset({"F"})),
        _T.COMPLETED: (frozenset({"K"}), frozenset({"K"})),
    },
    "invite_server": {
        _T.COMPLETED: (frozenset({"G", "H"}), frozenset({"H"})),
        _T.CONFIRMED: (frozenset({"I"}), frozenset({"I"})),
        _T.ACCEPTED: (frozenset({"L"}), frozenset({"L"})),
    },
    "non_invite_server": {
        _T.COMPLETED: (frozenset({"J"}), frozenset({"J"})),
    },
}
# States in which the transaction has answered (server) or been answered (client).
_STATES_WITH_A_RESPONSE: Final = frozenset({_T.COMPLETED, _T.CONFIRMED, _T.ACCEPTED})
del _T


@dataclass(frozen=True, slots=True)
class TransactionSnapshot:
    """Everything a restore needs, as immutable data. JSON via :meth:`to_json`."""

    schema_version: int
    kind: str
    state: str
    key: str
    request: bytes
    last_response: bytes | None
    timers: tuple[tuple[str, float, float], ...]  # (name, deadline, interval), by name
    transport: TransportInfo
    timings: Timings
    created_at: float
    updated_at: float
    version: int

    def next_deadline(self) -> float | None:
        return min((deadline for _, deadline, _ in self.timers), default=None)

    def to_json(self) -> bytes:
        return orjson.dumps(_to_document(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> TransactionSnapshot:
        """Decode (and migrate) a stored snapshot; InvalidSnapshotError if it cannot be read."""
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidSnapshotError(f"snapshot is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise InvalidSnapshotError(f"snapshot is a JSON {type(document).__name__}, not an object")
        return _from_document(migrate(document))


def snapshot_of(tx: Transaction) -> TransactionSnapshot:
    return TransactionSnapshot(
        schema_version=SCHEMA_VERSION,
        kind=tx.KIND,
        state=tx.state.value,
        key=str(tx.key),
        request=_wire_bytes(tx.request),
        last_response=None if tx.last_response is None else _wire_bytes(tx.last_response),
        timers=tuple(sorted((name, timer.deadline, timer.interval) for name, timer in tx._timers.items())),
        transport=tx.transport,
        timings=tx.timings,
        created_at=tx.created_at,
        updated_at=tx.updated_at,
        version=tx.version,
    )


def _wire_bytes(message: Request | Response) -> bytes:
    return bytes(message)


def restore_transaction(snapshot: TransactionSnapshot, transport: TransportInfo | None = None) -> Transaction:
    """The transaction ``snapshot`` describes, carrying on from where it was.

    ``transport`` replaces the stored transport facts (restoring on another node);
    its reliability must match the stored one. Nothing is sent.
    """
    cls = TRANSACTION_CLASSES.get(snapshot.kind)
    if cls is None:
        raise InvalidSnapshotError(f"unknown transaction kind {snapshot.kind!r}")
    if snapshot.schema_version != SCHEMA_VERSION:
        raise InvalidSnapshotError(
            f"snapshot schema version {snapshot.schema_version} is not {SCHEMA_VERSION}; "
            "decode stored snapshots with TransactionSnapshot.from_json, which migrates them"
        )
    try:
        state = TransactionState(snapshot.state)
    except ValueError:
        raise InvalidSnapshotError(f"unknown state {snapshot.state!r}") from None
    if state not in cls.STATES:
        raise InvalidSnapshotError(f"state {state.value} is not a state of {cls.__name__}")

    request = _parse(snapshot.request, "request", Request)
    try:
        cls._check_request(request)
    except ValueError as exc:
        raise InvalidSnapshotError(f"request method does not fit {cls.__name__}: {exc}") from None
    key = cls._key_of(request)
    if snapshot.key != str(key):
        raise InvalidSnapshotError(f"key {snapshot.key!r} does not match the request's key {str(key)!r}")

    last_response = None
    if snapshot.last_response is not None:
        last_response = _parse(snapshot.last_response, "last response", Response)
        _check_response_matches(last_response, request)
    elif state in _STATES_WITH_A_RESPONSE:
        raise InvalidSnapshotError(f"state {state.value} needs the last response, and there is none")

    transport_info = transport or snapshot.transport
    if transport_info.reliable != snapshot.transport.reliable:
        raise InvalidSnapshotError(
            f"the new transport ({transport_info.protocol}) must be as reliable as the stored one "
            f"({snapshot.transport.protocol}): the timers were armed for it"
        )

    timers = {name: Timer(deadline, interval) for name, deadline, interval in snapshot.timers}
    if len(timers) != len(snapshot.timers):
        raise InvalidSnapshotError("a timer appears twice")
    required = REQUIRED_TIMERS[cls.KIND].get(state, (frozenset(), frozenset()))[transport_info.reliable]
    if missing := sorted(required - timers.keys()):
        raise InvalidSnapshotError(
            f"state {state.value} needs timer {', '.join(missing)}, which is not running"
        )
    handled = cls.events_accepted_in(state)
    if stray := sorted(name for name in timers if TIMER_EVENTS.get(name) not in handled):
        raise InvalidSnapshotError(f"timer {', '.join(stray)} cannot run in state {state.value}")

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
    )
    return tx


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


# --- JSON document ---------------------------------------------------------
#
# Messages travel as text when they are valid UTF-8 (base64 otherwise). The last
# response repeats most of the request's header lines (Via, From, Call-ID, CSeq);
# those are stored as the request line's index, which keeps a Completed INVITE
# server transaction well under 1.5 KB.


def _to_document(snapshot: TransactionSnapshot) -> dict[str, Any]:
    transport = snapshot.transport
    document: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "kind": snapshot.kind,
        "state": snapshot.state,
        "key": snapshot.key,
        "version": snapshot.version,
        "created": snapshot.created_at,
        "updated": snapshot.updated_at,
        "transport": [transport.protocol, transport.reliable, list(transport.local), list(transport.remote)],
        "timers": {name: [deadline, interval] for name, deadline, interval in snapshot.timers},
        "request": _encode_text(snapshot.request),
        "response": None
        if snapshot.last_response is None
        else _encode_response(snapshot.last_response, snapshot.request),
    }
    if snapshot.timings != DEFAULT_TIMINGS:
        document["timings"] = dataclasses.asdict(snapshot.timings)
    return document


def _from_document(document: Mapping[str, Any]) -> TransactionSnapshot:
    try:
        protocol, reliable, local, remote = document["transport"]
        request = _decode_text(document["request"])
        response = document["response"]
        return TransactionSnapshot(
            schema_version=document["schema"],
            kind=document["kind"],
            state=document["state"],
            key=document["key"],
            request=request,
            last_response=None if response is None else _decode_response(response, request),
            timers=tuple(
                sorted(
                    (name, float(deadline), float(interval))
                    for name, (deadline, interval) in document["timers"].items()
                )
            ),
            transport=_transport_info(protocol, reliable, (local[0], local[1]), (remote[0], remote[1])),
            timings=Timings(**document["timings"]) if "timings" in document else DEFAULT_TIMINGS,
            created_at=float(document["created"]),
            updated_at=float(document["updated"]),
            version=int(document["version"]),
        )
    except InvalidSnapshotError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidSnapshotError(f"snapshot is malformed: {type(exc).__name__}: {exc}") from None


DEFAULT_TIMINGS: Final = Timings()


@functools.lru_cache(maxsize=4096)
def _transport_info(
    protocol: str, reliable: bool, local: tuple[str, int], remote: tuple[str, int]
) -> TransportInfo:
    """TransportInfo is immutable: a node restoring many transactions of the same
    peers shares the instances."""
    return TransportInfo(protocol, reliable, local, remote)


def _encode_text(data: bytes) -> str | dict[str, str]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _decode_text(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and isinstance(value.get("base64"), str):
        return base64.b64decode(value["base64"], validate=True)
    raise InvalidSnapshotError(f"a stored message is neither text nor base64: {type(value).__name__}")


def _split_wire(data: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def _encode_response(response: bytes, request: bytes) -> dict[str, Any]:
    request_lines, _ = _split_wire(request)
    index = {line: position for position, line in enumerate(request_lines) if position}
    lines, body = _split_wire(response)
    encoded: list[int | str | dict[str, str]] = [lines[0].decode("utf-8", "surrogateescape")]
    for line in lines[1:]:
        position = index.get(line)
        encoded.append(position if position is not None else _encode_text(line))
    document: dict[str, Any] = {"lines": encoded}
    if body:
        document["body"] = _encode_text(body)
    return document


def _decode_response(document: Mapping[str, Any], request: bytes) -> bytes:
    request_lines, _ = _split_wire(request)
    lines = []
    for item in document["lines"]:
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 < item < len(request_lines):
                raise InvalidSnapshotError(
                    f"the last response refers to request line {item}, which does not exist"
                )
            lines.append(request_lines[item])
        else:
            lines.append(_decode_text(item))
    body = _decode_text(document["body"]) if "body" in document else b""
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# --- schema migrations: one function per version step ------------------------


def _v1_to_v2(document: dict[str, Any]) -> dict[str, Any]:
    """v1 stored the last response in full and had no version counter."""
    migrated = dict(document)
    migrated["schema"] = 2
    migrated.setdefault("version", 0)
    response = migrated.get("response")
    if isinstance(response, str | dict) and not (isinstance(response, dict) and "lines" in response):
        migrated["response"] = _encode_response(_decode_text(response), _decode_text(migrated["request"]))
    return migrated


MIGRATIONS: Final[dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {1: _v1_to_v2}


def migrate(document: dict[str, Any]) -> dict[str, Any]:
    """Bring a stored document up to SCHEMA_VERSION, one step at a time."""
    version = document.get("schema")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidSnapshotError(f"snapshot has no schema version (got {version!r})")
    if version > SCHEMA_VERSION:
        raise InvalidSnapshotError(
            f"snapshot schema version {version} is newer than this code ({SCHEMA_VERSION})"
        )
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise InvalidSnapshotError(f"no migration from snapshot schema version {version}")
        document = step(document)
        version = document["schema"]
    return document
