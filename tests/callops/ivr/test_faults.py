"""Single faults between the two stores, injected for real by a TCP proxy of our own.

The app talks to the real Redis (and, for the database faults, the real PostgreSQL)
through :mod:`tests.support.faultproxy`, which loses, delays or cuts exactly one
request or reply. After each fault and Twilio's retry of the same request (same
idempotency token) the three must agree: the job in the database, the audit rows
(sequence numbers 1..n, no row for what did not happen), and the copy in Redis;
and what the caller heard must be what the database holds.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
from django.conf import settings
from django.db import connection

from callops.ivr.store import state_key
from callops.models import CallSession, CallStateSnapshot, Job, JobNote, JobStatus
from callops.redis import get_redis
from tests.callops.ivr.support import Answer, TwilioCall
from tests.support.faultproxy import FaultProxy

APOLOGY = "Lo sentimos, tenemos un problema técnico."
DONE = "Listo. El trabajo 5 0 1 quedó en progreso."


def redis_upstream() -> tuple[str, int]:
    url = urlsplit(settings.REDIS_URL)
    return url.hostname or "127.0.0.1", url.port or 6379


def via(proxy: FaultProxy, url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"{proxy.host}:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@pytest.fixture
def redis_proxy(settings):
    direct = settings.REDIS_URL
    with FaultProxy(redis_upstream()) as proxy:
        settings.REDIS_URL = via(proxy, direct)  # get_redis() reads it at call time
        proxy.direct = get_redis(direct)  # type: ignore[attr-defined]  # the test's own view
        DIRECT.append(proxy.direct)  # type: ignore[attr-defined]
        yield proxy
        DIRECT.pop()
        proxy.heal()


def key_for(answer: Answer, status_name: str) -> str:
    """The key the status menu offers for ``status_name`` (the menu may be renumbered)."""
    found = re.search(rf"{status_name}, oprima (\d)", answer.text)
    assert found, answer.text
    return found.group(1)


def to_status_menu(call: TwilioCall) -> Answer:
    call.voice()
    for digits in ("1001", "501", "1"):
        call.gather(digits=digits)
    return call.gather(digits="1")  # "change the status": the menu (state version 5)


def to_note(call: TwilioCall) -> None:
    call.voice()
    for digits in ("1001", "501", "1", "2"):
        call.gather(digits=digits)  # "add a note": the next speech is the note (version 5)


DIRECT: list = []  # the real Redis, not through the proxy


def stored(call: TwilioCall) -> dict | None:
    raw = (DIRECT[-1] if DIRECT else get_redis()).get(state_key(call.call_sid))
    return orjson.loads(raw) if raw is not None else None


def assert_stores_agree(call: TwilioCall) -> list[CallStateSnapshot]:
    """Audit rows 1..n without gaps; Redis holds exactly the latest row's state."""
    rows = list(CallStateSnapshot.objects.filter(call_sid=call.call_sid).order_by("sequence"))
    assert [row.sequence for row in rows] == list(range(1, len(rows) + 1))
    copy = stored(call)
    assert copy is not None
    assert copy["version"] == rows[-1].sequence
    assert copy == rows[-1].state
    return rows


def status_of(job: Job) -> str:
    return Job.objects.get(pk=job.pk).status


pytestmark = pytest.mark.django_db


# --- Redis faults (the app in this process, the Django test client) ---------------------------------------


@pytest.mark.parametrize("fault", ["reply_lost", "reply_late"])
def test_redis_acts_on_the_state_write_but_its_reply_never_comes_back(redis_proxy, client, jobs, fault):
    """The reported case: Redis runs the write, the app does not hear back."""
    call = TwilioCall(client)
    menu = to_status_menu(call)
    key = key_for(menu, "en progreso")
    if fault == "reply_lost":
        happened = redis_proxy.drop_reply_to(b'"version":6,')
    else:  # later than the client's socket timeout
        happened = redis_proxy.delay_reply_to(b'"version":6,', seconds=3.0)
    first = call.gather(digits=key, idempotency_token="request-6")
    assert happened.is_set()
    redis_proxy.heal()
    retry = call.gather(digits=key, idempotency_token="request-6")  # Twilio's retry

    # What the caller heard is what the database holds...
    assert (DONE in retry.text) == (status_of(jobs["501"]) == JobStatus.IN_PROGRESS)
    rows = assert_stores_agree(call)
    # ...and the change was committed, so it is announced, the first time and again.
    assert DONE in first.text
    assert retry.body == first.body
    assert status_of(jobs["501"]) == JobStatus.IN_PROGRESS
    assert [row.stage for row in rows][-2:] == ["execute_action", "ask_action"]
    assert len(rows) == 6
    # The call carries on from the committed state.
    assert call.gather(digits="1").listening
    assert len(assert_stores_agree(call)) == 7


def test_redis_down_between_the_commit_and_the_state_write(redis_proxy, client, jobs):
    call = TwilioCall(client)
    to_note(call)
    cut = redis_proxy.cut_before(b'"version":6,')
    first = call.gather(speech="Cambiar la válvula.", idempotency_token="note-6")
    assert cut.is_set()
    assert "Guardé su nota" in first.text  # committed: the caller is told so
    assert JobNote.objects.filter(job=jobs["501"], call_sid=call.call_sid).count() == 1
    assert stored(call)["version"] == 5  # the copy is behind...

    redis_proxy.heal()
    retry = call.gather(speech="Cambiar la válvula.", idempotency_token="note-6")
    assert retry.body == first.body  # ...so the retry is answered from the audit row
    assert JobNote.objects.filter(job=jobs["501"], call_sid=call.call_sid).count() == 1
    rows = assert_stores_agree(call)
    assert len(rows) == 6
    # And the next input runs on the repaired copy.
    assert "Para cambiar el estado" in call.gather(digits="9").text
    assert_stores_agree(call)


def test_redis_down_for_the_first_webhook_after_its_commit(redis_proxy, client, jobs):
    call = TwilioCall(client)
    cut = redis_proxy.cut_before(b'"version":1,')
    first = call.voice(idempotency_token="voice-1")
    assert cut.is_set()
    assert "Bienvenido" in first.text
    assert stored(call) is None
    redis_proxy.heal()
    retry = call.voice(idempotency_token="voice-1")
    assert retry.body == first.body  # not "your previous session ended"
    assert len(assert_stores_agree(call)) == 1
    assert "Cliente Hospital Santa Fe." in call.gather(digits="1001").text


def test_redis_down_before_anything_is_read_changes_nothing(redis_proxy, client, jobs):
    call = TwilioCall(client)
    menu = to_status_menu(call)
    redis_proxy.refuse()
    answer = call.gather(digits=key_for(menu, "en progreso"), idempotency_token="request-6")
    assert APOLOGY in answer.text
    assert status_of(jobs["501"]) == JobStatus.SCHEDULED
    redis_proxy.heal()
    assert len(assert_stores_agree(call)) == 5


# --- database faults: the app's connection to PostgreSQL goes through the proxy --------------------------


@pytest.fixture
def database_proxy(redis_proxy):
    if connection.vendor != "postgresql":
        pytest.skip("the database proxy sits in front of PostgreSQL; SQLite has no connection to cut")
    saved = dict(connection.settings_dict)
    saved_options = dict(saved.get("OPTIONS", {}))
    with FaultProxy((saved["HOST"] or "127.0.0.1", int(saved["PORT"] or 5432))) as proxy:
        connection.close()
        connection.settings_dict["HOST"], connection.settings_dict["PORT"] = proxy.host, str(proxy.port)
        connection.settings_dict["OPTIONS"] = {**saved_options, "sslmode": "disable"}  # bytes we can read
        try:
            yield proxy
        finally:
            proxy.heal()
            connection.close()
            connection.settings_dict.update(saved)
            connection.settings_dict["OPTIONS"] = saved_options


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fault", ["commit_cut", "commit_reply_lost"])
def test_the_database_commit_fails_or_its_reply_is_lost(database_proxy, redis_proxy, client, jobs, fault):
    call = TwilioCall(client)
    menu = to_status_menu(call)
    key = key_for(menu, "en progreso")
    if fault == "commit_cut":  # the COMMIT never reaches the server: nothing happened
        happened = database_proxy.cut_before(b"COMMIT")
    else:  # the server commits; the app never hears it
        happened = database_proxy.drop_reply_to(b"COMMIT")
    first = call.gather(digits=key, idempotency_token="request-6")
    assert happened.is_set()
    assert APOLOGY in first.text  # the app cannot know: it promises nothing
    database_proxy.heal()
    connection.close()

    rows = list(CallStateSnapshot.objects.filter(call_sid=call.call_sid).order_by("sequence"))
    committed = fault == "commit_reply_lost"
    assert len(rows) == (6 if committed else 5)
    assert status_of(jobs["501"]) == (JobStatus.IN_PROGRESS if committed else JobStatus.SCHEDULED)
    assert stored(call)["version"] == 5  # nothing reached Redis before the commit

    retry = call.gather(digits=key, idempotency_token="request-6")  # Twilio's retry
    assert DONE in retry.text
    assert status_of(jobs["501"]) == JobStatus.IN_PROGRESS
    rows = assert_stores_agree(call)
    assert len(rows) == 6  # applied once, whichever way the commit went
    assert CallSession.objects.get(call_sid=call.call_sid).ended_at is None


# --- a copy out of step with the audit trail, however it came to be -------------------------------------


def test_a_leaked_write_ahead_of_the_audit_trail_is_replaced_from_it(client, jobs, redis_client):
    call = TwilioCall(client)
    to_note(call)  # audit rows 1..5
    key = state_key(call.call_sid)
    leaked = {**orjson.loads(redis_client.get(key)), "version": 7, "stage": "ask_action"}
    redis_client.set(key, orjson.dumps(leaked), ex=600)  # a write whose transaction never committed
    answer = call.gather(speech="Cambiar la válvula.")
    assert "Guardé su nota" in answer.text  # the caller was adding a note, as the database says
    rows = assert_stores_agree(call)
    assert len(rows) == 6
    assert JobNote.objects.filter(job=jobs["501"], call_sid=call.call_sid).count() == 1


def test_a_copy_behind_the_audit_trail_is_repaired_not_retried(client, jobs, redis_client, caplog):
    call = TwilioCall(client)
    to_note(call)
    key = state_key(call.call_sid)
    behind = orjson.loads(redis_client.get(key))
    call.gather(speech="Primera nota.")  # row 6
    redis_client.set(key, orjson.dumps(behind), ex=600)  # as if the copy of row 6 was lost
    answer = call.gather(digits="2")  # another note, from the state row 6 left
    assert "Diga su nota ahora." in answer.text
    assert len(assert_stores_agree(call)) == 7
    assert not any("changed meanwhile" in record.getMessage() for record in caplog.records)
    assert any("repairing it from the audit trail" in record.getMessage() for record in caplog.records)


@pytest.mark.django_db(transaction=True)
def test_the_database_down_changes_nothing_anywhere(database_proxy, redis_proxy, client, jobs):
    call = TwilioCall(client)
    menu = to_status_menu(call)
    database_proxy.refuse()
    answer = call.gather(digits=key_for(menu, "en progreso"), idempotency_token="request-6")
    assert APOLOGY in answer.text
    database_proxy.heal()
    connection.close()
    assert status_of(jobs["501"]) == JobStatus.SCHEDULED
    assert len(assert_stores_agree(call)) == 5  # Redis untouched too
    retry = call.gather(digits=key_for(menu, "en progreso"), idempotency_token="request-6")
    assert DONE in retry.text  # nothing was remembered for the request: it runs now, once
    assert status_of(jobs["501"]) == JobStatus.IN_PROGRESS
    assert len(assert_stores_agree(call)) == 6
