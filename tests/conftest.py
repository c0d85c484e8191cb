"""Shared fixtures. Redis, the database and Celery workers are real (see README)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from callops.devstack import PrivateRedis, free_port
from callops.redis import get_redis
from tests.support.processes import ManagedProcess, child_environment, start_celery_worker, wait_for


@pytest.fixture(scope="session")
def redis_client():
    """The real Redis at settings.REDIS_URL (`make test` starts a private one when unset)."""
    client = get_redis()
    client.ping()
    return client


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of the test's own, which the test may stop and start again (same port)."""
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def process_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("process-logs")


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker, process_log_dir) -> Iterator[ManagedProcess]:
    """One real Celery worker process for the session, on the tests' Redis and test database.

    Tests that let it touch the database must commit their data (``transaction=True``).
    """
    from callops.celery import app

    with django_db_blocker.unblock():
        env = child_environment(REDIS_URL=settings.REDIS_URL)
    worker = start_celery_worker(env, process_log_dir)
    try:
        wait_for(
            lambda: worker.alive() and app.control.ping(timeout=0.5),
            timeout=60,
            what=f"the Celery worker to answer a ping; log:\n{worker.output()[-3000:]}",
        )
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()
