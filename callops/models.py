"""Jobs and clients: what field technicians work on and update by phone."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models

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
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    JobStatus.PENDING: frozenset(
        {JobStatus.SCHEDULED, JobStatus.IN_PROGRESS, JobStatus.ON_HOLD, JobStatus.CANCELLED}
    ),
    JobStatus.SCHEDULED: frozenset(
        {JobStatus.SCHEDULED, JobStatus.IN_PROGRESS, JobStatus.ON_HOLD, JobStatus.CANCELLED}
    ),
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
