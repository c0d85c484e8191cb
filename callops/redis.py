"""The raw redis-py client for the state stores.

The stores use Lua scripts and exact key names, so they talk to Redis directly:
no pickling, no key prefixing, no cache semantics (that is what the Django cache,
django-redis, is for). Clients are shared per URL; redis-py pools connections.
"""

from __future__ import annotations

import threading

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()

# Short timeouts: a request must be able to answer "Redis is down" quickly.
SOCKET_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0


def get_redis(url: str | None = None) -> redis.Redis:
    """The shared client for ``url`` (default: ``settings.REDIS_URL``), returning ``bytes``."""
    url = url or settings.REDIS_URL
    if not url:
        raise ImproperlyConfigured(
            "REDIS_URL is not set: run through `make run` / `make test`, which start a "
            "private Redis, or point REDIS_URL at one (redis://127.0.0.1:6379/0)."
        )
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                client = redis.Redis.from_url(
                    url,
                    socket_timeout=SOCKET_TIMEOUT,
                    socket_connect_timeout=CONNECT_TIMEOUT,
                    health_check_interval=30,
                )
                _clients[url] = client
    return client
