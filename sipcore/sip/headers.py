"""Header names and the typed values the transaction layer reads (RFC 3261 §7.3, §20).

Known headers are checked against the §25 grammar when a message is parsed,
so an invalid message is refused up front; their typed values are kept.
Unknown headers are kept as written (RFC 3261 §7.3: a proxy forwards them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, NamedTuple, TypeGuard

from sipcore.sip.errors import LimitError, ParseError
from sipcore.sip.grammar import (
    CALL_ID_RE,
    COMMA_RE,
    CSEQ_RE,
    FAST_CONTACT_RE,
    FAST_CSEQ_RE,
    FAST_MEDIA_TYPE_RE,
    FAST_NAME_ADDR_RE,
    FAST_VIA_PARM_RE,
    MEDIA_TYPE_RE,
    NAME_ADDR_PARAMS_RE,
    PARAM_ITEM_RE,
    RETRY_AFTER_RE,
    SIP_DATE_RE,
    VIA_PARM_RE,
    WARNING_VALUE_RE,
)
from sipcore.sip.limits import DEFAULT_LIMITS, ParserLimits
from sipcore.sip.uri import Uri, check_host, check_uri_length, check_uri_params, is_ipv6_text, parse_uri

MAX_UINT32: Final = 2**32 - 1

# RFC 3261 §7.3.3 compact forms, plus those registered by later RFCs.
COMPACT_FORMS: Final[dict[str, str]] = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "e": "content-encoding",
    "s": "subject",
    "k": "supported",
    "o": "event",  # RFC 6665
    "u": "allow-events",  # RFC 6665
    "r": "refer-to",  # RFC 3515
    "b": "referred-by",  # RFC 3892
    "x": "session-expires",  # RFC 4028
    "a": "accept-contact",  # RFC 3841
    "j": "reject-contact",  # RFC 3841
    "d": "request-disposition",  # RFC 3841
    "y": "identity",  # RFC 8224
}
COMPACT_NAME_OF: Final[dict[str, str]] = {full: short for short, full in COMPACT_FORMS.items()}

CANONICAL_NAMES: Final[dict[str, str]] = {
    name.lower(): name
    for name in (
        "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
        "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
        "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length", "Content-Type",
        "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "Identity", "In-Reply-To", "Max-Forwards",
        "MIME-Version", "Min-Expires", "Organization", "Path", "Priority", "Proxy-Authenticate",
        "Proxy-Authorization", "Proxy-Require", "RAck", "Record-Route", "Refer-To", "Referred-By",
        "Reject-Contact", "Reply-To", "Request-Disposition", "Require", "Retry-After", "Route", "RSeq",
        "Server", "Service-Route", "Session-Expires", "Subject", "Supported", "Timestamp", "To",
        "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
    )
}  # fmt: skip


def canonical_key(name: str) -> str:
    """The lookup key of a header name: lower case, compact forms expanded."""
    lower = name.lower()
    return COMPACT_FORMS.get(lower, lower)


def display_name_of(key: str) -> str:
    """How to write the header whose key is ``key`` (``call-id`` -> ``Call-ID``)."""
    return CANONICAL_NAMES.get(key) or "-".join(part.capitalize() for part in key.split("-"))


Params = tuple[tuple[str, str | None], ...]


def split_params(text: str) -> Params:
    """A validated ``;name=value`` list -> ((name lower-cased, value or None), ...)."""
    if not text:
        return ()
    if '"' not in text and " " not in text and "\t" not in text:
        pairs = []
        for item in text[1:].split(";"):
            name, eq, value = item.partition("=")
            pairs.append((name.lower(), value if eq else None))
        return tuple(pairs)
    if '"' not in text:
        params = []
        for item in text.split(";")[1:]:
            name, eq, value = item.partition("=")
            params.append((name.strip(" \t").lower(), value.strip(" \t") if eq else None))
        return tuple(params)
    return tuple((m[1].lower(), m[2]) for m in PARAM_ITEM_RE.finditer(text))


def check_param_values(params: str, header: str) -> None:
    """Refuse a parameter value that has an IPv6 address's characters but is not one.

    The grammar reads token, host and Via's bare IPv6address values as one run of
    their characters (see sipcore.sip.grammar); only IPv6 addresses hold a colon
    or brackets, so such a value must be one (RFC 3261 §25.1 host, §20.42 received).
    """
    if ":" not in params and "[" not in params:
        return
    for name, value in split_params(params):
        if not value or value[0] == '"':
            continue
        if value[0] == "[":
            check_host(value, header)
        elif ":" in value and not is_ipv6_text(value):
            raise ParseError(f"{header}: {name}={value[:60]} is neither a token nor an IPv6 address")


def check_param_count(params: str, header: str, limits: ParserLimits) -> None:
    """Refuse more than ``limits.max_params`` parameters in one entry's ``;a=b;c`` (400).

    Counting the ";"s is exact unless a quoted value holds one; only then are
    the parameters split to count them.
    """
    if params.count(";") > limits.max_params and (count := len(split_params(params))) > limits.max_params:
        raise LimitError(f"{header}: {count} parameters exceed max_params {limits.max_params}")


def _is_small_number(text: str | None) -> TypeGuard[str]:
    """ASCII digits, at most 10 of them: safe for int() and at most ~2**33."""
    return text is not None and 0 < len(text) <= 10 and text.isascii() and text.isdigit()


def param_value(params: Params, name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value if value is not None else ""
    return None


class Via(NamedTuple):
    """One via-parm (RFC 3261 §20.42): where to send responses, and the branch."""

    protocol_name: str
    protocol_version: str
    transport: str  # upper case
    host: str
    port: int | None
    params: Params

    @property
    def branch(self) -> str | None:
        return param_value(self.params, "branch")

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return (self.host.lower(), self.port)

    @property
    def received(self) -> str | None:
        return param_value(self.params, "received")

    @property
    def maddr(self) -> str | None:
        return param_value(self.params, "maddr")

    @property
    def ttl(self) -> int | None:
        value = param_value(self.params, "ttl")
        return int(value) if _is_small_number(value) else None

    @property
    def rport(self) -> int | bool | None:
        """RFC 3581: None if absent, True if asked for (no value), else the port."""
        value = param_value(self.params, "rport")
        if value is None:
            return None
        return int(value) if _is_small_number(value) else True


class NameAddress(NamedTuple):
    """name-addr or addr-spec with header parameters (From, To, Contact, Route...)."""

    display_name: str | None  # as written (quotes kept), None if absent
    uri: str
    params: Params
    bracketed: bool

    @property
    def tag(self) -> str | None:
        return param_value(self.params, "tag")

    def param(self, name: str) -> str | None:
        return param_value(self.params, name)

    @property
    def parsed_uri(self) -> Uri:
        # Its length and parameters were bounded when the header was checked.
        return parse_uri(self.uri, "address", limits=None)

    def __str__(self) -> str:
        if self.bracketed:
            text = f"{self.display_name} <{self.uri}>" if self.display_name else f"<{self.uri}>"
        else:
            text = self.uri
        for name, value in self.params:
            text += f";{name}" if value is None else f";{name}={value}"
        return text


class CSeq(NamedTuple):
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


class MediaType(NamedTuple):
    type: str  # lower case
    subtype: str
    params: Params

    @property
    def mime(self) -> str:
        return f"{self.type}/{self.subtype}"


# --- rules: each known header is checked when a message is parsed (check: value,
# limits -> seed, or ParseError naming the header) and typed on first use (build:
# seeds -> value). A check refuses an entry past the limits before the per-parameter
# work (check_param_values) on it.


def list_entries_error(header: str, limits: ParserLimits) -> LimitError:
    return LimitError(f"{header}: more than max_list_entries {limits.max_list_entries} entries")


def _match_list(value: str, match_item: Callable[[str, int], re.Match[str] | None], header: str,
                what: str, limits: ParserLimits) -> list[re.Match[str]]:  # fmt: skip
    """item *(COMMA item) -> one match per item, or ParseError naming the header.

    Stops at the first entry past ``limits.max_list_entries``.
    """
    found = []
    pos, end = 0, len(value)
    most = limits.max_list_entries
    while True:
        m = match_item(value, pos)
        if m is None:
            raise ParseError(f"{header}: cannot parse {value[pos : pos + 80]!r} as {what}")
        found.append(m)
        if len(found) > most:
            raise list_entries_error(header, limits)
        pos = m.end()
        if pos == end:
            return found
        comma = COMMA_RE.match(value, pos)
        if comma is None:
            raise ParseError(f"{header}: unexpected {value[pos : pos + 80]!r}")
        pos = comma.end()


def check_via(value: str, limits: ParserLimits = DEFAULT_LIMITS) -> list[re.Match[str]]:
    """via-parm *(COMMA via-parm) -> one match per via-parm."""
    m = _fast_via(value)
    if m is not None and m[6].count(";") <= limits.max_params:
        return [m]
    found = _match_list(value, VIA_PARM_RE.match, "Via", "a via-parm", limits)
    for m in found:
        check_param_count(m[6], "Via", limits)
    for m in found:
        if m[4][0] == "[":
            check_host(m[4], "Via")
        if m[5] is not None and int(m[5]) > 65535:
            raise ParseError(f"Via: port {m[5]} is out of range")
        check_param_values(m[6], "Via")
    return found


_fast_via = FAST_VIA_PARM_RE.fullmatch


def via_of(m: re.Match[str]) -> Via:
    port = m[5]
    return Via(m[1], m[2], m[3].upper(), m[4], int(port) if port is not None else None, split_params(m[6]))


def build_via(seeds: list[re.Match[str]]) -> list[Via]:
    return [via_of(m) for m in seeds]


def _check_address_limits(m: re.Match[str], header: str, limits: ParserLimits) -> None:
    """The URI's length and parameters, and the header parameters, of one name-addr."""
    uri = m[2] if m[2] is not None else m[3]
    check_uri_length(uri, header, limits)
    check_uri_params(uri, header, limits)
    check_param_count(m[4], header, limits)


def _within_limits(value: str, limits: ParserLimits) -> bool:
    """Can no URI or parameter list in ``value`` be past the limits? (The fast paths' guard.)"""
    return len(value) <= limits.max_uri_length and value.count(";") <= limits.max_params


def _check_addresses(header: str) -> Callable[[str, ParserLimits], list[re.Match[str]]]:
    fast = FAST_NAME_ADDR_RE.fullmatch

    def check(value: str, limits: ParserLimits = DEFAULT_LIMITS) -> list[re.Match[str]]:
        m = fast(value)
        if m is not None and _within_limits(value, limits):
            return [m]
        found = _match_list(value, NAME_ADDR_PARAMS_RE.match, header, "name-addr or addr-spec", limits)
        for m in found:
            _check_address_limits(m, header, limits)
        for m in found:
            check_param_values(m[4], header)
        return found

    return check


def _check_address(header: str) -> Callable[[str, ParserLimits], re.Match[str]]:
    fast, general = FAST_NAME_ADDR_RE.fullmatch, NAME_ADDR_PARAMS_RE.fullmatch

    def check(value: str, limits: ParserLimits = DEFAULT_LIMITS) -> re.Match[str]:
        m = fast(value)
        if m is not None and _within_limits(value, limits):
            return m
        m = general(value)
        if m is None:
            raise ParseError(f"{header}: cannot parse {value[:80]!r} as name-addr or addr-spec")
        _check_address_limits(m, header, limits)
        check_param_values(m[4], header)
        return m

    return check


def address_of(m: re.Match[str]) -> NameAddress:
    if m[2] is not None:
        return NameAddress(m[1], m[2], split_params(m[4]), True)
    return NameAddress(None, m[3], split_params(m[4]), False)


def build_addresses(seeds: list[re.Match[str]]) -> list[NameAddress]:
    return [address_of(m) for m in seeds]


def check_contact(value: str, limits: ParserLimits = DEFAULT_LIMITS) -> list[re.Match[str]]:
    if value == "*":  # RFC 3261 §10.2.2: REGISTER removing all bindings
        return []
    found = _check_contacts(value, limits)
    for m in found:
        params = m[4]
        if params and "expires" in params.lower():
            expires = param_value(split_params(m[4]), "expires")
            if expires is not None and not (_is_small_number(expires) and int(expires) <= MAX_UINT32):
                # RFC 4475 §3.1.2.4 (scalar02)
                raise ParseError(f"Contact: expires={expires[:20]} is not delta-seconds up to 2**32-1")
    return found


_check_contacts = _check_addresses("Contact")


def check_call_id(value: str, limits: ParserLimits = DEFAULT_LIMITS) -> re.Match[str]:
    m = CALL_ID_RE.fullmatch(value)
    if m is None:
        raise ParseError(f"Call-ID: {value[:80]!r} is not word [ @ word ]")
    return m


def check_cseq(value: str, limits: ParserLimits = DEFAULT_LIMITS) -> re.Match[str]:
    m = FAST_CSEQ_RE.fullmatch(value) or CSEQ_RE.fullmatch(value)
    if m is None:
        raise ParseError(f"CSeq: {value[:80]!r} is not a number and a method")
    if not _is_small_number(m[1]) or int(m[1]) > MAX_UINT32:  # RFC 3261 §8.1.1.5: 32-bit unsigned
        raise ParseError(f"CSeq: {m[1][:24]} is larger than 2**32-1")
    return m


def build_cseq(m: re.Match[str]) -> CSeq:
    return CSeq(int(m[1]), m[2])


# Canonical decimal spellings of small numbers, looked up before converting: most
# Max-Forwards and Content-Length values are one of these.
_SMALL_NUMBERS: Final[dict[str, int]] = {str(number): number for number in range(4096)}
_BYTE_NUMBERS: Final[dict[str, int]] = {str(number): number for number in range(256)}


def _check_bounded_int(header: str, maximum: int) -> Callable[[str, ParserLimits], int]:
    def check(value: str, limits: ParserLimits = DEFAULT_LIMITS) -> int:
        number = _SMALL_NUMBERS.get(value)
        if number is not None and number <= maximum:
            return number
        if value.isdigit() and value.isascii() and len(value) <= 20:
            number = int(value)
            if number <= maximum:
                return number
            raise ParseError(f"{header}: {value} is larger than {maximum}")
        if value.isdigit() and value.isascii():
            raise ParseError(f"{header}: {value[:20]}... is larger than {maximum}")
        raise ParseError(f"{header}: {value[:40]!r} is not a non-negative integer")

    return check


def check_content_length(value: str, limits: ParserLimits = DEFAULT_LIMITS) -> int:
    number = _SMALL_NUMBERS.get(value)
    if number is not None:
        return number
    if not value.isdigit() or not value.isascii():
        # RFC 4475 §3.1.2.3 (ncl): negative or not a number.
        raise ParseError(f"Content-Length: {value[:80]!r} is not a non-negative integer")
    if len(value) > 12:
        raise ParseError(f"Content-Length: {value[:20]} is too large", 413)
    return int(value)


def check_content_type(value: str, limits: ParserLimits = DEFAULT_LIMITS) -> re.Match[str]:
    m = MEDIA_TYPE_RE.fullmatch(value)
    if m is None:
        raise ParseError(f"Content-Type: {value[:80]!r} is not a media type")
    check_param_count(m[3], "Content-Type", limits)
    check_param_values(m[3], "Content-Type")
    return m


def build_content_type(m: re.Match[str]) -> MediaType:
    return MediaType(m[1].lower(), m[2].lower(), split_params(m[3]))


def check_date(value: str, limits: ParserLimits = DEFAULT_LIMITS) -> str:
    if SIP_DATE_RE.fullmatch(value) is None:
        # RFC 4475 §3.1.2.12 (baddate): GMT is the only time zone SIP-date allows.
        raise ParseError(f"Date: {value[:80]!r} is not an RFC 1123 date in GMT")
    return value


def check_retry_after(value: str, limits: ParserLimits = DEFAULT_LIMITS) -> int:
    m = RETRY_AFTER_RE.fullmatch(value)
    if m is None or len(m[1]) > 10 or int(m[1]) > MAX_UINT32:
        # RFC 4475 §3.1.2.5 (scalarlg)
        raise ParseError(f"Retry-After: {value[:40]!r} is not delta-seconds up to 2**32-1")
    check_param_count(m[2], "Retry-After", limits)
    check_param_values(m[2], "Retry-After")
    return int(m[1])


def check_warning(value: str, limits: ParserLimits = DEFAULT_LIMITS) -> list[str]:
    # RFC 4475 §3.1.2.5 (scalarlg): warn-code is exactly 3 digits.
    found = _match_list(value, WARNING_VALUE_RE.match, "Warning", "warn-code warn-agent warn-text", limits)
    return [m[0] for m in found]


def _same(seed: Any) -> Any:
    return seed


def _whole_match(m: re.Match[str]) -> str:
    return m[0]


class HeaderRule(NamedTuple):
    # value, limits -> seed (a list of seeds for list headers); ParseError if bad or past the limits
    check: Callable[[str, ParserLimits], Any]
    build: Callable[[Any], Any]  # seed (or the list of all lines' seeds) -> typed value
    multiple: bool  # may it appear on several lines? (a comma-separated list)
    # The parser's shortcut: a C-level matcher for the plain spelling, returning the
    # same seed check() would (one seed for list headers), or None to call check().
    fast: Callable[[str], Any] | None = None


# Headers checked at parse time, by lookup key. A single-valued one may appear once
# (RFC 4475 §3.3.8 multi01 and §3.3.9 mcl01 repeat them: 400).
HEADER_RULES: Final[dict[str, HeaderRule]] = {
    "via": HeaderRule(check_via, build_via, True, FAST_VIA_PARM_RE.fullmatch),
    "from": HeaderRule(_check_address("From"), address_of, False, FAST_NAME_ADDR_RE.fullmatch),
    "to": HeaderRule(_check_address("To"), address_of, False, FAST_NAME_ADDR_RE.fullmatch),
    "call-id": HeaderRule(check_call_id, _whole_match, False, CALL_ID_RE.fullmatch),
    "cseq": HeaderRule(check_cseq, build_cseq, False, FAST_CSEQ_RE.fullmatch),
    "max-forwards": HeaderRule(_check_bounded_int("Max-Forwards", 255), _same, False, _BYTE_NUMBERS.get),
    "content-length": HeaderRule(check_content_length, _same, False, _SMALL_NUMBERS.get),
    "content-type": HeaderRule(check_content_type, build_content_type, False, FAST_MEDIA_TYPE_RE.fullmatch),
    "contact": HeaderRule(check_contact, build_addresses, True, FAST_CONTACT_RE.fullmatch),
    "route": HeaderRule(_check_addresses("Route"), build_addresses, True, FAST_NAME_ADDR_RE.fullmatch),
    "record-route": HeaderRule(
        _check_addresses("Record-Route"), build_addresses, True, FAST_NAME_ADDR_RE.fullmatch
    ),
    "reply-to": HeaderRule(_check_address("Reply-To"), address_of, False, FAST_NAME_ADDR_RE.fullmatch),
    "expires": HeaderRule(_check_bounded_int("Expires", MAX_UINT32), _same, False, _SMALL_NUMBERS.get),
    "min-expires": HeaderRule(_check_bounded_int("Min-Expires", MAX_UINT32), _same, False),
    "retry-after": HeaderRule(check_retry_after, _same, False),
    "date": HeaderRule(check_date, _same, False),
    "warning": HeaderRule(check_warning, _same, True),
}
