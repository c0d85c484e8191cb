"""StreamParser: TCP framing by Content-Length (RFC 3261 §18.3), keep-alives (§7.5)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# --- the same bytes give the same result however they are split ---------------


def outcome(chunks, **limits) -> list:
    """Everything a parser yields for ``chunks``: each message's bytes and each
    error's (status, fatal), going on after a skipped message as a caller would."""
    parser = StreamParser(**limits)
    events: list = []
    for chunk in chunks:
        data = chunk
        while True:
            try:
                got = parser.feed(data)
            except StreamError as exc:
                events += [bytes(m) for m in exc.messages]
                events.append((exc.status_code, exc.fatal))
                if exc.fatal:
                    return events
                data = b""  # a skipped message: go on with what is buffered
                continue
            events += [bytes(m) for m in got]
            break
    return events


def splits(data: bytes, rng: random.Random, max_chunk: int) -> list[bytes]:
    chunks, at = [], 0
    while at < len(data):
        size = rng.randint(1, max_chunk)
        chunks.append(data[at : at + size])
        at += size
    return chunks


def head_of_size(size: int, call_id: str = "pad") -> bytes:
    """A message whose header section (up to and including CRLF CRLF) is ``size`` bytes.

    Padded with X-Pad lines of at most about 1,000 bytes each: one header field's
    length is limited too (ParserLimits.max_header_length).
    """
    missing = size - len(message(call_id))
    assert missing >= len("X-Pad: \r\n")
    count = -(-missing // 1000)
    lengths = [missing // count + (i < missing % count) for i in range(count)]
    extra = "".join("X-Pad: " + "p" * (length - 9) + "\r\n" for length in lengths)
    data = message(call_id, extra=extra)
    assert data.index(b"\r\n\r\n") + 4 == size
    return data


LIMIT = 32 * 1024


@pytest.mark.parametrize("size", [LIMIT - 1, LIMIT, LIMIT + 1])
@pytest.mark.parametrize("feeding", ["whole", "byte by byte", "random splits"])
def test_header_size_limit_is_exact_and_split_independent(size, feeding):
    data = head_of_size(size) + message("after")
    assert len(data) - len(message("after")) == size
    if feeding == "whole":
        chunks = [data]
    elif feeding == "byte by byte":
        chunks = [data[i : i + 1] for i in range(len(data))]
    else:
        chunks = splits(data, random.Random(size), 4096)
    got = outcome(chunks)
    if size <= LIMIT:
        assert [parse_message(m).call_id for m in got] == ["pad", "after"]
    else:
        assert got == [(513, True)]


@pytest.mark.parametrize("size", range(LIMIT - 4, LIMIT + 9))
def test_around_the_limit_byte_by_byte_is_the_same_as_whole(size):
    # Reported: sections a few bytes over the limit were accepted whole and
    # refused (513) byte by byte.
    data = head_of_size(size)
    assert outcome([data[i : i + 1] for i in range(len(data))]) == outcome([data])


def test_an_oversized_header_section_is_refused_as_soon_as_it_cannot_end_in_time():
    parser = StreamParser(max_header_size=1000)
    data = head_of_size(1001)
    assert parser.feed(data[:999]) == []  # may still end with the 1000th byte
    with pytest.raises(StreamError, match="exceeds 1000 bytes") as caught:
        parser.feed(data[999:1000])  # 1000 bytes and no empty line: it cannot end within the limit
    assert (caught.value.status_code, caught.value.fatal) == (513, True)
    assert parser.buffered == 1000  # refused without buffering more than the limit


MIXED_STREAM = (
    b"\r\n"
    + message("one", b"v=0\r\n")
    + message("bad", b"body!", extra="Max-Forwards: lots\r\n")  # skipped: its length is readable
    + b"\r\n\r\n"
    + head_of_size(600, "at-limit")
    + message("two", b"x" * 300)
    + head_of_size(601, "over")  # fatal: 513
    + message("never")
)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 700))
def test_any_split_gives_the_same_messages_and_errors(seed, max_chunk):
    whole = outcome([MIXED_STREAM], max_header_size=600)
    assert [parse_message(m).call_id if isinstance(m, bytes) else m for m in whole] == [
        "one",
        (400, False),
        "at-limit",
        "two",
        (513, True),
    ]
    assert outcome(splits(MIXED_STREAM, random.Random(seed), max_chunk), max_header_size=600) == whole


# --- feeding costs time linear in the bytes fed --------------------------------


def _feed_cpu(data: bytes, chunk: int, repeats: int = 3) -> float:
    """Best of ``repeats`` CPU times to feed ``data`` in ``chunk``-byte pieces."""
    best = float("inf")
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for _ in range(repeats):
        parser = StreamParser(max_header_size=64 * 1024, max_body_size=1024 * 1024)
        start = time.process_time()
        for piece in pieces:
            parser.feed(piece)
        best = min(best, time.process_time() - start)
    return best


def _long_head(size: int) -> bytes:
    return head_of_size(size)


def _long_body(size: int) -> bytes:
    return message("body", b"b" * size)


def _many_messages(size: int) -> bytes:
    one = message("m", b"v=0\r\n") + b"\r\n"
    return one * (size // len(one))


@pytest.mark.parametrize(
    ("build", "chunk"),
    [(_long_head, 1), (_long_head, 7), (_long_body, 3), (_many_messages, 1), (_many_messages, 1 << 20)],
    ids=["head 1-byte", "head 7-byte", "body 3-byte", "messages 1-byte", "messages whole"],
)
def test_feeding_is_linear_in_the_bytes_fed(build, chunk):
    small, large = build(6_000), build(48_000)  # 8 times the bytes
    ratio = _feed_cpu(large, chunk) / _feed_cpu(small, chunk)
    assert ratio < 24, f"8x the bytes cost {ratio:.1f}x the CPU time (linear: 8x, quadratic: 64x)"
