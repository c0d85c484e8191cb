"""A gunicorn worker killed (SIGKILL) in the middle of a webhook, at the two points that matter.

The worker reaches Redis and PostgreSQL through fault proxies (tests/support/faultproxy.py),
which hold one request at a chosen point while the test kills the worker:

* ``before_commit``: the transaction's COMMIT is on its way to the database;
* ``after_commit``: the database has committed, the copy to Redis is on its way.

Twilio gets no answer and retries the request with the same idempotency token
(on the worker gunicorn starts in the dead one's place). Afterwards the job, the
audit rows and the Redis copy agree, and the retry's answer is what the database holds.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connection

from callops.devstack import free_port
from callops.models import CallSession, Job, JobStatus
from tests.callops.ivr.support import AUTH_TOKEN, PUBLIC_BASE_URL
from tests.callops.ivr.test_concurrency import HttpCall
from tests.callops.ivr.test_faults import DONE, assert_stores_agree, key_for, redis_upstream, via
from tests.support.faultproxy import FaultProxy
from tests.support.processes import child_environment, database_url_for_children, start_web_server, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


@pytest.fixture
def proxied_web(process_log_dir):
    if connection.vendor != "postgresql":
        pytest.skip("the database proxy sits in front of PostgreSQL")
    db = connection.settings_dict
    with (
        FaultProxy(redis_upstream()) as redis_proxy,
        FaultProxy((db["HOST"], int(db["PORT"] or 5432))) as db_proxy,
    ):
        parts = urlsplit(database_url_for_children())
        database_url = urlunsplit(parts._replace(query="sslmode=disable"))
        env = child_environment(
            REDIS_URL=via(redis_proxy, settings.REDIS_URL),
            DATABASE_URL=via(db_proxy, database_url),
            TWILIO_AUTH_TOKEN=AUTH_TOKEN,
            PUBLIC_BASE_URL=PUBLIC_BASE_URL,
            LOG_LEVEL="INFO",
        )
        port = free_port()
        server = start_web_server(env, process_log_dir, port, workers=1)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: worker_pids(server.pid), timeout=60, what="a gunicorn worker")
            wait_for(
                lambda: HttpCall(url).post("/twilio/fallback/", {"CallSid": "CAwarmup"}).status_code == 200,
                timeout=60,
                what=f"gunicorn to answer; log:\n{server.output()[-2000:]}",
            )
            yield url, server, redis_proxy, db_proxy
        finally:
            server.stop()


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
def test_a_worker_killed_mid_webhook_then_twilio_retries(proxied_web, jobs, point):
    url, server, redis_proxy, db_proxy = proxied_web
    call = HttpCall(url)
    call.voice()
    for digits in ("1001", "501", "1"):
        call.gather(digits=digits)
    key = key_for(call.gather(digits="1"), "en progreso")  # the status menu: state version 5

    hold = db_proxy.hold(b"COMMIT") if point == "before_commit" else redis_proxy.hold(b'"version":6,')
    (worker,) = worker_pids(server.pid)
    killed: list[BaseException] = []

    def kill_when_held() -> None:
        assert hold.wait(20), "the webhook never reached the held point"
        os.kill(worker, signal.SIGKILL)
        time.sleep(0.2)
        hold.cut()  # the dead worker's request goes nowhere

    killer = threading.Thread(target=kill_when_held)
    killer.start()
    try:
        call.gather(digits=key, idempotency_token="request-6")
    except (urllib.error.URLError, HTTPException, ConnectionError) as exc:
        killed.append(exc)  # Twilio gets no answer
    killer.join(30)
    assert killed, "the request was answered although its worker was killed"

    wait_for(
        lambda: [pid for pid in worker_pids(server.pid) if pid != worker], timeout=60, what="a new worker"
    )
    retry = call.gather(digits=key, idempotency_token="request-6")  # Twilio's retry

    assert DONE in retry.text
    assert Job.objects.get(pk=jobs["501"].pk).status == JobStatus.IN_PROGRESS
    rows = assert_stores_agree(call)
    assert len(rows) == 6  # applied once
    assert CallSession.objects.get(call_sid=call.call_sid).ended_at is None
    assert call.gather(digits="1").listening  # and the call goes on
    assert len(assert_stores_agree(call)) == 7
