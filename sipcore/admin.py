from __future__ import annotations

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from sipcore.models import DialPlanRule, SipNode, SipPeer, SipTransaction, TransactionSnapshotRecord


@admin.register(DialPlanRule)
class DialPlanRuleAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "priority",
        "enabled",
        "method",
        "user_pattern",
        "ring_delay",
        "final_status",
        "reason",
        "answer_delay",
        "retry_after",
    )
    list_editable = ("priority", "enabled")
    list_filter = ("enabled", "method")
    search_fields = ("name", "user_pattern")


@admin.register(SipPeer)
class SipPeerAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "uri",
        "enabled",
        "required",
        "interval",
        "status",
        "last_status_code",
        "last_rtt_ms",
        "last_probe_at",
    )
    list_filter = ("status", "enabled", "required")
    search_fields = ("name", "uri")
    readonly_fields = ("status", "last_status_code", "last_rtt_ms", "last_probe_at", "last_change_at")


# --- the SIP transaction audit (read-only: written by sipcore.audit from the store's streams) ---------


def _wire(data: bytes | memoryview | None) -> str:
    """A SIP message as staff read it (invalid UTF-8 shown as U+FFFD)."""
    return "" if data is None else bytes(data).decode("utf-8", "replace")


class ReadOnlyAdmin(admin.ModelAdmin):
    """The audit mirrors what nodes stored: staff read it, nobody edits it here."""

    show_full_result_count = False  # audit tables grow large: no second COUNT(*) per page

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(SipNode)
class SipNodeAdmin(ReadOnlyAdmin):
    list_display = ("id", "address_list", "first_seen", "last_seen", "transactions_link")
    search_fields = ("id",)
    fields = ("id", "address_list", "first_seen", "last_seen", "transactions_link")
    readonly_fields = fields

    @admin.display(description="addresses")
    def address_list(self, node: SipNode) -> str:
        return ", ".join(node.addresses)

    @admin.display(description="transactions")
    def transactions_link(self, node: SipNode) -> str:
        url = reverse("admin:sipcore_siptransaction_changelist") + f"?owner__id__exact={node.pk}"
        return format_html('<a href="{}">owned now</a>', url)


class SnapshotRecordInline(admin.TabularInline):
    """The transaction's timeline: one row per stored version."""

    model = TransactionSnapshotRecord
    fk_name = "transaction"
    extra = 0
    can_delete = False
    ordering = ("version",)
    fields = ("version_link", "state", "event", "owner", "epoch", "timer_list", "status", "recorded_at")
    readonly_fields = fields
    verbose_name = "version"
    verbose_name_plural = "versions (append-only)"

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    @admin.display(description="version")
    def version_link(self, record: TransactionSnapshotRecord) -> str:
        url = reverse("admin:sipcore_transactionsnapshotrecord_change", args=[record.pk])
        return format_html('<a href="{}">v{}</a>', url, record.version)

    @admin.display(description="timers")
    def timer_list(self, record: TransactionSnapshotRecord) -> str:
        return _timer_list(record)

    @admin.display(description="response")
    def status(self, record: TransactionSnapshotRecord) -> str:
        return _first_line(record.response) or "(unchanged)"


def _timer_list(record: TransactionSnapshotRecord) -> str:
    return (
        ", ".join(
            f"{name} at {deadline:.3f} (every {interval:g} s)"
            for name, (deadline, interval) in sorted(record.timers.items())
        )
        or "none"
    )


def _first_line(data: bytes | memoryview | None) -> str:
    return _wire(data).split("\r\n", 1)[0] if data is not None else ""


@admin.register(SipTransaction)
class SipTransactionAdmin(ReadOnlyAdmin):
    list_display = (
        "call_id",
        "method",
        "kind",
        "state",
        "outcome",
        "final_status",
        "owner",
        "epoch",
        "version",
        "updated_at",
        "terminated_at",
    )
    list_filter = ("state", "kind", "outcome", "owner", "method")
    list_select_related = ("owner",)
    search_fields = ("=call_id", "=key")
    search_help_text = "exact Call-ID or transaction key"
    date_hierarchy = "updated_at"
    fields = (
        "key",
        "kind",
        "method",
        "call_id",
        "from_header",
        "to_header",
        "state",
        "outcome",
        "final_status",
        "last_event",
        "owner",
        "epoch",
        "version",
        "created_at",
        "updated_at",
        "terminated_at",
        "request_text",
    )
    readonly_fields = fields
    inlines = (SnapshotRecordInline,)

    @admin.display(description="request")
    def request_text(self, tx: SipTransaction) -> str:
        return format_html("<pre>{}</pre>", _wire(tx.request))


@admin.register(TransactionSnapshotRecord)
class TransactionSnapshotRecordAdmin(ReadOnlyAdmin):
    list_display = ("transaction_link", "version", "state", "event", "owner", "epoch", "recorded_at")
    list_filter = ("state", "transaction__kind", "owner")
    list_select_related = ("transaction", "owner")
    search_fields = ("=transaction__call_id", "=transaction__key")
    search_help_text = "exact Call-ID or transaction key"
    fields = (
        "transaction_link",
        "version",
        "state",
        "event",
        "owner",
        "epoch",
        "timer_list",
        "response_text",
        "transport",
        "timings",
        "clock_created",
        "clock_updated",
        "recorded_at",
        "ingested_at",
    )
    readonly_fields = fields

    @admin.display(description="transaction", ordering="transaction__call_id")
    def transaction_link(self, record: TransactionSnapshotRecord) -> str:
        url = reverse("admin:sipcore_siptransaction_change", args=[record.transaction_id])
        tx = record.transaction
        return format_html('<a href="{}">{} {}</a>', url, tx.method, tx.call_id)

    @admin.display(description="timers")
    def timer_list(self, record: TransactionSnapshotRecord) -> str:
        return _timer_list(record)

    @admin.display(description="response (when it changed)")
    def response_text(self, record: TransactionSnapshotRecord) -> str:
        if record.response is None:
            return "(unchanged from the previous version)"
        return format_html("<pre>{}</pre>", _wire(record.response))
