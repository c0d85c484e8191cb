"""Typed configuration read from the environment.

Settings come from environment variables (and an optional ``.env`` file) through
django-environ; this module turns them into one frozen :class:`Config`, refusing
values that would only fail later and far from their cause. ``settings.py``
reads nothing from the environment itself.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
# Runtime files (SQLite database, private Redis, beat schedule); relocatable so
# a test can run a whole stack beside a developer's own `make run`.
VAR_DIR = Path(os.environ.get("CALLOPS_VAR_DIR") or BASE_DIR / "var")

# Only good for a developer's machine: settings refuse it unless DEBUG is on.
DEVELOPMENT_SECRET_KEY = "callops-development-only-secret-key-do-not-deploy"  # noqa: S105

SUPPORTED_DATABASE_SCHEMES = {
    "postgres": "PostgreSQL",
    "postgresql": "PostgreSQL",
    "pgsql": "PostgreSQL",
    "sqlite": "SQLite",
}
REDIS_SCHEMES = ("redis", "rediss", "unix")
SIP_TRANSPORTS = ("udp", "tcp")


class ConfigError(ImproperlyConfigured):
    """A setting from the environment is missing or malformed; the message says which and how."""


@dataclass(frozen=True)
class ListenAddress:
    """One SIP listening socket, written ``udp:127.0.0.1:5060`` or ``tcp:[::1]:5060``."""

    protocol: str  # "udp" or "tcp"
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}:{host}:{self.port}"


@dataclass(frozen=True)
class Config:
    debug: bool
    secret_key: str
    allowed_hosts: tuple[str, ...]
    database: dict[str, Any]
    redis_url: str | None
    public_base_url: str
    twilio_auth_token: str
    sip_listen: tuple[ListenAddress, ...]
    node_id: str
    log_level: str
    log_json: bool
    fallback_phone_number: str = ""
    ivr_async_commit: bool = True


def parse_database_url(url: str) -> dict[str, Any]:
    """A Django DATABASES entry for ``url``; ImproperlyConfigured naming the problem."""
    example = "postgres://user:password@127.0.0.1:5432/callops or sqlite:///var/callops.sqlite3"
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SUPPORTED_DATABASE_SCHEMES:
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ConfigError(
            f"DATABASE_URL {url!r} has {shown}; expected one of "
            f"{', '.join(sorted(SUPPORTED_DATABASE_SCHEMES))}, e.g. {example}"
        )
    try:
        db = environ.Env.db_url_config(url)
    except ValueError as exc:
        raise ConfigError(f"DATABASE_URL {url!r} is not a valid URL: {exc}") from exc
    if not db.get("NAME"):
        raise ConfigError(f"DATABASE_URL {url!r} names no database; expected e.g. {example}")
    if scheme != "sqlite" and not db.get("HOST"):
        raise ConfigError(f"DATABASE_URL {url!r} names no host; expected e.g. {example}")
    if scheme == "sqlite":
        # A file shared by the web process, Celery workers and the tests'
        # worker subprocesses; ":memory:" would give each its own database.
        name = Path(db["NAME"])
        db["TEST"] = {"NAME": str(name.with_name(f"test_{name.name}"))}
    else:
        db["CONN_MAX_AGE"] = 60
        db["CONN_HEALTH_CHECKS"] = True
    return db


def parse_redis_url(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES or not (parts.hostname or parts.path):
        raise ConfigError(f"REDIS_URL {url!r} is not a Redis URL; expected e.g. redis://127.0.0.1:6379/0")
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL {url!r}: {exc}") from exc
    return url


def parse_listen_address(text: str) -> ListenAddress:
    """``udp:0.0.0.0:5060``, ``tcp:[::1]:5061`` -> ListenAddress."""
    example = "udp:0.0.0.0:5060 or tcp:[::1]:5060"
    protocol, sep, rest = text.strip().partition(":")
    if not sep or protocol.lower() not in SIP_TRANSPORTS:
        raise ConfigError(f"SIP_LISTEN entry {text!r} must start with udp: or tcp:, e.g. {example}")
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        port_text = port_text.removeprefix(":") if bracket else ""
    else:
        host, _, port_text = rest.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"SIP_LISTEN entry {text!r} needs a host and a port 1-65535, e.g. {example}")
    return ListenAddress(protocol.lower(), host, int(port_text))


def load_config(environment: Mapping[str, str] | None = None, *, read_dotenv: bool = True) -> Config:
    """Read the configuration from ``environment`` (default: the process environment)."""
    env = environ.Env()
    if environment is not None:
        env.ENVIRON = dict(environment)
    elif read_dotenv and (BASE_DIR / ".env").is_file():
        environ.Env.read_env(BASE_DIR / ".env")

    debug = env.bool("DEBUG", default=False)
    log_json = env.bool("LOG_JSON", default=True)
    secret_key = env.str("SECRET_KEY", default=DEVELOPMENT_SECRET_KEY)
    if not debug and secret_key == DEVELOPMENT_SECRET_KEY:
        raise ConfigError(
            "Refusing to start with DEBUG off and the development SECRET_KEY: "
            "set SECRET_KEY to a long random value (or DEBUG=1 on a developer machine)."
        )
    if not debug and len(secret_key) < 32:
        raise ConfigError("SECRET_KEY must be at least 32 characters when DEBUG is off.")

    public_base_url = env.str("PUBLIC_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")
    parts = urlsplit(public_base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"PUBLIC_BASE_URL {public_base_url!r} must be an absolute http(s) URL, "
            "the address Twilio uses to reach this app (signatures are checked against it)."
        )

    sip_listen = tuple(
        parse_listen_address(item)
        for item in env.list("SIP_LISTEN", default=["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"])
        if item.strip()
    )
    log_level = env.str("LOG_LEVEL", default="INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"LOG_LEVEL {log_level!r} is not a logging level name")

    return Config(
        debug=debug,
        secret_key=secret_key,
        allowed_hosts=tuple(env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])),
        database=parse_database_url(
            env.str("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'callops.sqlite3'}")
        ),
        redis_url=parse_redis_url(env.str("REDIS_URL", default="") or None),
        public_base_url=public_base_url,
        twilio_auth_token=env.str("TWILIO_AUTH_TOKEN", default=""),
        sip_listen=sip_listen,
        node_id=env.str("NODE_ID", default=socket.gethostname()),
        log_level=log_level,
        log_json=log_json,
        fallback_phone_number=env.str("IVR_FALLBACK_NUMBER", default=""),
        ivr_async_commit=env.bool("IVR_ASYNC_COMMIT", default=True),
    )
