"""The TTL sweep: sessions whose Redis state expired are closed; by a real Celery worker too."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from callops.ivr.service import expire_session, stale_session_ids
from callops.ivr.store import state_key
from callops.models import CallSession, CallStateSnapshot
from callops.redis import get_redis
from tests.callops.ivr.support import TwilioCall, new_call_sid
from tests.support.processes import wait_for


def old_session(minutes: int = 10, **fields) -> CallSession:
    return CallSession.objects.create(
        call_sid=new_call_sid(), started_at=timezone.now() - timedelta(minutes=minutes), **fields
    )


@pytest.mark.django_db
def test_only_open_old_sessions_without_state_are_stale(jobs, client):
    gone = old_session()
    recent = old_session(minutes=1)
    ended = old_session(ended_at=timezone.now(), outcome="completed")
    live = TwilioCall(client)
    live.voice()
    CallSession.objects.filter(call_sid=live.call_sid).update(
        started_at=timezone.now() - timedelta(minutes=10)
    )
    try:
        stale = stale_session_ids(timezone.now())
    finally:
        get_redis().delete(state_key(live.call_sid))
    assert gone.pk in stale
    assert recent.pk not in stale
    assert ended.pk not in stale
    assert CallSession.objects.get(call_sid=live.call_sid).pk not in stale


@pytest.mark.django_db
def test_expiring_a_session_closes_it_once_with_an_audit_row(jobs, client):
    call = TwilioCall(client)
    call.voice()
    call.gather(digits="1001")
    get_redis().delete(state_key(call.call_sid))  # its TTL ran out...
    later = timezone.now() + timedelta(minutes=5, seconds=1)  # ...five minutes after the last input
    session = CallSession.objects.get(call_sid=call.call_sid)
    # Too early: a state younger than its TTL was lost, not expired; the call is live.
    assert expire_session(session.pk, now=timezone.now()) is None
    assert expire_session(session.pk, now=later) == "abandoned"
    assert expire_session(session.pk, now=later) is None  # a second run does nothing
    session.refresh_from_db()
    assert session.outcome == "abandoned"
    assert session.ended_at is not None
    rows = CallStateSnapshot.objects.filter(call_sid=call.call_sid).order_by("sequence")
    assert [row.sequence for row in rows] == [1, 2, 3]
    final = rows.last()
    assert (final.source, final.stage, final.event) == (
        "celery", "collect_job_number", {"kind": "state_expired", "outcome": "abandoned"})  # fmt: skip


@pytest.mark.django_db
def test_a_call_that_said_goodbye_but_whose_callback_was_lost_counts_as_completed(jobs, client):
    call = TwilioCall(client)
    call.voice()
    for digits in ("1001", "501", "1", "0"):
        call.gather(digits=digits)
    get_redis().delete(state_key(call.call_sid))
    later = timezone.now() + timedelta(hours=1, seconds=1)
    assert expire_session(CallSession.objects.get(call_sid=call.call_sid).pk, now=later) == "completed"


@pytest.mark.django_db
def test_a_session_whose_state_is_back_is_left_alone(jobs, client):
    call = TwilioCall(client)
    call.voice()
    try:
        assert expire_session(CallSession.objects.get(call_sid=call.call_sid).pk) is None
        assert CallSession.objects.get(call_sid=call.call_sid).ended_at is None
    finally:
        get_redis().delete(state_key(call.call_sid))


@pytest.mark.django_db
def test_nothing_is_expired_while_redis_is_down(settings, private_redis):
    settings.REDIS_URL = private_redis.url
    session = old_session()
    private_redis.stop()
    assert expire_session(session.pk) is None
    session.refresh_from_db()
    assert session.ended_at is None


def test_the_sweep_is_scheduled_in_beat():
    from callops.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["sweep-expired-call-states"]
    assert entry["task"] == "callops.tasks.sweep_expired_call_states"
    assert entry["task"] in app.tasks
    assert "callops.tasks.expire_call_session" in app.tasks


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_sweeps_and_closes_expired_sessions(celery_worker):
    from callops.tasks import expire_call_session, sweep_expired_call_states

    stale = old_session()
    fresh = old_session(minutes=0)
    result = sweep_expired_call_states.delay().get(timeout=30)
    assert stale.pk in result["queued"]
    assert fresh.pk not in result["queued"]

    def closed():
        stale.refresh_from_db()
        return stale.ended_at is not None

    wait_for(
        closed, timeout=30, what=f"the worker to close the session; log:\n{celery_worker.output()[-2000:]}"
    )
    assert stale.outcome == "abandoned"
    assert CallStateSnapshot.objects.get(call_sid=stale.call_sid).source == "celery"
    # Delivered again (Celery redelivers after a crash): nothing changes.
    assert expire_call_session.delay(stale.pk).get(timeout=30) is None
    assert CallStateSnapshot.objects.filter(call_sid=stale.call_sid).count() == 1


@pytest.mark.django_db
def test_stale_sessions_are_found_past_many_live_ones(jobs):
    """Batches: old sessions whose calls are still live do not hide the stale ones behind them."""
    live = [old_session() for _ in range(5)]
    for session in live:
        get_redis().set(state_key(session.call_sid), b"{}", ex=60)
    gone = old_session()
    try:
        assert stale_session_ids(timezone.now(), limit=10, batch=2) == [gone.pk]
    finally:
        get_redis().delete(*[state_key(session.call_sid) for session in live])


@pytest.mark.django_db
def test_the_sweep_does_not_close_a_call_that_started_again_after_it_read_the_key_absent(jobs, client):
    """The sweep reads the key absent, then a gather starts the call afresh and commits
    before the sweep's transaction (its copy not yet in Redis): the audit trail, read
    under the session's lock, shows a live state, so the call is left open."""
    from callops.ivr.service import Webhook, WebhookRequest, answer_call, handle_gather

    call = TwilioCall(client)
    long_ago = timezone.now() - timedelta(minutes=20)

    def at(when, handle, **params):
        request = WebhookRequest(
            Webhook.GATHER, {**call.base, **params}, f"t-{when}-{params}", received_at=when
        )
        return handle(request)

    at(long_ago, answer_call)
    at(long_ago, handle_gather, Digits="1001")
    get_redis().delete(state_key(call.call_sid))  # expired 15 minutes ago
    answer = at(timezone.now(), handle_gather, Digits="501")  # the caller is back: a fresh start...
    assert "Su sesión anterior terminó" in answer.twiml
    get_redis().delete(state_key(call.call_sid))  # ...whose copy the sweep's read did not see yet
    session = CallSession.objects.get(call_sid=call.call_sid)
    assert expire_session(session.pk) is None
    session.refresh_from_db()
    assert session.ended_at is None
    rows = CallStateSnapshot.objects.filter(call_sid=call.call_sid).order_by("sequence")
    assert [row.event["kind"] for row in rows] == ["call_started", "input", "fresh_start"]
