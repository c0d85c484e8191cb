"""Staff see live calls and their audit timelines, extend a live state's TTL, terminate a call;
they change jobs under the phone line's rules and read one history of changes from every source."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.utils import timezone

from callops.ivr.store import state_key
from callops.models import CallSession, CallStateSnapshot, Job, JobChange, JobNote, JobStatus
from callops.redis import get_redis

pytestmark = pytest.mark.django_db


def test_call_pages_show_the_live_state_and_the_timeline(admin_client, call, jobs):
    call.voice()
    call.gather(digits="1001")
    session = CallSession.objects.get(call_sid=call.call_sid)
    listing = admin_client.get("/admin/callops/callsession/")
    assert listing.status_code == 200
    assert call.call_sid.encode() in listing.content
    assert b"+52******9876" in listing.content  # masked
    page = admin_client.get(f"/admin/callops/callsession/{session.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "collect_job_number" in body
    assert "expires in" in body
    assert "call_started" in body  # the timeline
    rows = admin_client.get(f"/admin/callops/callstatesnapshot/?q={call.call_sid}")
    assert rows.status_code == 200
    assert rows.content.count(call.call_sid.encode()) >= 2


def test_audit_rows_are_read_only_in_the_admin(admin_client, call, jobs):
    call.voice()
    row = CallStateSnapshot.objects.get(call_sid=call.call_sid)
    assert admin_client.get("/admin/callops/callstatesnapshot/add/").status_code == 403
    assert admin_client.get(f"/admin/callops/callstatesnapshot/{row.pk}/delete/").status_code == 403
    response = admin_client.post(f"/admin/callops/callstatesnapshot/{row.pk}/change/", {"stage": "goodbye"})
    assert response.status_code == 403
    assert CallStateSnapshot.objects.get(pk=row.pk).stage == "collect_client_id"


def test_extend_ttl_action(admin_client, call, jobs):
    call.voice()
    session = CallSession.objects.get(call_sid=call.call_sid)
    response = admin_client.post(
        "/admin/callops/callsession/",
        {"action": "extend_live_state", "_selected_action": [session.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert 895 <= get_redis().ttl(state_key(call.call_sid)) <= 900  # 300 + 600
    assert b"state now expires in" in response.content


def test_terminate_action_ends_the_call(admin_client, call, jobs):
    call.voice()
    session = CallSession.objects.get(call_sid=call.call_sid)
    response = admin_client.post(
        "/admin/callops/callsession/",
        {"action": "terminate_calls", "_selected_action": [session.pk]},
        follow=True,
    )
    assert b"terminated." in response.content
    session.refresh_from_db()
    assert session.outcome == "terminated"
    assert get_redis().get(state_key(call.call_sid)) is None
    final = CallStateSnapshot.objects.filter(call_sid=call.call_sid).order_by("-sequence").first()
    assert (final.source, final.event["kind"]) == ("admin", "terminated_by_staff")
    # The caller's next input meets a closed call: Twilio is told to hang up.
    assert call.gather(digits="1001").hangup


def test_admin_with_redis_down_says_so_and_still_terminates(
    admin_client, client, settings, private_redis, jobs
):
    from tests.callops.ivr.support import TwilioCall

    settings.REDIS_URL = private_redis.url
    call = TwilioCall(client)
    call.voice()
    session = CallSession.objects.get(call_sid=call.call_sid)
    private_redis.stop()
    page = admin_client.get(f"/admin/callops/callsession/{session.pk}/change/")
    assert page.status_code == 200
    assert b"Redis unreachable" in page.content
    for action, message in [("extend_live_state", b"nothing extended"), ("terminate_calls", b"terminated.")]:
        response = admin_client.post(
            "/admin/callops/callsession/", {"action": action, "_selected_action": [session.pk]}, follow=True
        )
        assert response.status_code == 200
        assert message in response.content
    # Terminating needs only the database: the live state expires by itself.
    session.refresh_from_db()
    assert session.outcome == "terminated"


# --- jobs: the phone line's rules, and one history ------------------------------------------------------


def job_url(job: Job, page: str = "change") -> str:
    return f"/admin/callops/job/{job.pk}/{page}/"


def _posted(value) -> str:
    return "" if value is None else str(getattr(value, "pk", value))


def change_form_data(admin_client, job: Job, **overrides: str) -> dict[str, str]:
    """What the browser posts back from the job's change page, with ``overrides``."""
    page = admin_client.get(job_url(job))
    assert page.status_code == 200
    form = page.context["adminform"].form
    data = {name: _posted(form[name].value()) for name in form.fields}
    for inline in page.context["inline_admin_formsets"]:
        formset = inline.formset
        data.update({f"{formset.prefix}-{key}": _posted(value)
                     for key, value in formset.management_form.initial.items()})  # fmt: skip
        for sub in formset.forms:
            data.update({sub.add_prefix(name): _posted(sub[name].value()) for name in sub.fields})
    data.update(overrides)
    return data


def set_status_directly(job: Job, status: str) -> Job:
    Job.objects.filter(pk=job.pk).update(status=status)
    return Job.objects.get(pk=job.pk)


def test_admin_refuses_a_status_move_the_phone_line_forbids(admin_client, jobs):
    job = set_status_directly(jobs["501"], JobStatus.IN_PROGRESS)
    response = admin_client.post(job_url(job), change_form_data(admin_client, job, status="pending"))
    assert response.status_code == 200  # the form again, with the error
    body = response.content.decode()
    assert "A job In progress can move only to On hold, Completed or Cancelled." in body
    assert "errorlist" in body
    assert Job.objects.get(pk=job.pk).status == JobStatus.IN_PROGRESS
    assert not JobChange.objects.exists()


def test_admin_status_menu_offers_only_allowed_moves(admin_client, jobs):
    job = set_status_directly(jobs["501"], JobStatus.IN_PROGRESS)
    body = admin_client.get(job_url(job)).content.decode()
    select = re.search(r'<select name="status"[^>]*>(.*?)</select>', body, re.S).group(1)
    offered = re.findall(r'<option value="([a-z_]+)"', select)
    assert offered == ["in_progress", "on_hold", "completed", "cancelled"]


def test_a_closed_job_keeps_its_date_in_the_admin(admin_client, jobs):
    job = jobs["503"]  # completed
    day = (timezone.localdate() + dt.timedelta(days=5)).isoformat()
    response = admin_client.post(job_url(job), change_form_data(admin_client, job, scheduled_for=day))
    assert response.status_code == 200
    assert "A job Completed cannot be rescheduled." in response.content.decode()
    assert Job.objects.get(pk=job.pk).scheduled_for is None


def test_an_allowed_admin_change_is_saved_and_recorded(admin_client, jobs, admin_user):
    job = jobs["501"]  # scheduled
    data = change_form_data(admin_client, job, status="in_progress", title="Replace both compressors")
    response = admin_client.post(job_url(job), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    stored = Job.objects.get(pk=job.pk)
    assert (stored.status, stored.title) == (JobStatus.IN_PROGRESS, "Replace both compressors")
    change = JobChange.objects.get(job=job)
    assert (change.source, change.actor) == ("admin", admin_user.username)
    assert change.changes == {
        "status": {"from": "scheduled", "to": "in_progress"},
        "title": {"from": "Replace rooftop compressor", "to": "Replace both compressors"},
    }


def test_bulk_status_actions_follow_the_same_rules(admin_client, jobs):
    selected = [jobs["501"].pk, jobs["502"].pk, jobs["503"].pk]  # scheduled, pending, completed
    response = admin_client.post(
        "/admin/callops/job/", {"action": "mark_in_progress", "_selected_action": selected}, follow=True
    )
    body = response.content.decode()
    assert "2 job(s) marked In progress." in body
    assert "Not changed: 1001/503: A job Completed is closed: its status cannot change." in body
    statuses = dict(Job.objects.filter(pk__in=selected).values_list("number", "status"))
    assert statuses == {"501": "in_progress", "502": "in_progress", "503": "completed"}
    assert JobChange.objects.filter(source="admin").count() == 2
    # Back to pending is not a move the rules allow from anywhere: there is no such action,
    # and asking for it by name changes nothing.
    assert "mark_pending" not in admin_client.get("/admin/callops/job/").content.decode()
    admin_client.post("/admin/callops/job/", {"action": "mark_pending", "_selected_action": selected})
    assert set(Job.objects.filter(pk__in=selected).values_list("status", flat=True)) == {
        "in_progress",
        "completed",
    }
    response = admin_client.post(
        "/admin/callops/job/", {"action": "mark_scheduled", "_selected_action": selected}, follow=True
    )
    assert "A job In progress can move only to On hold, Completed or Cancelled." in response.content.decode()
    assert Job.objects.get(pk=jobs["501"].pk).status == JobStatus.IN_PROGRESS


def test_phone_notes_are_read_only_in_the_admin(admin_client, jobs):
    job = jobs["502"]
    spoken = JobNote.objects.create(
        job=job, text="Spoken on a call", source=JobNote.Source.IVR, call_sid="CAx"
    )
    typed = JobNote.objects.create(job=job, text="Typed by staff", source=JobNote.Source.ADMIN)
    page = admin_client.get(job_url(job)).content.decode()
    assert "Spoken on a call" in page
    assert not re.search(r"<textarea[^>]*>\s*Spoken on a call", page)  # shown, not editable
    assert re.search(r"<textarea[^>]*>\s*Typed by staff", page)  # staff notes stay editable
    data = change_form_data(admin_client, job)
    spoken_fields = [key for key, value in data.items() if value == str(spoken.pk) and key.endswith("-id")]
    assert len(spoken_fields) == 1
    prefix = spoken_fields[0][: -len("-id")]
    data.update({f"{prefix}-text": "Rewritten", f"{prefix}-DELETE": "on"})
    response = admin_client.post(job_url(job), data)
    assert response.status_code == 302
    assert JobNote.objects.get(pk=spoken.pk).text == "Spoken on a call"
    assert JobNote.objects.filter(pk=typed.pk).exists()


def test_phone_changes_show_in_the_job_history(admin_client, call, jobs):
    call.voice()
    for keyed in ["1001", "501", "1", "1"]:
        call.gather(digits=keyed)
    assert "quedó en progreso" in call.gather(digits="2").text
    new_day = timezone.localdate() + dt.timedelta(days=7)
    call.gather(digits="3")
    call.gather(digits=new_day.strftime("%Y%m%d"))
    job = Job.objects.get(pk=jobs["501"].pk)
    assert (job.status, job.scheduled_for) == (JobStatus.IN_PROGRESS, new_day)
    # and a staff edit after it
    admin_client.post(job_url(job), change_form_data(admin_client, job, status="on_hold"))

    page = admin_client.get(job_url(job, "history"))
    assert page.status_code == 200
    body = page.content.decode()
    rows = re.findall(r'<tr class="history-entry">(.*?)</tr>', body, re.S)
    assert len(rows) == 3
    assert "Status changed from In progress to On hold." in rows[0]  # newest first
    assert "Staff admin" in rows[0]
    assert f"Rescheduled from {jobs['501'].scheduled_for:%a} " in rows[1]
    assert f"to {new_day:%a} {new_day.day} {new_day:%b %Y}." in rows[1]
    assert "Status changed from Scheduled to In progress." in rows[2]
    for row in rows[1:]:
        assert f"Phone call {call.call_sid} from +52******9876" in row
        session_pk = CallSession.objects.get(call_sid=call.call_sid).pk
        assert f'href="/admin/callops/callsession/{session_pk}/change/"' in row
    assert "+525550009876" not in body  # the caller's number only masked
    assert "When (UTC)" in body  # the site's time zone, named
    local = timezone.localtime(JobChange.objects.filter(job=job).earliest("recorded_at").recorded_at)
    assert f"{local:%a} {local.day} {local:%b %Y, %H:%M:%S}" in rows[2]


def test_a_job_with_a_history_is_not_deleted(admin_client, jobs):
    """Its history is append-only, so the job stays (cancel it instead): the admin says so, no 500."""
    job = jobs["502"]
    admin_client.post("/admin/callops/job/", {"action": "mark_cancelled", "_selected_action": [job.pk]})
    page = admin_client.get(job_url(job, "delete"))
    assert page.status_code == 200
    assert "<title>Cannot delete job" in page.content.decode()
    refused = admin_client.post(job_url(job, "delete"), {"post": "yes"})
    assert (refused.status_code, "<title>Cannot delete job" in refused.content.decode()) == (200, True)
    bulk = admin_client.post(
        "/admin/callops/job/", {"action": "delete_selected", "_selected_action": [job.pk], "post": "yes"}
    )
    assert bulk.status_code == 200
    assert Job.objects.filter(pk=job.pk).exists()
    assert JobChange.objects.filter(job=job).count() == 1


def test_history_shows_a_staff_save_once(admin_client, jobs):
    """One admin save that changes the status and adds a note: the change and the note each
    appear once (the admin's own log entry for that save adds nothing new and is not repeated)."""
    job = jobs["502"]  # pending, no notes
    data = change_form_data(admin_client, job, status="on_hold")
    data.update({"notes-TOTAL_FORMS": "1", "notes-0-text": "Waiting for the landlord", "notes-0-id": ""})
    assert admin_client.post(job_url(job), data).status_code == 302
    note = JobNote.objects.get(job=job)
    assert note.source == JobNote.Source.ADMIN
    # A later edit of that note is told by the admin's log.
    data = change_form_data(admin_client, job, **{"notes-0-text": "Landlord called back"})
    assert admin_client.post(job_url(job), data).status_code == 302
    body = admin_client.get(job_url(job, "history")).content.decode()
    rows = re.findall(r'<tr class="history-entry">(.*?)</tr>', body, re.S)
    assert len(rows) == 3, rows
    assert "Staff admin" in rows[0]
    assert "Changed Text for job note “note on " in rows[0]
    assert sum("Status changed from Pending to On hold." in row for row in rows) == 1
    assert sum("Added a note" in row for row in rows) == 1
