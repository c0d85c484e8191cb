"""parse_uri's plain-spelling shortcut reads a URI exactly as the full grammar does,
and a request's parsed Request-URI follows its ``uri``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipcore.sip import ParseError, SipUri, parse_message, parse_uri
from sipcore.sip.uri import SIP_URI_RE, _split_params


def by_the_grammar(text: str) -> SipUri | None:
    """What SIP_URI_RE and its checks make of ``text`` (None: not a valid SIP URI)."""
    m = SIP_URI_RE.fullmatch(text)
    if m is None or (m[5] is not None and int(m[5]) > 65535) or m[4].startswith("["):
        return None
    port = None if m[5] is None else int(m[5])
    return SipUri(m[1].lower(), m[2], m[3], m[4], port, _split_params(m[6]), m[7], text)


URIS = [
    "sip:ping@127.0.0.1:5060",
    "sip:127.0.0.1",
    "sips:alice:secret@atlanta.example.com:5061;transport=tls;lr",
    "sip:alice@example.com;maddr=239.0.0.1;ttl=1;empty=;flag",
    "sip:user;par=u%40example.net@example.com",
    "sip:+1-212-555-1212:1234@gateway.com;user=phone",
    "sip:a;b@host;c",
    "sip:host:0",
    "sip:host:65535",
    "sip:host:65536",
    "sip:host:99999",
    "sip:host:",
    "SIP:alice@example.com",
    "sIpS:alice@example.com",
    "sip:%61lice@example.com",
    "sip:alice@example.com?subject=project",
    "sip:alice@example.com;p=[x]:/&+$",
    "sip:user?x/y@host.example.com",
    "sip:@host",
    "sip:alice@",
    "sip:alice@-bad",
    "sip:alice@host..example",
    "sip:alice@host;",
    "sip:alice@host;=v",
    "sip:alice@host name",
    "sip:",
]


@pytest.mark.parametrize("text", URIS)
def test_a_uri_reads_as_the_full_grammar_reads_it(text):
    expected = by_the_grammar(text)
    if expected is None:
        with pytest.raises(ParseError):
            parse_uri(text)
    else:
        got = parse_uri(text)
        assert got == expected
        assert type(got) is SipUri
        assert str(got) == text


URI_CHARS = st.sampled_from(list("aZ09-_.!~*'()&=+$,;?/:@[]%3A "))


@settings(max_examples=3000, deadline=None)
@given(
    st.sampled_from(["sip:", "sips:", "SIP:", "sip:a@", "sip:u:p@h", "sip:h:5"]),
    st.text(URI_CHARS, max_size=24),
)
def test_any_uri_reads_as_the_full_grammar_reads_it(prefix, rest):
    text = prefix + rest
    expected = by_the_grammar(text)
    if expected is None:
        with pytest.raises(ParseError):
            parse_uri(text)
    else:
        assert parse_uri(text) == expected


def _request(uri: str = "sip:bob@biloxi.example.com"):  # type: ignore[no-untyped-def]
    return parse_message(
        f"OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\r\n"
        "From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\nCall-ID: c@a\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".encode()
    )


def test_the_request_uri_is_parsed_once_and_follows_a_new_uri():
    request = _request()
    first = request.request_uri
    assert request.request_uri is first  # kept: a Uri is immutable
    assert request.copy().request_uri is first
    request.uri = "sip:carol@chicago.example.com:5070"
    assert isinstance(request.request_uri, SipUri)
    assert request.request_uri.user == "carol"
    assert request.request_uri.port == 5070
    request.uri = "tel:+1-212-555-1212"
    assert request.request_uri.scheme == "tel"


def test_a_request_uri_that_does_not_parse_raises_each_time():
    request = _request()
    request.uri = "sip:bob@[::1"
    for _ in range(2):
        with pytest.raises(ParseError):
            _ = request.request_uri
