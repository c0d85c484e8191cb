"""SIP transports on asyncio: UDP, and TCP framed by ``StreamParser`` (RFC 3261 §18).

* UDP: one datagram is one message (§18.3).
* TCP: a ``StreamParser`` per connection; connections are kept by the peer's
  address so responses go back over the connection the request came on
  (§18.2.2) and client requests reuse one (§18.1.1). Limits: connections per
  listener, header and body sizes (the parser's), bytes waiting to be written
  to a slow reader, and an idle timeout swept by one timer per listener.

Both hand every message to the transaction layer and never raise into the
loop: a peer cannot crash the node or block it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sipcore.sip import StreamError, StreamParser, TransportInfo

if TYPE_CHECKING:
    from sipcore.layer import TransactionLayer

log = logging.getLogger("sipcore.node")

Address = tuple[str, int]
ErrorCallback = Callable[[Exception], None] | None


class Transport(Protocol):
    protocol: str
    local: Address

    def info_for(self, remote: Address) -> TransportInfo: ...

    def connected(self, remote: Address) -> bool:
        """Whether a connection to ``remote`` is open (always, for a datagram transport)."""

    def send(self, data: bytes, destination: Address, on_error: ErrorCallback = None) -> None: ...

    def close(self) -> None: ...


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind_socket(kind: socket.SocketKind, host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(_family(host), kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_DGRAM:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):  # capped by net.core.rmem_max: best effort
                    sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
        if _family(host) == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


_LITERALS: dict[str, socket.AddressFamily | None] = {}


def check_literal(host: str, family: socket.AddressFamily) -> None:
    """Refuse (OSError) a destination that is not an IP address of the socket's family.

    Resolving a name (RFC 3263) would block the loop or need a resolver this
    node does not have; a name in a Via or maddr is a send failure for now.
    """
    known = _LITERALS.get(host, 0)
    if known == 0:
        try:
            known = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        except ValueError:
            known = None
        if len(_LITERALS) > 10_000:
            _LITERALS.clear()
        _LITERALS[host] = known
    if known is None:
        raise OSError(f"{host!r} is not an IP address (no DNS lookups here)")
    if known != family:
        raise OSError(f"{host} is not reachable from an {family.name} socket")


class UdpTransport(asyncio.DatagramProtocol):
    protocol = "UDP"

    def __init__(self, layer: TransactionLayer, host: str, port: int):
        self.layer = layer
        self.local: Address = (host, port)
        self._family = _family(host)
        self._transport: asyncio.DatagramTransport | None = None
        self._infos: dict[Address, TransportInfo] = {}

    @classmethod
    async def listen(
        cls, layer: TransactionLayer, host: str, port: int, *, reuse_port: bool = False
    ) -> UdpTransport:
        sock = _bind_socket(socket.SOCK_DGRAM, host, port, reuse_port)
        bound = sock.getsockname()
        protocol = cls(layer, host, bound[1])
        await layer.loop.create_datagram_endpoint(lambda: protocol, sock=sock)
        layer.add_transport(protocol)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        self.layer.datagram_received(data, self, (str(addr[0]), int(addr[1])))  # IPv6 gives 4 items

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for something sent earlier; which transaction is unknown here.
        if self.layer.metrics is not None:
            self.layer.metrics.dropped("icmp_error")

    def info_for(self, remote: Address) -> TransportInfo:
        info = self._infos.get(remote)
        if info is None:
            if len(self._infos) > 10_000:
                self._infos.clear()
            info = self._infos[remote] = TransportInfo("UDP", False, self.local, remote)
        return info

    def connected(self, remote: Address) -> bool:
        return True

    def send(self, data: bytes, destination: Address, on_error: ErrorCallback = None) -> None:
        if self._transport is None or self._transport.is_closing():
            raise OSError("the UDP socket is closed")
        check_literal(destination[0], self._family)
        self._transport.sendto(data, destination)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class TcpConnection(asyncio.Protocol):
    def __init__(self, listener: TcpTransport, remote: Address | None = None):
        self.listener = listener
        self.remote: Address | None = remote
        self.transport: asyncio.Transport | None = None
        self.parser = StreamParser(
            max_header_size=listener.max_header_size, max_body_size=listener.max_body_size
        )
        self.last_active = time.monotonic()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = (str(peer[0]), int(peer[1]))
        if not self.listener._register(self) and self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        layer = self.listener.layer
        assert self.remote is not None
        while True:  # a loop, not recursion: a segment may hold thousands of skippable bad messages
            try:
                messages = self.parser.feed(data)
            except StreamError as exc:
                for message in exc.messages:
                    layer.message_received(message, self.listener, self.remote)
                if not exc.fatal:
                    # Framed but unparseable: answered statelessly on this connection where
                    # a response can be built, as on UDP (RFC 3261 §8.2.6), else dropped.
                    layer.refuse_unparseable(exc.head, exc, self.listener, self.remote)
                    data = b""  # the bad message was skipped: go on with what is buffered
                    continue
                if layer.metrics is not None:
                    layer.metrics.parse_error(exc.status_code)
                layer.drop("stream_error", self.remote, None, error=str(exc)[:200], fatal=True)
                # RFC 4475 §3.1.2.3: framing is lost, so is the connection.
                if self.transport is not None:
                    self.transport.abort()
                return
            for message in messages:
                layer.message_received(message, self.listener, self.remote)
            return

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener._unregister(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise OSError("the TCP connection is closed")
        if transport.get_write_buffer_size() + len(data) > self.listener.max_write_buffer:
            transport.abort()  # a peer that does not read cannot hold our memory
            raise OSError("the peer is not reading: connection closed")
        self.last_active = time.monotonic()
        transport.write(data)


class TcpTransport:
    """A TCP listener and every connection of it, inbound and outbound."""

    protocol = "TCP"

    def __init__(
        self,
        layer: TransactionLayer,
        host: str,
        port: int,
        *,
        max_connections: int = 1024,
        idle_timeout: float = 120.0,
        max_header_size: int = 16 * 1024,
        max_body_size: int = 64 * 1024,
        max_write_buffer: int = 1024 * 1024,
    ):
        self.layer = layer
        self.local: Address = (host, port)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self.max_write_buffer = max_write_buffer
        self.connections: dict[Address, TcpConnection] = {}
        self._pending: dict[Address, asyncio.Task[TcpConnection]] = {}
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    @classmethod
    async def listen(
        cls, layer: TransactionLayer, host: str, port: int, *, reuse_port: bool = False, **limits: float
    ) -> TcpTransport:
        sock = _bind_socket(socket.SOCK_STREAM, host, port, reuse_port)
        transport = cls(layer, host, sock.getsockname()[1], **limits)  # type: ignore[arg-type]
        transport._server = await layer.loop.create_server(
            lambda: TcpConnection(transport), sock=sock, backlog=1024
        )
        transport._schedule_sweep()
        layer.add_transport(transport)
        return transport

    def info_for(self, remote: Address) -> TransportInfo:
        return TransportInfo("TCP", True, self.local, remote)

    def _register(self, connection: TcpConnection) -> bool:
        assert connection.remote is not None
        if len(self.connections) >= self.max_connections:
            self.layer.drop("too_many_connections", connection.remote)
            return False
        self.connections[connection.remote] = connection
        return True

    def _unregister(self, connection: TcpConnection) -> None:
        if connection.remote is not None and self.connections.get(connection.remote) is connection:
            del self.connections[connection.remote]

    def connected(self, remote: Address) -> bool:
        return remote in self.connections

    def send(self, data: bytes, destination: Address, on_error: ErrorCallback = None) -> None:
        connection = self.connections.get(destination)
        if connection is not None:
            connection.write(data)
            return
        # §18.2.2: the connection is gone: open one to the destination and send there.
        task = self._pending.get(destination)
        if task is None:
            task = self._pending[destination] = asyncio.ensure_future(self._connect(destination))
        task.add_done_callback(lambda done: self._send_when_connected(done, data, on_error))

    async def _connect(self, destination: Address) -> TcpConnection:
        loop = self.layer.loop
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: TcpConnection(self), destination[0], destination[1]), 10.0
            )
            return connection
        finally:
            self._pending.pop(destination, None)

    def _send_when_connected(
        self, done: asyncio.Future[TcpConnection], data: bytes, on_error: ErrorCallback
    ) -> None:
        try:
            done.result().write(data)
        except (OSError, TimeoutError, asyncio.CancelledError) as exc:
            if on_error is not None:
                on_error(OSError(str(exc) or type(exc).__name__))
            else:
                self.layer.drop("send_failed", ("?", 0), None, error=str(exc))

    def _schedule_sweep(self) -> None:
        self._sweeper = self.layer.loop.call_later(min(5.0, max(0.25, self.idle_timeout / 4)), self._sweep)

    def _sweep(self) -> None:
        cutoff = time.monotonic() - self.idle_timeout
        for connection in list(self.connections.values()):
            if connection.last_active < cutoff and connection.transport is not None:
                connection.transport.close()
        self._schedule_sweep()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections.values()):
            if connection.transport is not None:
                connection.transport.close()
