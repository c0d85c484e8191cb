"""The record table is append-only in the database; old rows leave only through the prune path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.test import override_settings
from django.utils import timezone

from callops.audit_db import prunable_models
from callops.models import AuditPrune
from sipcore.audit import derive_outcome, ingest_batch, prune_records, prune_transactions
from sipcore.models import SipTransaction, TransactionSnapshotRecord
from tests.sipcore.audit.support import invite_server_versions, xadd

pytestmark = pytest.mark.django_db
SHARD = 7
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def ingest(r, versions, *, at: datetime, keep_last: int = 0):
    xadd(r, SHARD, versions[: len(versions) - keep_last], at=at.timestamp())
    if keep_last:
        xadd(r, SHARD, versions[-keep_last:], at=NOW.timestamp())
    assert ingest_batch(r, SHARD, "c1") == len(versions)


def test_records_refuse_update_and_delete_from_any_path(r):
    ingest(r, invite_server_versions(), at=NOW)
    record = TransactionSnapshotRecord.objects.first()
    for sql in (
        "UPDATE sipcore_transactionsnapshotrecord SET state = 'Completed'",
        "DELETE FROM sipcore_transactionsnapshotrecord",
    ):
        with (
            pytest.raises(IntegrityError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as c,
        ):
            c.execute(sql)
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        TransactionSnapshotRecord._base_manager.filter(pk=record.pk).update(event="forged")
    assert TransactionSnapshotRecord.objects.count() == 7
    assert TransactionSnapshotRecord in prunable_models()


def test_prune_audit_command_prunes_old_records_and_records_the_prune(r):
    ingest(r, invite_server_versions(), at=timezone.now() - timedelta(days=40))
    ingest(r, invite_server_versions(branch="z9hG4bKrecent", call_id="recent@x"), at=timezone.now())
    call_command("prune_audit", "--older-than", "30d", "--model", "sipcore.TransactionSnapshotRecord")
    assert TransactionSnapshotRecord.objects.count() == 7
    assert set(TransactionSnapshotRecord.objects.values_list("transaction__call_id", flat=True)) == {
        "recent@x"
    }
    assert AuditPrune.objects.get(table="sipcore_transactionsnapshotrecord").deleted == 7


@override_settings(SIP_AUDIT_RETENTION_DAYS=10)
def test_prune_records_defaults_to_the_retention_setting(r):
    ingest(r, invite_server_versions(), at=NOW - timedelta(days=11))
    ingest(r, invite_server_versions(branch="z9hG4bK9days", call_id="9days@x"), at=NOW - timedelta(days=9))
    assert prune_records(now=NOW).deleted == 7
    assert set(TransactionSnapshotRecord.objects.values_list("transaction__call_id", flat=True)) == {
        "9days@x"
    }


def test_prune_transactions_takes_records_first_and_keeps_live_and_recent_ones(r):
    old = invite_server_versions(branch="z9hG4bKold", call_id="old@x")
    ingest(r, old, at=NOW - timedelta(days=40))
    straddling = invite_server_versions(branch="z9hG4bKstraddle", call_id="straddle@x")
    # Terminated long ago by its own clock, but its last version was recorded only now.
    xadd(r, SHARD, straddling[:-1], at=(NOW - timedelta(days=40)).timestamp())
    xadd(r, SHARD, straddling[-1:], at=(NOW - timedelta(days=35)).timestamp())
    assert ingest_batch(r, SHARD, "c1") == 7
    live = invite_server_versions(branch="z9hG4bKlive", call_id="live@x")[:4]  # still Completed
    ingest(r, live, at=NOW - timedelta(days=40))
    recent = invite_server_versions(branch="z9hG4bKrecent", call_id="recent@x")
    ingest(r, recent, at=NOW - timedelta(days=1))
    seen = []
    report = prune_transactions(timedelta(days=30), batch=1, now=NOW, progress=seen.append)
    assert report.deleted == 2  # old and straddling: all their records were old too
    assert [p.deleted for p in seen] == [1, 2]
    assert set(SipTransaction.objects.values_list("call_id", flat=True)) == {"live@x", "recent@x"}
    # The live transaction's old records were pruned, the transaction stays (never terminated).
    assert not TransactionSnapshotRecord.objects.filter(transaction__call_id="live@x").exists()
    assert TransactionSnapshotRecord.objects.filter(transaction__call_id="recent@x").count() == 7


def test_a_transaction_keeps_its_row_while_records_of_it_remain(r):
    versions = invite_server_versions()
    ingest(r, versions, at=NOW - timedelta(days=40), keep_last=1)  # the last recorded today
    tx = SipTransaction.objects.get()
    assert tx.terminated_at == NOW
    SipTransaction.objects.filter(pk=tx.pk).update(terminated_at=NOW - timedelta(days=40))  # as if so
    report = prune_transactions(timedelta(days=30), now=NOW)
    assert (report.deleted, report.kept) == (0, 1)
    assert TransactionSnapshotRecord.objects.filter(transaction=tx).count() == 1
    assert SipTransaction.objects.filter(pk=tx.pk).exists()
    assert prune_transactions(timedelta(days=1), now=NOW + timedelta(days=2)).deleted == 1
    assert not SipTransaction.objects.exists()


@pytest.mark.parametrize(
    ("event", "status", "outcome"),
    [
        ("Timer I", 486, "completed"),
        ("timer_i", 486, "completed"),
        ("TIMER_K", 200, "completed"),
        ("Timer D", 487, "cancelled"),
        ("Timer H", 486, "timed_out"),  # a final response never ACKed
        ("timer_b", None, "timed_out"),
        ("Timer F", None, "timed_out"),
        ("a transport error", 180, "transport_error"),
        ("transport_error", None, "transport_error"),
        ("terminate", 200, "terminated"),
        ("", 486, "unknown"),
        ("Timer J", None, "unknown"),
    ],
)
def test_outcome_is_derived_from_the_ending_event_and_last_response(event, status, outcome):
    assert derive_outcome(event, status) == outcome


def test_an_unacked_final_response_ends_as_a_timeout_in_the_mirror(r):
    ingest(r, invite_server_versions(ack=False), at=NOW)
    tx = SipTransaction.objects.get()
    assert (tx.state, tx.outcome, tx.final_status, tx.last_event) == (
        "Terminated",
        "timed_out",
        486,
        "timer_h",
    )


@override_settings(SIP_AUDIT_RETENTION_DAYS=30)
def test_prune_audit_without_an_age_uses_each_tables_retention_setting(r):
    ingest(r, invite_server_versions(), at=timezone.now() - timedelta(days=31))
    ingest(r, invite_server_versions(branch="z9hG4bKfresh", call_id="fresh@x"), at=timezone.now())
    call_command("prune_audit", "--model", "sipcore.TransactionSnapshotRecord")
    assert set(TransactionSnapshotRecord.objects.values_list("transaction__call_id", flat=True)) == {
        "fresh@x"
    }


def test_prune_audit_without_an_age_refuses_a_table_with_no_retention_setting(r):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no retention setting"):
        call_command("prune_audit", "--model", "callops.CallStateSnapshot")
