"""CallStateSnapshot rows are append-only: code refuses to change or delete them."""

from __future__ import annotations

import pytest

from callops.models import AuditRowImmutable, CallStateSnapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def row():
    return CallStateSnapshot.objects.create(
        call_sid="CAaudit", sequence=1, schema_version=3, stage="ask_action", state={"stage": "ask_action"},
        event={"kind": "input"}, source=CallStateSnapshot.Source.WEBHOOK,
    )  # fmt: skip


def test_a_saved_row_cannot_be_saved_again(row):
    row.stage = "goodbye"
    with pytest.raises(
        AuditRowImmutable, match="CallStateSnapshot CAaudit #1 is append-only: it cannot be changed"
    ):
        row.save()
    assert CallStateSnapshot.objects.get(pk=row.pk).stage == "ask_action"


def test_a_row_cannot_be_deleted(row):
    with pytest.raises(AuditRowImmutable, match="cannot be deleted"):
        row.delete()
    assert CallStateSnapshot.objects.filter(pk=row.pk).exists()


@pytest.mark.parametrize(
    "change",
    [
        lambda: CallStateSnapshot.objects.filter(call_sid="CAaudit").update(stage="x"),
        lambda: CallStateSnapshot.objects.update(stage="x"),
        lambda: CallStateSnapshot.objects.all().delete(),
        lambda: CallStateSnapshot.objects.filter(call_sid="CAaudit").delete(),
        lambda: CallStateSnapshot.objects.bulk_update(list(CallStateSnapshot.objects.all()), ["stage"]),
    ],
    ids=["filter-update", "manager-update", "all-delete", "filter-delete", "bulk-update"],
)
def test_bulk_changes_are_refused(row, change):
    with pytest.raises(AuditRowImmutable, match="append-only"):
        change()
    assert CallStateSnapshot.objects.get(pk=row.pk).stage == "ask_action"


def test_sequence_is_unique_per_call(row):
    from django.db import IntegrityError, transaction

    CallStateSnapshot.objects.create(
        call_sid="CAother", sequence=1, schema_version=3, state={}, source="webhook"
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        CallStateSnapshot.objects.create(
            call_sid="CAaudit", sequence=1, schema_version=3, state={}, source="api"
        )


def test_a_new_row_is_an_insert_even_with_a_given_primary_key(row):
    """force_insert: saving a copy under an existing id cannot overwrite that row."""
    from django.db import IntegrityError, transaction

    copy = CallStateSnapshot(
        pk=row.pk, call_sid="CAaudit", sequence=2, schema_version=3, state={}, source="api"
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        copy.save()
    assert CallStateSnapshot.objects.get(pk=row.pk).sequence == 1
