"""Operational endpoints: /healthz, /metrics, and / for people who type the bare address."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_prometheus.exports import ExportToDjangoView

from callops.health import current_health


def bearer_token_is(request: HttpRequest, expected: str) -> bool:
    """``Authorization: Bearer <expected>``, compared in constant time; never true for an unset token."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if not expected or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def client_address(request: HttpRequest) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address of whoever sent the request; None when it can't be known.

    Directly connected: the socket's peer. Through a proxy in TRUSTED_PROXIES: the
    address that proxy appended to X-Forwarded-For (the rightmost entry that is not
    itself a trusted proxy); entries further left are the client's own claims and
    mean nothing. A request through a trusted proxy without that header: unknown.
    """
    try:
        peer = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return None
    trusted = settings.TRUSTED_PROXIES
    if not _within(peer, trusted):
        return peer
    hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",")[-16:]]
    for hop in reversed(hops):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return None
        if not _within(address, trusted):
            return address
    return None


def _within(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    return any(address in network for network in networks)


def _sees_health_details(request: HttpRequest) -> bool:
    if bearer_token_is(request, settings.HEALTH_TOKEN):
        return True
    # Only look at the session when there is one: an anonymous probe costs no query.
    if settings.SESSION_COOKIE_NAME not in request.COOKIES:
        return False
    return bool(request.user.is_active and request.user.is_staff)


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when every required part answers; 503 naming those that don't.

    Anonymous callers learn ok/failing per part; staff (session) and holders of
    HEALTH_TOKEN also get versions, workers, nodes, latencies and error texts.
    """
    answer = current_health()
    body = answer.full_view() if _sees_health_details(request) else answer.public_view()
    response = JsonResponse(body, status=200 if answer.ok else 503)
    if answer.report is None:
        response["Retry-After"] = "1"  # the first report is being made
    # A 503 here is a verdict, not a failed request: callops.health logs when the
    # verdict changes, instead of Django logging an error for every probe.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text, for scrapers only: `Bearer $METRICS_TOKEN` or an allowed network.

    Refused with 403 and no body worth reading; Prometheus reports the status.
    """
    address = client_address(request)
    allowed = address is not None and _within(address, settings.METRICS_ALLOWED_NETWORKS)
    if not (allowed or bearer_token_is(request, settings.METRICS_TOKEN)):
        return HttpResponseForbidden("metrics are for configured scrapers\n", content_type="text/plain")
    return ExportToDjangoView(request)


@require_GET
def home(request: HttpRequest) -> HttpResponseRedirect:
    """The bare address leads to the console."""
    return HttpResponseRedirect(reverse("admin:index"))
