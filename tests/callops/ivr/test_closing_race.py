"""A call ending while one of its webhooks is under way: real gunicorn workers, requests at once.

The state of the call is gone from Redis (its key deleted, as when it expires or is
lost); a gather and the final ``completed`` status callback then arrive together.
Whichever wins, the call must end closed: session ended, a final audit row after
every other, and no state left in Redis that would make it look live.
"""

from __future__ import annotations

import pytest

from callops.ivr.store import state_key
from callops.models import CallSession, CallStateSnapshot
from callops.redis import get_redis
from tests.callops.ivr.test_concurrency import HttpCall, at_once, web  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db(transaction=True)

TRIALS = 60


def test_a_call_closed_while_a_gather_runs_leaves_no_live_state(web, jobs):  # noqa: F811
    redis_client = get_redis()
    problems: dict[str, list[int]] = {"live state in Redis": [], "rows after the close": [], "gaps": []}
    for trial in range(TRIALS):
        call = HttpCall(web.url)
        assert call.voice().status_code == 200
        assert call.gather(digits="1001").status_code == 200
        redis_client.delete(state_key(call.call_sid))
        gathered, status = at_once(
            lambda call=call: call.gather(digits="501"),
            lambda call=call: call.status("completed", sequence=1, duration=5),
        )
        assert (gathered.status_code, status.status_code) == (200, 200)
        assert CallSession.objects.get(call_sid=call.call_sid).ended_at is not None
        if redis_client.get(state_key(call.call_sid)) is not None:
            problems["live state in Redis"].append(trial)
            redis_client.delete(state_key(call.call_sid))
        rows = list(CallStateSnapshot.objects.filter(call_sid=call.call_sid).order_by("sequence"))
        if [row.sequence for row in rows] != list(range(1, len(rows) + 1)):
            problems["gaps"].append(trial)
        if rows[-1].event["kind"] != "call_ended":
            problems["rows after the close"].append(trial)
    assert problems == {key: [] for key in problems}, f"out of {TRIALS} trials"
