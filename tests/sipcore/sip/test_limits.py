"""ParserLimits: each limit exactly reached is accepted, one past it is refused.

Table-driven: each row builds a message holding ``n`` of something; at the
limit it parses, one more is a ParseError with the row's status and a message
naming the limit. The same bytes on a stream (StreamParser) give the same
verdict, however they are split, and the stream goes on after a refused message
(its Content-Length was readable).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from sipcore.sip import Headers, LimitError, ParseError, ParserLimits, StreamParser, parse_message, parse_uri
from sipcore.sip.limits import DEFAULT_LIMITS
from sipcore.sip.stream import StreamError
from tests.sipcore.sip.adversarial import LIFTED

BASE = [
    "Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776",
    "To: <sip:bob@example.com>",
    "From: <sip:alice@example.com>;tag=1928",
    "Call-ID: a84b4c76e66710@pc33.example.com",
    "CSeq: 1 INVITE",
    "Max-Forwards: 70",
]
START = "INVITE sip:bob@example.com SIP/2.0"


def message(extra: list[str] = (), *, start: str = START, base: list[str] = BASE, body: bytes = b"") -> bytes:
    lines = [start, *base, *extra, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def header_lines(n: int) -> bytes:
    """n header lines after the start line."""
    return message(["X-Pad: a"] * (n - len(BASE) - 1))


def folded_header_lines(n: int) -> bytes:
    """n header lines, continuation lines of a folded header counting one each."""
    return message(["Subject: a", *[" b"] * (n - len(BASE) - 2)])


def header_length(n: int) -> bytes:
    """One header field of n characters."""
    return message(["X-Pad: " + "p" * (n - len("X-Pad: "))])


def known_header_length(n: int) -> bytes:
    """A Route header field of n characters (a long display name)."""
    prefix, suffix = 'Route: "', '" <sip:p.example.com;lr>'
    return message([prefix + "d" * (n - len(prefix) - len(suffix)) + suffix])


def start_line_length(n: int) -> bytes:
    """A response whose status line is n characters."""
    return message(start="SIP/2.0 200 " + "O" * (n - len("SIP/2.0 200 ")))


def list_entries_one_line(n: int) -> bytes:
    return message(["Route: " + ", ".join(["<sip:p.example.com;lr>"] * n)])


def list_entries_two_lines(n: int) -> bytes:
    half = n // 2
    return message(
        ["Route: " + ", ".join(["<sip:p;lr>"] * half), "Route: " + ", ".join(["<sip:q;lr>"] * (n - half))]
    )


def list_entries_each_its_line(n: int) -> bytes:
    """n Via lines (one entry each), the base Via among them."""
    vias = [f"Via: SIP/2.0/UDP p{i}.example.com;branch=z9hG4bK{i}" for i in range(n)]
    return message(base=vias + BASE[1:])


def message_entries(n: int) -> bytes:
    """n list entries over Via (the base one), Route, Record-Route and Contact."""
    per = DEFAULT_LIMITS.max_list_entries * 3 // 4
    rest = n - 1 - 2 * per
    return message(
        [
            "Route: " + ", ".join(["<sip:r;lr>"] * per),
            "Record-Route: " + ", ".join(["<sip:rr;lr>"] * per),
            "Contact: " + ", ".join(["<sip:c>"] * rest),
        ]
    )


def via_params(n: int) -> bytes:
    return message(base=["Via: SIP/2.0/UDP h;branch=z9hG4bK1" + ";p" * (n - 1), *BASE[1:]])


def address_params(n: int) -> bytes:
    return message(base=[*BASE[:2], "From: <sip:alice@example.com>;tag=1" + ";p" * (n - 1), *BASE[3:]])


def quoted_params(n: int) -> bytes:
    """Contact parameters, one holding quoted ";"s (counted as one parameter)."""
    return message(['Contact: <sip:c>;q="a;b;c;d"' + ";p" * (n - 1)])


def uri_params(n: int) -> bytes:
    """A Contact URI with n uri-parameters (and ";"s in its user part, which are none)."""
    return message(["Contact: <sip:a;b;c@example.com" + ";p" * n + ">"])


def request_uri_params(n: int) -> bytes:
    return message(start="INVITE sip:bob@example.com" + ";p" * n + " SIP/2.0")


def media_type_params(n: int) -> bytes:
    return message(["Content-Type: application/sdp" + ";p" * n])


def message_params(n: int) -> bytes:
    """n ";" in the header section: the base holds two (branch, tag), the rest in Routes."""
    rest = n - 2
    per = DEFAULT_LIMITS.max_params
    lines = [f"Route: <sip:r{i}>" + ";p" * per for i in range(rest // per)]
    return message([*lines, "X-Pad: a" + ";p" * (rest % per)])


def request_uri_length(n: int) -> bytes:
    return message(start="INVITE sip:" + "u" * (n - len("sip:@example.com")) + "@example.com SIP/2.0")


def header_uri_length(n: int) -> bytes:
    return message(["Contact: <sip:" + "u" * (n - len("sip:@example.com")) + "@example.com>"])


def bare_uri_length(n: int) -> bytes:
    return message(["Contact: sip:" + "u" * (n - len("sip:@example.com")) + "@example.com"])


def datagram_size(n: int) -> bytes:
    body = n - len(message())
    while len(data := message(body=b"b" * body)) > n:  # Content-Length's own digits
        body -= 1
    assert len(data) == n
    return data


# (limit's field, message of n items, status past the limit, also on a stream?)
ROWS: list[tuple[str, Callable[[int], bytes], int, bool]] = [
    ("max_header_lines", header_lines, 400, True),
    ("max_header_lines", folded_header_lines, 400, True),
    ("max_header_length", header_length, 513, True),
    ("max_header_length", known_header_length, 513, True),
    ("max_header_length", start_line_length, 513, True),
    ("max_list_entries", list_entries_one_line, 400, True),
    ("max_list_entries", list_entries_two_lines, 400, True),
    ("max_list_entries", list_entries_each_its_line, 400, True),
    ("max_message_entries", message_entries, 400, True),
    ("max_params", via_params, 400, True),
    ("max_params", address_params, 400, True),
    ("max_params", quoted_params, 400, True),
    ("max_params", uri_params, 400, True),
    ("max_params", request_uri_params, 400, True),
    ("max_params", media_type_params, 400, True),
    ("max_message_params", message_params, 400, True),
    ("max_uri_length", request_uri_length, 414, True),
    ("max_uri_length", header_uri_length, 513, True),
    ("max_uri_length", bare_uri_length, 513, True),
    ("max_datagram_size", datagram_size, 513, False),
]


def _row_id(row: tuple[str, Callable[[int], bytes], int, bool]) -> str:
    return f"{row[0]}-{row[1].__name__}"


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_a_limit_reached_is_accepted_and_one_past_it_refused(row):
    field, build, status, _ = row
    limit = getattr(DEFAULT_LIMITS, field)
    parse_message(build(limit))
    with pytest.raises(ParseError) as caught:
        parse_message(build(limit + 1))
    assert caught.value.status_code == status
    assert isinstance(caught.value, LimitError)
    assert field in str(caught.value)


@pytest.mark.parametrize("row", [row for row in ROWS if row[3]], ids=_row_id)
@pytest.mark.parametrize("chunk", [1 << 20, 1, 1000])
def test_a_stream_gives_the_same_verdicts_and_goes_on(row, chunk):
    field, build, status, _ = row
    limit = getattr(DEFAULT_LIMITS, field)
    after = message(start="OPTIONS sip:bob@example.com SIP/2.0", base=[*BASE[:4], "CSeq: 2 OPTIONS"])
    data = build(limit) + build(limit + 1) + after
    parser, got, errors = StreamParser(), [], []
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        while True:
            try:
                got += parser.feed(piece)
            except StreamError as exc:
                got += exc.messages
                errors.append((exc.status_code, exc.fatal, field in str(exc)))
                piece = b""  # skipped: go on with what is buffered
                continue
            break
    assert len(got) == 2
    assert got[0] == parse_message(build(limit))
    assert got[1].method == "OPTIONS"
    assert errors == [(status, False, True)]


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_a_limit_is_configurable(row):
    """Each limit is read from the ParserLimits passed in, not a constant."""
    field, build, status, _ = row
    limit = getattr(DEFAULT_LIMITS, field)
    data = build(limit + 1)
    with pytest.raises(ParseError):
        parse_message(data)
    raised = dataclasses.replace(DEFAULT_LIMITS, **{field: limit + 1})
    if field == "max_params":  # a URI's or an entry's parameters count towards the message's too
        raised = dataclasses.replace(raised, max_message_params=limit + 100)
    parse_message(data, limits=raised)
    lowered = dataclasses.replace(DEFAULT_LIMITS, **{field: limit - 1})
    with pytest.raises(ParseError) as caught:
        parse_message(build(limit), limits=lowered)
    assert caught.value.status_code == status


def test_every_limit_has_rows():
    assert {row[0] for row in ROWS} | {"max_header_size", "max_body_size"} == {
        field.name for field in dataclasses.fields(ParserLimits)
    }


@pytest.mark.parametrize("field", [field.name for field in dataclasses.fields(ParserLimits)])
@pytest.mark.parametrize("value", [0, -1, 1.5, "8", None, True])
def test_a_limit_must_be_a_positive_int(field, value):
    with pytest.raises(ValueError, match=field):
        ParserLimits(**{field: value})


def test_stream_keyword_limits_override_the_limits_object():
    parser = StreamParser(limits=ParserLimits(max_header_size=100, max_body_size=10), max_body_size=20)
    assert (parser.limits.max_header_size, parser.limits.max_body_size) == (100, 20)


def test_the_default_limits_are_what_the_module_documents():
    assert ParserLimits() == DEFAULT_LIMITS
    assert (
        DEFAULT_LIMITS.max_datagram_size,
        DEFAULT_LIMITS.max_header_size,
        DEFAULT_LIMITS.max_header_lines,
        DEFAULT_LIMITS.max_header_length,
        DEFAULT_LIMITS.max_list_entries,
        DEFAULT_LIMITS.max_message_entries,
        DEFAULT_LIMITS.max_params,
        DEFAULT_LIMITS.max_message_params,
        DEFAULT_LIMITS.max_uri_length,
    ) == (65_535, 32 * 1024, 256, 8 * 1024, 128, 256, 64, 1024, 4096)


# --- outside a parse: a URI parsed on its own, headers added one by one ---------


def test_parse_uri_on_its_own_is_bounded_by_the_default_limits():
    parse_uri("sip:" + "u" * (4096 - len("sip:@example.com")) + "@example.com")
    with pytest.raises(LimitError, match="max_uri_length") as caught:
        parse_uri("sip:" + "u" * (4097 - len("sip:@example.com")) + "@example.com")
    assert caught.value.status_code == 513
    parse_uri("sip:a;b;c@example.com" + ";p" * 64)  # the user part's ";"s are no parameters
    with pytest.raises(LimitError, match="max_params"):
        parse_uri("sip:a@example.com" + ";p" * 65)
    with pytest.raises(LimitError, match="max_params"):
        parse_uri("tel:+1234" + ";p" * 65)
    assert len(parse_uri("sip:a@example.com" + ";p" * 65, limits=LIFTED).params) == 65


def test_headers_added_one_by_one_keep_the_list_limit():
    headers = Headers()
    for _ in range(DEFAULT_LIMITS.max_list_entries // 2):
        headers.add("Route", "<sip:a;lr>, <sip:b;lr>")
    with pytest.raises(LimitError, match="max_list_entries"):
        headers.add("Route", "<sip:c;lr>")
    assert len(headers.get_all("Route")) == DEFAULT_LIMITS.max_list_entries // 2


def test_a_limit_error_is_final_even_when_the_message_is_folded():
    """Header lines are counted as received: unfolding them must not bring a message back."""
    data = folded_header_lines(DEFAULT_LIMITS.max_header_lines + 1)
    with pytest.raises(LimitError, match="max_header_lines"):
        parse_message(data)


@pytest.mark.parametrize("most", [1, 2, 15, 16, 17, 40])
@pytest.mark.parametrize(
    "build", [via_params, address_params, uri_params, request_uri_params, media_type_params]
)
def test_a_small_params_limit_holds_on_the_fast_paths_too(most, build):
    """The fast matchers take up to FAST_MAX_PARAMS (16) parameters; a lower limit must still hold."""
    limits = dataclasses.replace(DEFAULT_LIMITS, max_params=most)
    parse_message(build(most), limits=limits)
    with pytest.raises(LimitError, match="max_params"):
        parse_message(build(most + 1), limits=limits)
