"""/healthz against the real database, Redis and Celery worker processes."""

from __future__ import annotations

import pytest

from callops.health import WORKER_HEARTBEAT_KEY
from sipcore.nodes import beat
from tests.support.processes import (
    child_environment,
    http_get,
    start_celery_worker,
    start_web_server,
    wait_for,
)


@pytest.mark.smoke
@pytest.mark.django_db
def test_healthz_ok_with_a_live_worker(client, celery_worker, redis_client):
    beat(redis_client, "test-node-healthz", {"udp": "127.0.0.1:5060"}, ttl=30)
    try:
        response = client.get("/healthz")
    finally:
        redis_client.delete("sip:node:test-node-healthz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert body["failing"] == []
    checks = body["checks"]
    assert checks["database"]["status"] == "ok"
    assert checks["redis"]["status"] == "ok"
    assert checks["celery"]["status"] == "ok"
    assert checks["celery"]["answered"]
    assert "test-node-healthz" in checks["sip"]["nodes"]
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
def test_healthz_rejects_other_methods(client):
    assert client.post("/healthz").status_code == 405


@pytest.mark.smoke
@pytest.mark.django_db(transaction=True)
def test_real_worker_process_executes_a_task_over_the_redis_broker(celery_worker, redis_client):
    from callops.tasks import record_worker_heartbeat

    redis_client.delete(WORKER_HEARTBEAT_KEY)
    result = record_worker_heartbeat.delay().get(timeout=30)
    # The solo pool runs tasks in the worker's main process: the pid proves who ran it.
    assert result["pid"] == celery_worker.pid
    assert float(redis_client.get(WORKER_HEARTBEAT_KEY)) == pytest.approx(result["at"])


@pytest.mark.django_db(transaction=True)
def test_healthz_turns_503_when_redis_stops_and_200_when_it_is_back(
    private_redis, process_log_dir, free_tcp_port
):
    """A whole stack on a Redis of its own: gunicorn + a Celery worker; the Redis is stopped for real."""
    env = child_environment(REDIS_URL=private_redis.url)
    worker = start_celery_worker(env, process_log_dir)
    web = start_web_server(env, process_log_dir, free_tcp_port)
    url = f"http://127.0.0.1:{free_tcp_port}/healthz"
    try:

        def healthy():
            status, body = http_get(url)
            return status == 200 and body

        body = wait_for(healthy, timeout=60, what=f"healthz 200; web log:\n{web.output()[-2000:]}")
        assert body["checks"]["celery"]["status"] == "ok"

        private_redis.stop()
        status, body = http_get(url)
        assert status == 503
        assert body["failing"] == ["redis", "celery"]
        assert body["checks"]["database"]["status"] == "ok"
        assert "Connection" in body["checks"]["redis"]["error"]
        assert body["checks"]["celery"]["error"] == "broker (Redis) unreachable"

        private_redis.start()
        body = wait_for(
            healthy, timeout=90, what=f"healthz back to 200; worker log:\n{worker.output()[-3000:]}"
        )
        assert body["failing"] == []
    finally:
        web.stop()
        worker.stop()
