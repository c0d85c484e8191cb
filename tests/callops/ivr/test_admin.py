"""Staff see live calls and their audit timelines, extend a live state's TTL, terminate a call."""

from __future__ import annotations

import pytest

from callops.ivr.store import state_key
from callops.models import CallSession, CallStateSnapshot
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
