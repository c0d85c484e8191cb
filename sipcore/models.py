"""SIP node configuration staff edit in the admin: the dial plan and the peers to probe."""

from __future__ import annotations

import re
from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

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
