"""The Celery application. Configuration lives in Django settings (CELERY_*)."""

from __future__ import annotations

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "callops.settings")

app = Celery("callops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect
@signals.beat_init.connect
def _require_redis(**_: object) -> None:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    if not settings.REDIS_URL:
        # Without this Celery would quietly fall back to amqp://localhost.
        raise ImproperlyConfigured("REDIS_URL is not set; Celery needs it as broker and result backend.")


@signals.worker_ready.connect
def _start_worker_heartbeat(sender: object = None, **_: object) -> None:
    from callops.health import start_worker_heartbeat

    start_worker_heartbeat(getattr(sender, "hostname", None))


@signals.worker_shutdown.connect
def _stop_worker_heartbeat(**_: object) -> None:
    from callops.health import stop_worker_heartbeat

    stop_worker_heartbeat()


@signals.task_prerun.connect
def _bind_task_id(task_id: str | None = None, **_: object) -> None:
    from callops.logging import task_id_var

    task_id_var.set(task_id or "")


@signals.task_postrun.connect
def _unbind_task_id(**_: object) -> None:
    from callops.logging import task_id_var

    task_id_var.set("")
