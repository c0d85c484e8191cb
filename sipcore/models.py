"""SIP node configuration staff edit in the admin (the dial plan, the peers to probe) and the
audit mirror of SIP transactions (nodes, transactions, one append-only record per version)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from callops.models import AppendOnlyModel
from sipcore.dialplan import DEMO_RULES, DialPlan, Rule
from sipcore.peers import Peer, ProbeResult


def validate_pattern(value: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValidationError(f"not a regular expression: {exc}") from exc


class DialPlanRule(models.Model):
    """One rule of the dial plan; the node matches rules by ascending priority."""

    name = models.SlugField(max_length=64, unique=True)
    priority = models.PositiveIntegerField(default=100, help_text="lower matches first")
    enabled = models.BooleanField(default=True)
    method = models.CharField(max_length=32, default="INVITE", help_text='a SIP method, or "*" for any')
    user_pattern = models.CharField(
        max_length=200,
        default=".*",
        validators=[validate_pattern],
        help_text="regular expression matched against the whole Request-URI user part",
    )
    ring_delay = models.FloatField(
        null=True,
        blank=True,
        default=0.0,
        validators=[MinValueValidator(0.0)],
        help_text="seconds before 180 Ringing; empty: no 180",
    )
    final_status = models.PositiveIntegerField(
        null=True,
        blank=True,
        default=200,
        validators=[MinValueValidator(200), MaxValueValidator(699)],
        help_text="final response; empty: none (rings until CANCEL or Timer C)",
    )
    reason = models.CharField(max_length=100, blank=True, help_text="reason phrase; empty: the standard one")
    answer_delay = models.FloatField(default=0.0, validators=[MinValueValidator(0.0)])
    retry_after = models.PositiveIntegerField(null=True, blank=True, help_text="Retry-After seconds")

    class Meta:
        ordering = ("priority", "name")

    def __str__(self) -> str:
        return f"{self.name}: {self.method} {self.user_pattern} -> {self.final_status or 'no answer'}"

    def as_rule(self) -> Rule:
        return Rule(
            name=self.name,
            method=self.method,
            user_pattern=self.user_pattern,
            ring_delay=self.ring_delay,
            final_status=self.final_status,
            reason=self.reason,
            answer_delay=self.answer_delay,
            retry_after=self.retry_after,
        )

    @classmethod
    def seed(cls, rules: Iterable[Rule] = DEMO_RULES) -> int:
        """Create the rules that do not exist yet (by name); staff edits are kept. Returns how many."""
        created = 0
        for priority, rule in enumerate(rules, start=1):
            _, was_created = cls.objects.get_or_create(
                name=rule.name,
                defaults={
                    "priority": priority * 10,
                    "method": rule.method,
                    "user_pattern": rule.user_pattern,
                    "ring_delay": rule.ring_delay,
                    "final_status": rule.final_status,
                    "reason": rule.reason,
                    "answer_delay": rule.answer_delay,
                    "retry_after": rule.retry_after,
                },
            )
            created += was_created
        return created

    @classmethod
    def load_plan(cls) -> DialPlan:
        return DialPlan.of(rule.as_rule() for rule in cls.objects.filter(enabled=True))


class PeerStatus(models.TextChoices):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class SipPeer(models.Model):
    """A SIP peer the node probes with OPTIONS (keep-alive, RFC 3261 §11)."""

    name = models.SlugField(max_length=64, unique=True)
    uri = models.CharField(max_length=200, help_text="e.g. sip:pbx.example.com:5060;transport=udp")
    interval = models.FloatField(default=30.0, validators=[MinValueValidator(1.0)], help_text="seconds")
    enabled = models.BooleanField(default=True)
    required = models.BooleanField(
        default=False, help_text="/healthz fails while this peer is not up (else it is only shown)"
    )
    status = models.CharField(max_length=16, choices=PeerStatus.choices, default=PeerStatus.UNKNOWN)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_rtt_ms = models.FloatField(null=True, blank=True)
    last_probe_at = models.DateTimeField(null=True, blank=True)
    last_change_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return f"{self.name} ({self.uri}): {self.status}"

    @classmethod
    def summary(cls) -> dict[str, dict[str, object]]:
        """Each enabled peer's last probe, by name: what a health check shows."""
        return {
            peer.name: {
                "status": peer.status,
                "code": peer.last_status_code,
                "rtt_ms": peer.last_rtt_ms,
                "required": peer.required,
            }
            for peer in cls.objects.filter(enabled=True)
        }

    @classmethod
    def load_probes(cls) -> list[Peer]:
        return [Peer(p.pk, p.name, p.uri, p.interval) for p in cls.objects.filter(enabled=True)]

    @classmethod
    def record_probe(cls, result: ProbeResult) -> None:
        status = PeerStatus.UP if result.up else PeerStatus.DOWN
        now = timezone.now()
        cls.objects.filter(pk=result.peer_id).update(
            last_status_code=result.status_code, last_rtt_ms=result.rtt_ms, last_probe_at=now
        )
        cls.objects.filter(pk=result.peer_id).exclude(status=status).update(status=status, last_change_at=now)


# --- the SIP transaction audit mirror ----------------------------------------------------------
#
# Written off the hot path by sipcore.audit from the per-shard Redis streams the
# store appends to; see DESIGN.md, "Persistence and ownership".


class SipNode(models.Model):
    """A SIP node (one ``sipserver`` process) as the audit has seen it."""

    id = models.CharField(max_length=64, primary_key=True, help_text="the node id")
    addresses = models.JSONField(
        default=list, blank=True, help_text='local "host:port" addresses its transactions used'
    )
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ("id",)
        verbose_name = "SIP node"

    def __str__(self) -> str:
        return self.id


class TransactionKind(models.TextChoices):
    INVITE_CLIENT = "invite_client", "INVITE client"
    NON_INVITE_CLIENT = "non_invite_client", "non-INVITE client"
    INVITE_SERVER = "invite_server", "INVITE server"
    NON_INVITE_SERVER = "non_invite_server", "non-INVITE server"


class TransactionOutcome(models.TextChoices):
    """How a transaction ended, derived from its last version (sipcore.audit.derive_outcome)."""

    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled (487 Request Terminated)"
    TIMED_OUT = "timed_out", "Timed out"
    TRANSPORT_ERROR = "transport_error", "Transport error"
    TERMINATED = "terminated", "Ended early by its user"
    UNKNOWN = "unknown", "Ended (cause not recorded)"


class SipTransaction(models.Model):
    """One SIP transaction: what never changes (the request, stored once) and its latest version.

    Upserted by the audit ingester; a version older than the one held never moves it back.
    """

    key = models.CharField(max_length=1024, unique=True, help_text="the transaction key (RFC 3261 §17)")
    kind = models.CharField(max_length=20, choices=TransactionKind.choices, db_index=True)
    method = models.CharField(max_length=32)
    call_id = models.CharField(max_length=255, db_index=True, help_text="Call-ID (first 255 characters)")
    from_header = models.CharField(max_length=255, blank=True, help_text="From (first 255 characters)")
    to_header = models.CharField(max_length=255, blank=True, help_text="To (first 255 characters)")
    request = models.BinaryField(help_text="the request as it travels; every version shares it")
    state = models.CharField(max_length=16, db_index=True)
    version = models.PositiveBigIntegerField(help_text="the latest version ingested")
    owner = models.ForeignKey(SipNode, on_delete=models.PROTECT, related_name="transactions")
    epoch = models.PositiveBigIntegerField()
    last_event = models.CharField(max_length=64, blank=True)
    final_status = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(help_text="when its earliest ingested version was stored")
    updated_at = models.DateTimeField(help_text="when its latest version was stored")
    terminated_at = models.DateTimeField(null=True, blank=True, db_index=True)
    outcome = models.CharField(max_length=16, choices=TransactionOutcome.choices, blank=True, db_index=True)

    class Meta:
        ordering = ("-updated_at", "key")
        verbose_name = "SIP transaction"

    def __str__(self) -> str:
        return f"{self.key} ({self.state}, v{self.version})"


class TransactionSnapshotRecord(AppendOnlyModel):
    """One stored version of a SIP transaction; with its SipTransaction it rebuilds the snapshot.

    The response is kept only when it differs from the previous version's, so a
    version's response is the latest non-null one at or before it
    (sipcore.audit.rebuild_snapshot).
    """

    transaction = models.ForeignKey(SipTransaction, on_delete=models.PROTECT, related_name="records")
    version = models.PositiveBigIntegerField()
    epoch = models.PositiveBigIntegerField()
    owner = models.ForeignKey(SipNode, on_delete=models.PROTECT, related_name="records")
    state = models.CharField(max_length=16)
    event = models.CharField(max_length=64, blank=True, help_text="what caused this version")
    timers = models.JSONField(default=dict, help_text="running timers: {name: [deadline, interval]}")
    response = models.BinaryField(null=True, blank=True, help_text="the last response, when it changed")
    transport = models.JSONField(help_text="[protocol, reliable, [local host, port], [remote host, port]]")
    timings = models.JSONField(null=True, blank=True, help_text="T1, T2, T4...; empty: the defaults")
    clock_created = models.FloatField(help_text="the node clock when the transaction was created")
    clock_updated = models.FloatField(help_text="the node clock at this version")
    recorded_at = models.DateTimeField(default=timezone.now, help_text="when the node stored this version")
    ingested_at = models.DateTimeField(default=timezone.now, editable=False)

    audit_prune_field = "recorded_at"
    # The retention age in days (settings name) for this table: sipcore.audit.prune_records
    # and prune_transactions default to it.
    audit_retention_setting = "SIP_AUDIT_RETENTION_DAYS"

    class Meta:
        ordering = ("transaction", "version")
        verbose_name = "transaction snapshot record"
        constraints = [
            models.UniqueConstraint(fields=["transaction", "version"], name="sip_record_version_unique")
        ]
        indexes = [models.Index(fields=["recorded_at"], name="sip_record_recorded_at")]

    def __str__(self) -> str:
        return f"{self.transaction_id} v{self.version} {self.state}"

    def audit_label(self) -> str:
        return f"TransactionSnapshotRecord {self.transaction_id} v{self.version}"
