"""Delete audit rows older than a retention age: the only way audit rows are ever deleted."""

from __future__ import annotations

import getpass
import re
from datetime import timedelta

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from callops.audit_db import PruneProgress, prunable_models, prune_audit

DURATION = re.compile(r"^([1-9][0-9]{0,5})([mhdw])$")
UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    match = DURATION.match(text.strip())
    if match is None:
        raise CommandError(f"--older-than {text!r}: expected a whole number and a unit, e.g. 90d, 12w, 36h")
    return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


class Command(BaseCommand):
    help = (
        "Delete audit rows (call-state snapshots, job changes) recorded before a retention age, "
        "in batches, each batch recorded as an AuditPrune row. Rows are append-only otherwise: "
        "the database refuses any other UPDATE or DELETE."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument(
            "--older-than",
            default=None,
            help="retention age, e.g. 90d, 12w, 36h, 30m; default: each table's retention setting "
            "(e.g. SIP_AUDIT_RETENTION_DAYS); a table without one needs --older-than",
        )
        parser.add_argument(
            "--model",
            action="append",
            default=[],
            help="an audit model as app_label.Model (repeatable); default: every prunable audit table",
        )
        parser.add_argument("--batch", type=int, default=1000, help="rows deleted per transaction")
        parser.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")

    def handle(self, *args, older_than: str | None, model: list[str], batch: int, dry_run: bool, **options):  # type: ignore[no-untyped-def]
        if batch < 1:
            raise CommandError(f"--batch must be at least 1, not {batch}")
        prunable = prunable_models()
        chosen = prunable
        if model:
            chosen = []
            for label in model:
                try:
                    found = apps.get_model(label)
                except (LookupError, ValueError) as exc:
                    raise CommandError(f"--model {label!r}: {exc}") from exc
                if found not in prunable:
                    names = ", ".join(m._meta.label for m in prunable)
                    raise CommandError(f"--model {label!r} is not a prunable audit table; those are: {names}")
                chosen.append(found)
        ages = {audit_model: self._age_of(audit_model, older_than) for audit_model in chosen}
        now = timezone.now()
        try:
            requested_by = f"manage.py prune_audit by {getpass.getuser()}"
        except (KeyError, OSError):  # no user name for this uid (some containers)
            requested_by = "manage.py prune_audit"
        for audit_model in chosen:
            age = ages[audit_model]
            cutoff = now - age
            table = audit_model._meta.db_table
            self.stdout.write(
                f"{table}: pruning rows recorded before {cutoff:%Y-%m-%d %H:%M:%S %Z} ({age} old)"
            )
            if dry_run:
                field = audit_model.audit_prune_field  # type: ignore[attr-defined]
                count = audit_model._base_manager.filter(**{f"{field}__lt": cutoff}).count()
                self.stdout.write(f"would delete {count} rows of {table}")
                continue

            def report(progress: PruneProgress, table: str = table) -> None:
                self.stdout.write(f"  {table}: {progress.deleted} deleted ({progress.batches} batches)")

            done = prune_audit(audit_model, age, batch, now=now, requested_by=requested_by, progress=report)
            self.stdout.write(
                self.style.SUCCESS(f"{table}: {done.deleted} rows deleted in {done.batches} batches")
            )

    @staticmethod
    def _age_of(audit_model, older_than: str | None) -> timedelta:  # type: ignore[no-untyped-def]
        if older_than is not None:
            return parse_age(older_than)
        setting = getattr(audit_model, "audit_retention_setting", None)
        days = getattr(settings, setting, None) if setting else None
        if days is None:
            raise CommandError(
                f"{audit_model._meta.label} has no retention setting: give --older-than (or --model "
                "to choose tables that have one)"
            )
        return timedelta(days=float(days))
