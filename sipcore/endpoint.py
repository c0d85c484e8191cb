"""The client side of a node: ``await endpoint.request(...)`` returns the final response.

Each request runs in a client transaction of the node's transaction layer
(RFC 3261 §17.1), so it is retransmitted (Timers A/E) and times out (Timers
B/F) as the RFC says; the ACK of a non-2xx is the transaction's, the ACK of a
2xx the endpoint's (§13.2.2.4). :func:`client_endpoint` gives a stand-alone
endpoint on an ephemeral port (``manage.py sipsend``); a node uses its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from sipcore.dialog import uac_bye
from sipcore.dialplan import DialPlan
from sipcore.layer import TransactionLayer
from sipcore.sip import (
    Failure,
    Headers,
    Request,
    Response,
    SipUri,
    Timings,
    Transaction,
    make_cancel,
    new_branch,
    new_tag,
    parse_uri,
)
from sipcore.sip.keys import default_port
from sipcore.transport import TcpTransport, Transport, UdpTransport
from sipcore.uas import UasCore


class RequestFailed(Exception):
    """No final response: the transaction timed out (Timer B/F) or the transport failed."""

    def __init__(self, failure: Failure):
        super().__init__(failure.detail)
        self.failure = failure


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: the Request-URI's host and port (an IP literal), and the transport."""

    protocol: str
    address: tuple[str, int]

    @classmethod
    def of(cls, uri: str, protocol: str | None = None) -> Target:
        parsed = parse_uri(uri, "target URI")
        if not isinstance(parsed, SipUri):
            raise ValueError(f"{uri!r}: only sip: and sips: URIs can be sent to")
        transport = (protocol or parsed.transport or "udp").upper()
        if transport not in ("UDP", "TCP"):
            raise ValueError(f"{uri!r}: transport {transport} is not served (UDP or TCP)")
        host = parsed.host.strip("[]")
        return cls(transport, (host, parsed.port or default_port(transport)))


class Endpoint:
    def __init__(self, layer: TransactionLayer):
        self.layer = layer

    def _transport(self, protocol: str, host: str) -> Transport:
        family_v6 = ":" in host
        for transport in self.layer.transports:
            if transport.protocol == protocol and (":" in transport.local[0]) == family_v6:
                return transport
        raise ValueError(f"this endpoint has no {protocol} transport for {host}")

    def build(
        self,
        method: str,
        uri: str,
        transport: Transport,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """A request out of any dialog (RFC 3261 §8.1.1)."""
        host, port = transport.local
        shown = f"[{host}]" if ":" in host else host
        fields = Headers()
        fields.add("Via", f"SIP/2.0/{transport.protocol} {shown}:{port};branch={new_branch()};rport")
        fields.add("Max-Forwards", "70")
        fields.add("From", f"<sip:callops@{shown}:{port}>;tag={new_tag()}")
        fields.add("To", f"<{uri}>")
        fields.add("Call-ID", f"{secrets.token_hex(12)}@{shown}")
        fields.add("CSeq", f"1 {method}")
        if method == "INVITE":
            fields.add("Contact", f"<sip:callops@{shown}:{port}>")
        for name, value in headers:
            fields.add(name, value)
        if content_type is not None:
            fields.add("Content-Type", content_type)
        fields.add("Content-Length", str(len(body)))
        return Request(method, uri, fields, body)

    async def request(
        self,
        method: str,
        uri: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
        protocol: str | None = None,
    ) -> Response:
        """Send ``method`` to ``uri`` and return the final response; raises :class:`RequestFailed`."""
        target = Target.of(uri, protocol)
        transport = self._transport(target.protocol, target.address[0])
        request = self.build(method, uri, transport, headers=headers, body=body, content_type=content_type)
        return await self.send(request, transport, target.address)

    async def send(self, request: Request, transport: Transport, destination: tuple[str, int]) -> Response:
        """Run ``request`` in a client transaction; the final response.

        For an INVITE: each 2xx is ACKed (§13.2.2.4); a 2xx from another fork
        than the first final response's is ACKed and its dialog ended with BYE
        (§13.2.2.4), once per fork; when the Proceeding guard (Timer C) fires,
        the INVITE is cancelled (§9.1, §16.8) and its final response, normally
        487, is what this returns.
        """
        loop = self.layer.loop
        final: asyncio.Future[Response] = loop.create_future()
        invite = request.method == "INVITE"
        first_final_tag: list[str | None] = []  # the To tag of the first final, once there is one
        ended_forks: set[str | None] = set()

        def on_response(tx: Transaction, response: Response) -> None:
            if response.status_code < 200:
                return
            if not final.done():
                final.set_result(response)
            if not first_final_tag:
                first_final_tag.append(response.to_tag)
            if invite and response.status_code // 100 == 2:
                self._ack_2xx(request, response, transport, destination)
                tag = response.to_tag
                if tag != first_final_tag[0] and tag not in ended_forks:
                    ended_forks.add(tag)
                    bye = uac_bye(request, response, transport.protocol, transport.local)
                    self.layer.create_client_transaction(bye, transport, destination, self.layer.clock())

        def on_error(tx: Transaction, failure: Failure) -> None:
            if invite and not tx.terminated:
                # The Proceeding guard fired: the transaction stays to take (and ACK) the final
                # response the CANCEL brings, for at most 64*T1 more (§9.1).
                cancel = make_cancel(request)
                self.layer.create_client_transaction(cancel, transport, destination, self.layer.clock())
                return
            if not final.done():
                final.set_exception(RequestFailed(failure))

        tx = self.layer.create_client_transaction(request, transport, destination, self.layer.clock())
        tx.on_response(on_response)
        tx.on_error(on_error)
        return await final

    def _ack_2xx(
        self, invite: Request, response: Response, transport: Transport, destination: tuple[str, int]
    ) -> None:
        """§13.2.2.4: the ACK of a 2xx is a new transaction of the dialog, sent by the TU."""
        cseq = invite.cseq
        assert cseq is not None
        host, port = transport.local
        shown = f"[{host}]" if ":" in host else host
        fields = Headers()
        fields.add("Via", f"SIP/2.0/{transport.protocol} {shown}:{port};branch={new_branch()};rport")
        fields.add("Max-Forwards", "70")
        fields.add("From", invite.headers.get("From") or "")
        fields.add("To", response.headers.get("To") or "")
        fields.add("Call-ID", invite.call_id or "")
        fields.add("CSeq", f"{cseq.number} ACK")
        fields.add("Content-Length", "0")
        contact = response.contact
        uri = contact[0].uri if contact else invite.uri
        self.layer.send_stateless(Request("ACK", uri, fields), transport, destination)


@contextlib.asynccontextmanager
async def client_endpoint(
    host: str = "127.0.0.1", *, timings: Timings | None = None, tcp: bool = True
) -> AsyncIterator[Endpoint]:
    """A stand-alone endpoint on ephemeral UDP (and TCP) ports of ``host``."""
    layer = TransactionLayer(timings=timings, loop=asyncio.get_running_loop())
    layer.attach(UasCore(layer, DialPlan()))
    transports: list[Transport] = [await UdpTransport.listen(layer, host, 0)]
    if tcp:
        transports.append(await TcpTransport.listen(layer, host, 0))
    try:
        yield Endpoint(layer)
    finally:
        # The step that gave the final response queued its ACK (§17.1.1.3) for the layer's next
        # flush, one loop turn after the caller woke: let it go out before the sockets close.
        await asyncio.sleep(0)
        for transport in transports:
            transport.close()
        layer.close()
