"""SIP, SIPS and tel URIs (RFC 3261 §19.1, §25.1; RFC 3966), IPv6 per RFC 5118.

Other schemes are kept intact as :class:`AbsoluteUri`. ``str(uri)`` gives back
the text it was parsed from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from sipcore.sip.errors import LimitError, ParseError
from sipcore.sip.grammar import HOST, IPV6_ADDRESS, PORT, PORT_NUMBER, URI_SCHEME
from sipcore.sip.limits import DEFAULT_LIMITS, ParserLimits

# Linear by construction as in sipcore.sip.grammar: possessive runs, and the two
# branches of each character rule (a class, or "%" HEXDIG HEXDIG) start differently.
_ESCAPED: Final = r"%[0-9A-Fa-f]{2}"
_UNRESERVED: Final = r"A-Za-z0-9\-_.!~*'()"
# user = 1*( unreserved / escaped / user-unreserved ); user-unreserved = & = + $ , ; ? /
_USER: Final = rf"(?:[{_UNRESERVED}&=+$,;?/]++|{_ESCAPED})++"
# password = *( unreserved / escaped / & = + $ , )
_PASSWORD: Final = rf"(?:[{_UNRESERVED}&=+$,]++|{_ESCAPED})*+"
# paramchar = param-unreserved / unreserved / escaped; param-unreserved = [ ] / : & + $
_PARAMCHARS: Final = rf"(?:[\[\]/:&+${_UNRESERVED}]++|{_ESCAPED})"
_URI_PARAMS: Final = rf"(?:;{_PARAMCHARS}++(?:={_PARAMCHARS}*+)?+)*+"
# hname / hvalue chars: hnv-unreserved ( [ ] / ? : + $ ) / unreserved / escaped
_HCHARS: Final = rf"(?:[\[\]/?:+${_UNRESERVED}]++|{_ESCAPED})"
_HEADERS: Final = rf"{_HCHARS}++={_HCHARS}*+(?:&{_HCHARS}++={_HCHARS}*+)*+"

# RFC 3261 §19.1.1, §25.1: sip(s):[userinfo@]hostport uri-parameters [headers]. The
# userinfo is tried first and given up whole when no "@" ends it; "@" appears
# nowhere after it, so a userinfo that matched is never wrong.
SIP_URI_RE: Final = re.compile(
    rf"(?i:(sips?)):(?:({_USER})(?::({_PASSWORD}))?+@)?+({HOST})(?::({PORT}))?+({_URI_PARAMS})"
    rf"(?:\?({_HEADERS}))?+"
)
# The plain spelling most URIs have: lower-case scheme, no escapes, no IPv6
# reference, no headers, a port of 0-65535. It accepts a strict subset of
# SIP_URI_RE with the same groups 1-6 (each run stops where SIP_URI_RE's does), so
# a miss only means "take SIP_URI_RE and its checks"; linear the same way.
_PLAIN_SIP_URI_RE: Final = re.compile(
    rf"(sips?):(?:([{_UNRESERVED}&=+$,;?/]++)(?::([{_UNRESERVED}&=+$,]*+))?+@)?+"
    rf"([A-Za-z0-9][A-Za-z0-9\-.]*+)(?::({PORT_NUMBER}))?+"
    rf"((?:;[\[\]/:&+${_UNRESERVED}]++(?:=[\[\]/:&+${_UNRESERVED}]*+)?+)*+)"
)
SCHEME_RE: Final = re.compile(URI_SCHEME)
# absoluteURI's opaque part: any URI characters, no white space or delimiters.
OPAQUE_RE: Final = re.compile(r"[^\s<>\"\x00-\x1f\x7f]++")
# The longest textual IPv6 address: eight groups of four and seven colons, or six
# groups and an IPv4 address (45), with room for RFC 5118 §4.10's extra colon.
MAX_IPV6_TEXT: Final = 46
_IPV6_ADDRESS_RE: Final = re.compile(IPV6_ADDRESS)


@dataclass(frozen=True, slots=True)
class SipUri:
    scheme: str  # "sip" or "sips", lower case
    user: str | None  # as written, %-escapes kept
    password: str | None
    host: str  # as written; IPv6 references keep their brackets
    port: int | None
    params: tuple[tuple[str, str | None], ...]  # names lower-cased
    headers: str | None
    text: str

    def __str__(self) -> str:
        return self.text

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unquote(self.user, errors="surrogateescape")

    @property
    def params_unescaped(self) -> tuple[tuple[str, str | None], ...]:
        """Parameters with %HH escapes decoded once (RFC 3261 §19.1.2; never recursively)."""
        return tuple(
            (
                unquote(name, errors="surrogateescape"),
                None if value is None else unquote(value, errors="surrogateescape"),
            )
            for name, value in self.params
        )

    @property
    def host_address(self) -> str:
        """The host without IPv6 brackets, lower-cased (RFC 3261 §19.1.4)."""
        return self.host[1:-1].lower() if self.host.startswith("[") else self.host.lower()

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value if value is not None else ""
        return None

    @property
    def transport(self) -> str | None:
        value = self.param("transport")
        return value.upper() if value else None

    @property
    def maddr(self) -> str | None:
        return self.param("maddr")

    @property
    def lr(self) -> bool:
        return self.param("lr") is not None


_new: Final = object.__new__
# The slots' own setters: a frozen dataclass's __init__ sets each field through
# object.__setattr__ (the generic lookup, for every field of every URI).
_SET_SCHEME, _SET_USER, _SET_PASSWORD, _SET_HOST, _SET_PORT, _SET_PARAMS, _SET_HEADERS, _SET_TEXT = (
    SipUri.__dict__[name].__set__
    for name in ("scheme", "user", "password", "host", "port", "params", "headers", "text")
)


def _sip_uri(match: re.Match[str], scheme: str, headers: str | None) -> SipUri:
    """``SipUri(...)`` from a match of SIP_URI_RE's groups 1-6, at half the cost of
    the dataclass's __init__: the same object, every field set once."""
    uri: SipUri = _new(SipUri)
    port = match[5]
    _SET_SCHEME(uri, scheme)
    _SET_USER(uri, match[2])
    _SET_PASSWORD(uri, match[3])
    _SET_HOST(uri, match[4])
    _SET_PORT(uri, None if port is None else int(port))
    _SET_PARAMS(uri, _split_params(match[6]))
    _SET_HEADERS(uri, headers)
    _SET_TEXT(uri, match.string)
    return uri


@dataclass(frozen=True, slots=True)
class TelUri:
    """A tel URI (RFC 3966): the number and its parameters."""

    number: str
    params: tuple[tuple[str, str | None], ...]
    text: str
    scheme: str = "tel"

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """A URI of a scheme SIP does not interpret (RFC 3261 §19: kept intact)."""

    scheme: str
    opaque: str
    text: str

    def __str__(self) -> str:
        return self.text


Uri = SipUri | TelUri | AbsoluteUri


def _split_params(text: str) -> tuple[tuple[str, str | None], ...]:
    if not text:
        return ()
    params = []
    for item in text.split(";")[1:]:
        name, eq, value = item.partition("=")
        params.append((name.lower(), value if eq else None))
    return tuple(params)


def is_ipv6_text(text: str) -> bool:
    """Is ``text`` an IPv6 address (RFC 4291 §2.2), bounded in length before matching?

    RFC 5118 §4.10: RFC 3261's ABNF allows an extra colon before an embedded
    IPv4 address (``2001:db8:::192.0.2.1``); tolerated. No zone index (RFC 5118
    §4). The same verdicts as ``ipaddress.IPv6Address`` (the tests compare them),
    at a few times less cost: a message may hold a thousand of these.
    """
    return len(text) <= MAX_IPV6_TEXT and _IPV6_ADDRESS_RE.fullmatch(text) is not None


def check_host(host: str, context: str) -> None:
    """Refuse an IPv6 reference that is not an IPv6 address (RFC 4291)."""
    if host.startswith("[") and not (host.endswith("]") and is_ipv6_text(host[1:-1])):
        raise ParseError(f"{context}: {host[:80]} is not a valid IPv6 reference")


def check_uri_length(text: str, context: str, limits: ParserLimits, status_code: int = 513) -> None:
    """Refuse a URI longer than ``limits.max_uri_length`` (513; 414 for a Request-URI)."""
    if len(text) > limits.max_uri_length:
        raise LimitError(
            f"{context}: URI of {len(text)} characters exceeds max_uri_length {limits.max_uri_length}",
            status_code,
        )


def uri_param_count(text: str) -> int:
    """How many parameters ``text`` holds as a URI, for the limits.

    Exact for a SIP, SIPS or tel URI; otherwise (a URI of another scheme, whose
    parameters are never split, or an invalid one, refused when read) its ";"s.
    """
    count = text.count(";")
    if count and text[:4].lower() in ("sip:", "sips"):
        match = SIP_URI_RE.fullmatch(text)
        if match is not None:  # a ";" in the user part is no parameter
            return match[6].count(";")
    return count


def check_uri_params(text: str, context: str, limits: ParserLimits) -> None:
    """Refuse a URI with more than ``limits.max_params`` parameters (400)."""
    if text.count(";") > limits.max_params and (count := uri_param_count(text)) > limits.max_params:
        raise LimitError(f"{context}: {count} URI parameters exceed max_params {limits.max_params}")


def validate_sip_uri(text: str, context: str) -> re.Match[str]:
    match = SIP_URI_RE.fullmatch(text)
    if match is None:
        raise ParseError(f"{context}: {text[:80]!r} is not a valid SIP URI")
    if match[4].startswith("["):
        check_host(match[4], context)
    if match[5] is not None and int(match[5]) > 65535:
        raise ParseError(f"{context}: port {match[5]} is out of range")
    return match


def parse_uri(text: str, context: str = "URI", *, limits: ParserLimits | None = DEFAULT_LIMITS) -> Uri:
    """Parse ``text``; SIP/SIPS URIs are checked against the grammar, others kept opaque.

    ``limits`` bounds its length and parameters first; ``None`` when they were
    checked already (a URI read lazily from a parsed message).
    """
    if limits is not None:
        check_uri_length(text, context, limits)
        check_uri_params(text, context, limits)
    plain = _PLAIN_SIP_URI_RE.fullmatch(text)
    if plain is not None:
        return _sip_uri(plain, plain[1], None)
    scheme_match = SCHEME_RE.match(text)
    if scheme_match is None:
        raise ParseError(f"{context}: {text[:80]!r} has no URI scheme")
    scheme = scheme_match[0][:-1].lower()
    if scheme in ("sip", "sips"):
        match = validate_sip_uri(text, context)
        return _sip_uri(match, scheme, match[7])
    rest = text[scheme_match.end() :]
    if not rest or OPAQUE_RE.fullmatch(rest) is None:
        raise ParseError(f"{context}: {text[:80]!r} is not a valid URI")
    if scheme == "tel":
        number, _, params = rest.partition(";")
        return TelUri(number=number, params=_split_params(";" + params) if params else (), text=text)
    return AbsoluteUri(scheme=scheme, opaque=rest, text=text)
