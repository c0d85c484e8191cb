from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from callops.health import run_health_checks


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when every required part answers; 503 naming those that don't."""
    report = run_health_checks()
    return JsonResponse(report.as_dict(), status=200 if report.ok else 503)
