from __future__ import annotations

import redis
from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from callops.models import CallSession, CallStateSnapshot, Client, Job, JobNote


@admin.register(Client)
class ClientAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "phone", "active")
    search_fields = ("code", "name")
    list_filter = ("active",)


class JobNoteInline(admin.TabularInline):
    model = JobNote
    extra = 0
    readonly_fields = ("source", "call_sid", "created_at")


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("__str__", "client", "status", "scheduled_for", "updated_at")
    list_filter = ("status",)
    search_fields = ("number", "title", "client__code", "client__name")
    list_select_related = ("client",)
    inlines = [JobNoteInline]


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
