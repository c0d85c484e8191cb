"""Structured logs: one JSON object a line, carrying the request or task id.

The id of the HTTP request or Celery task being handled lives in a context
variable, so any logger anywhere in that request or task picks it up.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

request_id_var: ContextVar[str] = ContextVar("request_id", default="")
task_id_var: ContextVar[str] = ContextVar("task_id", default="")


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``task_id`` to every record (empty when none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.task_id = task_id_var.get()
        return True


class JsonFormatter(_BaseJsonFormatter):
    def add_fields(self, log_record, record, message_dict):  # type: ignore[no-untyped-def]
        super().add_fields(log_record, record, message_dict)
        for name in ("request_id", "task_id"):
            if not log_record.get(name):
                log_record.pop(name, None)
