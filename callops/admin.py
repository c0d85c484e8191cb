from __future__ import annotations

import redis
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from callops import jobs
from callops.models import (
    ALLOWED_TRANSITIONS,
    AuditPrune,
    CallSession,
    CallStateSnapshot,
    Client,
    Job,
    JobChange,
    JobNote,
    JobStatus,
)


@admin.register(Client)
class ClientAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "phone", "active")
    search_fields = ("code", "name")
    list_filter = ("active",)


class StaffNoteInline(admin.TabularInline):
    """Notes written here or through the API; staff may edit them."""

    model = JobNote
    extra = 0
    verbose_name = "note"
    verbose_name_plural = "notes"
    fields = ("text", "source", "created_at")
    readonly_fields = ("source", "created_at")

    def get_queryset(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        return super().get_queryset(request).exclude(source=JobNote.Source.IVR)


class PhoneNoteInline(admin.TabularInline):
    """Notes a technician spoke on a call: what they said stays as they said it."""

    model = JobNote
    extra = 0
    verbose_name = "note by phone"
    verbose_name_plural = "notes by phone (read-only)"
    fields = ("text", "call_sid", "created_at")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        return super().get_queryset(request).filter(source=JobNote.Source.IVR)

    def has_add_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False


class JobAdminForm(forms.ModelForm):
    """Staff follow the phone line's rules: a status change must be one ALLOWED_TRANSITIONS
    allows, and a closed job keeps its date (callops.jobs.check_change)."""

    class Meta:
        model = Job
        fields = ("client", "number", "title", "address", "description", "status", "scheduled_for")

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.stored: Job | None = None
        self.job_changes: dict[str, object] = {}
        status = self.fields.get("status")
        if self.instance.pk is not None and status is not None:
            # Offer the moves the rules allow; clean() still checks what comes back.
            offered = {self.instance.status, *jobs.allowed_statuses(self.instance.status)}
            status.widget.choices = [(value, label) for value, label in JobStatus.choices if value in offered]
            status.help_text = jobs.describe_allowed(self.instance.status)

    def clean(self):  # type: ignore[no-untyped-def]
        cleaned = super().clean()
        if self.instance.pk is None:
            return cleaned
        # Checked against the row as committed, locked until the admin's transaction ends
        # (the change view runs in one), so a call changing the job meanwhile is seen.
        self.stored = (
            Job.objects.select_for_update(of=("self",)).select_related("client").get(pk=self.instance.pk)
        )
        self.job_changes = {
            name: cleaned[name]
            for name in jobs.CHANGEABLE
            if name in cleaned and cleaned[name] != getattr(self.stored, name)
        }
        try:
            jobs.check_change(self.stored, self.job_changes)
        except jobs.JobChangeRefused as refused:
            self.add_error(refused.field if refused.field in self.fields else None, str(refused))
        return cleaned


def _mark_as(status: JobStatus):  # type: ignore[no-untyped-def]
    def mark(modeladmin: JobAdmin, request: HttpRequest, queryset) -> None:  # type: ignore[no-untyped-def]
        by = jobs.ChangedBy.staff(request.user)
        changed, already, refused = 0, 0, []
        with transaction.atomic():
            selected = list(queryset.values_list("pk", flat=True))
            locked = (
                Job.objects.select_for_update(of=("self",)).select_related("client").filter(pk__in=selected)
            )
            for job in locked.order_by("pk"):
                if job.status == status:
                    already += 1
                    continue
                try:
                    jobs.set_status(job, status, by=by)
                except jobs.StatusNotAllowed:
                    refused.append(f"{job.client.code}/{job.number}: {jobs.describe_allowed(job.status)}")
                else:
                    changed += 1
        if changed:
            modeladmin.message_user(request, f"{changed} job(s) marked {status.label}.")
        if already:
            modeladmin.message_user(request, f"{already} job(s) were {status.label} already.", messages.INFO)
        if refused:
            modeladmin.message_user(request, f"Not changed: {'; '.join(refused)}", messages.ERROR)

    mark.__name__ = f"mark_{status.value}"
    return admin.action(description=f"Mark selected jobs {status.label}", permissions=["change"])(mark)


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    form = JobAdminForm
    list_display = ("__str__", "client", "status", "scheduled_for", "updated_at")
    list_filter = ("status",)
    search_fields = ("number", "title", "client__code", "client__name")
    list_select_related = ("client",)
    inlines = [StaffNoteInline, PhoneNoteInline]
    # One action per status some status may move to (none leads back to Pending).
    actions = [
        _mark_as(status)
        for status in JobStatus
        if any(status in targets for targets in ALLOWED_TRANSITIONS.values())
    ]
    object_history_template = "admin/callops/job/object_history.html"

    def save_model(self, request: HttpRequest, obj: Job, form: JobAdminForm, change: bool) -> None:
        if not change or form.stored is None:
            super().save_model(request, obj, form, change)  # a new job: the admin's log records it
            return
        jobs.change_job(form.stored, form.job_changes, by=jobs.ChangedBy.staff(request.user))

    def history_view(self, request: HttpRequest, object_id: str, extra_context=None):  # type: ignore[no-untyped-def]
        """Staff edits and phone changes together, newest first, in words and local time."""
        job = self.get_object(request, unquote(object_id))
        context = dict(extra_context or {})
        if job is not None and self.has_view_or_change_permission(request, job):
            entries = jobs.job_history(job)
            sessions = dict(
                CallSession.objects.filter(
                    call_sid__in={e.call_sid for e in entries if e.call_sid}
                ).values_list("call_sid", "pk")
            )
            context["timeline"] = [
                (entry, reverse("admin:callops_callsession_change", args=[sessions[entry.call_sid]])
                 if entry.call_sid in sessions else "")
                for entry in entries
            ]  # fmt: skip
        return super().history_view(request, object_id, extra_context=context)


@admin.register(JobChange)
class JobChangeAdmin(admin.ModelAdmin):
    """Read-only: the job's history is append-only."""

    list_display = ("job", "source", "actor", "caller", "changes", "recorded_at")
    list_filter = ("source",)
    search_fields = ("job__number", "job__client__code", "actor", "call_sid")
    list_select_related = ("job", "job__client")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: JobChange | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: JobChange | None = None) -> bool:
        return False


@admin.register(AuditPrune)
class AuditPruneAdmin(admin.ModelAdmin):
    """Read-only: what manage.py prune_audit removed, batch by batch."""

    list_display = ("table", "deleted", "cutoff", "oldest", "newest", "requested_by", "recorded_at", "run")
    list_filter = ("table",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditPrune | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditPrune | None = None) -> bool:
        return False


# --- IVR calls ------------------------------------------------------------------------

LIVE_STATE_EXTENSION_SECONDS = 600


@admin.register(CallSession)
class CallSessionAdmin(admin.ModelAdmin):
    list_display = ("call_sid", "masked_from", "language", "outcome", "started_at", "ended_at")
    list_filter = ("outcome", "language")
    search_fields = ("call_sid",)
    date_hierarchy = "started_at"
    actions = ["extend_live_state", "terminate_calls"]
    readonly_fields = (
        "call_sid",
        "from_number",
        "to_number",
        "language",
        "outcome",
        "started_at",
        "ended_at",
        "duration_seconds",
        "last_call_status",
        "last_status_sequence",
        "live_state",
        "timeline",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # sessions come from Twilio's webhooks

    def has_delete_permission(self, request: HttpRequest, obj: CallSession | None = None) -> bool:
        return False  # they anchor the audit trail

    @admin.display(description="from")
    def masked_from(self, session: CallSession) -> str:
        from callops.ivr.service import mask_number

        return mask_number(session.from_number)

    @admin.display(description="live state in Redis")
    def live_state(self, session: CallSession) -> str:
        import redis

        from callops.ivr.store import get_store

        store = get_store()
        try:
            snapshot, _ = store.read(session.call_sid)
            ttl = store.ttl(session.call_sid)
        except redis.RedisError as exc:
            return f"Redis unreachable: {exc}"
        if snapshot.raw is None:
            return "none (the call ended or its state expired)"
        if snapshot.corrupt:
            return f"undecodable: {snapshot.error}"
        return format_html("<pre>{}</pre><p>expires in {} s</p>", snapshot.raw.decode(), ttl)

    @admin.display(description="audit timeline")
    def timeline(self, session: CallSession) -> str:
        rows = CallStateSnapshot.objects.filter(call_sid=session.call_sid).order_by("sequence")
        return format_html(
            "<table><tr><th>#</th><th>when</th><th>source</th><th>stage</th><th>event</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                ((row.sequence, row.recorded_at, row.source, row.stage, row.event) for row in rows),
            ),
        )

    @admin.action(description=f"Extend the live state's TTL by {LIVE_STATE_EXTENSION_SECONDS // 60} minutes")
    def extend_live_state(self, request: HttpRequest, queryset) -> None:  # type: ignore[no-untyped-def]
        from callops.ivr.store import get_store

        store = get_store()
        for session in queryset:
            try:
                remaining = store.extend_ttl(session.call_sid, LIVE_STATE_EXTENSION_SECONDS)
            except redis.RedisError as exc:
                self.message_user(request, f"Redis unreachable, nothing extended: {exc}", messages.ERROR)
                return
            if remaining is None:
                self.message_user(
                    request,
                    f"{session.call_sid}: no live state with a TTL; nothing extended.",
                    messages.WARNING,
                )
            else:
                self.message_user(request, f"{session.call_sid}: state now expires in {remaining:.0f} s.")

    @admin.action(description="Terminate: end the IVR session and delete its live state")
    def terminate_calls(self, request: HttpRequest, queryset) -> None:  # type: ignore[no-untyped-def]
        from callops.ivr.service import terminate_call

        for session in queryset:
            try:
                ended = terminate_call(session.call_sid)
            except redis.RedisError as exc:
                self.message_user(
                    request, f"{session.call_sid}: Redis unreachable, not terminated: {exc}", messages.ERROR
                )
                continue
            if ended is None:
                self.message_user(request, f"{session.call_sid}: had ended already.", messages.WARNING)
            else:
                self.message_user(request, f"{session.call_sid}: terminated.")


@admin.register(CallStateSnapshot)
class CallStateSnapshotAdmin(admin.ModelAdmin):
    """Read-only: audit rows are append-only."""

    list_display = ("call_sid", "sequence", "stage", "source", "schema_version", "recorded_at")
    list_filter = ("source", "stage")
    search_fields = ("call_sid",)
    ordering = ("-recorded_at", "call_sid", "-sequence")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: CallStateSnapshot | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: CallStateSnapshot | None = None) -> bool:
        return False
