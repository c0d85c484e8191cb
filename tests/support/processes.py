"""Real processes for integration tests: Celery workers and web servers.

They run this project's code in child processes against the same database and
Redis the tests use, and are stopped (with their children) when a test ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from django.db import connection

BASE_DIR = Path(__file__).resolve().parents[2]


def database_url_for_children() -> str:
    """A DATABASE_URL naming the database the tests are using right now (the test database).

    pytest-django creates the test database only when a collected test asks for one
    (a ``django_db`` marker or the ``db`` fixture); a run of process tests alone would
    otherwise hand the children the developer's own database.
    """
    db = connection.settings_dict
    if not Path(str(db["NAME"])).name.startswith("test_"):
        raise RuntimeError(
            f"refusing to start processes on database {db['NAME']!r}, which is not a test database: "
            "this run collected no test that uses the database, so none was created; "
            "add a database test to the selection (e.g. tests/callops/test_jobs.py)"
        )
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}{db['HOST']}{port}/{db['NAME']}"


def child_environment(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url_for_children()
    env.setdefault("DEBUG", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


class ManagedProcess:
    """A child in its own process group, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            args, env=env, cwd=BASE_DIR, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        self._log.close()


def start_celery_worker(env: dict[str, str], log_dir: Path, *, name: str | None = None) -> ManagedProcess:
    hostname = name or f"test-{uuid.uuid4().hex[:8]}@%h"
    args = [sys.executable, "-m", "celery", "-A", "callops", "worker", "--pool", "solo",
            "--loglevel", "INFO", "--hostname", hostname, "--without-gossip", "--without-mingle"]  # fmt: skip
    return ManagedProcess("celery-worker", args, env, log_dir)


def start_web_server(env: dict[str, str], log_dir: Path, port: int, *, workers: int = 1) -> ManagedProcess:
    args = [sys.executable, "-m", "gunicorn", "callops.wsgi:application", "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--access-logfile", "-", "--graceful-timeout", "5"]  # fmt: skip
    return ManagedProcess("web", args, env, log_dir)


def http_get(url: str, timeout: float = 10.0) -> tuple[int, dict[str, Any] | str]:
    import json

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback test URL
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        status = exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def wait_for(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; return that, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
