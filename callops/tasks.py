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


@shared_task
def sweep_expired_call_states() -> dict[str, object]:
    """Queue the closing of every open call session whose Redis state has expired.

    Safe to run twice: it only reads; each queued task re-checks before it acts.
    """
    from django.utils import timezone

    from callops.ivr.service import stale_session_ids

    session_ids = stale_session_ids(timezone.now())
    for session_id in session_ids:
        expire_call_session.delay(session_id)
    return {"queued": session_ids}


@shared_task
def expire_call_session(session_id: int) -> str | None:
    """Close one call session as abandoned (or as its last stage says) if its state expired.

    Re-reads Redis, then the session and its audit trail under the session's lock;
    does nothing if the call ended meanwhile, its state is back, or its latest
    audit row is younger than its stage's TTL (the state was lost, not expired, or
    a webhook started the call again). A duplicate or late run is harmless.
    """
    from callops.ivr.service import expire_session

    return expire_session(session_id)
