"""Metrics at /metrics and JSON logs that carry the request or task id."""

from __future__ import annotations

import json
import logging
import urllib.request

import pytest
from django.conf import settings

from callops.config import parse_networks
from callops.logging import ContextFilter, JsonFormatter, request_id_var, task_id_var
from tests.support.processes import child_environment, http_get, start_web_server, wait_for


@pytest.mark.smoke
@pytest.mark.django_db
def test_metrics_in_prometheus_text_format(client):
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "# TYPE django_http_requests_total_by_view_transport_method_total counter" in text
    assert 'view="healthz"' in text


@pytest.mark.django_db
def test_request_id_is_echoed_or_made(client):
    given = client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")
    assert given["X-Request-ID"] == "abc-123"
    made = client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nwith newline")
    assert made["X-Request-ID"] != "bad id\nwith newline"
    assert len(made["X-Request-ID"]) == 32


def _format(message: str) -> dict:
    record = logging.LogRecord("callops.test", logging.INFO, __file__, 1, message, None, None)
    ContextFilter().filter(record)
    formatter = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
    )
    return json.loads(formatter.format(record))


def test_json_log_line_carries_request_and_task_ids():
    token = request_id_var.set("req-1")
    try:
        line = _format("hello")
    finally:
        request_id_var.reset(token)
    assert (line["message"], line["level"], line["logger"]) == ("hello", "INFO", "callops.test")
    assert line["request_id"] == "req-1"
    assert "task_id" not in line

    token = task_id_var.set("task-9")
    try:
        assert _format("in a task")["task_id"] == "task-9"
    finally:
        task_id_var.reset(token)


@pytest.mark.django_db
def test_openapi_schema_is_served_to_staff(admin_client, client):
    response = admin_client.get("/api/schema/")
    assert response.status_code == 200
    assert b"openapi:" in response.content
    assert client.get("/api/schema/").status_code in (401, 403)  # not to strangers


# --- /metrics is for scrapers: a token or an allowed network ------------------------------------

METRICS_TOKEN = "m" * 40
REMOTE = "203.0.113.7"  # TEST-NET-3: somewhere on the internet


def scraped(response) -> bool:
    return response.status_code == 200 and b"django_http_requests_total" in response.content


@pytest.mark.django_db
def test_metrics_are_refused_to_a_remote_client(client):
    response = client.get("/metrics", REMOTE_ADDR=REMOTE)
    assert response.status_code == 403
    assert b"django_http" not in response.content


@pytest.mark.django_db
def test_metrics_token_admits_a_remote_scraper_and_nothing_else_does(client, settings):
    settings.METRICS_TOKEN = METRICS_TOKEN
    assert scraped(client.get("/metrics", REMOTE_ADDR=REMOTE, HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}"))
    for wrong in (f"Bearer {METRICS_TOKEN[:-1]}", f"Basic {METRICS_TOKEN}", METRICS_TOKEN, "Bearer "):
        assert client.get("/metrics", REMOTE_ADDR=REMOTE, HTTP_AUTHORIZATION=wrong).status_code == 403


@pytest.mark.django_db
def test_an_unset_metrics_token_admits_nobody_by_token(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", REMOTE_ADDR=REMOTE, HTTP_AUTHORIZATION="Bearer ").status_code == 403


@pytest.mark.django_db
def test_metrics_allowed_networks_replace_loopback(client, settings):
    settings.METRICS_ALLOWED_NETWORKS = parse_networks("METRICS_ALLOWED_NETWORKS", ["10.0.0.0/8", "fd00::/8"])
    assert scraped(client.get("/metrics", REMOTE_ADDR="10.1.2.3"))
    assert scraped(client.get("/metrics", REMOTE_ADDR="fd00::5"))
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="11.1.2.3").status_code == 403


@pytest.mark.django_db
def test_behind_a_trusted_proxy_the_address_it_saw_decides(client, settings):
    """A proxy on loopback must not make every client look local; and clients can't claim an address."""
    settings.TRUSTED_PROXIES = parse_networks("TRUSTED_PROXIES", ["127.0.0.1", "10.9.0.0/16"])
    settings.METRICS_ALLOWED_NETWORKS = parse_networks("METRICS_ALLOWED_NETWORKS", ["192.0.2.0/24"])

    def through_proxy(forwarded_for: str | None):
        extra = {"HTTP_X_FORWARDED_FOR": forwarded_for} if forwarded_for is not None else {}
        return client.get("/metrics", REMOTE_ADDR="127.0.0.1", **extra)

    assert scraped(through_proxy("192.0.2.10"))
    assert scraped(through_proxy("192.0.2.10, 10.9.3.4"))  # two proxies of ours
    assert through_proxy(REMOTE).status_code == 403
    assert through_proxy(f"192.0.2.10, {REMOTE}").status_code == 403  # the client wrote the left one
    assert through_proxy(None).status_code == 403  # a proxy that doesn't say: unknown
    assert through_proxy("not-an-address").status_code == 403
    # A peer that isn't a trusted proxy is who it is, whatever it writes.
    assert client.get("/metrics", REMOTE_ADDR=REMOTE, HTTP_X_FORWARDED_FOR="192.0.2.10").status_code == 403


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_metrics_through_gunicorn_for_loopback_and_token(process_log_dir, free_tcp_port):
    """The real server: a scraper on loopback is served; the token works too."""
    env = child_environment(REDIS_URL=settings.REDIS_URL, METRICS_ALLOWED_NETWORKS="192.0.2.0/24",
                            METRICS_TOKEN=METRICS_TOKEN)  # fmt: skip
    web = start_web_server(env, process_log_dir, free_tcp_port)
    url = f"http://127.0.0.1:{free_tcp_port}/metrics"
    try:
        wait_for(lambda: http_get(url)[0] == 403, timeout=60, what="refused without the token")
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            assert response.status == 200
            assert b"django_http_requests_total" in response.read()
    finally:
        web.stop()
