"""Header lookups (Headers.get / get_all / in) answer exactly what a pass over the lines would.

Lookups are answered from the checked headers' seeds and the set of other
headers present where they can (sipcore.sip.message.Headers); these tests hold
them to a reference that reads every line, on every valid RFC 4475 / RFC 5118
message, on messages with the shapes the shortcuts must not misread (several
entries on one line, "Contact: *", numbers not written canonically, compact
forms), and after every kind of mutation and copy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sipcore.sip import Headers, ParseError, make_response, parse_message
from sipcore.sip.headers import canonical_key

DATA = Path(__file__).resolve().parents[1] / "data"

# Names asked about: every checked header, common unchecked ones, compact forms,
# odd spellings, and names no message holds.
NAMES = (
    "Via", "v", "VIA", "From", "f", "To", "t", "Call-ID", "i", "call-id", "CSeq", "Max-Forwards",
    "Content-Length", "l", "Content-Type", "c", "Contact", "m", "Route", "Record-Route", "Reply-To",
    "Expires", "Min-Expires", "Retry-After", "Date", "Warning", "Require", "Accept", "Content-Encoding",
    "e", "Supported", "k", "Subject", "s", "User-Agent", "Timestamp", "X-Unknown", "NewFangledHeader",
    "Unknownheaderwithunusualvalue", "Allow",
)  # fmt: skip


def reference_all(headers: Headers, name: str) -> list[str]:
    key = canonical_key(name)
    return [value for field, value in headers if canonical_key(field) == key]


def assert_lookups_match_the_lines(headers: Headers) -> None:
    names = {*NAMES, *(field for field, _ in headers)}
    for name in names:
        expected = reference_all(headers, name)
        assert headers.get_all(name) == expected, name
        assert headers.get(name) == (expected[0] if expected else None), name
        assert headers.get(name, "absent") == (expected[0] if expected else "absent"), name
        assert (name in headers) == bool(expected), name


def _valid_vectors() -> list[Path]:
    paths = []
    for path in sorted(DATA.glob("rfc*/*.dat")):
        try:
            parse_message(path.read_bytes())
        except ParseError:
            continue
        paths.append(path)
    return paths


VECTORS = _valid_vectors()


def test_the_vectors_include_many_valid_messages():
    assert len(VECTORS) >= 20


@pytest.mark.parametrize("path", VECTORS, ids=[f"{p.parent.name}/{p.stem}" for p in VECTORS])
def test_lookups_on_every_valid_vector_match_the_lines(path):
    message = parse_message(path.read_bytes())
    assert_lookups_match_the_lines(message.headers)


SHAPES = (
    b"REGISTER sip:registrar.example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP a.example.com;branch=z9hG4bKa;rport , SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bKb\r\n"
    b"Via: SIP/2.0/UDP c.example.com;branch=z9hG4bKc\r\n"
    b"Via: SIP/2.0/UDP d.example.com;branch=z9hG4bKd, SIP/2.0/UDP e.example.com;branch=z9hG4bKe\r\n"
    b"Max-Forwards: 070\r\n"
    b"To: <sip:bob@example.com>\r\nf: <sip:bob@example.com>;tag=1\r\ni: shapes@example.com\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Contact: *\r\nm: <sip:bob@192.0.2.4>;expires=60, <sip:bob@192.0.2.5>\r\n"
    b"Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\nRoute: <sip:p3.example.com;lr>\r\n"
    b"Record-Route:   <sip:p4.example.com;lr>  \r\n"
    b"Expires: 0000\r\nRequire: a, b\r\nrequire: c\r\nk: timer\r\nX-Unknown: one\r\nx-unknown:two\r\n"
    b'Warning: 301 isi.edu "Incompatible", 399 example.com "x"\r\n'
    b"Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n"
    b"Content-Type: text/plain\r\nl: 3\r\n\r\nabc"
)


def test_lookups_on_the_shapes_the_shortcuts_could_misread():
    message = parse_message(SHAPES)
    headers = message.headers
    assert_lookups_match_the_lines(headers)
    # The values, written out, so the reference itself is pinned down.
    assert headers.get_all("Via") == [
        "SIP/2.0/UDP a.example.com;branch=z9hG4bKa;rport , SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bKb",
        "SIP/2.0/UDP c.example.com;branch=z9hG4bKc",
        "SIP/2.0/UDP d.example.com;branch=z9hG4bKd, SIP/2.0/UDP e.example.com;branch=z9hG4bKe",
    ]
    assert headers.get("Max-Forwards") == "070"
    assert message.max_forwards == 70
    assert headers.get_all("Contact") == [
        "*",
        "<sip:bob@192.0.2.4>;expires=60, <sip:bob@192.0.2.5>",
    ]
    assert headers.get_all("Route") == [
        "<sip:p1.example.com;lr>,<sip:p2.example.com;lr>",
        "<sip:p3.example.com;lr>",
    ]
    assert headers.get("Record-Route") == "<sip:p4.example.com;lr>"
    assert headers.get_all("Require") == ["a, b", "c"]
    assert headers.get("Content-Encoding") is None
    assert headers.get_all("Accept") == []


def _mutations():
    yield "add unknown", lambda h: h.add("Require", "100rel")
    yield "add known list", lambda h: h.add("Via", "SIP/2.0/TCP n.example.com;branch=z9hG4bKn")
    yield "add odd spelling", lambda h: h.add("  sUpPoRtEd ", "path")
    yield "remove unknown", lambda h: h.remove("x-unknown")
    yield "remove known", lambda h: h.remove("v")
    yield "remove contact", lambda h: h.remove("Contact")
    yield "set unknown", lambda h: h.set("Require", "only")
    yield "set known", lambda h: h.set("To", "<sip:carol@example.com>;tag=9")
    yield "set absent", lambda h: h.set("Accept", "application/sdp")
    yield "set_body", None


MUTATIONS = list(_mutations())


@pytest.mark.parametrize(("what", "mutate"), MUTATIONS, ids=[what for what, _ in MUTATIONS])
def test_lookups_after_a_mutation_and_on_copies_match_the_lines(what, mutate):
    message = parse_message(SHAPES)
    before = [(name, message.headers.get_all(name)) for name in NAMES]  # lookups (and an index) made
    copy = message.copy()
    if mutate is None:
        message.set_body(b"hello", "text/html")
    else:
        mutate(message.headers)
    assert_lookups_match_the_lines(message.headers)
    # The copy taken before the change still answers as before.
    assert [(name, copy.headers.get_all(name)) for name in NAMES] == before
    assert_lookups_match_the_lines(copy.headers)


def test_headers_built_by_hand_answer_like_parsed_ones():
    fields = [
        ("Via", "SIP/2.0/UDP a.example.com;branch=z9hG4bKa, SIP/2.0/UDP b.example.com;branch=z9hG4bKb"),
        ("Via", "SIP/2.0/UDP c.example.com;branch=z9hG4bKc"),
        ("Contact", "*"),
        ("Max-Forwards", "007"),
        ("Accept", "application/sdp"),
        ("X-Same", "v"),
        ("X-Same", "v"),
    ]
    built = Headers(fields)
    assert_lookups_match_the_lines(built)
    assert built.get_all("X-Same") == ["v", "v"]
    assert built.get_all("Via")[0].startswith("SIP/2.0/UDP a.example.com")


def test_the_same_value_object_added_twice_is_two_lines():
    value = "SIP/2.0/UDP a.example.com;branch=z9hG4bKa"
    headers = Headers()
    headers.add("Via", value)
    headers.add("Via", value)
    assert headers.get_all("Via") == [value, value]
    assert_lookups_match_the_lines(headers)


@pytest.mark.parametrize("status_code", [100, 180, 200, 486])
def test_lookups_on_a_built_response_match_its_lines(status_code):
    request = parse_message(SHAPES.replace(b"REGISTER", b"INVITE", 1).replace(b"1 REGISTER", b"1 INVITE"))
    response = make_response(
        request, status_code, to_tag="t1", headers=[("Allow", "INVITE, ACK"), ("X-Extra", "1")], body=b"x"
    )
    assert_lookups_match_the_lines(response.headers)
    assert response.headers.get("Content-Length") == "1"
    assert response.headers.get_all("Via") == request.headers.get_all("Via")


EXTRA_FIELDS = [
    ("Allow", "INVITE, ACK, CANCEL, OPTIONS, BYE"),
    ("Accept", "  application/sdp "),
    ("Supported", "timer"),
    ("k", "path"),
    ("supported", "gruu"),
    ("X-Custom", "1"),
    ("Contact", "<sip:me@192.0.2.1>"),
    ("User-Agent", "callops"),
]


def test_a_response_takes_the_callers_headers_as_add_would():
    request = parse_message(SHAPES.replace(b"REGISTER", b"OPTIONS", 1).replace(b"1 REGISTER", b"1 OPTIONS"))
    built = make_response(request, 200, to_tag="t1", headers=EXTRA_FIELDS)
    by_add = make_response(request, 200, to_tag="t1")
    by_add.headers.remove("Content-Length")
    for name, value in EXTRA_FIELDS:
        by_add.headers.add(name, value)
    by_add.headers.add("Content-Length", "0")
    assert bytes(built) == bytes(by_add)
    assert_lookups_match_the_lines(built.headers)
    assert built.contact == by_add.contact


@pytest.mark.parametrize(
    "field",
    [
        ("Allow", "INVITE\r\nX-Injected: 1"),
        ("Accept", "a\nb"),
        ("Bad Name", "x"),
        ("Contact", "not an address"),
    ],
)
def test_a_response_refuses_what_add_refuses(field):
    request = parse_message(SHAPES.replace(b"REGISTER", b"OPTIONS", 1).replace(b"1 REGISTER", b"1 OPTIONS"))
    with pytest.raises(ParseError):
        Headers().add(*field)
    with pytest.raises(ParseError):
        make_response(request, 200, headers=[("Allow", "INVITE"), field])
