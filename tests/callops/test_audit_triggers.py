"""Audit tables are append-only in the database: triggers refuse UPDATE and DELETE from any path.

Runs on the database the suite runs on: PostgreSQL in CI, SQLite in the smoke run.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from callops.audit_db import NotPrunable, prunable_models, prune_audit
from callops.models import AppendOnlyModel, AuditPrune, CallStateSnapshot, Client, Job, JobChange

pytestmark = [pytest.mark.django_db, pytest.mark.smoke]

REFUSED = "is append-only: .*refused"
NOW = timezone.now()


def snapshot(call_sid: str = "CAtrigger", sequence: int = 1, *, age: timedelta = timedelta(0)):
    return CallStateSnapshot.objects.create(
        call_sid=call_sid, sequence=sequence, schema_version=3, stage="ask_action",
        state={"stage": "ask_action"}, event={"kind": "input"}, source="webhook", recorded_at=NOW - age,
    )  # fmt: skip


@pytest.fixture
def job():
    client = Client.objects.create(code="4242", name="Trigger test")
    return Job.objects.create(client=client, number="1", title="t")


def job_change(job, *, age: timedelta = timedelta(0)):
    return JobChange.objects.create(
        job=job, source="admin", actor="staff", changes={"status": {"from": "pending", "to": "scheduled"}},
        recorded_at=NOW - age,
    )  # fmt: skip


def prune_record():
    return AuditPrune.objects.create(
        run=uuid.uuid4(), table="x", cutoff=NOW, deleted=1, oldest=NOW, newest=NOW, requested_by="test"
    )


@pytest.fixture(params=["callstatesnapshot", "jobchange", "auditprune"])
def audit_row(request, job):
    return {"callstatesnapshot": snapshot, "jobchange": lambda: job_change(job), "auditprune": prune_record}[
        request.param
    ]()


def refused(match: str = REFUSED):
    """The statement fails with the trigger's message; the transaction around it rolls back."""

    class Both:
        def __enter__(self):
            self.raises = pytest.raises(IntegrityError, match=match)
            self.raises.__enter__()
            self.atomic = transaction.atomic()
            self.atomic.__enter__()

        def __exit__(self, *exc):
            suppressed = self.atomic.__exit__(*exc)
            return self.raises.__exit__(*exc) or suppressed

    return Both()


def as_stored(row) -> dict:
    return type(row)._base_manager.filter(pk=row.pk).values().get()


# --- every way around the Python guards meets the trigger --------------------------------------------


def test_base_manager_update_is_refused(audit_row):
    before = as_stored(audit_row)
    with refused():
        type(audit_row)._base_manager.filter(pk=audit_row.pk).update(recorded_at=NOW - timedelta(days=9))
    assert as_stored(audit_row) == before


def test_base_manager_delete_is_refused(audit_row):
    with refused():
        type(audit_row)._base_manager.filter(pk=audit_row.pk).delete()
    assert type(audit_row)._base_manager.filter(pk=audit_row.pk).exists()


@pytest.mark.parametrize("statement", ["UPDATE {table} SET recorded_at = recorded_at", "DELETE FROM {table}"])
def test_raw_sql_is_refused(audit_row, statement):
    before = as_stored(audit_row)
    with refused(), connection.cursor() as cursor:
        cursor.execute(statement.format(table=type(audit_row)._meta.db_table))
    assert as_stored(audit_row) == before


def test_the_error_names_the_table_and_the_operation():
    snapshot()
    with refused("callops_callstatesnapshot is append-only: UPDATE refused"), connection.cursor() as cursor:
        cursor.execute("UPDATE callops_callstatesnapshot SET stage = 'x'")
    with refused("callops_callstatesnapshot is append-only: DELETE refused"), connection.cursor() as cursor:
        cursor.execute("DELETE FROM callops_callstatesnapshot")


def test_bulk_create_with_update_conflicts_cannot_overwrite_a_row():
    original = snapshot()
    forged = CallStateSnapshot(
        call_sid="CAtrigger", sequence=1, schema_version=3, stage="goodbye", state={"forged": True},
        event={}, source="api",
    )  # fmt: skip
    with refused():
        CallStateSnapshot.objects.bulk_create(
            [forged],
            update_conflicts=True,
            unique_fields=["call_sid", "sequence"],
            update_fields=["stage", "state", "source"],
        )
    assert as_stored(original)["state"] == {"stage": "ask_action"}


def test_an_insert_over_an_existing_row_cannot_replace_it():
    """SQLite's INSERT OR REPLACE deletes the row it meets (a DELETE, with recursive
    triggers on); PostgreSQL's ON CONFLICT DO UPDATE is an UPDATE. Both are refused."""
    original = snapshot()
    columns = "(id, call_sid, sequence, schema_version, stage, state, event, source, recorded_at)"
    values = "(%s, 'CAtrigger', 1, 3, 'goodbye', '{}', '{}', 'api', %s)"
    if connection.vendor == "sqlite":
        sql = f"INSERT OR REPLACE INTO callops_callstatesnapshot {columns} VALUES {values}"  # noqa: S608
    else:
        sql = (
            f"INSERT INTO callops_callstatesnapshot {columns} VALUES {values} "  # noqa: S608
            "ON CONFLICT (id) DO UPDATE SET stage = EXCLUDED.stage"
        )
    with refused(), connection.cursor() as cursor:
        cursor.execute(sql, [original.pk, connection.ops.adapt_datetimefield_value(NOW)])
    assert as_stored(original)["stage"] == "ask_action"


def test_new_rows_still_go_in():
    snapshot(sequence=1)
    snapshot(sequence=2)
    CallStateSnapshot.objects.bulk_create(
        [CallStateSnapshot(call_sid="CAtrigger", sequence=3, schema_version=3, state={}, source="api")]
    )
    assert CallStateSnapshot.objects.filter(call_sid="CAtrigger").count() == 3


def triggers_on(table: str) -> set[str]:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal", [table]
            )
        else:
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s", [table])
        return {name for (name,) in cursor.fetchall()}


def test_every_audit_model_has_the_triggers():
    """A later audit model (a subclass of AppendOnlyModel) whose migration lacks
    append_only_operations fails here."""
    audit_models = [model for model in apps.get_models() if issubclass(model, AppendOnlyModel)]
    assert {CallStateSnapshot, JobChange, AuditPrune} <= set(audit_models)
    for model in audit_models:
        table = model._meta.db_table
        names = triggers_on(table)
        if connection.vendor == "postgresql":
            assert f"{table}_append_only_trigger" in names, table
        else:
            assert {f"{table}_append_only_update", f"{table}_append_only_delete"} <= names, table


def test_a_duplicate_key_reads_as_the_database_says_it():
    """Code tells a concurrent writer (same call and sequence) from other errors by the
    database's own words: the triggers leave a plain duplicate insert alone."""
    snapshot()
    native = {
        "postgresql": "call_state_sequence_unique_per_call",
        "sqlite": "UNIQUE constraint failed: callops_callstatesnapshot.call_sid, callops_callstatesnapshot.sequence",
    }[connection.vendor]
    with pytest.raises(IntegrityError, match=re.escape(native)), transaction.atomic():
        snapshot()


def test_insert_ignoring_conflicts_still_works():
    """Idempotent ingestion (bulk_create(ignore_conflicts=True)) skips rows already there."""
    original = snapshot()
    again = CallStateSnapshot(call_sid="CAtrigger", sequence=1, schema_version=3, stage="goodbye", state={},
                              source="api")  # fmt: skip
    extra = CallStateSnapshot(call_sid="CAtrigger", sequence=2, schema_version=3, state={}, source="api")
    CallStateSnapshot.objects.bulk_create([again, extra], ignore_conflicts=True)
    assert as_stored(original)["stage"] == "ask_action"
    assert CallStateSnapshot.objects.filter(call_sid="CAtrigger").count() == 2


class _Editor:
    """What the migration operation is given, over the test's own connection and transaction."""

    connection = connection

    def quote_name(self, name: str) -> str:
        return connection.ops.quote_name(name)

    def execute(self, sql: str, params=None) -> None:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)


def test_the_migration_operation_installs_removes_and_reinstalls():
    from callops.audit_db import _Triggers

    row = snapshot()
    triggers = _Triggers("callops_callstatesnapshot", "recorded_at")
    triggers.remove(None, _Editor())
    assert not triggers_on("callops_callstatesnapshot")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE callops_callstatesnapshot SET stage = 'unguarded'")
    triggers.install(None, _Editor())
    triggers.install(None, _Editor())  # twice is once
    with refused(), connection.cursor() as cursor:
        cursor.execute("UPDATE callops_callstatesnapshot SET stage = 'x'")
    assert as_stored(row)["stage"] == "unguarded"


# --- the one way to delete: prune_audit ---------------------------------------------------------------


def test_prune_deletes_only_rows_older_than_the_cutoff_in_batches(job):
    old = [snapshot(sequence=n, age=timedelta(days=100, minutes=n)) for n in range(1, 8)]
    edge = snapshot(sequence=8, age=timedelta(days=90) - timedelta(seconds=1))
    recent = snapshot(sequence=9, age=timedelta(days=1))
    old_change, new_change = job_change(job, age=timedelta(days=200)), job_change(job)
    seen = []
    report = prune_audit(
        CallStateSnapshot, timedelta(days=90), batch=3, now=NOW, requested_by="test", progress=seen.append
    )
    assert (report.deleted, report.batches) == (7, 3)
    assert [p.deleted for p in seen] == [3, 6, 7]
    kept = set(CallStateSnapshot.objects.values_list("pk", flat=True))
    assert kept == {edge.pk, recent.pk}
    assert not kept & {row.pk for row in old}
    # Another table's rows are not touched by this prune.
    assert set(JobChange.objects.values_list("pk", flat=True)) == {old_change.pk, new_change.pk}
    # The prune is itself audited, one append-only row per batch, all of one run.
    records = list(AuditPrune.objects.order_by("id"))
    assert [r.deleted for r in records] == [3, 3, 1]
    assert {r.table for r in records} == {"callops_callstatesnapshot"}
    assert len({r.run for r in records}) == 1
    assert records[0].cutoff == NOW - timedelta(days=90)
    assert records[0].oldest == old[-1].recorded_at  # oldest first
    assert records[0].requested_by == "test"


def test_outside_a_prune_delete_is_still_refused_even_of_old_rows():
    old = snapshot(age=timedelta(days=400))
    prune_audit(CallStateSnapshot, timedelta(days=500), now=NOW)  # nothing that old
    with refused(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM callops_callstatesnapshot")
    assert CallStateSnapshot.objects.filter(pk=old.pk).exists()
    assert not AuditPrune.objects.exists()  # nothing pruned, nothing recorded


def test_the_prune_gate_is_for_its_table_and_cutoff_only(job):
    """Inside a prune's transaction the trigger still checks every row against the cutoff."""
    from callops.audit_db import _close_gate, _open_gate

    recent = snapshot(age=timedelta(days=1))
    old_change = job_change(job, age=timedelta(days=400))
    with transaction.atomic():
        _open_gate("callops_callstatesnapshot", NOW - timedelta(days=90))
        with refused("append-only"), connection.cursor() as cursor:
            cursor.execute("DELETE FROM callops_callstatesnapshot")  # a row newer than the cutoff
        with refused("append-only"), connection.cursor() as cursor:
            cursor.execute("DELETE FROM callops_jobchange")  # another table
        with refused("UPDATE refused"), connection.cursor() as cursor:
            cursor.execute("UPDATE callops_callstatesnapshot SET stage = 'x'")
        _close_gate()
    assert CallStateSnapshot.objects.filter(pk=recent.pk).exists()
    assert JobChange.objects.filter(pk=old_change.pk).exists()


def test_a_batch_whose_record_fails_deletes_nothing():
    """The deletion and its AuditPrune record commit together: a fault in the record
    (here a trigger of the test's own refusing it) leaves every row in place."""
    rows = [snapshot(sequence=n, age=timedelta(days=100)) for n in (1, 2)]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION test_refuse_record() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected fault'; END $$"
            )
            cursor.execute(
                "CREATE TRIGGER test_refuse_record BEFORE INSERT ON callops_auditprune "
                "FOR EACH ROW EXECUTE FUNCTION test_refuse_record()"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER test_refuse_record BEFORE INSERT ON callops_auditprune "
                "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
            )
    with pytest.raises(DatabaseError, match="injected fault"):
        prune_audit(CallStateSnapshot, timedelta(days=90), now=NOW)
    assert CallStateSnapshot.objects.filter(pk__in=[r.pk for r in rows]).count() == 2
    assert not AuditPrune.objects.exists()


def test_prune_refuses_bad_arguments():
    with pytest.raises(ValueError, match="older_than must be positive"):
        prune_audit(CallStateSnapshot, timedelta(0))
    with pytest.raises(ValueError, match="batch must be at least 1"):
        prune_audit(CallStateSnapshot, timedelta(days=1), batch=0)


def test_prune_refuses_what_is_not_a_prunable_audit_table():
    assert CallStateSnapshot in prunable_models()
    assert JobChange in prunable_models()
    assert AuditPrune not in prunable_models()  # the record of prunes stays
    with pytest.raises(NotPrunable):
        prune_audit(AuditPrune, timedelta(days=1))
    with pytest.raises(NotPrunable):
        prune_audit(Job, timedelta(days=1))


def test_management_command_prunes_with_progress(job):
    from io import StringIO

    for n in range(1, 6):
        snapshot(sequence=n, age=timedelta(days=120))
    snapshot(sequence=6)
    job_change(job, age=timedelta(days=120))
    out = StringIO()
    call_command("prune_audit", "--older-than", "90d", "--batch", "2", stdout=out)
    text = out.getvalue()
    assert "callops_callstatesnapshot: 2 deleted" in text
    assert "callops_callstatesnapshot: 5 rows deleted in 3 batches" in text
    assert "callops_jobchange: 1 rows deleted in 1 batches" in text
    assert CallStateSnapshot.objects.count() == 1
    assert not JobChange.objects.exists()
    assert sum(AuditPrune.objects.values_list("deleted", flat=True)) == 6
    assert {r.requested_by.split(" by ")[0] for r in AuditPrune.objects.all()} == {"manage.py prune_audit"}


def test_management_command_dry_run_and_model_choice(job):
    from io import StringIO

    from django.core.management.base import CommandError

    snapshot(age=timedelta(days=120))
    job_change(job, age=timedelta(days=120))
    out = StringIO()
    call_command("prune_audit", "--older-than", "90d", "--dry-run", stdout=out)
    assert "would delete 1 rows of callops_callstatesnapshot" in out.getvalue()
    assert CallStateSnapshot.objects.count() == 1
    call_command("prune_audit", "--older-than", "12w", "--model", "callops.JobChange", stdout=StringIO())
    assert CallStateSnapshot.objects.count() == 1
    assert not JobChange.objects.exists()
    for bad in (["--older-than", "90"], ["--older-than", "0d"], ["--older-than", "90d", "--model", "x.Y"]):
        with pytest.raises(CommandError):
            call_command("prune_audit", *bad, stdout=StringIO())


@pytest.mark.django_db(transaction=True)
def test_flush_still_empties_audit_tables():
    """`manage.py flush` (and the test runner between transactional tests) resets the
    whole database: TRUNCATE on PostgreSQL, a gated DELETE on SQLite."""
    snapshot()
    call_command("flush", interactive=False, verbosity=0)
    assert not CallStateSnapshot.objects.exists()
    snapshot()  # and the gate is closed again
    with refused(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM callops_callstatesnapshot")
