"""Django's SQLite backend, with a flush that passes the audit tables' triggers,
and recursive triggers on, so that INSERT OR REPLACE cannot delete an audit row.

``manage.py flush`` (and the test runner between transactional tests) empties
every table. PostgreSQL does it with TRUNCATE, which row triggers do not see;
SQLite has only DELETE, which the append-only triggers refuse. So the flush
opens the same gate ``prune_audit`` uses, for every table, inside its own
transaction, and closes it at the end (``callops.audit_db``).
"""

from __future__ import annotations

from typing import Any

from django.db.backends.sqlite3 import base, operations

from callops.audit_db import sqlite_flush_statements


class DatabaseOperations(operations.DatabaseOperations):
    def sql_flush(
        self, style: Any, tables: Any, *, reset_sequences: bool = False, allow_cascade: bool = False
    ):  # type: ignore[no-untyped-def]
        statements = super().sql_flush(
            style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade
        )
        if not statements:
            return statements
        with self.connection.cursor() as cursor:
            existing = self.connection.introspection.table_names(cursor)
        before, after = sqlite_flush_statements(existing)
        return [*before, *statements, *after]


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations

    def get_new_connection(self, conn_params):  # type: ignore[no-untyped-def]
        connection = super().get_new_connection(conn_params)
        # The row REPLACE removes fires DELETE triggers only with this on
        # (https://www.sqlite.org/lang_conflict.html).
        connection.execute("PRAGMA recursive_triggers = ON")
        return connection
