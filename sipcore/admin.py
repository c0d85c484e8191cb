from __future__ import annotations

from django.contrib import admin

from sipcore.models import DialPlanRule, SipPeer


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
