"""Redis stopped mid-call (a real redis-server, stopped and started again): apology, never a 500."""

from __future__ import annotations

import pytest

from callops.models import CallSession, CallStateSnapshot
from tests.callops.ivr.support import TwilioCall

pytestmark = pytest.mark.django_db

APOLOGY_ES = "Lo sentimos, tenemos un problema técnico. Por favor, llame más tarde."
APOLOGY_EN = "We're sorry, we are having a technical problem. Please call again later."


@pytest.fixture
def outage_call(client, settings, private_redis):
    settings.REDIS_URL = private_redis.url  # get_redis() reads it at call time
    return TwilioCall(client)


def test_redis_stopped_mid_call_then_back(outage_call, private_redis, jobs, client):
    call = outage_call
    assert call.voice().listening
    assert "Cliente Hospital Santa Fe." in call.gather(digits="1001").text

    private_redis.stop()
    answer = call.gather(digits="501")
    assert answer.status_code == 200
    assert answer.says == [APOLOGY_ES, APOLOGY_EN]
    assert answer.say_languages == ["es-MX", "en-US"]
    assert answer.hangup
    assert not answer.listening
    # Nothing half-done: no audit row for the failed step.
    assert CallStateSnapshot.objects.filter(call_sid=call.call_sid).count() == 2

    # A new call while Redis is down hears the same.
    assert TwilioCall(client).voice().says == [APOLOGY_ES, APOLOGY_EN]

    private_redis.start()  # back, empty (it kept nothing on disk)
    # The audit trail holds the call: it carries on where it was, as the caller expects.
    answer = call.gather(digits="501")
    assert answer.status_code == 200
    assert "Replace rooftop compressor" in answer.text
    rows = CallStateSnapshot.objects.filter(call_sid=call.call_sid).order_by("sequence")
    assert [(row.sequence, row.stage) for row in rows] == [
        (1, "collect_client_id"),
        (2, "collect_job_number"),
        (3, "confirm_job"),
    ]

    text = client.get("/metrics").content.decode()
    assert 'callops_ivr_webhooks_total{outcome="redis_down",webhook="gather"}' in text
    assert 'callops_ivr_webhooks_total{outcome="redis_down",webhook="voice"}' in text
    assert 'callops_ivr_redis_failures_total{operation="get"}' in text


def test_with_a_fallback_number_the_apology_puts_the_caller_through(outage_call, private_redis, settings):
    settings.IVR_FALLBACK_NUMBER = "+525550000911"
    private_redis.stop()
    answer = outage_call.voice()
    assert answer.status_code == 200
    assert answer.says[0] == "Lo sentimos, tenemos un problema técnico. Le comunicamos con un operador."
    assert answer.dial == "+525550000911"


def test_the_call_is_closed_in_the_database_even_with_redis_down(outage_call, private_redis, jobs, caplog):
    call = outage_call
    call.voice()
    call.gather(digits="1001")
    private_redis.stop()
    answer = call.status("completed", sequence=1, duration=12)
    assert answer.status_code == 200
    session = CallSession.objects.get(call_sid=call.call_sid)
    assert (session.outcome, session.duration_seconds) == ("abandoned", 12)
    final = CallStateSnapshot.objects.filter(call_sid=call.call_sid).order_by("-sequence").first()
    assert (final.sequence, final.stage, final.event["kind"]) == (3, "collect_job_number", "call_ended")
    assert any("without Redis" in record.getMessage() for record in caplog.records)
