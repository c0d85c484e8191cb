"""Table-driven parser cases beyond the RFC vectors: one rule per row."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sipcore.sip import Headers, ParseError, Request, Response, SipUri, TelUri, parse_message, parse_uri
from sipcore.sip.message import unfold
from sipcore.sip.uri import is_ipv6_text

BASE_HEADERS = [
    "Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds",
    "Max-Forwards: 70",
    "To: Bob <sip:bob@biloxi.example.com>",
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 INVITE",
    "Contact: <sip:alice@pc33.atlanta.example.com>",
    "Content-Length: 0",
]


def request(
    *, start: str = "INVITE sip:bob@biloxi.example.com SIP/2.0", replace=None, add=(), body=b""
) -> bytes:
    """A request with header lines replaced (by prefix) or added."""
    lines = list(BASE_HEADERS)
    for prefix, new in (replace or {}).items():
        lines = [new if line.startswith(prefix) else line for line in lines]
        lines = [line for line in lines if line is not None]
    lines.extend(add)
    return ("\r\n".join([start, *lines]) + "\r\n\r\n").encode() + body


def test_the_base_request_parses():
    message = parse_message(request())
    assert isinstance(message, Request)
    assert (message.method, message.uri, message.call_id) == (
        "INVITE",
        "sip:bob@biloxi.example.com",
        "a84b4c76e66710@pc33.atlanta.example.com",
    )
    assert (message.branch, message.sent_by) == ("z9hG4bK776asdhds", ("pc33.atlanta.example.com", 5060))
    assert (message.from_tag, message.to_tag) == ("1928301774", None)


# (description, raw message, expected status code) — every row must raise ParseError.
INVALID = [
    ("HTTP start line", request(start="GET / HTTP/1.1"), 400),
    ("SIP/2.1 request", request(start="INVITE sip:bob@example.com SIP/2.1"), 505),
    ("SIP/3.0 response", b"SIP/3.0 200 OK\r\n\r\n", 505),
    ("garbage version", request(start="INVITE sip:bob@example.com SIPPY"), 400),
    ("two-digit status", b"SIP/2.0 99 Low\r\n" + request()[request().index(b"\r\n") + 2 :], 400),
    ("status 700", b"SIP/2.0 700 High\r\n" + request()[request().index(b"\r\n") + 2 :], 400),
    ("no SP before empty reason", b"SIP/2.0 200\r\n" + request()[request().index(b"\r\n") + 2 :], 400),
    ("method not a token", request(start="INV@TE sip:bob@example.com SIP/2.0"), 400),
    ("tab between elements", request(start="INVITE\tsip:bob@example.com SIP/2.0"), 400),
    ("empty Request-URI host", request(start="INVITE sip: SIP/2.0"), 400),
    ("port out of range", request(start="INVITE sip:bob@example.com:70000 SIP/2.0"), 400),
    ("bad IPv6 reference", request(start="INVITE sip:[2001:db8::zz] SIP/2.0"), 400),
    ("header line without colon", request(add=["Subject just text"]), 400),
    ("header name not a token", request(add=["Sub ject: hi"]), 400),
    (
        "empty line inside headers",
        request().replace(b"Max-Forwards: 70\r\n", b"\r\nMax-Forwards: 70\r\n", 1),
        400,
    ),
    ("bare LF in a header value", request(add=["Subject: a\nb"]), 400),
    ("bare CR in a header value", request(add=["Subject: a\rb"]), 400),
    ("missing Via", request(replace={"Via:": None}), 400),
    ("missing CSeq", request(replace={"CSeq:": None}), 400),
    ("missing To", request(replace={"To:": None}), 400),
    ("CSeq without method", request(replace={"CSeq:": "CSeq: 12"}), 400),
    ("CSeq over 2**32-1", request(replace={"CSeq:": "CSeq: 4294967296 INVITE"}), 400),
    ("CSeq of 5000 digits", request(replace={"CSeq:": "CSeq: " + "9" * 5000 + " INVITE"}), 400),
    ("Max-Forwards 256", request(replace={"Max-Forwards:": "Max-Forwards: 256"}), 400),
    ("Max-Forwards negative", request(replace={"Max-Forwards:": "Max-Forwards: -1"}), 400),
    ("Content-Length not a number", request(replace={"Content-Length:": "Content-Length: five"}), 400),
    ("Content-Length enormous", request(replace={"Content-Length:": "Content-Length: 9" + "0" * 20}), 413),
    ("Content-Length beyond the datagram", request(replace={"Content-Length:": "Content-Length: 10"}), 400),
    ("two Call-IDs", request(add=["i: other@example.com"]), 400),
    ("two From", request(add=["f: <sip:x@example.com>;tag=1"]), 400),
    ("Via without host", request(replace={"Via:": "Via: SIP/2.0/UDP"}), 400),
    (
        "Via with empty param",
        request(replace={"Via:": "Via: SIP/2.0/UDP h.example.com;;branch=z9hG4bK1"}),
        400,
    ),
    (
        "Via with bad port",
        request(replace={"Via:": "Via: SIP/2.0/UDP h.example.com:99999;branch=z9hG4bK1"}),
        400,
    ),
    ("Via list with trailing comma", request(replace={"Via:": "Via: SIP/2.0/UDP a.example.com,"}), 400),
    ("From without scheme", request(replace={"From:": "From: <alice@example.com>;tag=1"}), 400),
    ("To with unclosed <", request(replace={"To:": "To: <sip:bob@example.com"}), 400),
    (
        "Contact expires not a number",
        request(replace={"Contact:": "Contact: <sip:a@b.example.com>;expires=soon"}),
        400,
    ),
    ("Content-Type without subtype", request(add=["Content-Type: application"]), 400),
    ("Date not in GMT", request(add=["Date: Sat, 13 Nov 2010 23:29:00 PST"]), 400),
    ("Retry-After not a number", request(add=["Retry-After: later"]), 400),
    ("Warning code of 2 digits", request(add=['Warning: 30 host "text"']), 400),
    ("Request-URI with headers", request(start="INVITE sip:bob@example.com?Subject=hi SIP/2.0"), 400),
    # gen-value holding a colon: only an IPv6 address may (RFC 3261 §25.1 host, §20.42 received)
    ("Via received=a:b", request(replace={"Via:": "Via: SIP/2.0/UDP h;received=a:b;branch=z9hG4bK1"}), 400),
    ("Via received=::1::1", request(replace={"Via:": "Via: SIP/2.0/UDP h;received=::1::1;branch=z9"}), 400),
    ("Via maddr=[1:2:3]", request(replace={"Via:": "Via: SIP/2.0/UDP h;maddr=[1:2:3];branch=z9hG4bK1"}), 400),
    ("To param of colons", request(replace={"To:": "To: <sip:bob@example.com>;x=::::::::"}), 400),
    ("Contact bare param a:", request(replace={"Contact:": "Contact: sip:a@b.example.com;x=a:"}), 400),
    ("Content-Type param of colons", request(add=["Content-Type: application/sdp;a=" + ":" * 40]), 400),
    ("Retry-After param with a zone", request(add=["Retry-After: 5;a=fe80::1%eth0"]), 400),
    ("no empty line, not at the end", request()[:-4] + b"\r\nX", 400),
    ("mixed LF and CRLF", request().replace(b"\r\n", b"\n", 2), 400),
    ("empty datagram", b"", 400),
    ("only CRLFs", b"\r\n\r\n\r\n", 400),
]


@pytest.mark.parametrize(
    ("raw", "status"), [(raw, status) for _, raw, status in INVALID], ids=[d for d, _, _ in INVALID]
)
def test_invalid_message_raises_parse_error_with_status(raw, status):
    with pytest.raises(ParseError) as caught:
        parse_message(raw)
    assert caught.value.status_code == status
    assert isinstance(caught.value, ValueError)
    assert str(caught.value)  # says what is wrong


def test_non_bytes_input_is_a_parse_error():
    with pytest.raises(ParseError, match="expected bytes"):
        parse_message("INVITE sip:a@b SIP/2.0\r\n\r\n")  # type: ignore[arg-type]


def test_bytearray_and_memoryview_are_accepted():
    raw = request()
    assert parse_message(bytearray(raw)) == parse_message(memoryview(raw)) == parse_message(raw)


def test_datagram_size_limit():
    with pytest.raises(ParseError) as caught:
        parse_message(request(add=["X-Big: " + "a" * 70000]))
    assert caught.value.status_code == 513


VALID = [
    # (description, raw, check)
    (
        "compact forms",
        request(
            replace={"Via:": "v: SIP/2.0/TCP h.example.com;branch=z9hG4bKx", "To:": "t: <sip:b@example.com>"}
        ),
        lambda m: (m.top_via.transport, m.to.uri) == ("TCP", "sip:b@example.com"),
    ),
    (
        "header names in any case",
        request(replace={"Call-ID:": "cALL-iD: abc@def"}),
        lambda m: m.call_id == "abc@def",
    ),
    (
        "whitespace before the colon",
        request(replace={"CSeq:": "CSeq   : 7 INVITE"}),
        lambda m: tuple(m.cseq) == (7, "INVITE"),
    ),
    (
        "tab after the colon",
        request(replace={"Max-Forwards:": "Max-Forwards:\t12"}),
        lambda m: m.max_forwards == 12,
    ),
    (
        "folded Via",
        request(replace={"Via:": "Via: SIP/2.0/UDP\r\n  h.example.com\r\n\t;branch=z9hG4bKf"}),
        lambda m: (m.top_via.host, m.branch) == ("h.example.com", "z9hG4bKf"),
    ),
    (
        "comma-separated Vias",
        request(
            replace={
                "Via:": "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bKa , SIP/2.0/TCP b.example.com:5061"
            }
        ),
        lambda m: [(v.host, v.port) for v in m.via] == [("a.example.com", None), ("b.example.com", 5061)],
    ),
    (
        "Via lines add up",
        request(add=["Via: SIP/2.0/UDP c.example.com;branch=z9hG4bKc"]),
        lambda m: [v.host for v in m.via] == ["pc33.atlanta.example.com", "c.example.com"],
    ),
    (
        "Via received and rport",
        request(
            replace={
                "Via:": "Via: SIP/2.0/UDP h.example.com;rport=5070;received=192.0.2.4;branch=z9hG4bKr;maddr=239.1.1.1;ttl=16"
            }
        ),
        lambda m: (
            (m.top_via.rport, m.top_via.received, m.top_via.maddr, m.top_via.ttl)
            == (5070, "192.0.2.4", "239.1.1.1", 16)
        ),
    ),
    (
        "Via rport without value",
        request(replace={"Via:": "Via: SIP/2.0/UDP h.example.com;rport;branch=z9hG4bKr"}),
        lambda m: m.top_via.rport is True,
    ),
    (
        "IPv6 sent-by with port",
        request(replace={"Via:": "Via: SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bK6"}),
        lambda m: m.sent_by == ("[2001:db8::1]", 5062),
    ),
    (
        "quoted display name with escapes",
        request(replace={"From:": 'From: "A \\"q\\" B" <sip:a@example.com>;tag=9'}),
        lambda m: (m.from_.display_name, m.from_tag) == ('"A \\"q\\" B"', "9"),
    ),
    (
        "addr-spec without brackets",
        request(replace={"To:": "To: sip:bob@example.com;tag=x"}),
        lambda m: (m.to.uri, m.to.bracketed, m.to_tag) == ("sip:bob@example.com", False, "x"),
    ),
    (
        "tag in other case and with spaces",
        request(replace={"From:": "From: <sip:a@example.com> ; TAG = 77"}),
        lambda m: m.from_tag == "77",
    ),
    (
        "Contact list and star",
        request(replace={"Contact:": "Contact: <sip:a@h1.example.com>;q=0.5, <sip:b@h2.example.com>"}),
        lambda m: [c.uri for c in m.contact] == ["sip:a@h1.example.com", "sip:b@h2.example.com"],
    ),
    (
        "Contact star",
        request(replace={"Contact:": "Contact: *"}),
        lambda m: m.contact == [] and m.headers.get("Contact") == "*",
    ),
    (
        "Record-Route and Route lists",
        request(
            add=[
                "Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
                "Route: <sip:p3.example.com;lr>",
            ]
        ),
        lambda m: (
            [r.uri for r in m.record_route] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
            and m.route[0].parsed_uri.lr
        ),
    ),
    (
        "tel URI",
        request(replace={"To:": "To: <tel:+1-201-555-0123;phone-context=example.com>"}),
        lambda m: (
            m.to.parsed_uri
            == TelUri(
                "+1-201-555-0123",
                (("phone-context", "example.com"),),
                "tel:+1-201-555-0123;phone-context=example.com",
            )
        ),
    ),
    (
        "sips Request-URI with port and params",
        request(start="INVITE sips:bob@example.com:5061;transport=tcp;lr SIP/2.0"),
        lambda m: (
            (m.request_uri.scheme, m.request_uri.port, m.request_uri.transport, m.request_uri.lr)
            == ("sips", 5061, "TCP", True)
        ),
    ),
    (
        "lowercase sip/2.0",
        request(start="INVITE sip:bob@example.com sip/2.0"),
        lambda m: m.method == "INVITE",
    ),
    ("leading CRLFs are skipped", b"\r\n\r\n" + request(), lambda m: m.method == "INVITE"),
    (
        "no Content-Length: body is the rest",
        request(replace={"Content-Length:": None}, body=b"hello"),
        lambda m: m.body == b"hello",
    ),
    (
        "trailing octets discarded",
        request(replace={"Content-Length:": "Content-Length: 3"}, body=b"abcdef"),
        lambda m: m.body == b"abc",
    ),
    ("ends without the empty line", request()[:-2], lambda m: m.body == b""),
    (
        "Date in GMT",
        request(add=["Date: Sat, 13 Nov 2010 23:29:00 GMT"]),
        lambda m: m.headers.get("Date").endswith("GMT"),
    ),
    (
        "Retry-After with comment and param",
        request(add=["Retry-After: 18000 (I'm in a meeting);duration=3600"]),
        lambda m: m.headers.typed("retry-after") == 18000,
    ),
    (
        "Warning list",
        request(
            add=[
                "Warning: 307 isi.edu \"Session parameter 'foo' not understood\", 301 isi.edu \"Incompatible network address type 'E.164'\""
            ]
        ),
        lambda m: len(m.headers.typed("warning")) == 2,
    ),
    (
        "Content-Type with params",
        request(add=['Content-Type: Multipart/Mixed ; boundary="x y"']),
        lambda m: (
            (m.content_type.mime, m.content_type.params) == ("multipart/mixed", (("boundary", '"x y"'),))
        ),
    ),
    (
        "undecodable UTF-8 kept byte for byte",
        request(add=["Subject: caf\xe9".encode("latin-1").decode("latin-1")]).replace(
            b"caf\xc3\xa9", b"caf\xe9"
        ),
        lambda m: bytes(m).count(b"caf\xe9") == 1,
    ),
    (
        "Via received and maddr as IPv6 addresses, bare and bracketed",
        request(
            replace={"Via:": "Via: SIP/2.0/UDP [2001:db8::1]:5060;received=2001:db8::9;maddr=[::1];branch=z9"}
        ),
        lambda m: (
            (m.via[0].received, m.via[0].maddr, m.sent_by)
            == ("2001:db8::9", "[::1]", ("[2001:db8::1]", 5060))
        ),
    ),
    (
        "RFC 5118 §4.10 extra colon before an IPv4 tail, in a parameter",
        request(replace={"Via:": "Via: SIP/2.0/UDP h;received=2001:db8:::192.0.2.1;branch=z9hG4bK1"}),
        lambda m: m.via[0].received == "2001:db8:::192.0.2.1",
    ),
    (
        "consecutive folds read as one space each",
        request(add=["Subject: a \r\n \r\n\tb"]),
        lambda m: m.headers.get("Subject") == "a  b",
    ),
    (
        "response",
        b"SIP/2.0 180 Ringing\r\n" + request()[request().index(b"\r\n") + 2 :],
        lambda m: (
            isinstance(m, Response) and (m.status_code, m.reason, m.is_provisional) == (180, "Ringing", True)
        ),
    ),
]


@pytest.mark.parametrize(
    ("raw", "check"), [(raw, check) for _, raw, check in VALID], ids=[d for d, _, _ in VALID]
)
def test_valid_message_parses_and_round_trips(raw, check):
    message = parse_message(raw)
    assert check(message)
    assert parse_message(bytes(message)) == message
    assert parse_message(message.to_bytes(compact=True)) == message


def test_serializer_keeps_order_unknown_headers_and_can_write_compact_names():
    raw = request(add=["X-Custom: keep me", "Subject: hi"])
    message = parse_message(raw)
    assert bytes(message) == raw  # nothing to normalise here: byte for byte
    compact = message.to_bytes(compact=True).decode()
    assert compact.splitlines()[1:8] == [
        "v: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds",
        "Max-Forwards: 70",
        "t: Bob <sip:bob@biloxi.example.com>",
        "f: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
        "i: a84b4c76e66710@pc33.atlanta.example.com",
        "CSeq: 314159 INVITE",
        "m: <sip:alice@pc33.atlanta.example.com>",
    ]
    assert "X-Custom: keep me" in compact
    assert "s: hi" in compact


def test_equality_looks_at_meaning_not_spelling():
    a = parse_message(request())
    b = parse_message(request(replace={"Call-ID:": "i: a84b4c76e66710@pc33.atlanta.example.com"}))
    c = parse_message(request(replace={"Call-ID:": "Call-ID: other@pc33.atlanta.example.com"}))
    assert a == b
    assert a != c


def test_copy_is_independent():
    original = parse_message(request())
    copy = original.copy()
    copy.headers.set("Max-Forwards", "69")
    copy.headers.add("Via", "SIP/2.0/UDP new.example.com;branch=z9hG4bKnew")
    assert original.max_forwards == 70
    assert len(original.via) == 1
    assert (copy.max_forwards, len(copy.via)) == (69, 2)


def test_headers_api_checks_known_headers_and_keeps_order():
    headers = Headers([("Via", "SIP/2.0/UDP a.example.com;branch=z9hG4bK1"), ("X-One", "1")])
    headers.set("X-One", "uno")
    headers.add("Subject", "s")
    assert list(headers) == [
        ("Via", "SIP/2.0/UDP a.example.com;branch=z9hG4bK1"),
        ("X-One", "uno"),
        ("Subject", "s"),
    ]
    assert "x-one" in headers
    assert headers.get("s") == "s"  # compact name finds the long one
    with pytest.raises(ParseError, match="Max-Forwards"):
        headers.add("Max-Forwards", "lots")
    with pytest.raises(ParseError, match="CR or LF"):
        headers.add("Subject", "a\r\nInjected: yes")
    with pytest.raises(ParseError, match="only once"):
        Headers([("Call-ID", "a@b"), ("Call-ID", "c@d")])
    headers.remove("subject")
    assert headers.get("Subject") is None


def test_set_body_keeps_content_length_right():
    message = parse_message(request())
    message.set_body(b"v=0\r\n", "application/sdp")
    again = parse_message(bytes(message))
    assert (again.body, again.content_length, again.content_type.mime) == (b"v=0\r\n", 5, "application/sdp")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:alice@atlanta.example.com", ("sip", "alice", None, "atlanta.example.com", None)),
        (
            "sip:alice:secretword@atlanta.example.com;transport=tcp",
            ("sip", "alice", "secretword", "atlanta.example.com", None),
        ),
        ("SIPS:alice@atlanta.example.com:5061", ("sips", "alice", None, "atlanta.example.com", 5061)),
        (
            "sip:+1-212-555-1212:1234@gateway.com;user=phone",
            ("sip", "+1-212-555-1212", "1234", "gateway.com", None),
        ),
        ("sip:192.0.2.4", ("sip", None, None, "192.0.2.4", None)),
        ("sip:[2001:db8::1]:5060", ("sip", None, None, "[2001:db8::1]", 5060)),
        (
            "sip:atlanta.example.com;method=REGISTER?to=alice%40atlanta.example.com",
            ("sip", None, None, "atlanta.example.com", None),
        ),
    ],
)
def test_sip_uris_rfc3261_19_1_3_examples(text, expected):
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == expected
    assert str(uri) == text


@pytest.mark.parametrize(
    "text", ["sip:", "sip:a@", "sip:a@b:c", "sip:a b@c", "sip:[::1", "sip:a@b.example.com:123456", "nocolon"]
)
def test_bad_uris(text):
    with pytest.raises(ParseError):
        parse_uri(text)


def test_uri_host_address_and_params():
    uri = parse_uri("sip:bob@[2001:DB8::1];maddr=239.255.255.1;ttl=15;lr")
    assert isinstance(uri, SipUri)
    assert uri.host_address == "2001:db8::1"
    assert (uri.maddr, uri.param("ttl"), uri.lr, uri.transport) == ("239.255.255.1", "15", True, None)


# --- IPv6 text is checked by the grammar's regex with ipaddress's verdicts ---------


def ipaddress_verdict(text: str) -> bool:
    """The reference: ipaddress, with RFC 5118 §4.10's extra colon and no zone index."""
    if len(text) > 46 or "%" in text:
        return False
    try:
        ipaddress.IPv6Address(text.replace(":::", "::", 1))
    except ValueError:
        return False
    return True


_IPV6_PIECES = st.sampled_from(
    ["0", "1", "a", "F", "ffff", "12345", "abcd", "g", ":", "::", ":::", ".", "1.2.3.4", "256", "01", "%"]
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_IPV6_PIECES, max_size=14).map("".join))
@example("2001:db8:::192.0.2.1")  # RFC 5118 §4.10
@example("1:2:3:4:5:6:7::")
@example("::1.2.3.04")  # no leading zeros in an IPv4 octet
@example("1:2:3:4:5:6:7:8:9")
def test_ipv6_text_verdicts_are_those_of_ipaddress(text):
    assert is_ipv6_text(text) == ipaddress_verdict(text)


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, 2**128 - 1), st.sampled_from([2**128 - 1, 2**16 - 1, 2**48 - 1, 2**128 - 2**32]))
def test_every_ipv6_address_spelling_is_accepted(number, mask):
    address = ipaddress.IPv6Address(number & mask)
    spellings = [str(address), address.exploded, str(address).upper()]
    if address.ipv4_mapped is not None:
        spellings.append(f"::ffff:{address.ipv4_mapped}")
    for text in spellings:
        assert is_ipv6_text(text), text


# --- unfolding (RFC 3261 §7.3.1): one pass over the lines, as the regex read it ---

_FOLDS_RE = re.compile(r"(?<![ \t])[ \t]*+(?:\r\n[ \t]++)++")


def unfold_by_regex(text: str) -> str:
    """The reference: each run of folds, with the white space around it, as one SP per CRLF."""
    return _FOLDS_RE.sub(lambda fold: " " * fold[0].count("\r\n"), text)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(["a", "b:", " ", "\t", "\r\n", "\r\n ", "\r\n\t", "x y"]), max_size=16))
@example(["a", " ", "\r\n ", "\r\n", " b"])
def test_unfolding_joins_continuation_lines_as_the_rfc_reads_them(pieces):
    text = "".join(pieces)
    assert unfold(text) == unfold_by_regex(text)


def test_unfolding_thousands_of_folds():
    # Was a regular expression searched at every character: 2 ms for one 60 KB run.
    text = "Subject: a" + "\r\n b" * 10_000
    assert unfold(text) == "Subject: a" + " b" * 10_000
