"""Typed configuration read from the environment.

Settings come from environment variables (and an optional ``.env`` file) through
django-environ; this module turns them into one frozen :class:`Config`, refusing
values that would only fail later and far from their cause. ``settings.py``
reads nothing from the environment itself.
"""

from __future__ import annotations

import ipaddress
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
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Who may read /metrics without a token: the machine itself (a Prometheus or an
# agent running beside the app), nothing else unless configured.
DEFAULT_METRICS_NETWORKS = ("127.0.0.0/8", "::1/128")
# HSTS for a year once HTTPS_ONLY is on (what `check --deploy` asks for); lower
# it with HSTS_SECONDS while trying HTTPS out on a new domain.
DEFAULT_HSTS_SECONDS = 365 * 24 * 3600
CONNECT_TIMEOUT_SECONDS = 5  # PostgreSQL connect_timeout unless DATABASE_URL sets one


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
    web_host: str = "127.0.0.1"
    web_port: int = 8000
    # Production transport security (see settings.py): redirect to HTTPS, secure
    # cookies and HSTS. On unless DEBUG is.
    https_only: bool = False
    hsts_seconds: int = 0
    # Reverse proxies allowed to say who the client is (X-Forwarded-For) and
    # whether it came over HTTPS (X-Forwarded-Proto). Empty: none is trusted.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    health_token: str = ""
    metrics_token: str = ""
    metrics_networks: tuple[IPNetwork, ...] = ()


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
        # A database host that doesn't answer fails a connect in seconds, not
        # after the OS gives up (minutes), so requests and /healthz stay bounded.
        db.setdefault("OPTIONS", {}).setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
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


def parse_networks(name: str, items: list[str]) -> tuple[IPNetwork, ...]:
    """``10.0.0.0/8,::1`` -> networks (a bare address is a network of one)."""
    networks = []
    for item in items:
        if not item.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(f"{name} entry {item!r} is not an IP address or network: {exc}") from exc
    return tuple(networks)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


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

    web_host = env.str("WEB_HOST", default="127.0.0.1").strip().strip("[]")
    web_port_text = env.str("WEB_PORT", default="8000").strip()
    if not (web_port_text.isascii() and web_port_text.isdigit()) or not 0 < int(web_port_text) < 65536:
        raise ConfigError(f"WEB_PORT {web_port_text!r} must be a TCP port number, 1-65535")
    web_port = int(web_port_text)
    # Unset, the public address is where `make run` serves (a wildcard bind is
    # reached through loopback), so webhook signatures match on a developer's machine.
    reachable_host = "127.0.0.1" if web_host in ("", "0.0.0.0", "::") else web_host  # noqa: S104
    public_base_url = env.str(
        "PUBLIC_BASE_URL", default=f"http://{_url_host(reachable_host)}:{web_port}"
    ).rstrip("/")
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
    allowed_hosts = env.list("ALLOWED_HOSTS", default=[])
    if not allowed_hosts:
        # Loopback, plus the names this app is configured to be reached by.
        allowed_hosts = ["127.0.0.1", "localhost", "[::1]"]
        for host in (reachable_host, parts.hostname):
            if host and _url_host(host) not in allowed_hosts and host not in allowed_hosts:
                allowed_hosts.append(_url_host(host))

    https_only = env.bool("HTTPS_ONLY", default=not debug)
    hsts_text = env.str("HSTS_SECONDS", default=str(DEFAULT_HSTS_SECONDS if https_only else 0)).strip()
    if not (hsts_text.isascii() and hsts_text.isdigit()):
        raise ConfigError(f"HSTS_SECONDS {hsts_text!r} must be a whole number of seconds (0 turns HSTS off)")
    hsts_seconds = int(hsts_text)

    log_level = env.str("LOG_LEVEL", default="INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"LOG_LEVEL {log_level!r} is not a logging level name")

    return Config(
        debug=debug,
        secret_key=secret_key,
        allowed_hosts=tuple(allowed_hosts),
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
        web_host=web_host,
        web_port=web_port,
        https_only=https_only,
        hsts_seconds=hsts_seconds,
        trusted_proxies=parse_networks("TRUSTED_PROXIES", env.list("TRUSTED_PROXIES", default=[])),
        health_token=env.str("HEALTH_TOKEN", default=""),
        metrics_token=env.str("METRICS_TOKEN", default=""),
        metrics_networks=parse_networks(
            "METRICS_ALLOWED_NETWORKS",
            env.list("METRICS_ALLOWED_NETWORKS", default=list(DEFAULT_METRICS_NETWORKS)),
        ),
    )
