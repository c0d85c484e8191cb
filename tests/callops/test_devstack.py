"""`make run` as a newcomer meets it: nothing set, one command, Ctrl-C stops it all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from callops.devstack import PrivateRedis
from tests.support.processes import BASE_DIR, http_get, wait_for

pytestmark = [pytest.mark.smoke, pytest.mark.slow]


def processes_with_marker(marker: str) -> list[int]:
    """Pids of live processes whose environment contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                status = (entry / "status").read_text()
                if "\nState:\tZ" not in status:  # a zombie is gone already, only unreaped
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_make_run_serves_healthz_and_ctrl_c_leaves_nothing_behind(tmp_path, free_tcp_port):
    var_dir = tmp_path / "var"
    env = {
        k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "REDIS_URL", "DATABASE_URL"}
    }
    env["CALLOPS_VAR_DIR"] = str(var_dir)  # also marks every process of this stack
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        runner = subprocess.Popen(
            [sys.executable, "-m", "callops.devstack", "run", "--port", str(free_tcp_port)],
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, as a terminal's foreground job
        )
        try:

            def healthy():
                status, body = http_get(f"http://127.0.0.1:{free_tcp_port}/healthz", timeout=5)
                return status == 200 and body

            body = wait_for(healthy, timeout=60, what=f"/healthz 200; log:\n{log_path.read_text()[-3000:]}")
            checks = body["checks"]
            assert [checks[name]["status"] for name in ("database", "redis", "celery")] == ["ok"] * 3
            output = log_path.read_text()
            assert "staff login: username=staff password=" in output
            assert "private redis-server at redis://127.0.0.1:" in output
            assert (var_dir / "callops.sqlite3").exists()
            assert len(processes_with_marker(str(var_dir))) >= 5  # runner, redis, web, worker, beat
            for name in ("sip", "sip-audit"):  # the SIP node and its audit ingester
                assert f"{name} started (pid=" in output, output[-3000:]

            os.killpg(runner.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
            # honcho relays SIGINT to every process group and exits 130 like a shell would.
            assert runner.wait(timeout=30) == 130
        finally:
            if runner.poll() is None:
                os.killpg(runner.pid, signal.SIGKILL)
                runner.wait()

    wait_for(
        lambda: not processes_with_marker(str(var_dir)),
        timeout=15,
        what=f"every process of the stack to exit: {processes_with_marker(str(var_dir))}",
    )
    # The private Redis kept its data under var/ for the next run.
    assert (var_dir / "redis" / "dump.rdb").exists()


def test_private_redis_stops_and_comes_back_on_the_same_port(tmp_path):
    server = PrivateRedis(tmp_path / "r")
    url = server.start()
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        assert client.ping()
        server.stop()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        assert server.start() == url
        assert client.ping()
    finally:
        server.stop()
