"""An RFC 2543 peer (no branch) gets its non-2xx final, ACKs it with the response's To
tag, and the node's INVITE server transaction takes that ACK (RFC 3261 §17.2.3): the
final is not retransmitted any more."""

from __future__ import annotations

import select
import socket
import time
import uuid


def _datagrams(sock: socket.socket, seconds: float) -> list[bytes]:
    got, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if ready:
            got.append(sock.recv(65535))
    return got


def _rfc2543(method: str, port: int, call_id: str, to_tag: str | None) -> bytes:
    to = "<sip:busy@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} sip:busy@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port}\r\n"
        "Max-Forwards: 70\r\n"
        f"To: {to}\r\n"
        "From: <sip:legacy@127.0.0.1>;tag=2543\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Contact: <sip:legacy@127.0.0.1:{port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_an_rfc2543_ack_stops_the_final_response_retransmissions(sip_node):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    call_id = f"{uuid.uuid4().hex}@legacy"
    try:
        sock.sendto(_rfc2543("INVITE", port, call_id, None), ("127.0.0.1", sip_node.port))
        finals = [d for d in _datagrams(sock, 1.0) if d.startswith(b"SIP/2.0 486")]
        assert finals, "the busy rule answers 486"
        to_line = next(line for line in finals[0].split(b"\r\n") if line.lower().startswith(b"to:"))
        to_tag = to_line.split(b";tag=")[1].split(b";")[0].decode()
        sock.sendto(_rfc2543("ACK", port, call_id, to_tag), ("127.0.0.1", sip_node.port))
        _datagrams(sock, 0.3)  # a retransmission already on its way when the ACK arrived
        # Timer G (T1 = 50 ms, T2 = 500 ms) would resend the 486 several times in 1.5 s.
        late = [d for d in _datagrams(sock, 1.5) if d.startswith(b"SIP/2.0 486")]
        assert late == []
    finally:
        sock.close()
