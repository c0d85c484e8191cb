"""Versioned transaction snapshots: plain, immutable data, and their JSON form.

A snapshot is taken between inputs: the state, the request and last response as
they travel, every running timer as an absolute deadline with its backoff
interval, the transport facts and timings. It shares nothing mutable with the
live transaction.

This module knows the data and its schema, not the machines: it imports nothing
from :mod:`sipcore.sip.transaction`, which builds snapshots
(``Transaction.snapshot()``) and restores them (``restore_transaction``), checking
each against its machine's tables. What can be checked without knowing the
machine (numbers, schema versions) is checked here by :func:`check_snapshot_data`.
Older schema versions are migrated on the way in, one function per version step.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from sipcore.sip.errors import InvalidSnapshotError, ParseError
from sipcore.sip.keys import TransactionKey
from sipcore.sip.message import Request, parse_message
from sipcore.sip.timers import (
    DEFAULT_TIMINGS,
    MAX_CLOCK,
    MAX_DEADLINE,
    Timings,
    TransportInfo,
    usable_interval,
)

SCHEMA_VERSION: Final = 3


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


def check_snapshot_data(snapshot: TransactionSnapshot) -> None:
    """What any snapshot must satisfy, whatever its machine: the current schema, a
    usable version counter and clock readings, finite deadlines, and intervals that
    move the clock forward (a timer re-armed from ``now`` is never due at ``now``
    again, so ``handle_timer`` cannot spin)."""
    fields: tuple[tuple[str, object, Any], ...] = (
        ("kind", snapshot.kind, str),
        ("state", snapshot.state, str),
        ("key", snapshot.key, str),
        ("request", snapshot.request, bytes),
        ("last_response", snapshot.last_response, bytes | None),
        ("transport", snapshot.transport, TransportInfo),
        ("timings", snapshot.timings, Timings),
    )
    for field_name, field_value, expected in fields:
        if not isinstance(field_value, expected):
            raise InvalidSnapshotError(f"{field_name} must be {expected}, got {type(field_value).__name__}")
    if not isinstance(snapshot.timers, tuple) or not all(
        isinstance(timer, tuple) and len(timer) == 3 and isinstance(timer[0], str)
        for timer in snapshot.timers
    ):
        raise InvalidSnapshotError("timers must be (name, deadline, interval) tuples")
    if snapshot.schema_version != SCHEMA_VERSION:
        raise InvalidSnapshotError(
            f"snapshot schema version {snapshot.schema_version} is not {SCHEMA_VERSION}; "
            "decode stored snapshots with TransactionSnapshot.from_json, which migrates them"
        )
    version = snapshot.version
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**63:
        raise InvalidSnapshotError(f"version must be a non-negative 64-bit integer, got {version!r}")
    for what, value in (("created_at", snapshot.created_at), ("updated_at", snapshot.updated_at)):
        if not _is_number(value) or not -MAX_CLOCK <= value <= MAX_CLOCK:
            raise InvalidSnapshotError(f"{what} must be a finite clock reading, got {value!r}")
    names = [name for name, _, _ in snapshot.timers]
    if len(set(names)) != len(names):
        raise InvalidSnapshotError("a timer appears twice")
    for name, deadline, interval in snapshot.timers:
        if not _is_number(deadline) or not -MAX_DEADLINE <= deadline <= MAX_DEADLINE:
            raise InvalidSnapshotError(f"timer {name} has deadline {deadline!r}, not a finite clock reading")
        if not usable_interval(interval):
            raise InvalidSnapshotError(
                f"timer {name} has interval {interval!r}: intervals are finite and positive"
            )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise InvalidSnapshotError(f"snapshot is malformed: {type(exc).__name__}: {exc}") from None


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


def _v2_to_v3(document: dict[str, Any]) -> dict[str, Any]:
    """v3 keys RFC 2543 server transactions by the whole RFC 3261 §17.2.3 rule,
    To tag included: such keys are computed again from the stored request."""
    migrated = dict(document)
    migrated["schema"] = 3
    key = migrated.get("key")
    if isinstance(key, str) and key.startswith("s|2543|"):
        try:
            request = parse_message(_decode_text(migrated["request"]))
        except (KeyError, ParseError) as exc:
            raise InvalidSnapshotError(f"the stored request does not parse: {exc}") from None
        if not isinstance(request, Request):
            raise InvalidSnapshotError("the stored request is not a request")
        try:
            migrated["key"] = str(TransactionKey.for_server(request))
        except ValueError as exc:
            raise InvalidSnapshotError(f"the stored request has no transaction key: {exc}") from None
    return migrated


MIGRATIONS: Final[dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {1: _v1_to_v2, 2: _v2_to_v3}


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
