"""Metrics at /metrics and JSON logs that carry the request or task id."""

from __future__ import annotations

import json
import logging

import pytest

from callops.logging import ContextFilter, JsonFormatter, request_id_var, task_id_var


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
