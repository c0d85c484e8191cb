"""Move SIP transactions between nodes: ``manage.py sipmigrate --key K --to B`` or
``manage.py sipmigrate --drain A [--to B]``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from callops.redis import get_redis
from sipcore.control import MigrationError, migrate
from sipcore.nodes import live_nodes


class Command(BaseCommand):
    help = (
        "Move live SIP transactions to another node: named ones (--key), or every one a node "
        "holds (--drain). A live owner hands them over; a dead one's are adopted by the target."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--key", action="append", default=[], help="a transaction key (repeatable)")
        parser.add_argument("--drain", metavar="NODE", help="move every transaction this node holds")
        parser.add_argument(
            "--to", metavar="NODE", help="the target node (default for --drain: the least busy other node)"
        )
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the nodes")

    def handle(self, *args: Any, **options: Any) -> None:
        key: list[str] = options["key"]
        drain: str | None = options["drain"]
        to: str | None = options["to"]
        timeout: float = options["timeout"]
        if bool(key) == bool(drain):
            raise CommandError("give either --key (one or more) or --drain NODE")
        if key and not to:
            raise CommandError("--key needs --to NODE")
        client = get_redis()
        target = to or self._least_busy(client, exclude=drain)

        def progress(done: int, total: int) -> None:
            width = 30
            filled = width * done // max(total, 1)
            self.stdout.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", ending="")
            self.stdout.flush()

        try:
            result = migrate(
                client,
                target=target,
                keys=key or None,
                source=drain,
                shards=settings.SIP_STORE_SHARDS,
                timeout=timeout,
                progress=progress,
            )
        except MigrationError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write("")
        for error in result.errors:
            self.stderr.write(error)
        summary = f"{result.moved} transactions moved to {target}"
        if result.failed:
            summary += f"; {len(result.failed)} not moved: {', '.join(result.failed[:10])}"
            self.stdout.write(self.style.WARNING(summary))
            if not result.moved:
                raise CommandError("nothing was moved")
        else:
            self.stdout.write(self.style.SUCCESS(summary))

    @staticmethod
    def _least_busy(client: Any, exclude: str | None) -> str:
        candidates = [
            beat for beat in live_nodes(client) if beat["node_id"] != exclude and beat.get("durable")
        ]
        if not candidates:
            raise CommandError("no other live node with persistence to move them to: give --to")
        return str(min(candidates, key=lambda beat: int(beat.get("transactions", 0)))["node_id"])
