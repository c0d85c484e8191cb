"""Bring every call state in Redis to the current schema version (they also migrate on read)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from callops.ivr.schema import SCHEMA_VERSION
from callops.ivr.store import get_store


class Command(BaseCommand):
    help = (
        f"Rewrite every call_state:* value stored in an older schema as schema v{SCHEMA_VERSION}, "
        "keeping its version counter and TTL. Undecodable values are listed, not touched "
        "(the call's next webhook logs, audits and replaces them)."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")

    def handle(self, *args, dry_run: bool, **options):  # type: ignore[no-untyped-def]
        report = get_store().migrate_all(dry_run=dry_run)
        verb = "would migrate" if dry_run else "migrated"
        migrated = sum(report.migrated.values())
        by_version = ", ".join(f"v{version}: {count}" for version, count in sorted(report.migrated.items()))
        self.stdout.write(
            f"scanned {report.scanned} call states: {verb} {migrated}"
            + (f" ({by_version})" if by_version else "")
            + f", {report.current} already v{SCHEMA_VERSION}, {report.changed_meanwhile} changed meanwhile "
            f"(rewritten by their call), {report.vanished} gone before they were read"
        )
        if report.corrupt:
            self.stdout.write(
                self.style.WARNING(f"{len(report.corrupt)} undecodable: {', '.join(sorted(report.corrupt))}")
            )
