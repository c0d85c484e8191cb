"""IVR test fixtures: Twilio's settings, a client with jobs, a call that Twilio drives."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from callops.ivr.store import state_key
from callops.models import Client, Job, JobStatus
from tests.callops.ivr.support import AUTH_TOKEN, PUBLIC_BASE_URL, TwilioCall


@pytest.fixture(autouse=True)
def twilio_settings(settings):
    settings.TWILIO_AUTH_TOKEN = AUTH_TOKEN
    settings.PUBLIC_BASE_URL = PUBLIC_BASE_URL
    settings.IVR_FALLBACK_NUMBER = ""
    return settings


@pytest.fixture
def jobs(db):
    """Client 1001 with a job in each interesting status; client 2002 inactive."""
    client = Client.objects.create(code="1001", name="Hospital Santa Fe", phone="+525550001001")
    in_days = timezone.localdate() + timedelta(days=3)
    made = {
        "501": Job.objects.create(client=client, number="501", title="Replace rooftop compressor",
                                  address="Av. Reforma 120, CDMX", status=JobStatus.SCHEDULED,
                                  scheduled_for=in_days),
        "502": Job.objects.create(client=client, number="502", title="Quarterly generator test",
                                  address="Av. Reforma 120, CDMX", status=JobStatus.PENDING),
        "503": Job.objects.create(client=client, number="503", title="Install safety sensors",
                                  address="Av. Reforma 120, CDMX", status=JobStatus.COMPLETED),
    }  # fmt: skip
    inactive = Client.objects.create(code="2002", name="Closed account", active=False)
    Job.objects.create(client=inactive, number="701", title="Never", status=JobStatus.PENDING)
    return made


@pytest.fixture
def call(client, redis_client):
    """A call driven through the Django test client against the real Redis; its state is removed after."""
    twilio_call = TwilioCall(client)
    yield twilio_call
    redis_client.delete(state_key(twilio_call.call_sid))
