"""StreamParser: TCP framing by Content-Length (RFC 3261 §18.3), keep-alives (§7.5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipcore.sip import StreamParser, parse_message
from sipcore.sip.stream import StreamError

DATA = Path(__file__).resolve().parents[1] / "data"


def message(call_id: str, body: bytes = b"", extra: str = "") -> bytes:
    head = (
        "OPTIONS sip:bob@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/TCP client.example.com;branch=z9hG4bK" + call_id + "\r\n"
        "To: <sip:bob@example.com>\r\n"
        "From: <sip:alice@example.com>;tag=1\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def feed_in_chunks(parser: StreamParser, data: bytes, size: int) -> list:
    return [m for start in range(0, len(data), size) for m in parser.feed(data[start : start + size])]


STREAM = (
    b"\r\n\r\n"  # an RFC 5626 keep-alive before the first message
    + message("one", b"v=0\r\n")
    + b"\r\n"
    + message("two")
    + (DATA / "rfc4475" / "mpart01.dat").read_bytes()  # a binary body with NUL bytes
    + message("three", b"x" * 1000)
)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1000, len(STREAM)])
def test_any_chunking_gives_the_same_messages(chunk):
    got = feed_in_chunks(StreamParser(), STREAM, chunk)
    assert [m.call_id for m in got] == [
        "one",
        "two",
        "3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..",
        "three",
    ]
    assert got[0].body == b"v=0\r\n"
    assert got[2] == parse_message((DATA / "rfc4475" / "mpart01.dat").read_bytes())
    assert got[3].body == b"x" * 1000


def test_keepalives_are_skipped_and_counted():
    parser = StreamParser()
    assert parser.feed(b"\r\n\r\n\r\n") == []
    assert parser.keepalives == 3
    assert parser.buffered == 0
    assert [m.call_id for m in parser.feed(message("a"))] == ["a"]


def test_incomplete_message_waits_for_the_rest():
    parser = StreamParser()
    data = message("partial", b"0123456789")
    assert parser.feed(data[:-1]) == []
    assert parser.buffered == len(data) - 1
    (complete,) = parser.feed(data[-1:])
    assert complete.body == b"0123456789"
    assert parser.buffered == 0


def test_missing_content_length_on_a_stream_is_fatal():
    parser = StreamParser()
    data = message("nolength").replace(b"Content-Length: 0\r\n", b"")
    with pytest.raises(StreamError, match="Content-Length is required") as caught:
        parser.feed(data)
    assert caught.value.fatal
    assert caught.value.status_code == 400
    with pytest.raises(StreamError, match="unusable"):
        parser.feed(message("after"))


def test_oversized_header_section_is_refused_early():
    parser = StreamParser(max_header_size=1024)
    with pytest.raises(StreamError, match="header section exceeds 1024 bytes") as caught:
        parser.feed(b"OPTIONS sip:a@b SIP/2.0\r\nX-Long: " + b"a" * 2000)  # no CRLF CRLF yet
    assert (caught.value.status_code, caught.value.fatal) == (513, True)


def test_oversized_body_is_refused_before_it_arrives():
    parser = StreamParser(max_body_size=100)
    head = message("big", b"y" * 101)[:-101]
    with pytest.raises(StreamError, match="body of 101 bytes exceeds 100") as caught:
        parser.feed(head)
    assert (caught.value.status_code, caught.value.fatal) == (413, True)


def test_a_bad_message_with_a_readable_length_is_skipped_and_the_stream_goes_on():
    parser = StreamParser()
    bad = message("bad", b"body!", extra="Max-Forwards: lots\r\n")
    with pytest.raises(StreamError, match="Max-Forwards") as caught:
        parser.feed(message("before") + bad + message("after"))
    error = caught.value
    assert (error.fatal, error.status_code) == (False, 400)
    assert [m.call_id for m in error.messages] == ["before"]  # nothing that came first is lost
    assert [m.call_id for m in parser.feed(b"")] == ["after"]


def test_skipping_a_bad_message_whose_body_has_not_arrived_yet():
    parser = StreamParser()
    bad = message("bad", b"0123456789", extra="CSeq: 2 OPTIONS\r\n")  # CSeq twice
    with pytest.raises(StreamError, match="CSeq appears more than once"):
        parser.feed(bad[:-5])
    assert parser.feed(bad[-5:]) == []  # the rest of its body is dropped
    assert [m.call_id for m in parser.feed(message("next"))] == ["next"]


def test_negative_content_length_loses_framing():
    parser = StreamParser()
    with pytest.raises(StreamError) as caught:
        parser.feed((DATA / "rfc4475" / "ncl.dat").read_bytes())
    assert caught.value.fatal  # RFC 4475 §3.1.2.3: close the connection


def test_same_messages_byte_by_byte_as_all_at_once_for_every_vector():
    vectors = [
        parse_message(path.read_bytes())
        for path in sorted((DATA / "rfc4475").glob("*.dat"))
        if path.stem in {"wsinv", "intmeth", "esc01", "longreq", "mpart01", "unreason", "transports"}
    ]
    stream = b"".join(bytes(m) for m in vectors)
    whole = StreamParser().feed(stream)
    one_by_one = feed_in_chunks(StreamParser(), stream, 1)
    assert whole == one_by_one == vectors
