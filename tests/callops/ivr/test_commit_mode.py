"""IVR_ASYNC_COMMIT: webhook transactions on PostgreSQL commit without waiting for the
disk (asynchronous commit); with it off, each waits for its fsync. Checked on the
database the suite runs on: PostgreSQL in CI, SQLite on a newcomer's machine."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

pytestmark = pytest.mark.django_db

ASYNC = "SET LOCAL synchronous_commit TO OFF"


def statements_of_a_job_changing_call(call) -> list[str]:
    call.voice()
    call.gather(digits="1001")
    call.gather(digits="501")
    call.gather(digits="1")  # yes, that job
    call.gather(digits="1")  # update its status...
    with CaptureQueriesContext(connection) as captured:
        call.gather(digits="2")  # ...to in progress: a job change, the audit row, the state
        call.status("completed", duration=40)
    return [query["sql"] for query in captured.captured_queries]


def test_webhook_transactions_commit_asynchronously_on_postgresql(call, jobs, settings):
    settings.IVR_ASYNC_COMMIT = True
    statements = statements_of_a_job_changing_call(call)
    assert any('UPDATE "callops_job"' in sql for sql in statements)
    if connection.vendor == "postgresql":
        assert statements.count(ASYNC) >= 3  # the job change, the status callback, the call's close
    else:
        assert ASYNC not in statements  # SQLite: WAL with synchronous=NORMAL gives the same guarantee


def test_with_async_commit_off_every_webhook_waits_for_the_disk(call, jobs, settings):
    settings.IVR_ASYNC_COMMIT = False
    statements = statements_of_a_job_changing_call(call)
    assert any('UPDATE "callops_job"' in sql for sql in statements)
    assert ASYNC not in statements
