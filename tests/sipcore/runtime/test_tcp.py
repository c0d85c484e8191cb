"""TCP framing errors against a real node: answered where a response can be built, else the connection goes."""

from __future__ import annotations

import socket

import pytest

from sipcore.sip import parse_message


def request(
    *, start: str = "OPTIONS sip:ping@127.0.0.1 SIP/2.0", cseq: str = "1 OPTIONS", call_id: str
) -> bytes:
    return (
        f"{start}\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK{call_id}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:ping@127.0.0.1>\r\n"
        f"Call-ID: {call_id}@test\r\nCSeq: {cseq}\r\nContent-Length: 4\r\n\r\nbody"
    ).encode()


def read_response(sock: socket.socket, buffered: bytearray) -> bytes:
    """One response off the stream (these carry no body: up to the blank line)."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65535)
        assert chunk, f"connection closed; had {bytes(buffered)!r}"
        buffered += chunk
    end = buffered.index(b"\r\n\r\n") + 4
    head = bytes(buffered[:end])
    del buffered[:end]
    return head


@pytest.mark.django_db
def test_a_framed_unparseable_request_is_answered_on_its_connection_which_stays_open(sip_node):
    """RFC 3261 §8.2.6 on a stream: the ParseError's status, then the next message is served."""
    with socket.create_connection(("127.0.0.1", sip_node.port), timeout=5) as sock:
        buffered = bytearray()
        bad_cseq = request(cseq="x OPTIONS", call_id="badcseq")
        bad_version = request(start="OPTIONS sip:ping@127.0.0.1 SIP/7.0", call_id="badversion")
        good = request(call_id="good")
        sock.sendall(bad_cseq + bad_version + good)  # one segment: the bad ones are skipped, not fatal
        answers = [read_response(sock, buffered) for _ in range(3)]
    # The answers copy the request's headers as written (the bad CSeq too), so read them as bytes.
    assert [(a.split(b"\r\n", 1)[0], call_id(a)) for a in answers] == [
        (b"SIP/2.0 400 Bad Request", b"badcseq@test"),
        (b"SIP/2.0 505 Version Not Supported", b"badversion@test"),
        (b"SIP/2.0 200 OK", b"good@test"),
    ]
    assert b"\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKbadcseq\r\n" in answers[0]
    assert b";tag=" in header(answers[0], b"To")  # §8.2.6.2


def header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(name.lower() + b":"):
            return line.partition(b":")[2].strip()
    raise AssertionError(f"no {name!r} in {head!r}")


def call_id(head: bytes) -> bytes:
    return header(head, b"Call-ID")


@pytest.mark.django_db
def test_an_unparseable_request_that_cannot_be_answered_is_dropped_and_the_connection_kept(sip_node):
    """Framed, but without the headers a response copies (no Call-ID): nothing to answer with."""
    with socket.create_connection(("127.0.0.1", sip_node.port), timeout=5) as sock:
        buffered = bytearray()
        unanswerable = request(cseq="x OPTIONS", call_id="gone").replace(b"Call-ID: gone@test\r\n", b"")
        sock.sendall(unanswerable + request(call_id="after"))
        answer = parse_message(read_response(sock, buffered))
    assert (answer.status_code, answer.call_id) == (200, "after@test")


@pytest.mark.django_db
def test_unframeable_garbage_closes_the_connection_without_an_answer(sip_node):
    """Content-Length unreadable: where the next message starts is unknown (RFC 4475 §3.1.2.3)."""
    garbage = request(call_id="lost").replace(b"Content-Length: 4", b"Content-Length: four")
    with socket.create_connection(("127.0.0.1", sip_node.port), timeout=5) as sock:
        sock.sendall(garbage + request(call_id="never"))
        received = b""
        while chunk := sock.recv(65535):
            received += chunk
    assert received == b""
