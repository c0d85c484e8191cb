"""Plays Twilio in tests: signed webhook requests for one call, and TwiML read back."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from django.test import Client as DjangoClient
from twilio.request_validator import RequestValidator

AUTH_TOKEN = "test-auth-token-5f0c2a9e4b7d"
PUBLIC_BASE_URL = "https://ivr.callops.example"
FROM_NUMBER = "+525550009876"
TO_NUMBER = "+525550000100"


def new_call_sid() -> str:
    return "CA" + uuid.uuid4().hex


def sign(path: str, params: dict[str, str], token: str = AUTH_TOKEN, base: str = PUBLIC_BASE_URL) -> str:
    """X-Twilio-Signature as Twilio computes it, with the twilio library's own code."""
    return RequestValidator(token).compute_signature(f"{base}{path}", params)


@dataclass
class Answer:
    """A webhook response, with its TwiML taken apart."""

    status_code: int
    body: str
    says: list[str] = field(default_factory=list)
    say_languages: list[str] = field(default_factory=list)
    gather: dict[str, str] | None = None
    hangup: bool = False
    dial: str | None = None

    @classmethod
    def of(cls, response) -> Answer:  # type: ignore[no-untyped-def]
        body = response.content.decode()
        answer = cls(response.status_code, body)
        if response.status_code != 200 or not body.startswith("<?xml"):
            return answer
        root = ET.fromstring(body)  # noqa: S314 - our own server's answer
        assert root.tag == "Response", body
        for element in root.iter():
            if element.tag == "Say":
                answer.says.append(element.text or "")
                answer.say_languages.append(element.get("language", ""))
            elif element.tag == "Gather":
                answer.gather = dict(element.attrib)
            elif element.tag == "Hangup":
                answer.hangup = True
            elif element.tag == "Dial":
                answer.dial = element.text
        return answer

    @property
    def text(self) -> str:
        return " ".join(self.says)

    @property
    def listening(self) -> bool:
        return self.gather is not None


class TwilioCall:
    """One phone call as Twilio drives it: the voice webhook, gathers, status callbacks."""

    def __init__(self, client: DjangoClient | None = None, call_sid: str | None = None):
        self.client = client or DjangoClient()
        self.call_sid = call_sid or new_call_sid()
        self.base = {"CallSid": self.call_sid, "AccountSid": "AC" + "0" * 32, "From": FROM_NUMBER,
                     "To": TO_NUMBER, "Direction": "inbound", "ApiVersion": "2010-04-01"}  # fmt: skip
        self.sequence = 0

    def post(
        self,
        path: str,
        params: dict[str, str],
        *,
        idempotency_token: str | None = None,
        signature: str | None = None,
    ) -> Answer:
        headers = {"HTTP_X_TWILIO_SIGNATURE": signature if signature is not None else sign(path, params)}
        # Twilio sends a fresh token with every request and the same one with its retries.
        headers["HTTP_I_TWILIO_IDEMPOTENCY_TOKEN"] = idempotency_token or uuid.uuid4().hex
        response = self.client.post(path, params, **headers)
        return Answer.of(response)

    def voice(self, **kwargs) -> Answer:  # type: ignore[no-untyped-def]
        return self.post("/twilio/voice/", {**self.base, "CallStatus": "in-progress"}, **kwargs)

    def gather(
        self, digits: str | None = None, speech: str | None = None, confidence: str = "0.92", **kwargs
    ) -> Answer:  # type: ignore[no-untyped-def]
        params = {**self.base, "CallStatus": "in-progress"}
        if digits is not None:
            params["Digits"] = digits
        if speech is not None:
            params["SpeechResult"] = speech
            params["Confidence"] = confidence
        return self.post("/twilio/gather/", params, **kwargs)

    def status(self, status: str, sequence: int | None = None, duration: int | None = None) -> Answer:
        params = {**self.base, "CallStatus": status, "CallbackSource": "call-progress-events"}
        if sequence is None:
            sequence = self.sequence
            self.sequence += 1
        params["SequenceNumber"] = str(sequence)
        if duration is not None:
            params["CallDuration"] = str(duration)
        return self.post("/twilio/status/", params)
