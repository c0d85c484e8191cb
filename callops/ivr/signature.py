"""X-Twilio-Signature: only Twilio, holding our auth token, can call the webhooks.

Twilio signs the URL it requested plus the POST parameters with HMAC-SHA1 keyed
by the account's auth token (https://www.twilio.com/docs/usage/webhooks/webhooks-security).
Behind a proxy the URL Django sees is not the one Twilio called, so the URL is
rebuilt from ``PUBLIC_BASE_URL`` + the request's path and query string. Checked
in every environment, DEBUG included; with no auth token every request is refused.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from twilio.request_validator import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)

from callops.ivr import metrics

logger = logging.getLogger(__name__)

View = Callable[[HttpRequest], HttpResponse]


def signed_url(request: HttpRequest) -> str:
    """The URL Twilio requested, as it signed it."""
    return f"{settings.PUBLIC_BASE_URL}{request.get_full_path()}"


def has_valid_signature(request: HttpRequest) -> bool:
    token = settings.TWILIO_AUTH_TOKEN
    if not token:
        logger.error(
            "refusing Twilio webhook %s: TWILIO_AUTH_TOKEN is empty, so no signature can be checked; "
            "set it to the account's auth token",
            request.path,
        )
        return False
    signature = request.headers.get(SIGNATURE_HEADER, "")
    if not signature:
        logger.warning("refusing webhook %s: no %s header", request.path, SIGNATURE_HEADER)
        return False
    algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
    params = request.POST if request.method == "POST" else {}
    valid = RequestValidator(token).validate(signed_url(request), params, signature, algorithm=algorithm)
    if not valid:
        logger.warning(
            "refusing webhook %s: %s does not match %s and its parameters (check PUBLIC_BASE_URL)",
            request.path,
            SIGNATURE_HEADER,
            signed_url(request),
        )
    return bool(valid)


def twilio_signed(webhook: str) -> Callable[[View], View]:
    """403 unless the request carries a valid X-Twilio-Signature."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def checked(request: HttpRequest) -> HttpResponse:
            if not has_valid_signature(request):
                metrics.WEBHOOKS.labels(webhook, "forbidden").inc()
                return HttpResponseForbidden(
                    "invalid or missing X-Twilio-Signature", content_type="text/plain"
                )
            return view(request)

        return checked

    return decorate
