"""Mirror the SIP store's audit streams into the database: ``manage.py ingest_sip_audit [--once]``.

Each pass takes one batch from every shard (claiming entries a dead consumer
left pending); with ``--once`` it stops after the pass that finds a shard empty,
otherwise it runs until SIGTERM/SIGINT, finishing the batch in hand.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import OperationalError, close_old_connections

from callops.redis import get_redis
from sipcore.audit import BatchReport, audit_lag, ingest_shard, shard_count


@dataclass
class _Totals:
    read: int = 0
    claimed: int = 0
    recorded: int = 0
    duplicates: int = 0
    dead: int = 0

    def add(self, report: BatchReport) -> None:
        self.read += report.read
        self.claimed += report.claimed
        self.recorded += report.recorded
        self.duplicates += report.duplicates
        self.dead += report.dead

    def __str__(self) -> str:
        return (
            f"{self.read} entries read ({self.claimed} claimed), {self.recorded} versions recorded, "
            f"{self.duplicates} already there, {self.dead} dead-lettered"
        )


class Command(BaseCommand):
    help = (
        "Ingest the SIP transaction audit streams ({sip:<shard>}:audit) into TransactionSnapshotRecord "
        "rows, idempotently, through the consumer group 'audit'."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--once", action="store_true", help="drain what is there now, then exit")
        parser.add_argument(
            "--shard",
            type=int,
            action="append",
            default=[],
            help="a shard to read (repeatable); default: all",
        )
        parser.add_argument("--count", type=int, default=500, help="entries per batch")
        parser.add_argument(
            "--consumer", default="", help="consumer name in the group (default: <node id>-<pid>)"
        )
        parser.add_argument(
            "--claim-idle-ms",
            type=int,
            default=None,
            help="claim entries pending this long to another consumer (default SIP_AUDIT_CLAIM_IDLE_MS)",
        )
        parser.add_argument(
            "--idle-sleep", type=float, default=0.2, help="seconds to wait after an empty pass"
        )
        parser.add_argument(
            "--report-every", type=float, default=10.0, help="seconds between progress lines when looping"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        shards_total = shard_count()
        shards = options["shard"] or list(range(shards_total))
        for shard in shards:
            if not 0 <= shard < shards_total:
                raise CommandError(f"--shard {shard}: shards are 0..{shards_total - 1} (SIP_STORE_SHARDS)")
        if options["count"] < 1:
            raise CommandError(f"--count must be at least 1, not {options['count']}")
        consumer = options["consumer"] or f"{getattr(settings, 'NODE_ID', 'node')}-{os.getpid()}"
        client = get_redis()
        stop = []
        if not options["once"]:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.append(True))
        totals = _Totals()
        since_report = _Totals()
        last_report = time.monotonic()
        self.stdout.write(f"ingesting shards {_ranges(shards)} as consumer {consumer}")
        while not stop:
            busy = False
            for shard in shards:
                try:
                    report = ingest_shard(
                        client, shard, consumer, options["count"], claim_idle_ms=options["claim_idle_ms"]
                    )
                except (redis.ConnectionError, redis.TimeoutError, OperationalError) as exc:
                    if options["once"]:
                        raise CommandError(f"shard {shard}: {exc}") from exc
                    # What was read stays pending and is claimed again: nothing is lost.
                    self.stderr.write(f"shard {shard}: {exc}; trying again in 1 s")
                    close_old_connections()  # a broken database connection is opened afresh
                    time.sleep(1.0)
                    continue
                totals.add(report)
                since_report.add(report)
                busy = busy or report.read == options["count"]
                if options["once"] and report.read:
                    self.stdout.write(f"  shard {shard}: {_Totals(**_counts(report))}")
            if options["once"] and not busy:
                break
            if not options["once"] and time.monotonic() - last_report >= options["report_every"]:
                try:
                    lag = f"{max(audit_lag(client, shards).values(), default=0.0):.1f} s old"
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    lag = f"of unknown age ({exc})"
                self.stdout.write(f"{since_report}; oldest unrecorded entry {lag}")
                since_report, last_report = _Totals(), time.monotonic()
            if not busy and not options["once"]:
                time.sleep(options["idle_sleep"])
        self.stdout.write(self.style.SUCCESS(f"done: {totals}"))


def _counts(report: BatchReport) -> dict[str, int]:
    return {
        "read": report.read,
        "claimed": report.claimed,
        "recorded": report.recorded,
        "duplicates": report.duplicates,
        "dead": report.dead,
    }


def _ranges(shards: list[int]) -> str:
    return ", ".join(str(shard) for shard in shards)
