from django.contrib import admin

from callops.models import Client, Job, JobNote


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
