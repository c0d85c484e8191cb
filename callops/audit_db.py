"""Append-only audit tables, enforced by the database itself.

Python refuses to change an audit row (``AppendOnlyModel``), but Python is not
the only way in: ``bulk_create(update_conflicts=True)``, ``_base_manager``, raw
SQL and a ``dbshell`` all reach the table directly. So every audit table gets
triggers, created by its migration, that refuse UPDATE and DELETE whoever
sends them::

    operations = [
        migrations.CreateModel(name="SomethingRecord", ...),
        *append_only_operations("app_somethingrecord", prune_column="recorded_at"),
    ]

The one way to delete is :func:`prune_audit`: it removes rows older than a
cutoff, in batches, and records each batch as an ``AuditPrune`` row in the
same transaction. It opens the gate for its own transaction only, and the
trigger itself checks the cutoff against each row it is asked to delete:

- PostgreSQL: transaction-local settings (``set_config(..., is_local => true)``)
  name the table and the cutoff; they vanish at COMMIT or ROLLBACK.
- SQLite: a one-row permit table written inside the same transaction and
  emptied before it commits (SQLite has a single writer, so no other
  connection ever sees the permit).

What the triggers do not stop, on purpose: DDL (dropping a trigger or the
table), PostgreSQL's TRUNCATE (Django's test flush uses it; it needs the
table owner's rights) and ``session_replication_role = replica`` (superuser
only). Against those, production runs the application as a role that does not
own the tables. On SQLite, ``manage.py flush`` gets the same wholesale reset
through :mod:`callops.db_backends.sqlite3`, which also turns on
``recursive_triggers`` so that INSERT OR REPLACE meets the DELETE trigger.

On SQLite, a migration that alters an audit table rebuilds it (Django copies it
into a new table), and the triggers go with the old one: end such a migration
with ``append_only_operations`` for that table again (installing is
idempotent). ``test_every_audit_model_has_the_triggers`` catches a miss.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, migrations, models, transaction
from django.utils import timezone

logger = logging.getLogger(__name__)

# SQLite's gate: at most one row, present only inside a pruning (or flushing) transaction.
SQLITE_PERMIT_TABLE = "callops_audit_permit"
SQLITE_FLUSH_ALL = "*"  # the permit's table name while `manage.py flush` empties every table
# PostgreSQL's gate: transaction-local settings.
PG_PRUNE_TABLE = "callops.audit_prune_table"
PG_PRUNE_BEFORE = "callops.audit_prune_before"

REFUSAL_HINT = "audit rows are never changed; old ones are removed only by manage.py prune_audit"


def _refusal(table: str, operation: str) -> str:
    return f"{table} is append-only: {operation} refused ({REFUSAL_HINT})"


# --- the triggers ---------------------------------------------------------------------------------


def append_only_operations(table: str, *, prune_column: str | None = None) -> list[migrations.RunPython]:
    """Migration operations that make ``table`` append-only in the database.

    ``prune_column`` names the row's timestamp column that :func:`prune_audit`
    may delete by; without it the table's rows can never be deleted.
    """
    return [
        migrations.RunPython(
            _Triggers(table, prune_column).install,
            _Triggers(table, prune_column).remove,
            elidable=False,
        )
    ]


@dataclass(frozen=True)
class _Triggers:
    table: str
    prune_column: str | None

    def install(self, apps: Any, schema_editor: Any) -> None:
        vendor = schema_editor.connection.vendor
        if vendor == "postgresql":
            statements = self._postgresql(schema_editor)
        elif vendor == "sqlite":
            statements = self._sqlite(schema_editor)
        else:
            raise NotImplementedError(
                f"append-only triggers are written for PostgreSQL and SQLite, not {vendor}"
            )
        for sql in statements:
            schema_editor.execute(sql, params=None)

    def remove(self, apps: Any, schema_editor: Any) -> None:
        quote = schema_editor.quote_name
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(
                f"DROP TRIGGER IF EXISTS {quote(self._name('trigger'))} ON {quote(self.table)}"
            )
            schema_editor.execute(f"DROP FUNCTION IF EXISTS {quote(self._name('refuse'))}()")
        else:
            with schema_editor.connection.cursor() as cursor:
                cursor.execute(
                    "SELECT name FROM sqlite_master "
                    "WHERE type = 'trigger' AND tbl_name = %s AND name LIKE %s",
                    [self.table, f"{self.table}_append_only_%"],
                )
                names = [name for (name,) in cursor.fetchall()]
            for name in names:
                schema_editor.execute(f"DROP TRIGGER IF EXISTS {quote(name)}")

    def _name(self, kind: str) -> str:
        return f"{self.table}_append_only_{kind}"

    def _postgresql(self, schema_editor: Any) -> list[str]:
        quote = schema_editor.quote_name
        function, table = quote(self._name("refuse")), quote(self.table)
        prune = ""
        if self.prune_column:
            # A row older than the cutoff that prune_audit set for this very table and
            # transaction may go; anything else is refused. Nested IFs: SQL does not
            # promise to evaluate AND left to right, and the cutoff is unset otherwise.
            prune = f"""
  IF TG_OP = 'DELETE' AND current_setting('{PG_PRUNE_TABLE}', true) = TG_TABLE_NAME THEN
    IF OLD.{quote(self.prune_column)} < current_setting('{PG_PRUNE_BEFORE}')::timestamptz THEN
      RETURN OLD;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'restrict_violation', MESSAGE = format(
      '%s is append-only: the prune before %s may not delete a row of %s',
      TG_TABLE_NAME, current_setting('{PG_PRUNE_BEFORE}'), OLD.{quote(self.prune_column)});
  END IF;"""
        # restrict_violation (SQLSTATE 23001) reaches Django as an IntegrityError.
        return [
            f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN{prune}
  RAISE EXCEPTION USING ERRCODE = 'restrict_violation', MESSAGE = format(
    '%s is append-only: %s refused ({REFUSAL_HINT})', TG_TABLE_NAME, TG_OP);
END
$$""",
            f"DROP TRIGGER IF EXISTS {quote(self._name('trigger'))} ON {table}",
            # INSERT ... ON CONFLICT DO UPDATE and MERGE fire the UPDATE trigger too.
            f"CREATE TRIGGER {quote(self._name('trigger'))} BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {function}()",
        ]

    def _sqlite(self, schema_editor: Any) -> list[str]:
        quote = schema_editor.quote_name
        table = quote(self.table)
        gate = f"p.table_name = '{SQLITE_FLUSH_ALL}'"
        if self.prune_column:
            # Django stores datetimes as ISO text in UTC; prune_audit writes the cutoff the
            # same way, so text order is time order (as in Django's own __lt lookups).
            gate += f" OR (p.table_name = '{self.table}' AND OLD.{quote(self.prune_column)} < p.before)"
        # INSERT OR REPLACE deletes the row it meets, firing DELETE triggers only with
        # recursive_triggers on, which callops.db_backends.sqlite3 sets on every connection.
        # An upsert (ON CONFLICT DO UPDATE) fires the UPDATE trigger.
        return [
            f"CREATE TABLE IF NOT EXISTS {quote(SQLITE_PERMIT_TABLE)} ("
            "id INTEGER PRIMARY KEY CHECK (id = 1), table_name TEXT NOT NULL, before TEXT)",
            f"CREATE TRIGGER IF NOT EXISTS {quote(self._name('update'))} BEFORE UPDATE ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{_refusal(self.table, 'UPDATE')}'); END",
            f"CREATE TRIGGER IF NOT EXISTS {quote(self._name('delete'))} BEFORE DELETE ON {table} "  # noqa: S608
            f"WHEN NOT EXISTS (SELECT 1 FROM {quote(SQLITE_PERMIT_TABLE)} p WHERE {gate}) "
            f"BEGIN SELECT RAISE(ABORT, '{_refusal(self.table, 'DELETE')}'); END",
        ]


def sqlite_flush_statements(existing_tables: list[str]) -> tuple[list[str], list[str]]:
    """What a SQLite flush runs before and after its DELETEs so the triggers let them through."""
    if SQLITE_PERMIT_TABLE not in existing_tables:
        return [], []
    permit = f'"{SQLITE_PERMIT_TABLE}"'
    return (
        [f"INSERT OR REPLACE INTO {permit} VALUES (1, '{SQLITE_FLUSH_ALL}', NULL);"],  # noqa: S608
        [f"DELETE FROM {permit};"],  # noqa: S608 - constants
    )


# --- pruning by age ---------------------------------------------------------------------------------


class NotPrunable(ValueError):
    """A model that is not an audit table with a prune column."""


@dataclass(frozen=True)
class PruneProgress:
    table: str
    cutoff: datetime
    deleted: int  # so far, in this run
    batches: int


def prunable_models() -> list[type[models.Model]]:
    """Every audit model whose old rows may be pruned (those declaring ``audit_prune_field``)."""
    from django.apps import apps

    return [model for model in apps.get_models() if getattr(model, "audit_prune_field", None)]


def prune_audit(
    model: type[models.Model],
    older_than: timedelta,
    batch: int = 1000,
    *,
    now: datetime | None = None,
    requested_by: str = "",
    progress: Callable[[PruneProgress], None] | None = None,
) -> PruneProgress:
    """Delete ``model``'s audit rows recorded before ``now - older_than``, ``batch`` rows a transaction.

    Each batch opens the triggers' gate for its own transaction, deletes the
    oldest rows, and appends an ``AuditPrune`` row saying what went, all in one
    commit: a crash loses no record of a deletion and records none that did not
    happen. Safe to stop and run again.
    """
    from callops.models import AuditPrune

    field_name = getattr(model, "audit_prune_field", None)
    if not field_name:
        raise NotPrunable(f"{model.__name__} is not a prunable audit table (no audit_prune_field)")
    if older_than <= timedelta(0):
        raise ValueError(f"older_than must be positive, not {older_than}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    now = now or timezone.now()
    cutoff = now - older_than
    table = model._meta.db_table
    field = model._meta.get_field(field_name)
    quote = connection.ops.quote_name
    pk_column = model._meta.pk.column  # type: ignore[union-attr]
    run = uuid.uuid4()
    report = PruneProgress(table, cutoff, 0, 0)
    while True:
        with transaction.atomic():
            _open_gate(table, cutoff)
            rows = list(
                model._base_manager.filter(**{f"{field_name}__lt": cutoff})
                .order_by(field_name, "pk")
                .values_list("pk", field_name)[:batch]
            )
            if rows:
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"DELETE FROM {quote(table)} WHERE {quote(pk_column)} IN "  # noqa: S608 - quoted names
                        f"({', '.join(['%s'] * len(rows))}) AND {quote(field.column)} < %s",
                        [pk for pk, _ in rows] + [connection.ops.adapt_datetimefield_value(cutoff)],  # type: ignore[list-item]
                    )
                    deleted = cursor.rowcount
            _close_gate()
            if not rows:
                break
            AuditPrune.objects.create(
                run=run,
                table=table,
                cutoff=cutoff,
                deleted=deleted,
                oldest=rows[0][1],
                newest=rows[-1][1],
                requested_by=requested_by[:150],
                recorded_at=timezone.now(),
            )
        report = PruneProgress(table, cutoff, report.deleted + deleted, report.batches + 1)
        logger.info(
            "pruned %d rows of %s recorded from %s to %s (before %s); %d so far in run %s",
            deleted,
            table,
            rows[0][1],
            rows[-1][1],
            cutoff,
            report.deleted,
            run,
        )
        if progress is not None:
            progress(report)
        if len(rows) < batch:
            break
    return report


def _open_gate(table: str, cutoff: datetime) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT set_config(%s, %s, true), set_config(%s, %s, true)",
                [PG_PRUNE_TABLE, table, PG_PRUNE_BEFORE, cutoff.isoformat()],
            )
        else:
            cursor.execute(
                f'INSERT INTO "{SQLITE_PERMIT_TABLE}" VALUES (1, %s, %s)',  # noqa: S608 - a constant
                [table, connection.ops.adapt_datetimefield_value(cutoff)],
            )


def _close_gate() -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT set_config(%s, '', true), set_config(%s, '', true)", [PG_PRUNE_TABLE, PG_PRUNE_BEFORE]
            )
        else:
            cursor.execute(f'DELETE FROM "{SQLITE_PERMIT_TABLE}"')  # noqa: S608 - a constant
