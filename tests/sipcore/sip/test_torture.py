"""Every message of RFC 4475 and RFC 5118, handled as those RFCs prescribe.

Valid messages parse to the right values; invalid ones raise ParseError with
the response code the RFC suggests; those whose oddity is for the transaction
or application layer parse. Vectors are byte-exact under tests/sipcore/data/.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sipcore.sip import AbsoluteUri, ParseError, Request, Response, SipUri, StreamParser, parse_message

DATA = Path(__file__).resolve().parents[1] / "data"


def load(name: str, rfc: str = "rfc4475") -> bytes:
    return (DATA / rfc / f"{name}.dat").read_bytes()


# --- RFC 4475 §3.1.2, §3.3.1, §3.3.8-9: invalid messages and the code to answer ---

INVALID_4475 = {
    # name: (section, status code, what the error must name)
    "badinv01": ("3.1.2.1", 400, "Via"),  # extraneous ;;,;,, separators
    "clerr": ("3.1.2.2", 400, "Content-Length 9999"),  # larger than the datagram's body
    "ncl": ("3.1.2.3", 400, "Content-Length"),  # negative
    "scalar02": ("3.1.2.4", 400, "CSeq"),  # 400 "due to the CSeq error"
    "scalarlg": ("3.1.2.5", 400, "CSeq"),  # a response: discarded
    "quotbal": ("3.1.2.6", 400, "To"),  # unterminated quoted string
    "ltgtruri": ("3.1.2.7", 400, "Request-URI"),  # <> around the Request-URI
    "lwsruri": ("3.1.2.8", 400, "request line"),  # LWS inside the Request-URI
    "lwsstart": ("3.1.2.9", 400, "request line"),  # several SP between elements
    "trws": ("3.1.2.10", 400, "request line"),  # SP at the end of the request line
    "escruri": ("3.1.2.11", 400, "must not contain headers"),
    "baddate": ("3.1.2.12", 400, "Date"),  # EST: only GMT is SIP-date
    "regbadct": ("3.1.2.13", 400, "Contact"),  # escaped header outside <>
    "badaspec": ("3.1.2.14", 400, "To"),  # spaces inside < >
    "baddn": ("3.1.2.15", 400, "From"),  # unquoted display name with a comma
    "badvers": ("3.1.2.16", 505, "SIP/7.0"),
    "mismatch01": ("3.1.2.17", 400, "CSeq method INVITE does not match"),
    "mismatch02": ("3.1.2.18", 501, "CSeq method INVITE does not match"),  # unknown method: 501
    "bigcode": ("3.1.2.19", 400, "status line"),  # a response: dropped
    "insuf": ("3.3.1", 400, "required header From is missing"),  # no Call-ID, From, To
    "multi01": ("3.3.8", 400, "appears more than once"),
    "mcl01": ("3.3.9", 400, "Content-Length appears more than once"),
    # In the RFC's archive though not described in its text: no SIP-Version.
    "test": ("archive", 400, "request line"),
}


@pytest.mark.parametrize("name", sorted(INVALID_4475))
def test_rfc4475_invalid_message_raises_parse_error_with_the_rfc_code(name):
    section, status, fragment = INVALID_4475[name]
    with pytest.raises(ParseError) as caught:
        parse_message(load(name))
    assert caught.value.status_code == status, f"§{section}: {caught.value}"
    assert fragment in str(caught.value), f"§{section}: {caught.value}"


# --- valid messages (§3.1.1) and transaction/application-layer ones (§3.2-3.4) ---


def check_wsinv(m: Request) -> None:  # §3.1.1.1 A Short Tortuous INVITE
    assert (m.method, m.uri) == ("INVITE", "sip:vivekg@chair-dnrc.example.com;unknownparam")
    assert m.to_tag == "1918181833n"
    assert m.from_ is not None
    assert m.from_.display_name == '"J Rosenberg \\\\\\""'
    assert m.from_tag == "98asjd8"
    assert m.max_forwards == 68  # leading zeros
    assert tuple(m.cseq) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in m.via] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.headers.get("Subject") == ""  # "s :" is an empty Subject
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"  # unknown: kept as is
    (contact,) = m.contact
    assert contact.display_name == '"Quoted string \\"\\""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert m.route[0].uri == "sip:services.example.com;lr;unknownwith=value;unknown-no-value"
    assert m.content_length == 150
    assert len(m.body) == 150


def check_intmeth(m: Request) -> None:  # §3.1.1.2 Wide Range of Valid Characters
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = m.request_uri
    assert isinstance(uri, SipUri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert m.branch == "z9hG4bK-.!%66*_+`'~"
    assert m.to is not None
    assert m.to.display_name == '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"'  # quoted-pairs, a quoted NUL
    assert m.from_ is not None
    assert m.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert m.from_.param("fromparam''~+*_!.-%") == '"работающий"'
    assert m.from_tag == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert tuple(m.cseq) == (139122385, "!interesting-Method0123456789_*+`.%indeed'~")
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def check_esc01(m: Request) -> None:  # §3.1.1.3 Valid Use of the % Escaping Mechanism
    uri = m.request_uri
    assert isinstance(uri, SipUri)
    assert uri.user_unescaped == "sips:user@example.com"
    assert uri.host == "example.net"
    assert m.to is not None
    assert m.to.parsed_uri.user_unescaped == "user"  # type: ignore[union-attr]
    assert m.from_ is not None
    assert m.from_.parsed_uri.user_unescaped == "I have spaces"  # type: ignore[union-attr]
    contact_uri = m.contact[0].parsed_uri
    assert isinstance(contact_uri, SipUri)
    # "name" has the value "value%41": unescaping is never recursive.
    assert contact_uri.params_unescaped == (("lr", None), ("name", "value%41"))
    assert m.content_type is not None
    assert m.content_type.mime == "application/sdp"  # from the compact "C:"


def check_escnull(m: Request) -> None:  # §3.1.1.4 Escaped Nulls in URIs
    assert m.to is not None
    assert m.to.parsed_uri.user_unescaped == "null-\x00-null"  # type: ignore[union-attr]
    users = [c.parsed_uri.user_unescaped for c in m.contact]  # type: ignore[union-attr]
    assert users == ["\x00", "\x00\x00"]  # two distinct contacts


def check_esc02(m: Request) -> None:  # §3.1.1.5 Use of % When It Is Not an Escape
    assert m.method == "RE%47IST%45R"  # not REGISTER
    assert m.to is not None
    assert m.to.display_name == '"%Z%45"'
    assert [c.uri for c in m.contact] == ["sip:alias1@host1.example.com", "sip:alias3@host3.example.com"]
    assert m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert m.branch == "z9hG4bK209%fzsnel234"


def check_lwsdisp(m: Request) -> None:  # §3.1.1.6 No LWS between Display Name and <
    assert m.from_ is not None
    assert (m.from_.display_name, m.from_.uri, m.from_tag) == ("caller", "sip:caller@example.com", "323")


def check_longreq(m: Request) -> None:  # §3.1.1.7 Long Values in Header Fields
    assert m.to is not None
    assert m.to.display_name == f'"I have a user name of {"extreme" * 10} proportion"'
    assert m.from_tag == "12" + "982" * 50 + "424"
    assert m.call_id == "longreq.one" + "really" * 20 + "longcallid"
    assert len(m.via) == 34
    assert m.top_via is not None
    assert m.top_via.host == "sip33.example.com"
    assert (m.via[-1].host, m.via[-1].received) == ("host.example.com", "192.0.2.5")
    assert m.via[-1].branch == "very" + "long" * 50 + "branchvalue"
    assert m.contact[0].uri == "sip:" + "amazinglylongcallername" * 5 + "@host5.example.net"


def check_dblreq(m: Request) -> None:  # §3.1.1.8 Extra Trailing Octets in a UDP Datagram
    assert (m.method, m.call_id) == ("REGISTER", "dblreq.0ha0isndaksdj99sdfafnl3lk233412")
    assert m.body == b""  # the INVITE-looking octets after it are noise
    assert b"INVITE" not in bytes(m)


def check_semiuri(m: Request) -> None:  # §3.1.1.9 Semicolon-Separated Parameters in URI User Part
    uri = m.request_uri
    assert isinstance(uri, SipUri)
    assert (uri.user_unescaped, uri.host, uri.params) == ("user;par=u@example.net", "example.com", ())


def check_transports(m: Request) -> None:  # §3.1.1.10 Varied and Unknown Transport Types
    assert [v.transport for v in m.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def check_mpart01(m: Request) -> None:  # §3.1.1.11 Multipart MIME Message
    assert m.method == "MESSAGE"
    assert m.content_type is not None
    assert (m.content_type.mime, m.content_type.params) == (
        "multipart/mixed",
        (("boundary", "7a9cbec02ceef655"),),
    )
    assert len(m.body) == 553
    assert b"\x00" in m.body  # binary part framed by Content-Length, not by text
    assert m.body.endswith(b"--7a9cbec02ceef655--\r\n")


def check_unreason(m: Response) -> None:  # §3.1.1.12 Unusual Reason Phrase
    assert (m.status_code, m.reason) == (200, "= 2**3 * 5**2 но сто девяносто девять - простое")


def check_noreason(m: Response) -> None:  # §3.1.1.13 Empty Reason Phrase
    assert (m.status_code, m.reason) == (100, "")


def check_badbranch(m: Request) -> None:  # §3.2.1: the transaction layer falls back to RFC 2543
    assert m.branch == "z9hG4bK"


def check_unkscm(m: Request) -> None:  # §3.3.2 Request-URI with Unknown Scheme (416 above)
    assert m.request_uri == AbsoluteUri("nobodyknowsthisscheme", "totallyopaquecontent", m.uri)


def check_novelsc(m: Request) -> None:  # §3.3.3 Known but Atypical Scheme
    uri = m.request_uri
    assert isinstance(uri, AbsoluteUri)
    assert (uri.scheme, uri.opaque) == ("soap.beep", "//192.0.2.103:3002")


def check_unksm2(m: Request) -> None:  # §3.3.4 Unknown URI Schemes in Header Fields
    assert m.to is not None
    assert m.to.uri == "isbn:2983792873"
    assert m.from_ is not None
    assert (m.from_.uri, m.from_tag) == ("http://www.example.com", "3234233")
    assert m.contact[0].parsed_uri == AbsoluteUri("name", "John_Smith", "name:John_Smith")


def check_bext01(m: Request) -> None:  # §3.3.5 Proxy-Require and Require (420 above)
    assert m.headers.get("Require") == "nothingSupportsThis, nothingSupportsThisEither"
    assert m.headers.get("Proxy-Require") == "noProxiesSupportThis, norDoAnyProxiesSupportThis"


def check_invut(m: Request) -> None:  # §3.3.6 Unknown Content-Type (415 above)
    assert m.content_type is not None
    assert m.content_type.mime == "application/unknownformat"
    assert m.body == b'<audio>\r\n <pcmu port="443"/>\r\n</audio>\r\n'


def check_regaut01(m: Request) -> None:  # §3.3.7 Unknown Authorization Scheme
    assert m.headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"


def check_bcast(m: Response) -> None:  # §3.3.10 broadcast sent-by in the 2nd Via
    assert m.via[1].host == "255.255.255.255"


def check_zeromf(m: Request) -> None:  # §3.3.11 Max-Forwards of Zero
    assert m.max_forwards == 0


def check_cparam01(m: Request) -> None:  # §3.3.12: unknownparam is a contact-param
    (contact,) = m.contact
    assert (contact.uri, contact.bracketed, contact.params) == (
        "sip:+19725552222@gw1.example.net",
        False,
        (("unknownparam", None),),
    )


def check_cparam02(m: Request) -> None:  # §3.3.13: unknownparam is a url-parameter
    (contact,) = m.contact
    assert (contact.uri, contact.params) == ("sip:+19725552222@gw1.example.net;unknownparam", ())
    assert contact.parsed_uri.params == (("unknownparam", None),)  # type: ignore[union-attr]


def check_regescrt(m: Request) -> None:  # §3.3.14 REGISTER with a URL Escaped Header
    uri = m.contact[0].parsed_uri
    assert isinstance(uri, SipUri)
    assert uri.headers == "Route=%3Csip:sip.example.com%3E"


def check_sdp01(m: Request) -> None:  # §3.3.15 Unacceptable Accept Offering (406 above)
    assert m.headers.get("Accept") == "text/nobodyKnowsThis"


def check_inv2543(m: Request) -> None:  # §3.4.1 INVITE with RFC 2543 Syntax
    assert m.branch is None
    assert m.from_tag is None
    assert m.max_forwards is None
    assert m.content_length is None
    assert m.body.startswith(b"v=0\r\n")  # no Content-Length: the rest of the datagram
    assert m.body.endswith(b"m=audio 49217 RTP/AVP 0\r\n")


VALID_4475: dict[str, Callable] = {
    "wsinv": check_wsinv,
    "intmeth": check_intmeth,
    "esc01": check_esc01,
    "escnull": check_escnull,
    "esc02": check_esc02,
    "lwsdisp": check_lwsdisp,
    "longreq": check_longreq,
    "dblreq": check_dblreq,
    "semiuri": check_semiuri,
    "transports": check_transports,
    "mpart01": check_mpart01,
    "unreason": check_unreason,
    "noreason": check_noreason,
    "badbranch": check_badbranch,
    "unkscm": check_unkscm,
    "novelsc": check_novelsc,
    "unksm2": check_unksm2,
    "bext01": check_bext01,
    "invut": check_invut,
    "regaut01": check_regaut01,
    "bcast": check_bcast,
    "zeromf": check_zeromf,
    "cparam01": check_cparam01,
    "cparam02": check_cparam02,
    "regescrt": check_regescrt,
    "sdp01": check_sdp01,
    "inv2543": check_inv2543,
}


@pytest.mark.parametrize("name", sorted(VALID_4475))
def test_rfc4475_message_parses_to_the_right_values(name):
    message = parse_message(load(name))
    VALID_4475[name](message)
    # And it round-trips, in full and in compact form.
    assert parse_message(bytes(message)) == message
    assert parse_message(message.to_bytes(compact=True)) == message


def test_every_archived_rfc4475_message_is_covered():
    archived = {path.stem for path in (DATA / "rfc4475").glob("*.dat")}
    assert archived == set(VALID_4475) | set(INVALID_4475)
    assert len(archived) == 50


@pytest.mark.parametrize("name", sorted(VALID_4475))
def test_rfc4475_valid_message_framed_on_a_stream_byte_by_byte(name):
    message = parse_message(load(name))
    if message.content_length is None:  # inv2543: a stream needs one
        message.headers.add("Content-Length", str(len(message.body)))
    data = message.to_bytes()
    parser = StreamParser()
    got = [message for byte in data for message in parser.feed(bytes([byte]))]
    assert got == [parse_message(data)]


# --- RFC 5118 ---


def check_ipv6_good(m: Request) -> None:  # §4.1
    assert m.request_uri.host == "[2001:db8::10]"  # type: ignore[union-attr]
    assert m.sent_by == ("[2001:db8::9:1]", None)
    assert m.contact[0].parsed_uri.host == "[2001:db8::1]"  # type: ignore[union-attr]


def check_port_ambiguous(m: Request) -> None:  # §4.3: the "port" is the last IPv6 group
    uri = m.request_uri
    assert isinstance(uri, SipUri)
    assert (uri.host, uri.port) == ("[2001:db8::10:5070]", None)


def check_port_unambiguous(m: Request) -> None:  # §4.4
    uri = m.request_uri
    assert isinstance(uri, SipUri)
    assert (uri.host, uri.port) == ("[2001:db8::10]", 5070)


def check_received_with_delim(m: Request) -> None:  # §4.5: liberal: [ ] around received
    assert m.top_via is not None
    assert (m.top_via.received, m.branch) == ("[2001:db8::9:255]", "z9hG4bKas3-111")


def check_received_no_delim(m: Request) -> None:  # §4.5
    assert m.top_via is not None
    assert (m.top_via.received, m.branch) == ("2001:db8::9:255", "z9hG4bKas3")


def check_mult_ip_in_header(m: Request) -> None:  # §4.7
    assert [(v.transport, v.host, v.port, v.received) for v in m.via] == [
        ("UDP", "[2001:db8::9:1]", 6050, None),
        ("UDP", "192.0.2.1", None, None),
        ("TCP", "[2001:db8::9:255]", None, "192.0.2.200"),
    ]


def check_ipv4_mapped(m: Request) -> None:  # §4.9
    assert [(v.host, v.port) for v in m.via] == [("[::ffff:192.0.2.10]", 19823), ("[::ffff:192.0.2.2]", None)]
    assert m.contact[0].parsed_uri.host == "[::ffff:192.0.2.2]"  # type: ignore[union-attr]
    assert b"c=IN IP6 ::ffff:192.0.2.2" in m.body


def check_three_colons(m: Request) -> None:  # §4.10: tolerate RFC 3261's ABNF bug
    assert m.request_uri.host == "[2001:db8:::192.0.2.1]"  # type: ignore[union-attr]


def check_two_colons(m: Request) -> None:  # §4.10
    assert m.request_uri.host == "[2001:db8::192.0.2.1]"  # type: ignore[union-attr]


VALID_5118: dict[str, Callable] = {
    "ipv6-good": check_ipv6_good,
    "port-ambiguous": check_port_ambiguous,
    "port-unambiguous": check_port_unambiguous,
    "via-received-param-with-delim": check_received_with_delim,
    "via-received-param-no-delim": check_received_no_delim,
    "mult-ip-in-header": check_mult_ip_in_header,
    "ipv4-mapped-ipv6": check_ipv4_mapped,
    "ipv6-bug-abnf-3-colons": check_three_colons,
    "ipv6-correct-abnf-2-colons": check_two_colons,
}


@pytest.mark.parametrize("name", sorted(VALID_5118))
def test_rfc5118_message_parses_to_the_right_values(name):
    data = load(name, "rfc5118")
    message = parse_message(data)  # the RFC's archive has bare LF line ends: tolerated
    VALID_5118[name](message)
    assert parse_message(bytes(message)) == message
    # The same message as it travels, with CRLF, parses the same.
    assert parse_message(data.replace(b"\n", b"\r\n")).headers == message.headers


def test_rfc5118_ipv6_bad_is_400():  # §4.2: IPv6 Request-URI host without [ ]
    with pytest.raises(ParseError) as caught:
        parse_message(load("ipv6-bad", "rfc5118"))
    assert caught.value.status_code == 400
    assert "Request-URI" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "declared", "sdp_line"),
    [("ipv6-in-sdp", 268, b"c=IN IP6 2001:db8::20"), ("mult-ip-in-sdp", 181, b"c=IN IP6 2001:db8::1")],
)
def test_rfc5118_sdp_messages_as_published_and_with_their_length_corrected(name, declared, sdp_line):
    """§4.6 and §4.8 call these valid, but the published bytes declare a Content-Length
    larger than the body that follows. On a datagram the missing octets never come,
    so RFC 4475 §3.1.2.2 (clerr) applies: 400. With the length matching the body,
    the message parses and its IPv6 SDP is intact."""
    data = load(name, "rfc5118")
    with pytest.raises(ParseError) as caught:
        parse_message(data)
    assert caught.value.status_code == 400
    assert f"Content-Length {declared} exceeds" in str(caught.value)

    head, _, body = data.partition(b"\n\n")
    fixed = parse_message(
        head.replace(f"Content-Length: {declared}".encode(), f"Content-Length: {len(body)}".encode())
        + b"\n\n"
        + body
    )
    assert fixed.body == body
    assert sdp_line in fixed.body
    assert fixed.request_uri.host == "[2001:db8::10]"  # type: ignore[union-attr]


def test_every_archived_rfc5118_message_is_covered():
    archived = {path.stem for path in (DATA / "rfc5118").glob("*.dat")}
    assert archived == set(VALID_5118) | {"ipv6-bad", "ipv6-in-sdp", "mult-ip-in-sdp"}
    assert len(archived) == 12
