"""Jobs and clients: what field technicians work on and update by phone."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

digits_only = RegexValidator(r"^[0-9]+$", "Use digits only: technicians key this on a phone keypad.")


class Client(models.Model):
    code = models.CharField(
        max_length=12,
        unique=True,
        validators=[digits_only],
        help_text="The client id a technician keys or says on a call.",
    )
    name = models.CharField(max_length=200)
    phone = models.CharField(max_length=32, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} · {self.name}"


class JobStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SCHEDULED = "scheduled", "Scheduled"
    IN_PROGRESS = "in_progress", "In progress"
    ON_HOLD = "on_hold", "On hold"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"


# Which status a job may move to from each status; completed and cancelled are final.
# No status moves to itself: a reschedule changes the date, not the status.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    JobStatus.PENDING: frozenset(
        {JobStatus.SCHEDULED, JobStatus.IN_PROGRESS, JobStatus.ON_HOLD, JobStatus.CANCELLED}
    ),
    JobStatus.SCHEDULED: frozenset({JobStatus.IN_PROGRESS, JobStatus.ON_HOLD, JobStatus.CANCELLED}),
    JobStatus.IN_PROGRESS: frozenset({JobStatus.ON_HOLD, JobStatus.COMPLETED, JobStatus.CANCELLED}),
    JobStatus.ON_HOLD: frozenset({JobStatus.IN_PROGRESS, JobStatus.SCHEDULED, JobStatus.CANCELLED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class Job(models.Model):
    client = models.ForeignKey(Client, on_delete=models.PROTECT, related_name="jobs")
    number = models.CharField(
        max_length=12, validators=[digits_only], help_text="Job number, unique per client."
    )
    title = models.CharField(max_length=200)
    address = models.CharField(max_length=300, blank=True)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.PENDING)
    scheduled_for = models.DateField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["client__code", "number"]
        constraints = [
            models.UniqueConstraint(fields=["client", "number"], name="job_number_unique_per_client")
        ]

    def __str__(self) -> str:
        return f"{self.client.code}/{self.number} · {self.title}"

    def can_move_to(self, status: str) -> bool:
        return status in ALLOWED_TRANSITIONS[self.status]


class JobNote(models.Model):
    class Source(models.TextChoices):
        IVR = "ivr", "Phone (IVR)"
        ADMIN = "admin", "Admin"
        API = "api", "API"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="notes")
    text = models.TextField()
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.ADMIN)
    call_sid = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"note on {self.job_id}: {self.text[:40]}"


# --- IVR calls ------------------------------------------------------------------------


class CallSession(models.Model):
    """One phone call to the IVR (one Twilio CallSid), from the first webhook to the last."""

    class Outcome(models.TextChoices):
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed (caller said goodbye)"
        GAVE_UP = "gave_up", "Ended after too many failed attempts"
        TRANSFERRED = "transferred", "Transferred to the fallback number"
        ABANDONED = "abandoned", "Abandoned (hung up or went silent mid-call)"
        FAILED = "failed", "Not connected (busy, failed, no answer, canceled)"
        TERMINATED = "terminated", "Terminated by staff"

    class Language(models.TextChoices):
        SPANISH = "es", "Spanish"
        ENGLISH = "en", "English"

    call_sid = models.CharField(max_length=64, unique=True, help_text="Twilio's CallSid.")
    from_number = models.CharField(max_length=32, blank=True, help_text="The caller (Twilio's From).")
    to_number = models.CharField(max_length=32, blank=True, help_text="The number called (Twilio's To).")
    language = models.CharField(max_length=2, choices=Language.choices, default=Language.SPANISH)
    outcome = models.CharField(
        max_length=16, choices=Outcome.choices, default=Outcome.IN_PROGRESS, db_index=True
    )
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Twilio's CallDuration, from the final status callback."
    )
    last_call_status = models.CharField(
        max_length=16, blank=True, help_text="The newest CallStatus Twilio reported (by SequenceNumber)."
    )
    last_status_sequence = models.IntegerField(
        null=True,
        blank=True,
        help_text="Its SequenceNumber: older callbacks arriving late are ignored.",
    )

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"call {self.call_sid} ({self.get_outcome_display()})"

    @property
    def ended(self) -> bool:
        return self.ended_at is not None


class AuditRowImmutable(ValueError):
    """An attempt to change or delete an audit row; they are append-only."""


class AppendOnlyQuerySet(models.QuerySet):
    """Refuses bulk changes: audit rows are written once and never changed or removed."""

    def update(self, **kwargs):  # type: ignore[no-untyped-def]
        raise AuditRowImmutable(
            f"{self.model.__name__} rows are append-only: update() is refused; add a new row instead."
        )

    def bulk_update(self, objs, fields, batch_size=None):  # type: ignore[no-untyped-def]
        raise AuditRowImmutable(f"{self.model.__name__} rows are append-only: bulk_update() is refused.")

    def delete(self):  # type: ignore[no-untyped-def]
        raise AuditRowImmutable(f"{self.model.__name__} rows are append-only: delete() is refused.")

    delete.queryset_only = True  # type: ignore[attr-defined]  # as QuerySet.delete: not on managers


class AppendOnlyModel(models.Model):
    """An audit row: written once, never changed or deleted by code.

    This is the Python half; the database half is the triggers that each audit
    table's migration installs with ``callops.audit_db.append_only_operations``
    (they also stop ``_base_manager``, upserts and raw SQL). A subclass that sets
    ``audit_prune_field`` may have its old rows pruned by
    ``callops.audit_db.prune_audit``, and only that way.
    """

    audit_prune_field: str | None = None

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not self._state.adding:
            raise AuditRowImmutable(f"{self.audit_label()} is append-only: it cannot be changed.")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise AuditRowImmutable(f"{self.audit_label()} is append-only: it cannot be deleted.")

    def audit_label(self) -> str:
        return f"{type(self).__name__} #{self.pk}"


class CallStateSnapshot(AppendOnlyModel):
    """An append-only audit row: a call's state after one change, and what changed it."""

    class Source(models.TextChoices):
        WEBHOOK = "webhook", "Twilio webhook"
        CELERY = "celery", "Celery task"
        API = "api", "API"
        ADMIN = "admin", "Admin"

    call_sid = models.CharField(max_length=64, help_text="Twilio's CallSid.")
    sequence = models.PositiveIntegerField(
        help_text="Order of this change within the call (the state's version counter)."
    )
    schema_version = models.PositiveSmallIntegerField(help_text="Schema of the state JSON below.")
    stage = models.CharField(max_length=24, blank=True)
    state = models.JSONField(help_text="The whole call state after the change (as stored in Redis).")
    event = models.JSONField(default=dict, help_text="What caused the change: the input, its effects.")
    source = models.CharField(max_length=8, choices=Source.choices)
    recorded_at = models.DateTimeField(default=timezone.now, editable=False)

    audit_prune_field = "recorded_at"

    class Meta:
        ordering = ["call_sid", "sequence"]
        constraints = [
            models.UniqueConstraint(
                fields=["call_sid", "sequence"], name="call_state_sequence_unique_per_call"
            )
        ]
        indexes = [models.Index(fields=["recorded_at"], name="call_state_recorded_at")]

    def __str__(self) -> str:
        return f"{self.call_sid} #{self.sequence} {self.stage}"

    def audit_label(self) -> str:
        return f"CallStateSnapshot {self.call_sid} #{self.sequence}"


# --- job history and audit housekeeping -----------------------------------------------


class JobChange(AppendOnlyModel):
    """One change to a job's fields, by phone, admin or API: who, when, each field from and to.

    Written by ``callops.jobs.change_job`` in the same transaction as the change itself.
    """

    class Source(models.TextChoices):
        PHONE = "phone", "Phone (IVR)"
        ADMIN = "admin", "Admin"
        API = "api", "API"

    # PROTECT: a job with a history is cancelled, not deleted (its history cannot be).
    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="changes")
    source = models.CharField(max_length=8, choices=Source.choices)
    actor = models.CharField(max_length=150, help_text="The staff user name, the CallSid or the API client.")
    call_sid = models.CharField(max_length=64, blank=True)
    caller = models.CharField(max_length=32, blank=True, help_text="The caller's number, masked.")
    changes = models.JSONField(help_text='Each changed field: {"status": {"from": ..., "to": ...}}.')
    recorded_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)

    audit_prune_field = "recorded_at"

    class Meta:
        ordering = ["job", "recorded_at", "id"]

    def __str__(self) -> str:
        return f"job {self.job_id} changed by {self.source} {self.actor}"


class AuditPrune(AppendOnlyModel):
    """One batch of audit rows deleted by retention age (``callops.audit_db.prune_audit``).

    Never pruned itself: the record of what was removed stays.
    """

    run = models.UUIDField(help_text="One prune run; it deletes in several batches.")
    table = models.CharField(max_length=100)
    cutoff = models.DateTimeField(help_text="Rows recorded before this were removed.")
    deleted = models.PositiveIntegerField()
    oldest = models.DateTimeField(help_text="The oldest row removed by this batch.")
    newest = models.DateTimeField(help_text="The newest row removed by this batch.")
    requested_by = models.CharField(max_length=150, blank=True)
    recorded_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-recorded_at", "-id"]

    def __str__(self) -> str:
        return f"pruned {self.deleted} rows of {self.table} before {self.cutoff:%Y-%m-%d %H:%M}"
