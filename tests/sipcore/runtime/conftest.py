"""A real `manage.py sipserver` per module, answering from the demo dial plan in the test database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings

from tests.sipcore.runtime.support import SipNode, start_node
from tests.support.processes import child_environment

# Short RFC 3261 timers so that Timer G/H/J runs take seconds: T1 50 ms, T2 500 ms.
FAST_TIMERS = ("--t1", "0.05", "--t2", "0.5", "--t4", "0.5", "--timer-c", "3", "--grace", "1")


@pytest.fixture(scope="module")
def node_env(django_db_setup, django_db_blocker) -> dict[str, str]:
    from sipcore.models import DialPlanRule

    with django_db_blocker.unblock():
        env = child_environment(REDIS_URL=settings.REDIS_URL)  # refuses a database that is not the tests'
        DialPlanRule.seed()
    return env


@pytest.fixture(scope="module")
def sip_node(node_env, tmp_path_factory) -> Iterator[SipNode]:
    node = start_node(node_env, tmp_path_factory.mktemp("node"), *FAST_TIMERS, "--dialplan-refresh", "3600")
    yield node
    node.process.stop()
