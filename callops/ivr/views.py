"""Twilio's voice webhooks. Thin: check the signature, call one service function, send TwiML."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from callops.ivr import service
from callops.ivr.service import BadWebhook, Webhook, WebhookAnswer, WebhookRequest
from callops.ivr.signature import twilio_signed

TWIML_CONTENT_TYPE = "text/xml; charset=utf-8"


def _webhook_request(request: HttpRequest, webhook: Webhook) -> WebhookRequest:
    token = request.headers.get(service.IDEMPOTENCY_HEADER, "")
    return WebhookRequest(
        webhook=webhook,
        # NUL is no text any database keeps (PostgreSQL refuses it); Twilio never sends one.
        params={name: value.replace("\x00", "") for name, value in request.POST.dict().items()},
        idempotency_token=token if len(token) <= service.MAX_TOKEN_LENGTH else "",
        received_at=timezone.now(),
    )


def _answer(
    request: HttpRequest, webhook: Webhook, handle: Callable[[WebhookRequest], WebhookAnswer]
) -> HttpResponse:
    try:
        answer = handle(_webhook_request(request, webhook))
    except BadWebhook as exc:
        return HttpResponseBadRequest(str(exc), content_type="text/plain")
    return HttpResponse(answer.twiml, content_type=TWIML_CONTENT_TYPE)


def _webhook_view(
    webhook: Webhook, handle: Callable[[WebhookRequest], WebhookAnswer]
) -> Callable[..., HttpResponse]:
    @csrf_exempt
    @require_POST
    @twilio_signed(webhook)
    def view(request: HttpRequest) -> HttpResponse:
        return _answer(request, webhook, handle)

    view.__name__ = view.__qualname__ = webhook.value
    view.__doc__ = handle.__doc__
    return view


voice = _webhook_view(Webhook.VOICE, service.answer_call)
gather = _webhook_view(Webhook.GATHER, service.handle_gather)
status = _webhook_view(Webhook.STATUS, service.handle_status_callback)
fallback = _webhook_view(Webhook.FALLBACK, service.handle_fallback)
