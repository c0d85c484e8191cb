"""Whole calls through the Django test client, the real Redis and the real database.

Every request is signed with the twilio library's own signature code and read
back as TwiML, the way Twilio would.
"""

from __future__ import annotations

import time
from datetime import timedelta

import orjson
import pytest
from django.utils import timezone

from callops.ivr.schema import SCHEMA_VERSION
from callops.ivr.store import state_key
from callops.models import CallSession, CallStateSnapshot, Job, JobNote, JobStatus
from callops.redis import get_redis
from tests.callops.ivr.support import PUBLIC_BASE_URL

pytestmark = pytest.mark.django_db


def stored_state(call) -> dict | None:
    raw = get_redis().get(state_key(call.call_sid))
    return orjson.loads(raw) if raw is not None else None


def audit_rows(call) -> list[CallStateSnapshot]:
    return list(CallStateSnapshot.objects.filter(call_sid=call.call_sid).order_by("sequence"))


def assert_gathers(answer, language: str = "es-MX") -> None:
    assert answer.status_code == 200, answer.body
    assert answer.gather is not None, answer.body
    assert answer.gather["input"] == "dtmf speech"
    assert answer.gather["language"] == language
    assert answer.gather["actionOnEmptyResult"] == "true"
    assert answer.gather["action"] == f"{PUBLIC_BASE_URL}/twilio/gather/"
    assert answer.gather["method"] == "POST"


@pytest.mark.smoke
def test_spanish_call_by_keypad_updates_the_status(call, jobs, redis_client):
    answer = call.voice()
    assert_gathers(answer)
    assert answer.says[0] == "Bienvenido al servicio de trabajos de campo."
    assert "número de cliente" in answer.text
    assert "For English, press star" in answer.text  # the hint is in the other language...
    assert answer.say_languages[-1] == "en-US"  # ...and spoken as such
    session = CallSession.objects.get(call_sid=call.call_sid)
    assert (session.from_number, session.outcome, session.language) == ("+525550009876", "in_progress", "es")

    answer = call.gather(digits="1001")
    assert_gathers(answer)
    assert "Cliente Hospital Santa Fe." in answer.text
    assert "número de trabajo" in answer.text

    answer = call.gather(digits="501")
    assert (
        "Trabajo 5 0 1: Replace rooftop compressor, en Av. Reforma 120, CDMX. Estado: programado."
        in answer.text
    )
    assert "oprima 1 o diga sí" in answer.text

    answer = call.gather(digits="1")
    assert "Para cambiar el estado, oprima 1" in answer.text

    answer = call.gather(digits="1")
    assert_gathers(answer)
    assert answer.gather["numDigits"] == "1"
    # scheduled -> in progress, on hold, cancelled (and scheduled again) are offered; completed is not.
    assert "en progreso, oprima 2." in answer.text
    assert "completado, oprima 1." not in answer.text

    answer = call.gather(digits="2")
    assert "Listo. El trabajo 5 0 1 quedó en progreso." in answer.text
    assert "¿Algo más?" in answer.text
    assert Job.objects.get(pk=jobs["501"].pk).status == JobStatus.IN_PROGRESS

    answer = call.gather(digits="0")
    assert answer.status_code == 200
    assert answer.gather is None
    assert answer.says == ["Gracias por llamar. Hasta luego."]
    assert answer.hangup
    assert stored_state(call)["stage"] == "goodbye"

    assert call.status("completed", duration=42).status_code == 200
    session.refresh_from_db()
    assert session.outcome == CallSession.Outcome.COMPLETED
    assert session.ended_at is not None
    assert session.duration_seconds == 42
    assert stored_state(call) is None  # deleted on completion

    rows = audit_rows(call)
    assert [row.sequence for row in rows] == list(range(1, 9))
    assert {row.source for row in rows} == {"webhook"}
    assert rows[0].event["kind"] == "call_started"
    assert [row.stage for row in rows] == [
        "collect_client_id", "collect_job_number", "confirm_job", "ask_action", "execute_action",
        "ask_action", "goodbye", "goodbye",
    ]  # fmt: skip
    assert rows[5].event["steps"][0]["input"] == {"kind": "digits", "digits": "2"}
    assert rows[5].event["steps"][0]["effects"] == [
        {"kind": "set_job_status", "client_id": "1001", "job_number": "501", "status": "in_progress"}
    ]
    assert rows[-1].event == {"kind": "call_ended", "call_status": "completed", "duration": 42,
                              "outcome": "completed"}  # fmt: skip
    assert rows[-1].state["stage"] == "goodbye"
    assert all(row.schema_version == SCHEMA_VERSION for row in rows)


# --- both languages, keypad and speech, every action ---------------------------------------------------

SPOKEN_DIGITS = {
    "es": ["cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"],
    "en": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
}


def spoken(digits: str, language: str) -> str:
    return " ".join(SPOKEN_DIGITS[language][int(digit)] for digit in digits)


# What the caller keys or says at each point, by (language, mode).
SCRIPTS = {
    ("es", "dtmf"): {"switch": None, "client": "1001", "job": "502", "yes": "1", "status": "1", "in_progress": "2",
                     "note": "2", "reschedule": "3", "goodbye": "0"},
    ("es", "speech"): {"switch": None, "client": "uno cero cero uno", "job": "cinco cero dos", "yes": "Sí.",
                       "status": "Estado", "in_progress": "En progreso", "note": "Una nota", "reschedule": "Reprogramar",
                       "goodbye": "Adiós"},
    ("en", "dtmf"): {"switch": "*", "client": "1001", "job": "502", "yes": "1", "status": "1", "in_progress": "2",
                     "note": "2", "reschedule": "3", "goodbye": "0"},
    ("en", "speech"): {"switch": "English", "client": "One zero zero one.", "job": "five zero two", "yes": "Yes",
                       "status": "Status", "in_progress": "In progress", "note": "Add a note",
                       "reschedule": "Reschedule", "goodbye": "Goodbye"},
}  # fmt: skip
DONE = {
    "es": ("Listo. El trabajo 5 0 2 quedó en progreso.", "Listo. Guardé su nota en el trabajo 5 0 2.",
           "Listo. El trabajo 5 0 2 quedó programado para el {date}."),
    "en": ("Done. Job 5 0 2 is now in progress.", "Done. I saved your note on job 5 0 2.",
           "Done. Job 5 0 2 is now scheduled for {date}."),
}  # fmt: skip


@pytest.mark.parametrize(("language", "mode"), list(SCRIPTS))
def test_whole_call_with_every_action(call, jobs, redis_client, language, mode):
    from callops.ivr.machine import Language
    from callops.ivr.prompts import spoken_date

    script = SCRIPTS[(language, mode)]
    twilio_language = {"es": "es-MX", "en": "en-US"}[language]

    def say(what: str):
        return call.gather(digits=what) if mode == "dtmf" else call.gather(speech=what)

    assert_gathers(call.voice(), "es-MX")  # Spanish until asked otherwise
    if script["switch"]:
        answer = say(script["switch"])
        assert_gathers(answer, "en-US")
        assert answer.says[0] == "All right, we'll continue in English."
    assert_gathers(say(script["client"]), twilio_language)
    answer = say(script["job"])
    assert "Quarterly generator test" in answer.text
    assert_gathers(say(script["yes"]), twilio_language)

    say(script["status"])
    answer = say(script["in_progress"])
    assert DONE[language][0] in answer.text
    assert Job.objects.get(pk=jobs["502"].pk).status == JobStatus.IN_PROGRESS

    answer = say(script["note"])
    assert answer.gather["timeout"] == "8"  # a note gets time to be said
    note_text = {
        "es": "Cambié el filtro; falta revisar la válvula.",
        "en": "Filter replaced; valve to check.",
    }
    answer = call.gather(speech=note_text[language])  # notes are spoken in every mode
    assert DONE[language][1] in answer.text
    note = JobNote.objects.get(job=jobs["502"])
    assert (note.text, note.source, note.call_sid) == (note_text[language], "ivr", call.call_sid)

    when = timezone.localdate() + timedelta(days=10)
    keyed = when.strftime("%Y%m%d")
    say(script["reschedule"])
    answer = call.gather(digits=keyed) if mode == "dtmf" else call.gather(speech=spoken(keyed, language))
    assert DONE[language][2].format(date=spoken_date(when.isoformat(), Language(language))) in answer.text
    job = Job.objects.get(pk=jobs["502"].pk)
    assert job.scheduled_for == when
    assert job.status == JobStatus.IN_PROGRESS  # a job under way keeps its status when its date moves

    answer = say(script["goodbye"])
    assert answer.hangup
    assert answer.say_languages == [twilio_language]
    call.status("completed", duration=95)
    session = CallSession.objects.get(call_sid=call.call_sid)
    assert (session.outcome, session.language) == ("completed", language)
    assert stored_state(call) is None


# --- failed attempts at each stage ------------------------------------------------------------------------

# How to reach each stage from the start, and a wrong answer there.
ROUTES = {
    "collect_client_id": ([], {"digits": "9999"}),  # no such client
    "collect_job_number": (["1001"], {"digits": "999"}),  # no such job
    "confirm_job": (["1001", "501"], {}),  # silence
    "ask_action": (["1001", "501", "1"], {"digits": "7"}),  # not on the menu
    "execute_action": (["1001", "501", "1", "3"], {"digits": "20200101"}),  # a date in the past
}


def walk(call, keys: list[str]) -> None:
    assert_gathers(call.voice())
    for key in keys:
        assert_gathers(call.gather(digits=key))


@pytest.mark.parametrize("stage", list(ROUTES))
@pytest.mark.parametrize("fallback", ["", "+525550000911"])
def test_third_failed_attempt_ends_or_transfers_the_call(call, jobs, settings, stage, fallback):
    settings.IVR_FALLBACK_NUMBER = fallback
    keys, wrong = ROUTES[stage]
    walk(call, keys)
    for attempt in (1, 2):
        answer = call.gather(**wrong)
        assert_gathers(answer)
        assert stored_state(call)["attempts"] == attempt
        assert stored_state(call)["stage"] == stage
    answer = call.gather(**wrong)
    assert answer.status_code == 200
    assert answer.gather is None
    assert "Lo siento, no pudimos completar su solicitud después de varios intentos." in answer.says
    if fallback:
        assert answer.says[-1] == "Le comunico con un operador."
        assert answer.dial == fallback
        assert not answer.hangup
    else:
        assert answer.says[-1] == "Gracias por llamar. Hasta luego."
        assert answer.hangup
        assert answer.dial is None
    expected_stage = "transferred" if fallback else "gave_up"
    assert stored_state(call)["stage"] == expected_stage
    call.status("completed")
    assert CallSession.objects.get(call_sid=call.call_sid).outcome == expected_stage


# --- Twilio retries, out-of-order callbacks, late and repeated webhooks --------------------------------------


def test_a_retried_gather_replays_the_same_answer_and_acts_once(call, jobs, redis_client):
    walk(call, ["1001", "501", "1", "2"])
    before = len(audit_rows(call))
    first = call.gather(speech="Revisar la bomba mañana.", idempotency_token="retry-me")
    retry = call.gather(speech="Revisar la bomba mañana.", idempotency_token="retry-me")
    assert first.status_code == retry.status_code == 200
    assert retry.body == first.body
    assert "Guardé su nota" in first.text
    assert JobNote.objects.filter(job=jobs["501"]).count() == 1
    assert len(audit_rows(call)) == before + 1
    assert stored_state(call)["version"] == before + 1
    # A new request (another token) with the same words is a new note: it is not a retry.
    call.gather(digits="2")
    call.gather(speech="Revisar la bomba mañana.")
    assert JobNote.objects.filter(job=jobs["501"]).count() == 2


def test_a_retried_voice_webhook_replays_the_greeting(call, jobs):
    first = call.voice(idempotency_token="voice-1")
    retry = call.voice(idempotency_token="voice-1")
    assert retry.body == first.body
    assert len(audit_rows(call)) == 1


def test_status_callbacks_out_of_order_by_sequence_number(call, jobs, redis_client):
    walk(call, ["1001"])
    assert call.status("in-progress", sequence=1).status_code == 200
    call.status("ringing", sequence=0)  # late: older than what we have
    session = CallSession.objects.get(call_sid=call.call_sid)
    assert (session.last_call_status, session.last_status_sequence) == ("in-progress", 1)
    assert session.ended_at is None

    assert call.status("completed", sequence=3, duration=30).status_code == 200
    call.status("in-progress", sequence=2)  # later than ringing, older than completed
    session.refresh_from_db()
    assert (session.last_call_status, session.last_status_sequence) == ("completed", 3)
    assert session.outcome == "abandoned"  # hung up while being asked for the job number
    assert session.duration_seconds == 30
    assert stored_state(call) is None
    final = audit_rows(call)[-1]
    assert final.event["kind"] == "call_ended"
    assert final.stage == "collect_job_number"
    # Delivered twice: still one final row.
    call.status("completed", sequence=3, duration=30)
    assert [row.event["kind"] for row in audit_rows(call)].count("call_ended") == 1


def test_completed_arriving_first_closes_the_call_and_earlier_callbacks_change_nothing(call, jobs):
    call.voice()
    call.status("completed", sequence=2, duration=5)
    call.status("ringing", sequence=0)
    call.status("in-progress", sequence=1)
    session = CallSession.objects.get(call_sid=call.call_sid)
    assert (session.outcome, session.last_call_status, session.last_status_sequence) == (
        "abandoned",
        "completed",
        2,
    )


def test_a_call_not_answered_is_failed(call):
    call.status("no-answer", sequence=0)
    session = CallSession.objects.get(call_sid=call.call_sid)
    assert session.outcome == "failed"
    assert session.ended_at is not None


def test_a_gather_after_the_call_ended_just_hangs_up(call, jobs, redis_client):
    walk(call, ["1001"])
    call.status("completed", sequence=2)
    answer = call.gather(digits="501")
    assert answer.status_code == 200
    assert answer.hangup
    assert answer.says == []
    assert stored_state(call) is None  # not brought back to life


def test_a_gather_in_an_end_stage_hangs_up_without_a_500(call, jobs, redis_client):
    walk(call, ["1001", "501", "1"])
    assert call.gather(digits="0").hangup
    late = call.gather(digits="1")
    assert late.status_code == 200
    assert late.hangup
    assert stored_state(call)["stage"] == "goodbye"


def test_the_voice_webhook_again_mid_call_repeats_the_question(call, jobs, redis_client):
    walk(call, ["1001", "501"])
    call.gather()  # silence: one failed attempt
    answer = call.voice()
    assert_gathers(answer)
    assert "Replace rooftop compressor" in answer.text
    assert "No escuché" not in answer.text
    assert stored_state(call)["attempts"] == 1  # unchanged


def test_an_expired_state_starts_the_call_again(call, jobs, redis_client):
    from types import SimpleNamespace

    from callops.ivr.service import Webhook, WebhookRequest, handle_gather
    from tests.callops.ivr.support import Answer

    walk(call, ["1001", "501"])  # confirming the job: the state lives 10 minutes
    redis_client.pexpire(state_key(call.call_sid), 1)  # the TTL runs out...
    time.sleep(0.02)
    assert stored_state(call) is None
    later = timezone.now() + timedelta(minutes=10, seconds=1)  # ...because the caller went quiet
    request = WebhookRequest(Webhook.GATHER, {**call.base, "Digits": "1"}, "token-1", received_at=later)
    answer = Answer.of(SimpleNamespace(status_code=200, content=handle_gather(request).twiml.encode()))
    assert_gathers(answer)
    assert answer.says[0] == "Su sesión anterior terminó; empecemos de nuevo."
    rows = audit_rows(call)
    assert [row.sequence for row in rows] == [1, 2, 3, 4]
    assert rows[-1].event["kind"] == "fresh_start"
    assert stored_state(call)["version"] == 4
    assert stored_state(call)["stage"] == "collect_client_id"


def test_a_state_lost_while_the_call_is_live_is_restored_from_the_audit_trail(call, jobs, redis_client):
    walk(call, ["1001", "501"])
    before = stored_state(call)
    redis_client.delete(state_key(call.call_sid))  # Redis lost it (restarted empty, a write failed)
    answer = call.gather(digits="1")  # the caller confirms the job, as if nothing happened
    assert_gathers(answer)
    assert "Para cambiar el estado, oprima 1" in answer.text
    assert "empecemos de nuevo" not in answer.text
    rows = audit_rows(call)
    assert [row.sequence for row in rows] == [1, 2, 3, 4]
    assert rows[-1].state["stage"] == "ask_action"
    assert stored_state(call)["version"] == 4
    assert {k: v for k, v in rows[2].state.items() if k != "last_updated"} == {
        k: v for k, v in before.items() if k != "last_updated"
    }


def test_inactive_clients_are_not_found(call, jobs):
    walk(call, [])
    answer = call.gather(digits="2002")
    assert "No encontré el cliente 2 0 0 2." in answer.text


def test_a_closed_job_cannot_change_status_or_be_rescheduled(call, jobs):
    walk(call, ["1001", "503", "1"])
    answer = call.gather(digits="1")
    assert "Este trabajo está completado y su estado ya no puede cambiar." in answer.text
    call.gather(digits="3")
    answer = call.gather(digits=(timezone.localdate() + timedelta(days=1)).strftime("%Y%m%d"))
    assert "Un trabajo completado no se puede reprogramar." in answer.text
    assert Job.objects.get(pk=jobs["503"].pk).scheduled_for is None


def test_a_job_changed_by_someone_else_meanwhile_is_refused_with_its_new_status(call, jobs):
    walk(call, ["1001", "501", "1", "1"])
    Job.objects.filter(pk=jobs["501"].pk).update(status=JobStatus.CANCELLED)  # staff, in the admin
    answer = call.gather(digits="2")
    assert "El trabajo cambió mientras tanto; ahora está cancelado." in answer.text
    assert "Para cambiar el estado, oprima 1" in answer.text
    assert Job.objects.get(pk=jobs["501"].pk).status == JobStatus.CANCELLED


# --- what is stored -------------------------------------------------------------------------------------------


def test_job_data_is_compacted_before_it_enters_the_state(call, jobs, redis_client):
    Job.objects.filter(pk=jobs["501"].pk).update(title="Compressor " * 17, description="x" * 20_000)
    walk(call, ["1001", "501"])
    raw = redis_client.get(state_key(call.call_sid))
    job = orjson.loads(raw)["job"]
    assert set(job) == {
        "client_id",
        "job_number",
        "title",
        "address",
        "status",
        "allowed_statuses",
        "scheduled_for",
    }
    assert len(job["title"]) == 80
    assert job["title"].endswith("…")
    assert len(raw) < 1000


def test_an_old_schema_in_redis_is_migrated_on_read_mid_call(call, jobs, redis_client):
    walk(call, ["1001", "501", "1"])
    key = state_key(call.call_sid)
    document = orjson.loads(redis_client.get(key))
    del document["language"]  # as a v1 value was written
    document["action"] = document.pop("action_type")
    document["schema_version"] = 1
    redis_client.set(key, orjson.dumps(document), ex=600)
    answer = call.gather(digits="2")
    assert "Diga su nota ahora." in answer.text
    stored = stored_state(call)
    assert (stored["schema_version"], stored["language"], stored["action_type"]) == (
        SCHEMA_VERSION,
        "es",
        "note",
    )
    assert audit_rows(call)[-1].event["migrated_from_schema"] == 1


def test_a_corrupt_value_is_logged_audited_and_replaced_by_a_fresh_start(call, jobs, redis_client, caplog):
    walk(call, ["1001", "501"])
    redis_client.set(state_key(call.call_sid), b'{"version": 3, "stage": \x00 broken', ex=300)
    answer = call.gather(digits="1")
    assert_gathers(answer)
    assert answer.says[0] == "Tuvimos un problema con su llamada; empecemos de nuevo."
    assert "número de cliente" in answer.text
    rows = audit_rows(call)
    corrupt = rows[-2]
    assert corrupt.event["kind"] == "state_corrupt"
    assert "not JSON" in corrupt.event["error"]
    assert corrupt.state["raw"] == '{"version": 3, "stage": \\x00 broken'
    assert (corrupt.schema_version, corrupt.stage) == (0, "")
    assert {k: v for k, v in rows[-1].event.items() if k != "answered"} == {
        "kind": "fresh_start",
        "reason": "state_corrupt",
        "webhook": "gather",
    }
    assert rows[-1].event["answered"]["twiml"] == answer.body  # for a retry, from the database
    stored = stored_state(call)
    assert (stored["stage"], stored["version"]) == ("collect_client_id", rows[-1].sequence)
    assert any("undecodable" in record.getMessage() for record in caplog.records)
    # The call carries on from the fresh start.
    assert "Cliente Hospital Santa Fe." in call.gather(digits="1001").text


@pytest.mark.parametrize(
    ("field", "value"),
    [("version", 2**53 - 1), ("attempts", -(10**30)), ("job", None)],
)
def test_a_value_that_decodes_but_cannot_be_written_back_is_corrupt(call, jobs, redis_client, field, value):
    """Reported: these wedged the call until the key expired (ValueError, TypeError on write-back)."""
    import json

    walk(call, ["1001", "501"])
    key = state_key(call.call_sid)
    document = {**orjson.loads(redis_client.get(key)), field: value}
    if field == "job":
        document["stage"] = "confirm_job"
    redis_client.set(key, json.dumps(document).encode(), ex=300)  # json: any integer, as any writer could
    answer = call.gather()  # a failed input (silence): one more attempt
    assert_gathers(answer)
    assert answer.says[0] == "Tuvimos un problema con su llamada; empecemos de nuevo."
    rows = audit_rows(call)
    assert [row.sequence for row in rows] == [1, 2, 3, 4, 5]
    assert rows[-2].event["kind"] == "state_corrupt"
    assert (stored_state(call)["version"], stored_state(call)["stage"]) == (5, "collect_client_id")
    assert "callops_ivr_state_corrupt_total" in call.client.get("/metrics").content.decode()
    assert "Cliente Hospital Santa Fe." in call.gather(digits="1001").text  # and it goes on


# --- the edges of the HTTP surface ---------------------------------------------------------------------------


@pytest.mark.parametrize("confidence", ["nan", "NaN", "inf", "-inf", "1e999", "-0.5", "7", "abc", ""])
def test_a_bad_speech_confidence_is_dropped_and_the_speech_kept(call, jobs, confidence):
    walk(call, ["1001", "501", "1", "2"])
    answer = call.gather(speech="Cambiar la válvula.", confidence=confidence)
    assert "Guardé su nota" in answer.text
    assert JobNote.objects.get(job=jobs["501"], call_sid=call.call_sid).text == "Cambiar la válvula."
    said = audit_rows(call)[-1].event["steps"][0]["input"]
    assert said["confidence"] is None
    assert said["text"] == "Cambiar la válvula."


@pytest.mark.parametrize("duration", ["-5", "12345678901234567890", "2147483648", "1.5", "abc", "٣"])
def test_a_bad_call_duration_is_ignored_and_the_call_still_closed(call, jobs, duration):
    walk(call, ["1001"])
    answer = call.status("completed", sequence=1, duration=duration)
    assert answer.status_code == 200
    session = CallSession.objects.get(call_sid=call.call_sid)
    assert session.ended_at is not None
    assert (session.outcome, session.duration_seconds) == ("abandoned", None)
    assert audit_rows(call)[-1].event["kind"] == "call_ended"


def test_a_bad_sequence_number_is_ignored_and_the_status_recorded(call, jobs):
    walk(call, [])
    assert call.status("ringing", sequence=10**20).status_code == 200
    session = CallSession.objects.get(call_sid=call.call_sid)
    assert (session.last_call_status, session.last_status_sequence) == ("ringing", None)
    assert call.status("completed", sequence=2, duration=30).status_code == 200
    session.refresh_from_db()
    assert (session.ended_at is not None, session.duration_seconds) == (True, 30)


def test_data_the_database_refuses_is_a_bug_answered_once_not_a_conflict_retried(call, jobs, caplog):
    """Only the unique (call, sequence) clash is a concurrent change worth running again."""
    from django.db import IntegrityError

    from callops.ivr.service import _finish_call

    walk(call, ["1001"])
    with pytest.raises(IntegrityError):  # past the edge's checks: a bug, raised at the first try
        _finish_call(call.call_sid, "completed", -5, timezone.now())
    assert CallSession.objects.get(call_sid=call.call_sid).ended_at is None
    assert [row.sequence for row in audit_rows(call)] == [1, 2]


def test_a_signed_request_without_call_sid_is_a_400(client):
    from tests.callops.ivr.support import sign

    params = {"AccountSid": "AC1"}
    response = client.post("/twilio/gather/", params, HTTP_X_TWILIO_SIGNATURE=sign("/twilio/gather/", params))
    assert response.status_code == 400
    assert b"without CallSid" in response.content


def test_webhooks_take_post_only(client):
    assert client.get("/twilio/voice/").status_code == 405


def test_fallback_url_apologises_and_transfers_when_configured(call, settings):
    answer = call.post(
        "/twilio/fallback/", {**call.base, "ErrorCode": "11200", "ErrorUrl": "https://x/voice"}
    )
    assert answer.status_code == 200
    assert answer.says[0].startswith("Lo sentimos, tenemos un problema técnico.")
    assert answer.hangup
    settings.IVR_FALLBACK_NUMBER = "+525550000911"
    answer = call.post("/twilio/fallback/", {**call.base, "ErrorCode": "11200"})
    assert answer.dial == "+525550000911"


def test_webhook_metrics(call, jobs, client):
    walk(call, ["1001"])
    text = client.get("/metrics").content.decode()
    assert 'callops_ivr_webhooks_total{outcome="ok",webhook="voice"}' in text
    assert 'callops_ivr_webhooks_total{outcome="ok",webhook="gather"}' in text
    assert 'callops_ivr_webhook_seconds_bucket{le="0.05",webhook="gather"}' in text


def test_logs_mask_phone_numbers_and_carry_the_call_sid(call, jobs, caplog):
    from callops.ivr.service import mask_number

    assert mask_number("+525550009876") == "+52******9876"
    assert mask_number("12345") == "*****"
    with caplog.at_level("INFO", logger="callops.ivr"):
        call.voice()
    incoming = [record for record in caplog.records if record.getMessage().startswith("incoming call")]
    assert len(incoming) == 1
    assert "+525550009876" not in incoming[0].getMessage()
    assert "+52******9876" in incoming[0].getMessage()
    assert incoming[0].call_sid == call.call_sid  # a field of its own in the JSON log line
