"""Ingestion from the real Redis streams into the real database: every version once, whatever happens."""

from __future__ import annotations

import pytest
from django.db import OperationalError, connection, connections, transaction

from sipcore.audit import (
    GROUP,
    _insert_ignoring_conflicts,
    _record,
    audit_lag,
    dead_letter_stream,
    dead_letters,
    ensure_group,
    ingest_batch,
    ingest_shard,
    parse_entry,
    rebuild_snapshot,
    stream_name,
)
from sipcore.models import SipNode, SipTransaction, TransactionSnapshotRecord
from tests.sipcore.audit.support import entry_fields, invite_server_versions, non_invite_client_versions, xadd

SHARD = 3


def stored(key: str) -> list[tuple[int, str, bytes | None]]:
    return [
        (v, state, None if response is None else bytes(response))
        for v, state, response in TransactionSnapshotRecord.objects.filter(transaction__key=key)
        .order_by("version")
        .values_list("version", "state", "response")
    ]


@pytest.mark.django_db(transaction=True)
def test_every_version_is_recorded_once_and_the_stream_is_emptied(r):
    versions = invite_server_versions()
    xadd(r, SHARD, versions, owner="node-a", epoch=1)
    assert ingest_batch(r, SHARD, "c1") == 7
    key = versions[0].snapshot.key
    rows = stored(key)
    assert [(v, state) for v, state, _ in rows] == [
        (0, "Proceeding"), (1, "Proceeding"), (2, "Proceeding"), (3, "Completed"),
        (4, "Completed"), (5, "Confirmed"), (6, "Terminated"),
    ]  # fmt: skip
    # The response is kept only where it changed: 100, 180, 486.
    kept = [(v, response.split(b"\r\n", 1)[0]) for v, _, response in rows if response is not None]
    assert kept == [(1, b"SIP/2.0 100 Trying"), (2, b"SIP/2.0 180 Ringing"), (3, b"SIP/2.0 486 Busy Here")]
    tx = SipTransaction.objects.get(key=key)
    assert (tx.kind, tx.method, tx.state, tx.version, tx.owner_id, tx.epoch) == (
        "invite_server", "INVITE", "Terminated", 6, "node-a", 1,
    )  # fmt: skip
    assert tx.call_id == "audit-1@atlanta.example.com"
    assert tx.from_header.startswith("Alice <sip:alice@atlanta.example.com>")
    assert tx.to_header == "Bob <sip:bob@biloxi.example.com>"
    assert (tx.outcome, tx.final_status, tx.last_event) == ("completed", 486, "timer_i")
    assert tx.terminated_at is not None
    assert bytes(tx.request) == versions[0].snapshot.request
    node = SipNode.objects.get(pk="node-a")
    assert node.addresses == ["192.0.2.1:5060"]
    # Acknowledged and deleted: nothing pending, nothing left to read.
    assert r.xlen(stream_name(SHARD)) == 0
    assert r.xpending(stream_name(SHARD), GROUP)["pending"] == 0
    assert ingest_batch(r, SHARD, "c1") == 0


@pytest.mark.django_db(transaction=True)
def test_a_crash_between_insert_and_ack_redelivers_and_duplicates_nothing(r):
    versions = invite_server_versions()
    xadd(r, SHARD, versions)
    # Consumer "dead" reads the entries and commits them, then dies before XACK.
    ensure_group(r, SHARD)
    reply = r.xreadgroup(GROUP, "dead", {stream_name(SHARD): ">"}, count=100)
    entries = [parse_entry(entry_id, fields) for entry_id, fields in reply[0][1]]
    assert len(entries) == 7
    with transaction.atomic():
        _record(entries)
    assert len(stored(versions[0].snapshot.key)) == 7
    assert r.xpending(stream_name(SHARD), GROUP)["pending"] == 7
    # Another consumer, after the dead one's entries have been idle long enough, claims them.
    assert ingest_batch(r, SHARD, "alive", claim_idle_ms=60_000) == 0  # not idle yet: left alone
    report = ingest_shard(r, SHARD, "alive", claim_idle_ms=0)
    assert (report.claimed, report.recorded, report.duplicates, report.acked) == (7, 0, 7, 7)
    assert len(stored(versions[0].snapshot.key)) == 7
    assert r.xpending(stream_name(SHARD), GROUP)["pending"] == 0
    assert r.xlen(stream_name(SHARD)) == 0


@pytest.mark.django_db(transaction=True)
def test_a_failed_database_write_leaves_the_batch_pending_for_a_later_claim(r):
    if connection.vendor != "postgresql":
        pytest.skip("holds a table lock from another session with PostgreSQL's LOCK TABLE")
    versions = invite_server_versions()
    xadd(r, SHARD, versions)
    assert ingest_batch(r, SHARD, "c1", count=1) == 1
    # Another session holds the record table: this batch's write times out at the database.
    other = connections.create_connection("default")
    assert other.settings_dict["NAME"] == connection.settings_dict["NAME"]
    try:
        other.set_autocommit(False)
        with other.cursor() as cursor:
            cursor.execute("LOCK TABLE sipcore_transactionsnapshotrecord IN ACCESS EXCLUSIVE MODE")
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '200ms'")
            with pytest.raises(OperationalError, match="lock timeout"):
                ingest_batch(r, SHARD, "c1")
    finally:
        other.rollback()
        other.close()
    assert r.xpending(stream_name(SHARD), GROUP)["pending"] == 6  # nothing lost, nothing acknowledged
    assert ingest_batch(r, SHARD, "c2", claim_idle_ms=0) == 6
    assert len(stored(versions[0].snapshot.key)) == 7


@pytest.mark.django_db(transaction=True)
def test_the_latest_version_wins_whatever_order_versions_arrive_in(r):
    versions = invite_server_versions()
    key = versions[0].snapshot.key
    xadd(r, SHARD, versions[4:], at=2000.0)
    assert ingest_batch(r, SHARD, "c1") == 3
    xadd(r, SHARD, versions[:4], at=1000.0)
    assert ingest_batch(r, SHARD, "c1") == 4
    tx = SipTransaction.objects.get(key=key)
    assert (tx.state, tx.version, tx.outcome) == ("Terminated", 6, "completed")
    assert tx.created_at.timestamp() == 1000.0  # the earliest version's time
    assert tx.updated_at.timestamp() == 2000.0  # the latest version's, not the last ingested
    for version in versions:
        assert rebuild_snapshot(key, version.snapshot.version) == version.snapshot


@pytest.mark.django_db(transaction=True)
def test_an_adoption_moves_owner_and_epoch_forward_only(r):
    versions = invite_server_versions()
    xadd(r, SHARD, versions[:3], owner="node-a", epoch=1)
    xadd(r, SHARD, versions[3:], owner="node-b", epoch=2)
    xadd(r, SHARD, versions[2:3], owner="node-a", epoch=1)  # a stale duplicate, re-delivered late
    assert ingest_batch(r, SHARD, "c1") == 8
    tx = SipTransaction.objects.get(key=versions[0].snapshot.key)
    assert (tx.owner_id, tx.epoch) == ("node-b", 2)
    owners = list(
        TransactionSnapshotRecord.objects.filter(transaction=tx)
        .order_by("version")
        .values_list("owner", "epoch")
    )
    assert owners == [("node-a", 1)] * 3 + [("node-b", 2)] * 4
    assert set(SipNode.objects.values_list("id", flat=True)) == {"node-a", "node-b"}


@pytest.mark.django_db
def test_malformed_entries_go_to_the_dead_letters_and_never_block_the_shard(r):
    good = invite_server_versions()
    other = invite_server_versions(branch="z9hG4bKother", call_id="other@x")
    bad_fields = [
        {"k": "x"},  # most fields missing
        {**entry_fields(good[1]), "snap": b"{not json"},
        {**entry_fields(good[2]), "v": "7"},  # says version 7, the snapshot says 2
        {**entry_fields(good[3]), "at": "nan"},
        {**entry_fields(good[4]), "kind": "proxy"},
        {**entry_fields(good[5]), "v": "-1"},
        {**entry_fields(good[6]), "end": "0"},  # it is terminated
        {**entry_fields(good[0]), "k": "s|" + "x" * 2000},
        # The same key with another request: the request is stored once, and must stay true.
        {**entry_fields(other[1]), "k": good[0].snapshot.key, "snap": other[1].snapshot.to_json().replace(
            other[1].snapshot.key.encode(), good[0].snapshot.key.encode())},
    ]  # fmt: skip
    r.xadd(stream_name(SHARD), entry_fields(good[0]))
    bad_ids = [r.xadd(stream_name(SHARD), fields) for fields in bad_fields]
    r.xadd(stream_name(SHARD), entry_fields(good[1]))
    report = ingest_shard(r, SHARD, "c1")
    assert (report.read, report.recorded, report.dead, report.acked) == (11, 2, 9, 11)
    assert r.xlen(stream_name(SHARD)) == 0
    # Dead letters carry the original id and fields (sorted here: the checks that need
    # the database run after those that need only the entry).
    letters = sorted(r.xrange(dead_letter_stream(SHARD)), key=lambda letter: bad_ids.index(letter[1][b"_id"]))
    assert [fields[b"_id"] for _, fields in letters] == bad_ids
    assert letters[1][1][b"snap"] == b"{not json"
    reasons = [fields[b"_reason"].decode() for _, fields in letters]
    for reason, expected in zip(
        reasons,
        ["field 'v' is missing", "snapshot is not JSON", "field 'v' is 7 but the snapshot says 2",
         "not a wall-clock reading", "kind 'proxy'", "not a non-negative integer", "field 'end' is '0' in state Terminated",
         "over the limit of 1024", "request differs"],
        strict=True,
    ):  # fmt: skip
        assert expected in reason, reason
    assert dead_letters(r, [SHARD]) == {SHARD: 9}
    assert [v for v, _, _ in stored(good[0].snapshot.key)] == [0, 1]


@pytest.mark.django_db
def test_a_version_whose_request_differs_from_the_recorded_one_is_refused(r):
    good = invite_server_versions()
    xadd(r, SHARD, good[:1])
    ingest_batch(r, SHARD, "c1")
    forged = good[1].snapshot.to_json().replace(b"Max-Forwards: 70", b"Max-Forwards: 69")
    r.xadd(stream_name(SHARD), {**entry_fields(good[1]), "snap": forged})
    report = ingest_shard(r, SHARD, "c1")
    assert (report.recorded, report.dead) == (0, 1)
    ((_, letter),) = r.xrange(dead_letter_stream(SHARD))
    assert b"request differs" in letter[b"_reason"]


@pytest.mark.django_db
def test_the_audit_lag_is_the_age_of_the_oldest_unacknowledged_entry(r):
    versions = invite_server_versions()
    assert audit_lag(r, [SHARD, SHARD + 1]) == {SHARD: 0.0, SHARD + 1: 0.0}
    seconds, micros = r.time()
    ten_seconds_ago = seconds * 1000 + micros // 1000 - 10_000
    r.xadd(stream_name(SHARD), entry_fields(versions[0]), id=f"{ten_seconds_ago}-0")
    r.xadd(stream_name(SHARD), entry_fields(versions[1]))
    lag = audit_lag(r, [SHARD, SHARD + 1])
    assert 10.0 <= lag[SHARD] < 60.0
    assert lag[SHARD + 1] == 0.0
    # Delivered but not acknowledged still counts.
    r.xgroup_create(stream_name(SHARD), GROUP, id="0")
    r.xreadgroup(GROUP, "slow", {stream_name(SHARD): ">"}, count=10)
    assert audit_lag(r, [SHARD])[SHARD] >= 10.0
    assert ingest_batch(r, SHARD, "c1", claim_idle_ms=0) == 2
    assert audit_lag(r, [SHARD]) == {SHARD: 0.0}


@pytest.mark.django_db
def test_many_transactions_over_many_shards_each_version_exactly_once(r):
    every, copies = [], 0
    for n in range(40):
        versions = invite_server_versions(branch=f"z9hG4bKmany{n}", call_id=f"many-{n}@x", ack=n % 2 == 0)
        every.extend(versions)
        xadd(r, n % 4, versions)
        copies += len(xadd(r, n % 4, versions[::3]))  # re-delivered copies
    total = 0
    for shard in range(4):
        while (done := ingest_batch(r, shard, "c1", count=50)) > 0:
            total += done
    assert TransactionSnapshotRecord.objects.count() == len(every)
    assert total == len(every) + copies
    recorded = TransactionSnapshotRecord.objects.values_list("transaction__key", "version")
    assert sorted(recorded) == sorted((v.snapshot.key, v.snapshot.version) for v in every)
    assert SipTransaction.objects.filter(outcome="timed_out").count() == 20
    assert SipTransaction.objects.filter(outcome="completed").count() == 20
    assert all(r.xlen(stream_name(shard)) == 0 for shard in range(4))


def test_non_invite_client_versions_are_ordered():
    versions = non_invite_client_versions()
    assert [v.snapshot.state for v in versions] == ["Trying", "Trying", "Trying", "Completed", "Terminated"]


@pytest.mark.django_db
def test_a_racing_insert_of_a_recorded_version_is_skipped_not_applied(r):
    """Two consumers of one shard may both insert a version: the second insert is a no-op."""
    versions = invite_server_versions()
    xadd(r, SHARD, versions[:2])
    ingest_batch(r, SHARD, "c1")
    original = TransactionSnapshotRecord.objects.get(version=1)
    forged = TransactionSnapshotRecord(
        **{f.attname: getattr(original, f.attname) for f in TransactionSnapshotRecord._meta.concrete_fields},
    )
    forged.pk, forged.state, forged.event = None, "Completed", "forged"
    _insert_ignoring_conflicts(TransactionSnapshotRecord, [forged])
    assert TransactionSnapshotRecord.objects.count() == 2
    assert TransactionSnapshotRecord.objects.get(version=1).event == original.event


@pytest.mark.django_db(transaction=True)
def test_an_entry_the_database_refuses_is_dead_lettered_alone(r):
    """Checks run before the database can miss something the database refuses (PostgreSQL
    takes no NUL in text): the batch is then written entry by entry, and only the
    culprit goes to the dead letters."""
    versions = invite_server_versions()
    xadd(r, SHARD, versions[:3])
    r.xadd(stream_name(SHARD), {**entry_fields(versions[3]), "ev": "Timer\x00G"})
    xadd(r, SHARD, versions[4:])
    report = ingest_shard(r, SHARD, "c1")
    key = versions[0].snapshot.key
    if connection.vendor == "postgresql":
        assert (report.recorded, report.dead, report.acked) == (6, 1, 7)
        assert [v for v, _, _ in stored(key)] == [0, 1, 2, 4, 5, 6]
        ((_, letter),) = r.xrange(dead_letter_stream(SHARD))
        assert b"the database refused it" in letter[b"_reason"]
        # A version missing in between: the next one kept its response whole, so all rebuild.
        for version in versions[:3] + versions[4:]:
            assert rebuild_snapshot(key, version.snapshot.version) == version.snapshot
    else:
        assert (report.recorded, report.dead) == (7, 0)
    assert r.xlen(stream_name(SHARD)) == 0


@pytest.mark.django_db
def test_a_version_that_is_refused_never_becomes_the_transactions_latest(r):
    """A version whose response vanished (the store's contract says it cannot) is
    dead-lettered, and the transaction row stays at the last version recorded."""
    versions = invite_server_versions()
    xadd(r, SHARD, versions[:4])
    vanished = versions[4].snapshot.to_json().split(b',"response":')[0] + b',"response":null}'
    r.xadd(stream_name(SHARD), {**entry_fields(versions[4]), "snap": vanished})
    report = ingest_shard(r, SHARD, "c1")
    assert (report.recorded, report.dead) == (4, 1)
    tx = SipTransaction.objects.get()
    assert (tx.version, tx.state) == (3, "Completed")
    ((_, letter),) = r.xrange(dead_letter_stream(SHARD))
    assert b"yet an earlier version had one" in letter[b"_reason"]
