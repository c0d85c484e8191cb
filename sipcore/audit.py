"""The SIP transaction audit mirror: Redis streams in, append-only database rows out.

The store (``sipcore.store``) appends every stored version of a transaction to
its shard's stream ``{sip:<shard>}:audit`` in the same atomic write as the
version itself (DESIGN.md, "Persistence and ownership"). This module is the
other end:

- :func:`ingest_batch` reads a shard's stream through a consumer group, writes
  one :class:`~sipcore.models.TransactionSnapshotRecord` per version and
  upserts the :class:`~sipcore.models.SipTransaction` and
  :class:`~sipcore.models.SipNode` rows in ONE database transaction, and only
  after the commit acknowledges (and deletes) the entries. A crash between the
  two re-delivers the entries; the unique (transaction, version) makes the
  second insert a no-op, so nothing is lost and nothing duplicated.
- :func:`rebuild_snapshot` turns any recorded version back into a
  :class:`~sipcore.sip.TransactionSnapshot` from the database alone.
- :func:`prune_records` and :func:`prune_transactions` apply the retention.
- :func:`audit_lag` says how far behind the ingestion is, per shard.

Stream entry fields (the contract with the store): ``k`` transaction key,
``v`` version, ``e`` epoch, ``o`` owner node id, ``kind``, ``st`` state,
``ev`` the event that caused the version, ``at`` wall-clock seconds,
``snap`` the snapshot JSON, ``end`` "1" once terminated ("0" or absent otherwise).

An entry that cannot be read (or contradicts what is recorded) is logged,
counted and moved to ``{sip:<shard>}:audit:dead`` with the reason; it never
blocks its shard.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import redis
from django.conf import settings
from django.db import DataError, IntegrityError, connections, router, transaction
from django.db.models import Exists, Model, OuterRef
from django.utils import timezone

from callops.audit_db import PruneProgress, prune_audit
from sipcore.models import (
    SipNode,
    SipTransaction,
    TransactionKind,
    TransactionOutcome,
    TransactionSnapshotRecord,
)
from sipcore.sip import (
    InvalidSnapshotError,
    ParseError,
    Request,
    Timings,
    TransactionSnapshot,
    TransactionState,
    TransportInfo,
    parse_message,
)
from sipcore.sip.snapshot import SCHEMA_VERSION, check_snapshot_data
from sipcore.sip.transaction import Event

logger = logging.getLogger(__name__)

GROUP: Final = "audit"
DEFAULT_SHARDS: Final = 16
DEFAULT_RETENTION_DAYS: Final = 30
DEFAULT_CLAIM_IDLE_MS: Final = 60_000

# Explicit limits on what an entry may hold. A snapshot holds the request and the
# last response (each at most ParserLimits' header + body sizes, base64 when not
# UTF-8); the key is indexed (PostgreSQL's B-tree refuses entries over ~2.7 KB).
MAX_SNAPSHOT_BYTES: Final = 4 * 1024 * 1024
MAX_KEY_LENGTH: Final = 1024
MAX_NODE_ID_LENGTH: Final = 64
MAX_EVENT_LENGTH: Final = 64
MAX_STATE_LENGTH: Final = 16
MAX_COUNTER: Final = 2**63 - 1
DEFAULT_TIMINGS: Final = Timings()
MAX_NODE_ADDRESSES: Final = 16
# Wall-clock seconds an entry's `at` may hold: 1970 .. 5138 (datetime's range with room).
MAX_WALL_CLOCK: Final = 1e11

DEAD_LETTER_MAXLEN: Final = 10_000  # approximate (MAXLEN ~): the newest are kept for inspection
DEAD_LETTER_FIELD_BYTES: Final = 64 * 1024  # each original field is kept up to this many bytes


def stream_name(shard: int) -> str:
    """The shard's audit stream; the hash tag keeps a shard's keys in one Redis Cluster slot."""
    return f"{{sip:{shard}}}:audit"


def dead_letter_stream(shard: int) -> str:
    return f"{{sip:{shard}}}:audit:dead"


def dead_letter_counter(shard: int) -> str:
    """How many entries of the shard were ever dead-lettered (the stream itself is capped)."""
    return f"{{sip:{shard}}}:audit:dead:total"


def shard_count() -> int:
    return int(getattr(settings, "SIP_STORE_SHARDS", DEFAULT_SHARDS))


def retention() -> timedelta:
    return timedelta(days=int(getattr(settings, "SIP_AUDIT_RETENTION_DAYS", DEFAULT_RETENTION_DAYS)))


# --- reading one entry --------------------------------------------------------------------------


class MalformedEntry(ValueError):
    """A stream entry that cannot be recorded; the message says why."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One stream entry, checked and decoded."""

    stream_id: bytes
    key: str
    version: int
    epoch: int
    owner: str
    kind: str
    state: str
    event: str
    at: datetime
    snapshot: TransactionSnapshot
    ended: bool


_KINDS: Final = frozenset(TransactionKind.values)


def _text(fields: Mapping[bytes, bytes], name: str, limit: int, *, required: bool = True) -> str:
    raw = fields.get(name.encode())
    if raw is None:
        if required:
            raise MalformedEntry(f"field {name!r} is missing")
        return ""
    if len(raw) > limit:
        raise MalformedEntry(f"field {name!r} is {len(raw)} bytes, over the limit of {limit}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEntry(f"field {name!r} is not UTF-8") from None


def _counter(fields: Mapping[bytes, bytes], name: str) -> int:
    text = _text(fields, name, 19)
    if not text.isascii() or not text.isdigit():
        raise MalformedEntry(f"field {name!r} is {text!r}, not a non-negative integer")
    value = int(text)
    if value > MAX_COUNTER:
        raise MalformedEntry(f"field {name!r} is {value}, over 2**63 - 1")
    return value


def parse_entry(stream_id: bytes, fields: Mapping[bytes, bytes]) -> AuditEntry:
    """Check and decode one entry; MalformedEntry says what is wrong with it."""
    key = _text(fields, "k", MAX_KEY_LENGTH)
    version = _counter(fields, "v")
    epoch = _counter(fields, "e")
    owner = _text(fields, "o", MAX_NODE_ID_LENGTH)
    if not owner:
        raise MalformedEntry("field 'o' (the owner node id) is empty")
    kind = _text(fields, "kind", 32)
    if kind not in _KINDS:
        raise MalformedEntry(f"kind {kind!r} is not one of {sorted(_KINDS)}")
    state = _text(fields, "st", MAX_STATE_LENGTH)
    event = _text(fields, "ev", MAX_EVENT_LENGTH, required=False)
    at_text = _text(fields, "at", 32)
    try:
        at_seconds = float(at_text)
    except ValueError:
        raise MalformedEntry(f"field 'at' is {at_text!r}, not a number") from None
    if not math.isfinite(at_seconds) or not 0 <= at_seconds < MAX_WALL_CLOCK:
        raise MalformedEntry(f"field 'at' is {at_text!r}, not a wall-clock reading")
    end_text = _text(fields, "end", 1, required=False)
    if end_text not in ("", "0", "1"):
        raise MalformedEntry(f"field 'end' is {end_text!r}; it is '1', '0' or absent")
    raw = fields.get(b"snap")
    if raw is None:
        raise MalformedEntry("field 'snap' is missing")
    if len(raw) > MAX_SNAPSHOT_BYTES:
        raise MalformedEntry(f"the snapshot is {len(raw)} bytes, over the limit of {MAX_SNAPSHOT_BYTES}")
    try:
        snapshot = TransactionSnapshot.from_json(raw)
        check_snapshot_data(snapshot)
    except InvalidSnapshotError as exc:
        raise MalformedEntry(f"the snapshot is invalid: {exc}") from None
    for name, entry_value, snapshot_value in (
        ("k", key, snapshot.key),
        ("v", version, snapshot.version),
        ("kind", kind, snapshot.kind),
        ("st", state, snapshot.state),
    ):
        if entry_value != snapshot_value:
            raise MalformedEntry(
                f"field {name!r} is {entry_value!r} but the snapshot says {snapshot_value!r}"
            )
    ended = end_text == "1"
    if ended != (state == TransactionState.TERMINATED):
        raise MalformedEntry(f"field 'end' is {end_text!r} in state {state}")
    return AuditEntry(
        stream_id=stream_id,
        key=key,
        version=version,
        epoch=epoch,
        owner=owner,
        kind=kind,
        state=state,
        event=event,
        at=datetime.fromtimestamp(at_seconds, UTC),
        snapshot=snapshot,
        ended=ended,
    )


# --- how a transaction ended -----------------------------------------------------------------------

# The event names a store may write: the Event members' names and values, any case.
_EVENTS: Final[dict[str, Event]] = {
    **{member.name.lower(): member for member in Event},
    **{member.value.lower(): member for member in Event},
}
# Timeouts that end a transaction without its exchange done: no final response
# (Timer B, RFC 3261 §17.1.1.2; Timer F, §17.1.2.2) or no ACK (Timer H, §17.2.1).
_TIMEOUTS: Final = frozenset({Event.TIMER_B, Event.TIMER_F, Event.TIMER_H})
_USER_ENDS: Final = frozenset({"terminate", "terminated"})


def status_of(response: bytes | None) -> int | None:
    """The status code of a response on the wire (RFC 3261 §7.2 Status-Line), or None."""
    if response is None:
        return None
    parts = response[:64].split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit() or len(parts[1]) != 3:
        return None
    code = int(parts[1])
    return code if 100 <= code <= 699 else None


def derive_outcome(event: str, final_status: int | None) -> str:
    """How a terminated transaction ended, from the event that ended it and its last response.

    A timeout or a transport error says so whatever was answered (an INVITE server
    whose 486 was never ACKed timed out); an explicit ``terminate`` is its user's
    doing; otherwise the machine ran to its end after a final response: completed,
    or cancelled when that response was 487 (RFC 3261 §9.2).
    """
    text = event.strip().lower()
    cause = _EVENTS.get(text)
    if cause is Event.TRANSPORT_ERROR or "transport" in text:
        return TransactionOutcome.TRANSPORT_ERROR
    if cause in _TIMEOUTS:
        return TransactionOutcome.TIMED_OUT
    if text in _USER_ENDS:
        return TransactionOutcome.TERMINATED
    if cause is not None and final_status is not None and final_status >= 200:
        return TransactionOutcome.CANCELLED if final_status == 487 else TransactionOutcome.COMPLETED
    return TransactionOutcome.UNKNOWN


# --- ingestion ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one :func:`ingest_shard` call did."""

    shard: int
    read: int  # entries taken from the stream (new and claimed)
    claimed: int  # of which were claimed from idle consumers
    recorded: int  # new TransactionSnapshotRecord rows
    duplicates: int  # versions already recorded (a re-delivery)
    dead: int  # entries moved to the dead-letter stream
    acked: int  # entries acknowledged and deleted from the stream


def ensure_group(client: redis.Redis, shard: int) -> None:
    """Create the shard's consumer group (and stream) if missing; reads start at the stream's beginning."""
    try:
        client.xgroup_create(stream_name(shard), GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def ingest_batch(
    client: redis.Redis,
    shard: int,
    consumer: str,
    count: int = 500,
    *,
    block_ms: int | None = None,
    claim_idle_ms: int | None = None,
) -> int:
    """Ingest up to ``count`` entries of ``shard``'s stream; return how many were acknowledged."""
    return ingest_shard(client, shard, consumer, count, block_ms=block_ms, claim_idle_ms=claim_idle_ms).acked


def ingest_shard(
    client: redis.Redis,
    shard: int,
    consumer: str,
    count: int = 500,
    *,
    block_ms: int | None = None,
    claim_idle_ms: int | None = None,
) -> BatchReport:
    """One batch: claim entries idle longer than ``claim_idle_ms`` (their consumer is
    presumed dead), read new ones, record them in one database transaction, then
    acknowledge and delete them. If the database write fails the entries stay
    pending and are claimed again later."""
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    if claim_idle_ms is None:
        claim_idle_ms = int(getattr(settings, "SIP_AUDIT_CLAIM_IDLE_MS", DEFAULT_CLAIM_IDLE_MS))
    if claim_idle_ms < 0:
        raise ValueError(f"claim_idle_ms must not be negative, not {claim_idle_ms}")
    stream = stream_name(shard)
    # Redis >= 7 returns (next cursor, claimed entries, ids no longer in the stream);
    # the latter are dropped from the pending list by XAUTOCLAIM itself. The group is
    # created on first use (and again if the stream was deleted since).
    try:
        claimed_reply = client.xautoclaim(stream, GROUP, consumer, claim_idle_ms, "0-0", count=count)
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        ensure_group(client, shard)
        claimed_reply = client.xautoclaim(stream, GROUP, consumer, claim_idle_ms, "0-0", count=count)
    raw: list[tuple[bytes, dict[bytes, bytes]]] = [
        (entry_id, fields) for entry_id, fields in claimed_reply[1] if fields is not None
    ]
    claimed = len(raw)
    if len(raw) < count:
        reply = client.xreadgroup(
            GROUP, consumer, {stream: ">"}, count=count - len(raw), block=block_ms if not raw else None
        )
        for _, entries in reply or ():
            raw.extend((entry_id, fields) for entry_id, fields in entries if fields is not None)
    if not raw:
        return BatchReport(shard, 0, 0, 0, 0, 0, 0)

    entries: list[AuditEntry] = []
    dead: list[tuple[bytes, dict[bytes, bytes], str]] = []
    for entry_id, fields in raw:
        try:
            entries.append(parse_entry(entry_id, fields))
        except MalformedEntry as exc:
            dead.append((entry_id, fields, str(exc)))

    fields_by_id = {entry_id: fields for entry_id, fields in raw}
    try:
        with transaction.atomic():
            result = _record(entries)
    except (IntegrityError, DataError) as exc:
        # One entry the checks above let through upsets the database: record them one
        # by one, so only the culprit goes to the dead letters. (Connection failures
        # are not caught: the batch stays pending and is claimed again.)
        logger.warning(
            "audit shard %d: batch of %d refused (%s); recording one by one", shard, len(entries), exc
        )
        result = _Recorded(0, 0, [])
        for entry in entries:
            try:
                with transaction.atomic():
                    one = _record([entry])
            except (IntegrityError, DataError) as single:
                one = _Recorded(0, 0, [(entry, f"the database refused it: {single}")])
            result = _Recorded(
                result.recorded + one.recorded,
                result.duplicates + one.duplicates,
                result.refused + one.refused,
            )
    dead.extend((entry.stream_id, fields_by_id[entry.stream_id], reason) for entry, reason in result.refused)

    for entry_id, _, reason in dead:
        logger.error("audit shard %d: entry %s dead-lettered: %s", shard, entry_id.decode(), reason)
    ids = [entry_id for entry_id, _ in raw]
    _acknowledge(client, shard, ids, dead)
    return BatchReport(
        shard=shard,
        read=len(raw),
        claimed=claimed,
        recorded=result.recorded,
        duplicates=result.duplicates,
        dead=len(dead),
        acked=len(ids),
    )


def _acknowledge(
    client: redis.Redis,
    shard: int,
    ids: Sequence[bytes],
    dead: Sequence[tuple[bytes, dict[bytes, bytes], str]],
) -> None:
    """After the commit: dead letters, XACK and XDEL in one MULTI (one slot: one hash tag)."""
    pipe = client.pipeline(transaction=True)
    for entry_id, fields, reason in dead:
        letter: dict[bytes | str, bytes | str] = {
            name: value[:DEAD_LETTER_FIELD_BYTES] for name, value in fields.items()
        }
        letter["_id"] = entry_id
        letter["_reason"] = reason[:1000]
        pipe.xadd(dead_letter_stream(shard), letter, maxlen=DEAD_LETTER_MAXLEN, approximate=True)  # type: ignore[arg-type]
    if dead:
        pipe.incrby(dead_letter_counter(shard), len(dead))
    pipe.xack(stream_name(shard), GROUP, *ids)
    # Acknowledged entries are deleted, so the stream holds only what is not yet recorded.
    pipe.xdel(stream_name(shard), *ids)
    pipe.execute()


@dataclass(frozen=True, slots=True)
class _Recorded:
    recorded: int
    duplicates: int
    refused: list[tuple[AuditEntry, str]]


def _record(entries: Sequence[AuditEntry]) -> _Recorded:
    """Write ``entries`` (inside the caller's transaction): nodes, transactions, records."""
    if not entries:
        return _Recorded(0, 0, [])
    _upsert_nodes(entries)
    by_key: dict[str, list[AuditEntry]] = defaultdict(list)
    for entry in entries:
        by_key[entry.key].append(entry)
    refused: list[tuple[AuditEntry, str]] = []
    rows = _upsert_transactions(by_key, refused)

    ids = [row.pk for row in rows.values()]
    known: dict[int, dict[int, bytes | None]] = defaultdict(dict)
    for transaction_id, version, response in TransactionSnapshotRecord.objects.filter(
        transaction_id__in=ids
    ).values_list("transaction_id", "version", "response"):
        known[transaction_id][version] = None if response is None else bytes(response)

    records: list[TransactionSnapshotRecord] = []
    duplicates = 0
    now = timezone.now()
    for key, group in by_key.items():
        row = rows.get(key)
        if row is None:
            continue  # its entries were refused
        versions = known[row.pk]
        for entry in sorted(group, key=lambda e: e.version):
            if entry.version in versions:
                duplicates += 1
                continue
            response = entry.snapshot.last_response
            before = _response_as_of(versions, entry.version - 1)
            if response is None and before is not None:
                # Rebuilding relies on a response never vanishing once there was one.
                refused.append((entry, "it has no last response, yet an earlier version had one"))
                group.remove(entry)
                continue
            # The response is kept when it differs from the previous version's. With
            # that version missing (a gap, or not ingested yet) it is kept whole, so
            # "the latest non-null at or before" stays right whatever arrives later.
            stored = None if (entry.version - 1 in versions and response == before) else response
            versions[entry.version] = stored
            snapshot = entry.snapshot
            records.append(
                TransactionSnapshotRecord(
                    transaction_id=row.pk,
                    version=entry.version,
                    epoch=entry.epoch,
                    owner_id=entry.owner,
                    state=entry.state,
                    event=entry.event,
                    timers={name: [deadline, interval] for name, deadline, interval in snapshot.timers},
                    response=stored,
                    transport=_transport_document(snapshot.transport),
                    timings=None
                    if snapshot.timings == DEFAULT_TIMINGS
                    else dataclasses.asdict(snapshot.timings),
                    clock_created=snapshot.created_at,
                    clock_updated=snapshot.updated_at,
                    recorded_at=entry.at,
                    ingested_at=now,
                )
            )
    # Idempotent: a version already recorded (a re-delivery racing this one) is skipped.
    _insert_ignoring_conflicts(TransactionSnapshotRecord, records)
    _advance_transactions(rows, by_key)
    return _Recorded(len(records), duplicates, refused)


def _insert_ignoring_conflicts(model: type[Model], objs: Sequence[Model]) -> None:
    """``bulk_create(objs, ignore_conflicts=True)``, cheaper: one short statement run
    for each row (``executemany``; psycopg pipelines it: one round trip).

    Django's bulk_create builds one statement with a placeholder per value, which
    costs more to build, send and parse than the rows themselves. On PostgreSQL the
    statement is bound server-side (Django's cursors bind client-side, making every
    row a new statement to parse and plan), so it is planned once for the batch.
    ``ON CONFLICT DO NOTHING`` is PostgreSQL's and SQLite's (3.24+) spelling alike;
    values are prepared by the fields themselves, as bulk_create does.
    """
    if not objs:
        return
    db = connections[router.db_for_write(model)]
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    quote = db.ops.quote_name
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(fields))}) ON CONFLICT DO NOTHING"
    )
    rows = [[field.get_db_prep_save(getattr(obj, field.attname), db) for field in fields] for obj in objs]
    _executemany(db, sql, rows)


def _update_rows(model: type[Model], objs: Sequence[Model], names: Sequence[str]) -> None:
    """``bulk_update(objs, names)``, cheaper: one ``UPDATE ... WHERE pk = %s`` run for
    each row (executemany, as :func:`_insert_ignoring_conflicts`). Django's
    bulk_update sets every column to a CASE over every row of the batch, which the
    database evaluates for each row: quadratic in the batch."""
    db = connections[router.db_for_write(model)]
    fields = [model._meta.get_field(name) for name in names]
    pk = model._meta.pk
    assert pk is not None
    quote = db.ops.quote_name
    sql = (
        f"UPDATE {quote(model._meta.db_table)} SET "  # noqa: S608 - quoted names
        f"{', '.join(f'{quote(field.column)} = %s' for field in fields)} WHERE {quote(pk.column)} = %s"
    )
    rows = [
        [field.get_db_prep_save(getattr(obj, field.attname), db) for field in fields] + [obj.pk]
        for obj in objs
    ]
    _executemany(db, sql, rows)


def _executemany(db: Any, sql: str, rows: list[list[Any]]) -> None:
    if db.vendor == "postgresql":
        import psycopg

        # Bound server-side: parsed and planned once for the batch (Django's cursors
        # bind client-side, making every row a new statement). The driver's errors
        # are raised as Django's (IntegrityError, DataError...), as its cursors do.
        db.ensure_connection()
        with db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
            cursor.executemany(sql, rows)
    else:
        with db.cursor() as cursor:
            cursor.executemany(sql, rows)


def _response_as_of(versions: Mapping[int, bytes | None], version: int) -> bytes | None:
    stored = [v for v, response in versions.items() if v <= version and response is not None]
    return versions[max(stored)] if stored else None


def _transport_document(transport: TransportInfo) -> list[Any]:
    return [transport.protocol, transport.reliable, list(transport.local), list(transport.remote)]


def _upsert_nodes(entries: Iterable[AuditEntry]) -> None:
    seen: dict[str, tuple[datetime, datetime, set[str]]] = {}
    for entry in entries:
        host, port = entry.snapshot.transport.local
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        first, last, addresses = seen.get(entry.owner, (entry.at, entry.at, set()))
        addresses.add(address)
        seen[entry.owner] = (min(first, entry.at), max(last, entry.at), addresses)
    SipNode.objects.bulk_create(
        [
            SipNode(
                id=node, addresses=sorted(addresses)[:MAX_NODE_ADDRESSES], first_seen=first, last_seen=last
            )
            for node, (first, last, addresses) in sorted(seen.items())
        ],
        ignore_conflicts=True,
    )
    for node in SipNode.objects.select_for_update().filter(pk__in=sorted(seen)).order_by("pk"):
        first, last, addresses = seen[node.id]
        merged = sorted(set(node.addresses) | addresses)[:MAX_NODE_ADDRESSES]
        changed = []
        if last > node.last_seen:
            node.last_seen = last
            changed.append("last_seen")
        if first < node.first_seen:
            node.first_seen = first
            changed.append("first_seen")
        if merged != sorted(node.addresses):
            node.addresses = merged
            changed.append("addresses")
        if changed:
            node.save(update_fields=changed)


def _new_transaction(first: AuditEntry) -> SipTransaction:
    """A row at the transaction's earliest version in hand (later ones advance it)."""
    try:
        request = parse_message(first.snapshot.request)
    except ParseError as exc:
        raise MalformedEntry(f"the stored request does not parse: {exc}") from None
    if not isinstance(request, Request):
        raise MalformedEntry("the stored request is a response")
    final_status = status_of(first.snapshot.last_response)
    return SipTransaction(
        key=first.key,
        kind=first.kind,
        method=request.method[:32],
        call_id=(request.call_id or "")[:255],
        from_header=(request.headers.get("From") or "")[:255],
        to_header=(request.headers.get("To") or "")[:255],
        request=first.snapshot.request,
        state=first.state,
        version=first.version,
        owner_id=first.owner,
        epoch=first.epoch,
        last_event=first.event,
        final_status=final_status,
        created_at=first.at,
        updated_at=first.at,
        terminated_at=first.at if first.ended else None,
        outcome=derive_outcome(first.event, final_status) if first.ended else "",
    )


def _upsert_transactions(
    by_key: dict[str, list[AuditEntry]], refused: list[tuple[AuditEntry, str]]
) -> dict[str, SipTransaction]:
    """One row per key (created at the earliest version in hand when new), locked for
    this transaction; :func:`_advance_transactions` moves rows forward once the
    versions are recorded.

    Entries that contradict the row (another kind, another request) are moved
    from ``by_key`` to ``refused``.
    """
    keys = sorted(by_key)
    existing = set(SipTransaction.objects.filter(key__in=keys).values_list("key", flat=True))
    fresh = []
    for key in keys:
        if key in existing:
            continue
        try:
            fresh.append(_new_transaction(min(by_key[key], key=lambda e: e.version)))
        except MalformedEntry as exc:
            refused.extend((entry, str(exc)) for entry in by_key.pop(key))
    # Keys in sorted order, in the insert and in the lock, so two consumers of one
    # shard wait for each other rather than deadlock.
    SipTransaction.objects.bulk_create(fresh, ignore_conflicts=True)
    rows = {
        row.key: row
        for row in SipTransaction.objects.select_for_update().filter(key__in=sorted(by_key)).order_by("key")
    }
    for key, row in rows.items():
        request = bytes(row.request)
        group = []
        for entry in by_key[key]:
            if entry.kind != row.kind:
                refused.append((entry, f"kind {entry.kind} contradicts the recorded {row.kind}"))
            elif entry.snapshot.request != request:
                refused.append((entry, "its request differs from the one recorded for this transaction"))
            else:
                group.append(entry)
        by_key[key] = group
    return {key: row for key, row in rows.items() if by_key.get(key)}


def _advance_transactions(rows: Mapping[str, SipTransaction], by_key: Mapping[str, list[AuditEntry]]) -> None:
    """Move each row to the latest version among its recorded entries (never back)."""
    changed: list[SipTransaction] = []
    for key, row in rows.items():
        group = by_key.get(key)
        if not group:
            continue
        dirty = False
        earliest = min(entry.at for entry in group)
        if earliest < row.created_at:
            row.created_at = earliest
            dirty = True
        latest = max(group, key=lambda e: e.version)
        if latest.version > row.version:  # latest version wins; an older one never moves the row back
            final_status = status_of(latest.snapshot.last_response)
            row.state = latest.state
            row.version = latest.version
            row.owner_id = latest.owner
            row.epoch = latest.epoch
            row.last_event = latest.event
            row.final_status = final_status
            row.updated_at = latest.at
            if latest.ended:
                row.terminated_at = latest.at
                row.outcome = derive_outcome(latest.event, final_status)
            dirty = True
        if dirty:
            changed.append(row)
    if changed:
        _update_rows(
            SipTransaction,
            changed,
            [
                "state",
                "version",
                "owner",
                "epoch",
                "last_event",
                "final_status",
                "created_at",
                "updated_at",
                "terminated_at",
                "outcome",
            ],
        )


# --- rebuilding a snapshot -------------------------------------------------------------------------


class VersionNotRecorded(LookupError):
    """No record of that transaction version in the database."""


def rebuild_snapshot(transaction_key: str, version: int) -> TransactionSnapshot:
    """The snapshot of ``transaction_key`` at ``version``, from the database alone.

    The request comes from the SipTransaction row; the rest from the version's
    record; the response is the latest one recorded at or before the version.
    ``restore_transaction`` accepts the result as it would the original.
    """
    try:
        record = TransactionSnapshotRecord.objects.select_related("transaction").get(
            transaction__key=transaction_key, version=version
        )
    except TransactionSnapshotRecord.DoesNotExist:
        raise VersionNotRecorded(
            f"transaction {transaction_key!r} has no recorded version {version}"
        ) from None
    response = record.response
    if response is None:
        response = (
            TransactionSnapshotRecord.objects.filter(
                transaction_id=record.transaction_id, version__lt=version, response__isnull=False
            )
            .order_by("-version")
            .values_list("response", flat=True)
            .first()
        )
    protocol, reliable, local, remote = record.transport
    return TransactionSnapshot(
        schema_version=SCHEMA_VERSION,
        kind=record.transaction.kind,
        state=record.state,
        key=record.transaction.key,
        request=bytes(record.transaction.request),
        last_response=None if response is None else bytes(response),
        timers=tuple(
            sorted(
                (name, float(deadline), float(interval))
                for name, (deadline, interval) in record.timers.items()
            )
        ),
        transport=TransportInfo(protocol, reliable, (local[0], local[1]), (remote[0], remote[1])),
        timings=Timings(**record.timings) if record.timings else Timings(),
        created_at=record.clock_created,
        updated_at=record.clock_updated,
        version=record.version,
    )


# --- retention --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransactionPruneProgress:
    cutoff: datetime
    deleted: int  # so far, in this run
    batches: int
    kept: int  # terminated before the cutoff but still holding records (pruned on a later run)


def prune_records(
    older_than: timedelta | None = None,
    batch: int = 1000,
    *,
    now: datetime | None = None,
    requested_by: str = "sipcore.audit.prune_records",
    progress: Callable[[PruneProgress], None] | None = None,
) -> PruneProgress:
    """Delete TransactionSnapshotRecord rows recorded before the retention age
    (``SIP_AUDIT_RETENTION_DAYS`` unless given), through ``prune_audit``, the one path."""
    return prune_audit(
        TransactionSnapshotRecord,
        older_than or retention(),
        batch,
        now=now,
        requested_by=requested_by,
        progress=progress,
    )


def prune_transactions(
    older_than: timedelta | None = None,
    batch: int = 1000,
    *,
    now: datetime | None = None,
    requested_by: str = "sipcore.audit.prune_transactions",
    progress: Callable[[TransactionPruneProgress], None] | None = None,
) -> TransactionPruneProgress:
    """Delete terminated SipTransaction rows that ended before the retention age.

    Records first: their records older than the same cutoff go through
    :func:`prune_records` (the append-only tables' one way out); a transaction
    keeps its row while any record of it remains (recorded after the cutoff), and
    goes on a later run. Live transactions are never deleted. Batches of
    ``batch`` rows, each in its own transaction.
    """
    age = older_than or retention()
    if age <= timedelta(0):
        raise ValueError(f"older_than must be positive, not {age}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    now = now or timezone.now()
    cutoff = now - age
    prune_records(age, batch, now=now, requested_by=requested_by)
    records = TransactionSnapshotRecord.objects.filter(transaction_id=OuterRef("pk"))
    expired = SipTransaction.objects.filter(terminated_at__lt=cutoff)
    report = TransactionPruneProgress(cutoff, 0, 0, expired.filter(Exists(records)).count())
    while True:
        with transaction.atomic():
            ids = list(
                expired.filter(~Exists(records))
                .order_by("terminated_at", "pk")
                .values_list("pk", flat=True)[:batch]
            )
            if not ids:
                break
            # Re-checked under the delete: a record ingested meanwhile keeps its row (PROTECT).
            deleted, _ = SipTransaction.objects.filter(pk__in=ids).filter(~Exists(records)).delete()
        report = dataclasses.replace(report, deleted=report.deleted + deleted, batches=report.batches + 1)
        logger.info(
            "pruned %d SIP transactions terminated before %s; %d so far", deleted, cutoff, report.deleted
        )
        if progress is not None:
            progress(report)
        if len(ids) < batch:
            break
    return report


# --- lag -------------------------------------------------------------------------------------------------


def audit_lag(client: redis.Redis, shards: Iterable[int] | None = None) -> dict[int, float]:
    """Per shard, the age in seconds of its oldest entry not yet acknowledged (0.0: none).

    Acknowledged entries are deleted, so the oldest entry still in the stream is
    the oldest unacknowledged one, delivered or not. Ages are measured on the Redis
    server's clock, which also stamped the entry ids. Two round trips in all.
    """
    chosen = list(range(shard_count())) if shards is None else list(shards)
    pipe = client.pipeline(transaction=False)
    for shard in chosen:
        pipe.xrange(stream_name(shard), count=1)
    replies = pipe.execute()
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros / 1000
    lag: dict[int, float] = {}
    for shard, reply in zip(chosen, replies, strict=True):
        if not reply:
            lag[shard] = 0.0
            continue
        entry_id = reply[0][0]
        stamp_ms = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-", 1)[0])
        lag[shard] = max(0.0, (now_ms - stamp_ms) / 1000)
    return lag


def dead_letters(client: redis.Redis, shards: Iterable[int] | None = None) -> dict[int, int]:
    """Per shard, how many entries were ever dead-lettered."""
    chosen = list(range(shard_count())) if shards is None else list(shards)
    pipe = client.pipeline(transaction=False)
    for shard in chosen:
        pipe.get(dead_letter_counter(shard))
    return {shard: int(value or 0) for shard, value in zip(chosen, pipe.execute(), strict=True)}
