"""Two gathers for one call at the same moment: real gunicorn worker processes, the real Redis
and database, requests released together from threads (no GIL in common with the server)."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from types import SimpleNamespace

import orjson
import pytest
from django.conf import settings

from callops.devstack import free_port
from callops.ivr.store import state_key
from callops.models import CallStateSnapshot, JobNote
from callops.redis import get_redis
from tests.callops.ivr.support import AUTH_TOKEN, PUBLIC_BASE_URL, Answer, TwilioCall, sign
from tests.support.processes import child_environment, start_web_server, wait_for

# The server's processes have their own database connections: data must be committed.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def web(django_db_setup, django_db_blocker, process_log_dir):
    port = free_port()
    with django_db_blocker.unblock():
        env = child_environment(
            REDIS_URL=settings.REDIS_URL,
            TWILIO_AUTH_TOKEN=AUTH_TOKEN,
            PUBLIC_BASE_URL=PUBLIC_BASE_URL,
            LOG_LEVEL="INFO",
        )
    server = start_web_server(env, process_log_dir, port, workers=3)
    url = f"http://127.0.0.1:{port}"

    def answers():
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=2)  # noqa: S310 - loopback
        except urllib.error.HTTPError:
            return True  # 503 without a Celery worker: the web app itself answers
        return True

    wait_for(answers, timeout=60, what=f"gunicorn to answer; log:\n{server.output()[-2000:]}")
    yield SimpleNamespace(url=url, server=server)
    server.stop()


class HttpCall(TwilioCall):
    """A TwilioCall over real HTTP to the gunicorn server."""

    def __init__(self, base_url: str, call_sid: str | None = None):
        super().__init__(client=None, call_sid=call_sid)  # type: ignore[arg-type]
        self.base_url = base_url

    def post(self, path, params, *, idempotency_token=None, signature=None):  # type: ignore[no-untyped-def]
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.base_url}{path}",
            data=urllib.parse.urlencode(params).encode(),
            headers={
                "X-Twilio-Signature": signature or sign(path, params),
                "I-Twilio-Idempotency-Token": idempotency_token
                or f"{time.time_ns()}-{threading.get_ident()}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=20) as response:  # noqa: S310 - loopback
                return Answer.of(SimpleNamespace(status_code=response.status, content=response.read()))
        except urllib.error.HTTPError as exc:
            return Answer.of(SimpleNamespace(status_code=exc.code, content=exc.read()))


def at_once(*requests):
    """Run the callables on threads released together; their results, in order."""
    results: list = [None] * len(requests)
    errors: list = []
    start = threading.Barrier(len(requests))

    def run(index, request):
        try:
            start.wait()
            results[index] = request()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, r)) for i, r in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    return results


def state_of(call) -> dict:
    return orjson.loads(get_redis().get(state_key(call.call_sid)))


def test_two_concurrent_gathers_lose_no_update(web, jobs):
    calls = [HttpCall(web.url) for _ in range(12)]
    try:
        for call in calls:
            assert call.voice().status_code == 200
            answers = at_once(call.gather, call.gather)  # two silences at once
            assert [answer.status_code for answer in answers] == [200, 200]
            assert all("No escuché su respuesta." in answer.text for answer in answers)
            stored = state_of(call)
            # Both failed attempts counted: neither write overwrote the other.
            assert (stored["attempts"], stored["version"]) == (2, 3)
            rows = CallStateSnapshot.objects.filter(call_sid=call.call_sid).order_by("sequence")
            assert [(row.sequence, row.state["attempts"]) for row in rows] == [(1, 0), (2, 1), (3, 2)]
        # The requests really met: some compare-and-sets lost and ran again on the newer state.
        assert "changed meanwhile" in web.server.output()
    finally:
        get_redis().delete(*[state_key(call.call_sid) for call in calls])


def test_a_retry_racing_its_original_is_applied_once(web, jobs):
    call = HttpCall(web.url)
    try:
        call.voice()
        for digits in ("1001", "501", "1", "2"):
            call.gather(digits=digits)
        first, second = at_once(
            lambda: call.gather(speech="Cambiar la válvula.", idempotency_token="same-request"),
            lambda: call.gather(speech="Cambiar la válvula.", idempotency_token="same-request"),
        )
        assert (first.status_code, second.status_code) == (200, 200)
        assert first.body == second.body
        assert "Guardé su nota" in first.text
        assert JobNote.objects.filter(job=jobs["501"], call_sid=call.call_sid).count() == 1
        assert CallStateSnapshot.objects.filter(call_sid=call.call_sid).count() == 6
    finally:
        get_redis().delete(state_key(call.call_sid))
