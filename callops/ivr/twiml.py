"""TwiML answers, built with the twilio library's ``VoiceResponse``.

A prompt that listens becomes ``<Gather input="dtmf speech">`` around its
``<Say>`` lines, posting to ``/twilio/gather/`` even when the caller said and
keyed nothing (``actionOnEmptyResult``), so silence is an input the machine
counts like any other failed attempt. A prompt that does not listen ends the
call: ``<Hangup/>``, or ``<Dial>`` to the fallback number on a transfer.

https://www.twilio.com/docs/voice/twiml/gather, .../twiml/say, .../twiml/dial
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import reverse
from twilio.twiml.voice_response import Gather, VoiceResponse

from callops.ivr import prompts
from callops.ivr.machine import Effect, Language, Listen, Prompt, TransferCall

# Per kind of answer: how Twilio should listen. Timeouts are seconds of silence
# (https://www.twilio.com/docs/voice/twiml/gather#timeout); "auto" ends speech at a pause.
GATHER_OPTIONS: dict[Listen, dict[str, Any]] = {
    Listen.NUMBER: {"finish_on_key": "#", "timeout": 6, "speech_timeout": "auto"},
    Listen.CHOICE: {"num_digits": 1, "timeout": 6, "speech_timeout": "auto"},
    # A note is free speech: wait for a real pause, allow up to a minute. One key (0) goes back.
    Listen.NOTE: {"num_digits": 1, "timeout": 8, "speech_timeout": 3, "max_speech_time": 60},
    Listen.DATE: {"finish_on_key": "#", "num_digits": 8, "timeout": 8, "speech_timeout": "auto"},
}


def absolute_url(route_name: str) -> str:
    """The public address Twilio must call (and sign) for one of our webhooks."""
    return f"{settings.PUBLIC_BASE_URL}{reverse(route_name)}"


def render(prompt: Prompt, language: Language, effects: tuple[Effect, ...] = ()) -> str:
    response = VoiceResponse()
    if prompt.listen is not None:
        gather = Gather(
            input="dtmf speech",
            action=absolute_url("twilio-gather"),
            method="POST",
            language=prompts.TWILIO_LANGUAGE[language],
            action_on_empty_result=True,
            **GATHER_OPTIONS[prompt.listen],
        )
        _say_lines(gather, prompt, language)
        response.append(gather)
        return response.to_xml()
    _say_lines(response, prompt, language)
    transfer = next((effect for effect in effects if isinstance(effect, TransferCall)), None)
    if transfer is not None:
        response.dial(transfer.number)
    else:
        response.hangup()
    return response.to_xml()


def _say_lines(verb: VoiceResponse | Gather, prompt: Prompt, language: Language) -> None:
    for line in prompt.lines:
        text, spoken_in = prompts.render(line, language)
        verb.say(text, language=prompts.TWILIO_LANGUAGE[spoken_in])


def apology(fallback_number: str) -> str:
    """For when the call's state cannot be reached: sorry, then the operator or goodbye."""
    response = VoiceResponse()
    follow_up = prompts.APOLOGY_TRANSFER if fallback_number else prompts.APOLOGY_CALL_LATER
    for language in (Language.SPANISH, Language.ENGLISH):
        text = f"{prompts.APOLOGY[language]} {follow_up[language]}"
        response.say(text, language=prompts.TWILIO_LANGUAGE[language])
    if fallback_number:
        response.dial(fallback_number)
    else:
        response.hangup()
    return response.to_xml()


def hangup() -> str:
    response = VoiceResponse()
    response.hangup()
    return response.to_xml()


def empty() -> str:
    """An answer with nothing to do (status callbacks)."""
    return VoiceResponse().to_xml()
