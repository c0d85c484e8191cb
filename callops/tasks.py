from __future__ import annotations

import os
import socket
import time

from celery import shared_task

from callops.health import WORKER_HEARTBEAT_KEY
from callops.redis import get_redis


@shared_task
def record_worker_heartbeat() -> dict[str, object]:
    """Stamp Redis with the time a worker ran a scheduled task (shown by /healthz).

    Idempotent: a duplicate run only writes a newer time.
    """
    now = time.time()
    get_redis().set(WORKER_HEARTBEAT_KEY, repr(now), ex=3600)
    return {"at": now, "hostname": socket.gethostname(), "pid": os.getpid()}
