"""gunicorn entry for bench/webhooks.py: callops as deployed, plus one bare Django view.

The bare view runs through the same server, workers and middleware as the
webhooks but does no work of its own, so the ratio of their CPU per request is
what the webhooks themselves cost. It answers a form POST with a short text,
like a webhook, and is only reachable in this benchmark's server.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "callops.settings")

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

BARE_PATH = "bench/bare/"


@csrf_exempt
@require_POST
def bare(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"<Response><Say>ok {len(request.POST)}</Say></Response>", content_type="text/xml")


application = get_wsgi_application()  # sets Django up; the URLconf is read at the first request
urlpatterns = [path(BARE_PATH, bare), path("", include(settings.ROOT_URLCONF))]
settings.ROOT_URLCONF = __name__
