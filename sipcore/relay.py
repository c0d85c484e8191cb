"""Relaying a message to the node that owns its transaction.

Nodes sharing one address (SO_REUSEPORT here, a floating address in a real
pair) each get a peer's datagrams by the kernel's choice, not by who owns the
transaction: after a migration, or after a node adopted what a dead one held,
a retransmission or an ACK can reach a node that cannot act on it (a live
owner holds it). That node forwards the datagram to the owner's private relay
socket, wrapped in an envelope that says which listener it arrived on and
from whom, authenticated with a key derived from the deployment's secret::

    SIPRELAY1 <mac, 32 hex> <local host> <local port> <remote host> <remote port>\\n<datagram>

The owner handles it as if it had arrived on its own listener from that peer
(its answers leave from the shared address, so the peer sees nothing change),
and never relays a relayed message again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sipcore.layer import TransactionLayer

log = logging.getLogger("sipcore.node")

MAGIC = b"SIPRELAY1 "
MAX_HEADER = 256
Address = tuple[str, int]


def relay_key(secret: bytes) -> bytes:
    return hashlib.blake2b(secret, digest_size=32, person=b"callops-relay").digest()


def envelope(key: bytes, data: bytes, local: Address, remote: Address) -> bytes:
    header = f"{local[0]} {local[1]} {remote[0]} {remote[1]}".encode()
    mac = hmac.new(key, header + b"\n" + data, hashlib.blake2s).hexdigest()[:32].encode()
    return MAGIC + mac + b" " + header + b"\n" + data


def open_envelope(key: bytes, packet: bytes) -> tuple[bytes, Address, Address] | None:
    """(datagram, local, remote), or None for anything not a valid envelope of ours."""
    if not packet.startswith(MAGIC):
        return None
    end = packet.find(b"\n", 0, len(MAGIC) + MAX_HEADER)
    if end < 0:
        return None
    mac, _, header = packet[len(MAGIC) : end].partition(b" ")
    data = packet[end + 1 :]
    expected = hmac.new(key, header + b"\n" + data, hashlib.blake2s).hexdigest()[:32].encode()
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        local_host, local_port, remote_host, remote_port = header.decode("ascii").split(" ")
        return data, (local_host, int(local_port)), (remote_host, int(remote_port))
    except (UnicodeDecodeError, ValueError):
        return None


class Relay(asyncio.DatagramProtocol):
    """This node's private relay socket, and the relay addresses of the others."""

    def __init__(self, layer: TransactionLayer, key: bytes):
        self.layer = layer
        self.key = key
        self.address: Address | None = None
        self.peers: dict[str, Address] = {}  # node id -> relay address (from heartbeats)
        self._transport: asyncio.DatagramTransport | None = None
        self.relayed_out = 0
        self.relayed_in = 0
        self.refused = 0

    async def listen(self, host: str) -> Address:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        transport, _ = await self.layer.loop.create_datagram_endpoint(
            lambda: self, local_addr=(host, 0), family=family
        )
        self._transport = transport  # type: ignore[assignment]
        bound = transport.get_extra_info("sockname")
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    def forward(self, owner: str, data: bytes, local: Address, remote: Address) -> bool:
        """Send ``data`` (from ``remote``, arrived on ``local``) to ``owner``; False if
        its relay address is unknown."""
        destination = self.peers.get(owner)
        if destination is None or self._transport is None or destination == self.address:
            return False
        self._transport.sendto(envelope(self.key, data, local, remote), destination)
        self.relayed_out += 1
        return True

    def datagram_received(self, packet: bytes, addr: tuple[str | Any, ...]) -> None:
        opened = open_envelope(self.key, packet)
        if opened is None:
            self.refused += 1
            self.layer.drop("bad_relay", (str(addr[0]), int(addr[1])))
            return
        data, local, remote = opened
        transport = self.layer.transport_at("UDP", local)
        if transport is None:
            self.refused += 1
            self.layer.drop("bad_relay", remote)
            return
        self.relayed_in += 1
        self.layer.datagram_received(data, transport, remote, relayed=True)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
