"""X-Twilio-Signature: checked against PUBLIC_BASE_URL in every environment, DEBUG included."""

from __future__ import annotations

import pytest

from callops.models import CallSession
from tests.callops.ivr.support import sign

pytestmark = pytest.mark.django_db


@pytest.fixture(params=[False, True], ids=["production", "debug"])
def any_debug(request, settings):
    settings.DEBUG = request.param
    return request.param


def test_a_correctly_signed_request_is_answered(call, any_debug):
    assert call.voice().status_code == 200


def test_a_wrong_signature_is_403(call, any_debug):
    params = {**call.base, "CallStatus": "ringing"}
    answer = call.post(
        "/twilio/voice/", params, signature=sign("/twilio/voice/", params, token="not-our-token")
    )
    assert answer.status_code == 403
    assert not CallSession.objects.filter(call_sid=call.call_sid).exists()


def test_a_missing_signature_is_403(client, any_debug):
    response = client.post("/twilio/voice/", {"CallSid": "CA1"})
    assert response.status_code == 403


def test_a_forged_body_with_a_reused_signature_is_403(call, jobs, any_debug):
    """A signature seen on one request does not vouch for other parameters."""
    call.voice()
    genuine = {**call.base, "Digits": "1001"}
    signature = sign("/twilio/gather/", genuine)
    assert call.post("/twilio/gather/", genuine, signature=signature).status_code == 200
    forged = {**call.base, "Digits": "2002"}
    answer = call.post("/twilio/gather/", forged, signature=signature)
    assert answer.status_code == 403
    extra = {**genuine, "SpeechResult": "English"}
    assert call.post("/twilio/gather/", extra, signature=signature).status_code == 403


def test_the_signature_covers_the_public_url_not_the_host_django_sees(call, any_debug):
    params = {**call.base}
    as_seen_by_django = sign("/twilio/voice/", params, base="http://testserver")
    assert call.post("/twilio/voice/", params, signature=as_seen_by_django).status_code == 403
    other_path = sign("/twilio/gather/", params)
    assert call.post("/twilio/voice/", params, signature=other_path).status_code == 403


def test_the_query_string_is_part_of_the_signed_url(call):
    params = {**call.base}
    signature = sign("/twilio/voice/?attempt=2", params)
    response = call.client.post("/twilio/voice/?attempt=2", params, HTTP_X_TWILIO_SIGNATURE=signature)
    assert response.status_code == 200
    response = call.client.post("/twilio/voice/?attempt=3", params, HTTP_X_TWILIO_SIGNATURE=signature)
    assert response.status_code == 403


def test_without_an_auth_token_everything_is_refused_and_logged(call, settings, caplog, any_debug):
    settings.TWILIO_AUTH_TOKEN = ""
    params = {**call.base}
    answer = call.post("/twilio/voice/", params, signature=sign("/twilio/voice/", params, token=""))
    assert answer.status_code == 403
    assert any("TWILIO_AUTH_TOKEN is empty" in record.getMessage() for record in caplog.records)


def test_a_changed_public_base_url_changes_what_is_valid(call, settings):
    settings.PUBLIC_BASE_URL = "https://other.example"
    params = {**call.base}
    assert call.post("/twilio/voice/", params, signature=sign("/twilio/voice/", params)).status_code == 403
    signature = sign("/twilio/voice/", params, base="https://other.example")
    assert call.post("/twilio/voice/", params, signature=signature).status_code == 200


def test_refusals_are_counted(call, client):
    params = {**call.base}
    call.post("/twilio/status/", params, signature="bogus")
    text = client.get("/metrics").content.decode()
    assert 'callops_ivr_webhooks_total{outcome="forbidden",webhook="status"}' in text
