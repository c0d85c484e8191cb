"""A fault-injecting TCP proxy for tests: it sits between the app and a real server.

The app is pointed at the proxy instead of the server (a Redis URL, a DATABASE_URL);
bytes pass through unchanged until a test commands a fault:

* ``delay_replies(seconds)``: every reply chunk from the server waits first.
* ``delay_reply_to(marker, seconds)``: only the reply to the request holding ``marker``
  waits (the server has acted on the request; its answer comes late).
* ``drop_reply_to(marker)``: the request holding ``marker`` reaches the server (so the
  server acts on it), but its reply is thrown away and both sides are closed. By
  default the proxy then refuses every new connection until ``heal()``: the
  client's library cannot quietly reconnect and retry, which is what a server
  that ran the write and then became unreachable looks like.
* ``cut_before(marker)``: the request holding ``marker`` never reaches the server;
  the connection is closed (then refusing, as above).
* ``hold(marker)``: the request holding ``marker`` waits in the proxy until the
  test says ``release()`` (forward it) or ``cut()`` (close the connection without
  forwarding). Meanwhile the test can kill the client process at a known point.
* ``refuse()``: existing connections are closed, new ones accepted and reset at once.

Markers are matched in what the client sends (a Redis command name such as
``b"EVALSHA"``, PostgreSQL's ``b"COMMIT"``), also across two reads. The proxy
parses no protocol, so a database client must not negotiate TLS through it
(``sslmode=disable``). Plain threads: one accepting, two per connection.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

_CHUNK = 65536
_KEEP = 64  # bytes of the previous read kept to find a marker split across reads


@dataclass
class Hold:
    """A request held by the proxy: ``reached`` is set once it is held."""

    marker: bytes
    reached: threading.Event = field(default_factory=threading.Event)
    _decision: threading.Event = field(default_factory=threading.Event)
    _forward: bool = False

    def release(self) -> None:
        self._forward = True
        self._decision.set()

    def cut(self) -> None:
        self._forward = False
        self._decision.set()

    def wait(self, timeout: float = 10.0) -> bool:
        return self.reached.wait(timeout)


@dataclass
class _Rule:
    kind: str  # "drop_reply", "delay_reply", "cut_before", "hold"
    marker: bytes
    then_refuse: bool
    delay: float = 0.0
    happened: threading.Event = field(default_factory=threading.Event)
    hold: Hold | None = None


def _reset(sock: socket.socket) -> None:
    """Close at once (SO_LINGER 0: a reset, nothing lingers). ``shutdown`` first: a
    ``close`` alone would wait for the other thread blocked in ``recv`` on this socket,
    and the peer would hear nothing."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class _Connection:
    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket):
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.drop_replies: _Rule | None = None
        self.delay_next = 0.0
        self.closed = threading.Event()

    def start(self) -> None:
        for target in (self._requests, self._replies):
            threading.Thread(target=target, daemon=True).start()

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            _reset(self.client)
            _reset(self.upstream)
            self.proxy._forget(self)

    def _requests(self) -> None:
        tail = b""
        try:
            while not self.closed.is_set():
                data = self.client.recv(_CHUNK)
                if not data:
                    break
                window = tail + data
                rule = self.proxy._match(window, fresh_from=len(tail))
                tail = window[-_KEEP:]
                if rule is not None:
                    if rule.kind == "cut_before":
                        self.proxy._fired(rule)
                        break
                    if rule.kind == "hold":
                        assert rule.hold is not None
                        rule.hold.reached.set()
                        rule.hold._decision.wait()
                        self.proxy._fired(rule)
                        if not rule.hold._forward or self.closed.is_set():
                            break
                    if rule.kind == "drop_reply":
                        self.drop_replies = rule
                    if rule.kind == "delay_reply":
                        self.delay_next = rule.delay
                        self.proxy._fired(rule)
                self.upstream.sendall(data)
        except OSError:
            pass
        self.close()

    def _replies(self) -> None:
        try:
            while not self.closed.is_set():
                data = self.upstream.recv(_CHUNK)
                if not data:
                    break
                if self.drop_replies is not None:
                    # The server has acted on the request; its answer never arrives.
                    self.proxy._fired(self.drop_replies)
                    break
                delay, self.delay_next = self.proxy.reply_delay + self.delay_next, 0.0
                if delay:
                    self.closed.wait(delay)
                self.client.sendall(data)
        except OSError:
            pass
        self.close()


class FaultProxy:
    """``with FaultProxy(("127.0.0.1", 6379)) as proxy:`` then connect to ``proxy.port``."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1"):
        self.upstream = upstream
        self._listener = socket.create_server((host, 0))
        self.host, self.port = self._listener.getsockname()[:2]
        self.reply_delay = 0.0
        self.refusing = False
        self._rules: list[_Rule] = []
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.connections_made = 0

    # --- life ------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.close_all()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            connection = _Connection(self, client, upstream)
            with self._lock:
                self._connections.add(connection)
                self.connections_made += 1
            connection.start()

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def close_all(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()

    # --- faults ----------------------------------------------------------------------------

    def _match(self, window: bytes, fresh_from: int) -> _Rule | None:
        """The first rule whose marker ends in the bytes just read (``window[fresh_from:]``)."""
        with self._lock:
            for rule in self._rules:
                if window.find(rule.marker, max(0, fresh_from - len(rule.marker) + 1)) >= 0:
                    self._rules.remove(rule)
                    return rule
        return None

    def _fired(self, rule: _Rule) -> None:
        if rule.then_refuse:
            self.refusing = True
        rule.happened.set()

    def _add(self, rule: _Rule) -> _Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def heal(self) -> None:
        """No more faults: pending rules dropped, no delay, connections accepted again."""
        with self._lock:
            rules, self._rules = self._rules, []
        for rule in rules:
            if rule.hold is not None:
                rule.hold.release()
        self.reply_delay = 0.0
        self.refusing = False

    def refuse(self) -> None:
        """The server is "down": open connections closed, new ones reset."""
        self.refusing = True
        self.close_all()

    def delay_replies(self, seconds: float) -> None:
        self.reply_delay = seconds

    def drop_reply_to(self, marker: bytes, *, then_refuse: bool = True) -> threading.Event:
        """The next request holding ``marker`` is forwarded; its reply is lost. Set when done."""
        return self._add(_Rule("drop_reply", marker, then_refuse)).happened

    def delay_reply_to(self, marker: bytes, seconds: float) -> threading.Event:
        """The reply to the next request holding ``marker`` waits ``seconds``."""
        return self._add(_Rule("delay_reply", marker, then_refuse=False, delay=seconds)).happened

    def cut_before(self, marker: bytes, *, then_refuse: bool = True) -> threading.Event:
        """The next request holding ``marker`` is not forwarded; its connection closes."""
        return self._add(_Rule("cut_before", marker, then_refuse)).happened

    def hold(self, marker: bytes) -> Hold:
        """The next request holding ``marker`` waits until ``release()`` or ``cut()``."""
        hold = Hold(marker)
        self._add(_Rule("hold", marker, then_refuse=False, hold=hold))
        return hold


@contextlib.contextmanager
def fault_proxy(upstream: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(upstream) as proxy:
        yield proxy
