"""Test helpers for the transaction machines: messages, a scripted clock and a fake
network pair. No doubles of anything the core uses: the core takes data and time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sipcore.sip import (
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Request,
    Response,
    Transaction,
    TransportInfo,
    make_response,
    parse_message,
)

UDP = TransportInfo("UDP", False, ("192.0.2.1", 5060), ("192.0.2.2", 5062))
TCP = TransportInfo("TCP", True, ("192.0.2.1", 5060), ("192.0.2.2", 40000))


def request(method: str = "INVITE", *, branch: str = "z9hG4bK74bf9", transport: str = "UDP", cseq: int = 1,
            extra: str = "") -> Request:  # fmt: skip
    return parse_message(
        (
            f"{method} sip:bob@biloxi.example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} pc33.atlanta.example.com;branch={branch}\r\n"
            "Max-Forwards: 70\r\n"
            "To: Bob <sip:bob@biloxi.example.com>\r\n"
            "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
            "Call-ID: 3848276298220188511@atlanta.example.com\r\n"
            f"CSeq: {cseq} {method}\r\n"
            "Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
            f"{extra}"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )  # type: ignore[return-value]


def response(req: Request, status: int, *, to_tag: str = "314159") -> Response:
    return make_response(req, status, to_tag=to_tag)


def ack_for(invite: Request, final: Response) -> Request:
    """The ACK a UAC sends for a non-2xx final: same branch (RFC 3261 §17.1.1.3)."""
    from sipcore.sip import make_ack

    return make_ack(invite, final)


def first_line(message: Request | Response) -> str:
    return bytes(message).split(b"\r\n", 1)[0].decode()


@dataclass
class Recorder:
    """Every callback a transaction made, in order, as comparable tuples."""

    events: list[tuple] = field(default_factory=list)

    def attach(self, tx: Transaction) -> Recorder:
        tx.on_state_changed(lambda t, old, new: self.events.append(("state", old.value, new.value)))
        tx.on_error(lambda t, failure: self.events.append(("error", failure.reason, failure.detail)))
        tx.on_response(lambda t, r: self.events.append(("response", r.status_code)))
        tx.on_ack(lambda t, a: self.events.append(("ack", a.method, a.cseq.number)))
        return self


def run_timers(tx: Transaction, until: float) -> list[tuple[float, str]]:
    """A scripted clock: step from deadline to deadline up to ``until``, calling
    handle_timer exactly at each; return (time, first line) of what was sent."""
    sent = []
    while (deadline := tx.next_deadline()) is not None and deadline <= until:
        tx.handle_timer(deadline)
        sent.extend((deadline, first_line(out.message)) for out in tx.drain_outgoing())
    return sent


def new_transaction(kind: str, transport: TransportInfo = UDP, now: float = 0.0) -> Transaction:
    method = "INVITE" if kind.startswith("invite") else "OPTIONS"
    req = request(method, transport=transport.protocol)
    cls: type[Transaction] = {
        "invite_client": InviteClientTransaction,
        "non_invite_client": NonInviteClientTransaction,
        "invite_server": InviteServerTransaction,
        "non_invite_server": NonInviteServerTransaction,
    }[kind]
    return cls(req, transport, now=now)


@dataclass
class Network:
    """A fake network pair: bytes one side sends are parsed and given to the other,
    unless ``drop`` says the datagram is lost."""

    client: Transaction
    server: Transaction
    drop: Callable[[Request | Response], bool] = lambda message: False
    dropped: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, kind: str, now: float = 0.0, transport: TransportInfo = UDP, **options) -> Network:
        """A client transaction of ``kind`` ('invite' or 'non_invite'), and the server
        transaction its first request creates on the other side."""
        client = new_transaction(f"{kind}_client", transport, now)
        (initial,) = client.drain_outgoing()
        arrived = parse_message(bytes(initial.message))
        server_cls = InviteServerTransaction if kind == "invite" else NonInviteServerTransaction
        server = server_cls(arrived, transport, now=now)  # type: ignore[arg-type]
        return cls(client, server, **options)

    def flush(self, now: float) -> None:
        while True:
            moved = False
            for sender, receiver in ((self.client, self.server), (self.server, self.client)):
                for out in sender.drain_outgoing():
                    moved = True
                    line = first_line(out.message)
                    if self.drop(out.message):
                        self.dropped.append(line)
                    elif not receiver.terminated:
                        self.delivered.append(line)
                        receiver.receive(parse_message(bytes(out.message)), now)
            if not moved:
                return
