"""SIP requests and responses: parsing (RFC 3261 §7, §20, §25), serialization.

``parse_message(datagram)`` returns a :class:`Request` or :class:`Response`, or
raises :class:`ParseError` with the status code a server should answer with.
Known headers are checked against the grammar and their typed values kept;
unknown ones are kept as written, in order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, Final

from sipcore.sip.errors import LimitError, ParseError
from sipcore.sip.grammar import FAST_MAX_PARAMS, PORT_NUMBER, TOKEN_RE
from sipcore.sip.headers import (
    COMPACT_FORMS,
    COMPACT_NAME_OF,
    HEADER_RULES,
    CSeq,
    MediaType,
    NameAddress,
    Via,
    canonical_key,
    display_name_of,
    list_entries_error,
    via_of,
)
from sipcore.sip.limits import DEFAULT_LIMITS, ParserLimits
from sipcore.sip.uri import SCHEME_RE, Uri, check_uri_length, check_uri_params, parse_uri, validate_sip_uri

SIP_VERSION: Final = "SIP/2.0"
MAX_DATAGRAM_SIZE: Final = DEFAULT_LIMITS.max_datagram_size  # RFC 3261 §18.1.1

# Methods of RFC 3261 and the extensions a proxy meets every day.
KNOWN_METHODS: Final = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
     "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"}
)  # fmt: skip
# RFC 3261 §8.1.1 (requests) and §8.2.6.2 (responses): without these there is no transaction.
REQUIRED_HEADERS: Final = ("via", "from", "to", "call-id", "cseq")
_REQUIRED_KEYS: Final = frozenset(REQUIRED_HEADERS)
# A plain sip:/sips: Request-URI (no escapes, no IPv6, no headers); others take the full
# check. Possessive runs, each followed by a character it cannot take (sipcore.sip.grammar).
_FAST_REQUEST_URI_RE: Final = re.compile(
    r"sips?:(?:[A-Za-z0-9\-_.!~*'()&=+$,;/]++(?::[A-Za-z0-9\-_.!~*'()&=+$,]*+)?+@)?+"
    rf"[A-Za-z0-9][A-Za-z0-9\-.]*+(?::{PORT_NUMBER})?+"
    r"(?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$]++(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$]*+)?+)"
    rf"{{0,{FAST_MAX_PARAMS}}}+"
)

_VERSION_RE: Final = re.compile(r"SIP/[0-9]++\.[0-9]++", re.IGNORECASE)
# Reason-Phrase: any UTF-8 text, SP and HTAB; no other control characters.
_BAD_REASON_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _header_entry(key: str, careful: bool = False) -> tuple[str, Any, Any, bool]:
    """(lookup key, fast matcher or None, check or None, may repeat) for a lookup key.

    ``careful``: without the fast matcher, whose plain spellings carry no limits
    of their own (used when a message's counts say a limit may be reached).
    """
    rule = HEADER_RULES.get(key)
    if rule is None:
        return (key, None, None, True)
    return (key, None if careful else rule.fast, rule.check, rule.multiple)


# Exact spellings seen on the wire -> their entry, so the common case costs one
# dict lookup per line (no token check, no lower-casing).
_ENTRY_OF_SPELLING: dict[str, tuple[str, Any, Any, bool]] = {}
_COMMON_UNCHECKED: Final = (
    "accept", "allow", "supported", "user-agent", "server", "require", "subject", "proxy-require",
    "authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate", "content-encoding",
    "content-disposition", "accept-encoding", "accept-language", "event", "allow-events", "session-expires",
    "min-se", "p-asserted-identity", "privacy", "rseq", "rack", "timestamp", "organization", "unsupported",
    "refer-to", "referred-by",
)  # fmt: skip
for _key in (*HEADER_RULES, *_COMMON_UNCHECKED):
    for _spelling in (_key, display_name_of(_key), _key.title(), _key.upper()):
        _ENTRY_OF_SPELLING[_spelling] = _header_entry(_key)
for _short, _full in COMPACT_FORMS.items():
    _ENTRY_OF_SPELLING[_short] = _ENTRY_OF_SPELLING[_short.upper()] = _header_entry(_full)
_CAREFUL_ENTRY_OF_SPELLING: Final = {
    spelling: _header_entry(entry[0], careful=True) for spelling, entry in _ENTRY_OF_SPELLING.items()
}


_UNBUILT: Final = object()
_Match: Final = re.Match
# List headers each of whose lines leaves at least one seed, a match on the line's
# value (Contact does not: "Contact: *" leaves none).
_LINE_SEEDED: Final = frozenset({"via", "route", "record-route"})


class Headers:
    """Header fields in order, each kept as its (unfolded) line ``Name: value``.

    Lookups ignore case and know compact forms. Headers the transaction layer
    reads (``HEADER_RULES``) are checked when added or parsed, and typed on
    first use; adding a malformed one raises :class:`ParseError`.

    ``copy()`` is copy-on-write: the copy shares the lines, seeds, typed values
    and lookup index, and whichever side mutates first takes its own (so a
    transaction can hand out copies of its messages for the cost of an object).

    Lookups are answered without a pass over the lines where the seeds can:
    a checked header's seeds are matches on its lines' values (``match.string``),
    and the lookup keys of the other lines are kept as a set, so a header that is
    absent or checked costs a dict lookup or two. Other lookups go through an
    index (lookup key -> values) built on first use.
    """

    __slots__ = ("_index", "_lines", "_memo", "_others", "_seeds", "_shared", "_typed")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()):
        self._lines: list[str] = []
        self._seeds: dict[str, Any] = {}
        self._others: set[str] = set()  # lookup keys of the lines without a rule
        self._typed: dict[str, Any] = {}
        self._index: dict[str, list[str]] | None = None
        self._memo: dict[str, Any] = {}  # values read off the lines (branch, tags); new on mutation
        self._shared = False
        for name, value in fields:
            self.add(name, value)

    @classmethod
    def _trusted(cls, lines: list[str], seeds: dict[str, Any], others: set[str]) -> Headers:
        headers = cls.__new__(cls)
        headers._lines = lines
        headers._seeds = seeds
        headers._others = others
        headers._typed = {}
        headers._index = None
        headers._memo = {}
        headers._shared = False
        return headers

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for line in self._lines:
            name, _, value = line.partition(":")
            yield name.rstrip(" \t"), value.strip(" \t")

    def __len__(self) -> int:
        return len(self._lines)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._lines == other._lines or self.normalized() == other.normalized()

    __hash__ = None  # type: ignore[assignment]

    def normalized(self) -> list[tuple[str, str]]:
        """(lookup key, value) pairs: what equality compares."""
        return [(_key_of(name), value) for name, value in self]

    def _built_index(self) -> dict[str, list[str]]:
        # One pass over the lines serves every later lookup the seeds cannot answer.
        index: dict[str, list[str]] = {}
        for line in self._lines:
            name, _, value = line.partition(":")
            key = _key_of(name.rstrip(" \t"))
            values = index.get(key)
            if values is None:
                index[key] = [value.strip(" \t")]
            else:
                values.append(value.strip(" \t"))
        self._index = index
        return index

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (one header line), or ``default``."""
        key = _KEY_OF_SPELLING.get(name) or _key_of(name)
        seed = self._seeds.get(key)
        if seed is None:
            if key not in self._others:
                return default
        elif type(seed) is _Match:
            value: str = seed.string  # a single-valued header's one line
            return value
        elif key in _LINE_SEEDED:
            first: str = seed[0].string
            return first
        values = (self._index or self._built_index()).get(key)
        return default if values is None else values[0]

    def get_all(self, name: str) -> list[str]:
        """Every line's value of header ``name``, in order."""
        key = _KEY_OF_SPELLING.get(name) or _key_of(name)
        seed = self._seeds.get(key)
        if seed is None:
            if key not in self._others:
                return []
        elif type(seed) is _Match:
            return [seed.string]
        elif key in _LINE_SEEDED:
            # A line's entries are matched from its start on: its first one starts at 0.
            return [m.string for m in seed if m.start() == 0]
        return list((self._index or self._built_index()).get(key, ()))

    def typed(self, key: str) -> Any:
        """The typed value of a known header (``HEADER_RULES`` key), or None if absent."""
        value = self._typed.get(key, _UNBUILT)
        if value is _UNBUILT:
            seed = self._seeds.get(key)
            value = None if seed is None else HEADER_RULES[key].build(seed)
            self._typed[key] = value
        return value

    def _own(self) -> None:
        """Before a mutation: stop sharing with copies, forget the index and the memo."""
        if self._shared:
            self._lines = list(self._lines)
            self._seeds = dict(self._seeds)  # seed lists are replaced on change, never extended
            self._others = set(self._others)
            self._typed = dict(self._typed)
            self._memo = {}  # a new dict: a copy still shares the old one
            self._shared = False
        elif self._memo:
            self._memo = {}
        self._index = None

    def add(self, name: str, value: str) -> None:
        """Append a header line. Known headers are checked (ParseError if malformed)."""
        entry = _ENTRY_OF_SPELLING.get(name)  # our own spellings are tokens already
        if entry is None:
            name = name.strip(" \t")
            if TOKEN_RE.fullmatch(name) is None:
                raise ParseError(f"header name {name!r} is not a token")
            key = canonical_key(name)
            rule = HEADER_RULES.get(key)
        else:
            key = entry[0]
            rule = HEADER_RULES.get(key)
        if "\r" in value or "\n" in value:
            raise ParseError(f"{name}: a header value cannot contain CR or LF")
        value = value.strip(" \t")
        self._own()
        if rule is None:
            self._others.add(key)
        else:
            seed = rule.check(value, DEFAULT_LIMITS)
            if rule.multiple:
                merged = [*self._seeds.get(key, ()), *seed]
                if len(merged) > DEFAULT_LIMITS.max_list_entries:
                    raise list_entries_error(display_name_of(key), DEFAULT_LIMITS)
                self._seeds[key] = merged
            elif key in self._seeds:
                raise ParseError(f"{display_name_of(key)} may appear only once")
            else:
                self._seeds[key] = seed
            self._typed.pop(key, None)
        self._lines.append(f"{name}: {value}")

    def _add_all(self, fields: Iterable[tuple[str, str]]) -> None:
        """``add`` each field. An unchecked header spelled as we spell it (a token, no
        rule) takes only add's CR/LF check, without a call and an ``_own`` of its own."""
        self._own()
        lines, others = self._lines, self._others  # kept by add(): no longer shared
        for name, value in fields:
            entry = _ENTRY_OF_SPELLING.get(name)
            if entry is None or entry[2] is not None or "\r" in value or "\n" in value:
                self.add(name, value)
            else:
                stripped = value.strip(" \t")
                lines.append(f"{name}: {stripped}")
                others.add(entry[0])

    def remove(self, name: str) -> None:
        """Remove every line of header ``name``."""
        key = canonical_key(name)
        self._own()
        self._lines = [line for line in self._lines if _key_of(line.partition(":")[0].rstrip(" \t")) != key]
        self._seeds.pop(key, None)
        self._others.discard(key)
        self._typed.pop(key, None)

    def set(self, name: str, value: str) -> None:
        """Replace every line of header ``name`` by one, where the first one stood."""
        key = canonical_key(name)
        position = next((i for i, (field, _) in enumerate(self) if _key_of(field) == key), None)
        self.remove(name)
        self.add(name, value)
        if position is not None:
            self._lines.insert(position, self._lines.pop())

    def copy(self) -> Headers:
        copied = Headers.__new__(Headers)
        copied._lines, copied._seeds, copied._typed = self._lines, self._seeds, self._typed
        copied._others, copied._index, copied._memo = self._others, self._index, self._memo
        copied._shared = self._shared = True
        return copied


# Header name spelling -> lookup key, for the spellings met (bounded: unknown
# spellings beyond the bound are lower-cased each time).
_KEY_OF_SPELLING: dict[str, str] = {}
_MAX_SPELLINGS: Final = 512


def _key_of(name: str) -> str:
    key = _KEY_OF_SPELLING.get(name)
    if key is None:
        key = canonical_key(name)
        if len(_KEY_OF_SPELLING) < _MAX_SPELLINGS:
            _KEY_OF_SPELLING[name] = key
    return key


class Message:
    """What requests and responses share: headers, body, typed header access."""

    __slots__ = ("body", "headers")

    headers: Headers
    body: bytes

    # --- typed access to what the transaction layer needs ---

    @property
    def via(self) -> list[Via]:
        return self.headers.typed("via") or []

    @property
    def top_via(self) -> Via | None:
        headers = self.headers
        vias = headers._typed.get("via")
        if vias is not None:
            return vias[0] if vias else None
        top: Via | None = headers._memo.get("top-via")
        if top is None:
            seeds = headers._seeds.get("via")
            if not seeds:
                return None
            top = headers._memo["top-via"] = via_of(seeds[0])  # a proxy's key needs only the top one
        return top

    @property
    def branch(self) -> str | None:
        """The top Via's branch parameter: what transaction matching reads (RFC 3261 §17.2.3)."""
        headers = self.headers
        branch: str | None = headers._memo.get("branch", _UNBUILT)
        if branch is not _UNBUILT:
            return branch
        seeds = headers._seeds.get("via")
        if not seeds:
            branch = None
        else:
            params = seeds[0][6]
            branch = _param_of(params, ";branch=")
            if branch is None and "branch" in params.lower():
                branch = via_of(seeds[0]).branch  # spelled with spaces or in another case: parse it
        headers._memo["branch"] = branch
        return branch

    @property
    def sent_by(self) -> tuple[str, int | None] | None:
        """The top Via's sent-by: (host lower-cased, port or None)."""
        seeds = self.headers._seeds.get("via")
        if not seeds:
            return None
        port = seeds[0][5]
        return (seeds[0][4].lower(), int(port) if port is not None else None)

    @property
    def from_(self) -> NameAddress | None:
        value: NameAddress | None = self.headers.typed("from")
        return value

    @property
    def to(self) -> NameAddress | None:
        value: NameAddress | None = self.headers.typed("to")
        return value

    @property
    def from_tag(self) -> str | None:
        return _tag(self.headers, "from")

    @property
    def to_tag(self) -> str | None:
        return _tag(self.headers, "to")

    @property
    def call_id(self) -> str | None:
        m = self.headers._seeds.get("call-id")
        call_id: str | None = None if m is None else m[0]
        return call_id

    @property
    def cseq(self) -> CSeq | None:
        headers = self.headers
        cseq = headers._typed.get("cseq")
        if cseq is None:
            m = headers._seeds.get("cseq")
            if m is None:
                return None
            cseq = headers._typed["cseq"] = CSeq(int(m[1]), m[2])
        typed: CSeq = cseq
        return typed

    @property
    def max_forwards(self) -> int | None:
        return self.headers._seeds.get("max-forwards")

    @property
    def content_length(self) -> int | None:
        return self.headers._seeds.get("content-length")

    @property
    def content_type(self) -> MediaType | None:
        value: MediaType | None = self.headers.typed("content-type")
        return value

    @property
    def contact(self) -> list[NameAddress]:
        return self.headers.typed("contact") or []

    @property
    def route(self) -> list[NameAddress]:
        return self.headers.typed("route") or []

    @property
    def record_route(self) -> list[NameAddress]:
        return self.headers.typed("record-route") or []

    # --- serialization ---

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self, *, compact: bool = False) -> bytes:
        """The message on the wire; ``compact=True`` writes compact header names (§7.3.3)."""
        if compact:
            lines = [self.start_line()]
            for name, value in self.headers:
                lines.append(f"{COMPACT_NAME_OF.get(canonical_key(name), name)}: {value}")
            head = "\r\n".join(lines)
        else:
            head = "\r\n".join((self.start_line(), *self.headers._lines))
        return (head + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def _same_content(self, other: Message) -> bool:
        return self.headers == other.headers and self.body == other.body

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        """Replace the body, keeping Content-Length (and Content-Type if given) right."""
        self.body = bytes(body)
        if content_type is not None:
            self.headers.set("Content-Type", content_type)
        self.headers.set("Content-Length", str(len(self.body)))


def _param_of(params: str, marker: str) -> str | None:
    """A parameter read straight off a checked ``;a=b;c`` string when it is plain:
    ``marker`` (``;name=``) once, no quotes. None when absent or not plain (then parse)."""
    if '"' in params:
        return None
    lowered = params.lower()
    start = lowered.find(marker)
    if start < 0 or lowered.find(marker, start + 1) >= 0:
        return None
    start += len(marker)
    end = params.find(";", start)
    return params[start:] if end < 0 else params[start:end]


def _tag(headers: Headers, key: str) -> str | None:
    """The tag of From or To, without building the whole address when it is plain."""
    memo = headers._memo
    tag: str | None = memo.get(key, _UNBUILT)
    if tag is not _UNBUILT:
        return tag
    address = headers._typed.get(key)
    if address is not None:
        tag = address.tag
    elif (m := headers._seeds.get(key)) is None:
        tag = None
    else:
        tag = _param_of(m[4], ";tag=")
        if tag is None and "tag" in m[4].lower():
            tag = headers.typed(key).tag
    memo[key] = tag
    return tag


class Request(Message):
    __slots__ = ("_parsed_uri", "method", "uri")

    def __init__(
        self, method: str, uri: str, headers: Headers | Iterable[tuple[str, str]] = (), body: bytes = b""
    ):
        if TOKEN_RE.fullmatch(method) is None:
            raise ParseError(f"method {method!r} is not a token")
        self.method = method
        self.uri = uri
        self._parsed_uri: tuple[str, Uri] | None = None
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = bytes(body)

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    @property
    def request_uri(self) -> Uri:
        """The Request-URI parsed (ParseError if it does not parse), once per text of ``uri``."""
        uri = self.uri
        memo = self._parsed_uri
        if memo is not None and memo[0] == uri:  # a Uri is immutable; ``uri`` may be replaced
            return memo[1]
        # Parsed messages had its length and parameters bounded by the request line's check.
        parsed = parse_uri(uri, "Request-URI", limits=None)
        self._parsed_uri = (uri, parsed)
        return parsed

    def copy(self) -> Request:
        copied = Request(self.method, self.uri, self.headers.copy(), self.body)
        copied._parsed_uri = self._parsed_uri
        return copied

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return self.method == other.method and self.uri == other.uri and self._same_content(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.call_id!r}>"


class Response(Message):
    __slots__ = ("reason", "status_code")

    def __init__(
        self,
        status_code: int,
        reason: str = "",
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ):
        if not 100 <= status_code <= 699:
            raise ParseError(f"status code {status_code} is not in 100-699")
        self.status_code = status_code
        self.reason = reason
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = bytes(body)

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status_code} {self.reason}"

    @property
    def is_provisional(self) -> bool:
        return self.status_code < 200

    def copy(self) -> Response:
        return Response(self.status_code, self.reason, self.headers.copy(), self.body)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (
            self.status_code == other.status_code
            and self.reason == other.reason
            and self._same_content(other)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Response {self.status_code} {self.reason} call-id={self.call_id!r}>"


# --- parsing ---


def _bad_version(version: str) -> ParseError:
    if _VERSION_RE.fullmatch(version):
        return ParseError(f"SIP version {version[:40]} is not supported (only {SIP_VERSION})", 505)
    return ParseError(f"{version[:40]!r} is not a SIP version")


def _parse_request_line(line: str, limits: ParserLimits, careful: bool) -> tuple[str, str]:
    method, _, rest = line.partition(" ")
    uri, _, version = rest.partition(" ")
    if len(uri) > limits.max_uri_length:
        # RFC 3261 §21.4.12: 414 for a Request-URI longer than the server will interpret.
        check_uri_length(uri, "Request-URI", limits, 414)
    plain = version == SIP_VERSION and method in KNOWN_METHODS and not careful
    if plain and _FAST_REQUEST_URI_RE.fullmatch(uri) is not None:
        return method, uri
    return _parse_request_line_in_full(line, limits)


def _parse_request_line_in_full(line: str, limits: ParserLimits) -> tuple[str, str]:
    parts = line.split(" ", 3)  # a fourth part means a space too many
    if len(parts) != 3 or not all(parts):
        # RFC 4475 §3.1.2.8-10 (lwsruri, lwsstart, trws); §25: exactly one SP between elements.
        raise ParseError(f"request line {line[:80]!r} is not Method SP Request-URI SP SIP-Version")
    method, uri, version = parts
    check_uri_length(uri, "Request-URI", limits, 414)
    check_uri_params(uri, "Request-URI", limits)
    if version != SIP_VERSION and version.upper() != SIP_VERSION:
        raise _bad_version(version)
    if TOKEN_RE.fullmatch(method) is None:
        raise ParseError(f"method {method[:40]!r} is not a token")
    scheme = SCHEME_RE.match(uri)
    if scheme is None:
        # RFC 4475 §3.1.2.7 (ltgtruri): "<sip:...>" is not a Request-URI.
        raise ParseError(f"Request-URI {uri[:80]!r} has no scheme")
    if scheme.end() in (4, 5) and uri[: scheme.end() - 1].lower() in ("sip", "sips"):
        if validate_sip_uri(uri, "Request-URI")[7] is not None:
            # RFC 4475 §3.1.2.11 (escruri); RFC 3261 §19.1.5: no headers in a Request-URI.
            raise ParseError(f"Request-URI {uri[:80]!r} must not contain headers")
    else:
        parse_uri(uri, "Request-URI", limits=None)
    return method, uri


def _parse_status_line(line: str) -> tuple[int, str]:
    version, _, rest = line.partition(" ")
    if version != SIP_VERSION and version.upper() != SIP_VERSION:
        raise _bad_version(version)
    code, space, reason = rest.partition(" ")
    # Status-Code is 3DIGIT, 100-699 (RFC 3261 §7.2, RFC 4475 §3.1.2.19 bigcode); the SP
    # before the (possibly empty) Reason-Phrase is required (§3.1.1.13 noreason).
    if not space or len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] not in "123456":
        raise ParseError(f"status line {line[:80]!r} is not SIP/2.0 SP 3DIGIT SP Reason-Phrase")
    if _BAD_REASON_RE.search(reason):
        raise ParseError("Reason-Phrase contains control characters")
    return int(code), reason


class _FoldedLines(Exception):
    """Raised by the first pass on meeting a continuation line; the head is unfolded and parsed again."""


def _parse_head(head: bytes, limits: ParserLimits = DEFAULT_LIMITS) -> Request | Response:
    """Parse a header section (start line and header lines joined by CRLF, no empty line)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("utf-8", "surrogateescape")  # kept byte for byte, and written back so
    # The limits are counted on the whole text (str.count, len), before any per-item
    # work (sipcore.sip.limits); a text shorter than a limit cannot reach it.
    if len(text) > limits.max_message_params:
        semicolons = text.count(";")
        if semicolons > limits.max_message_params:
            raise LimitError(
                f"{semicolons} parameters (counted by ';') exceed "
                f"max_message_params {limits.max_message_params}"
            )
    # The fast matchers take at most FAST_MAX_PARAMS parameters: safe unless the
    # limit is lower.
    many_params = limits.max_params < FAST_MAX_PARAMS
    # Folding is rare, so it is looked for only when the first pass meets a
    # continuation line or fails (not for a limit: unfolding only joins lines, it
    # never brings a message back within one; header lines are counted as received).
    try:
        return _parse_lines(text, limits, many_params)
    except _FoldedLines:
        pass
    except LimitError:
        raise
    except ParseError:
        if "\r\n " not in text and "\r\n\t" not in text:
            raise
    return _parse_lines(unfold(text), limits, many_params)


def unfold(text: str) -> str:
    """Join each continuation line to the line it continues (RFC 3261 §7.3.1).

    A line starting with SP or HTAB continues the one before; the fold (the
    white space around its CRLF) is LWS and reads as one SP, and a run of folds
    (continuation lines of white space only) as one SP per CRLF. One pass over
    the lines: each piece of text is copied a bounded number of times, however
    many lines there are and however long (a regular expression searched for
    the folds would start a match attempt at every character).
    """
    logical: list[str] = []
    pieces: list[str] = []  # of the line being joined
    folds = 0  # CRLFs in a run of folds not yet closed by text
    for line in text.split("\r\n"):
        if pieces and line[:1] in (" ", "\t"):
            if not folds:
                pieces[-1] = pieces[-1].rstrip(" \t")  # the run starts with the white space before it
            folds += 1
            rest = line.lstrip(" \t")
            if rest:
                pieces += (" " * folds, rest)
                folds = 0
            continue
        if pieces:
            if folds:
                pieces.append(" " * folds)
                folds = 0
            logical.append("".join(pieces))
        pieces = [line]
    if folds:
        pieces.append(" " * folds)
    logical.append("".join(pieces))
    return "\r\n".join(logical)


def _parse_lines(text: str, limits: ParserLimits, many_params: bool) -> Request | Response:
    # A bare CR or LF cannot hide in what the grammar checks (start line, header
    # names, known headers' values); unknown headers' values are searched below.
    lines = text.split("\r\n")
    if len(lines) > limits.max_header_lines + 1:  # the first pass counts continuation lines too
        raise LimitError(f"{len(lines) - 1} header lines exceed max_header_lines {limits.max_header_lines}")
    # Lines long enough to hold a URI past the limit: the fast matchers are not safe.
    careful = many_params
    if len(text) > limits.max_uri_length or len(text) > limits.max_header_length:
        longest = max(map(len, lines))
        careful = careful or longest > limits.max_uri_length
    else:
        longest = 0

    first = lines[0]
    message: Request | Response
    if first[:4].upper() == "SIP/":
        status_code, reason = _parse_status_line(first)
        message = Response.__new__(Response)
        message.status_code, message.reason = status_code, reason
    else:
        method, uri = _parse_request_line(first, limits, careful)  # 414 before 513 for a long URI
        message = Request.__new__(Request)
        message.method, message.uri, message._parsed_uri = method, uri, None

    if longest > limits.max_header_length:
        at, line = next((at, line) for at, line in enumerate(lines) if len(line) > limits.max_header_length)
        what = "the start line" if at == 0 else f"header {line.partition(':')[0][:40].strip()!r}"
        raise LimitError(
            f"{what} of {len(line)} characters exceeds max_header_length {limits.max_header_length}", 513
        )

    del lines[0]
    seeds: dict[str, Any] = {}
    others: set[str] = set()
    entry_of = _CAREFUL_ENTRY_OF_SPELLING if careful else _ENTRY_OF_SPELLING
    most_entries = limits.max_list_entries
    entries_left = limits.max_message_entries
    for line in lines:
        name, colon, value = line.partition(":")
        entry = entry_of.get(name)
        if entry is None:
            if line[:1] in (" ", "\t") and line:
                raise _FoldedLines
            if not colon:
                raise ParseError(
                    f"header line {line[:60]!r} has no colon" if line else "an empty header line"
                )
            name = name.rstrip(" \t")  # HCOLON = *( SP / HTAB ) ":" SWS
            if TOKEN_RE.fullmatch(name) is None:
                raise ParseError(f"header name {name[:60]!r} is not a token")
            entry = _header_entry(canonical_key(name), careful)
        key, fast, check, multiple = entry
        if check is None:
            if "\r" in value or "\n" in value:
                raise ParseError(f"a bare CR or LF in the {name.strip()} header")
            others.add(key)
            continue
        value = value.strip(" \t")
        seed = None if fast is None else fast(value)
        if multiple:
            seed = check(value, limits) if seed is None else [seed]
            entries_left -= len(seed)
            if entries_left < 0:
                raise LimitError(
                    f"list headers hold more than max_message_entries {limits.max_message_entries} entries"
                )
            previous = seeds.get(key)
            if previous is None:
                seeds[key] = seed  # a list of this parse's own: extended in place below
            else:
                previous += seed  # not `previous + seed`: thousands of lines would cost their square
                if len(previous) > most_entries:
                    raise list_entries_error(display_name_of(key), limits)
        elif key in seeds:
            # RFC 4475 §3.3.8 (multi01), §3.3.9 (mcl01): single-valued headers, once.
            raise ParseError(f"{display_name_of(key)} appears more than once")
        else:
            seeds[key] = check(value, limits) if seed is None else seed

    if not seeds.keys() >= _REQUIRED_KEYS:
        missing = next(key for key in REQUIRED_HEADERS if key not in seeds)
        # RFC 4475 §3.3.1 (insuf): no transaction can be formed without these.
        raise ParseError(f"required header {display_name_of(missing)} is missing")
    if type(message) is Request:
        cseq_method = seeds["cseq"][2]
        if cseq_method != message.method:
            # RFC 3261 §8.1.1.5; RFC 4475 §3.1.2.17-18 (mismatch01/02): 501 for an unknown method.
            code = 400 if message.method in KNOWN_METHODS else 501
            raise ParseError(
                f"CSeq method {cseq_method} does not match the request method {message.method}", code
            )
    # Headers._trusted, inline: one call less per message.
    headers = message.headers = Headers.__new__(Headers)
    headers._lines, headers._seeds, headers._others = lines, seeds, others
    headers._typed, headers._index, headers._memo, headers._shared = {}, None, {}, False
    return message


def _split_head(data: bytes, start: int) -> tuple[bytes, int]:
    """(header section with CRLF line ends, offset of the body) of a datagram.

    A datagram that ends right after a header line, without the empty line, is
    read as headers only: the datagram's end is unambiguous (RFC 4475's own
    baddn and RFC 5118's §4.10 messages are published that way).
    """
    first_lf = data.find(b"\n", start)
    if first_lf > start and data[first_lf - 1] == 13:
        end = data.find(b"\r\n\r\n", start)
        if end >= 0:
            return data[start:end], end + 4
        if data.endswith(b"\r\n"):
            return data[start:-2], len(data)
        raise ParseError("the header section does not end with an empty line (CRLF CRLF)")
    # Bare LF line ends (RFC 5118's published archive uses them): tolerated when
    # consistent, as the robustness principle asks; mixed line ends are refused.
    end = data.find(b"\n\n", start)
    if end >= 0:
        head, body_start = data[start:end], end + 2
    elif data.endswith(b"\n"):
        head, body_start = data[start:-1], len(data)
    else:
        raise ParseError("the header section does not end with an empty line")
    if b"\r" in head:
        raise ParseError("the header section mixes CRLF and bare LF line ends")
    return head.replace(b"\n", b"\r\n"), body_start


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise ParseError(f"expected bytes, got {type(data).__name__}")


def parse_message(
    data: bytes | bytearray | memoryview,
    *,
    limits: ParserLimits = DEFAULT_LIMITS,
    max_size: int | None = None,
) -> Request | Response:
    """Parse one message from a datagram (RFC 3261 §18.3).

    The body is Content-Length bytes; octets after it are discarded. Without
    Content-Length the body is the rest of the datagram. Raises ParseError only,
    among others for anything past ``limits`` (sipcore.sip.limits); ``max_size``
    overrides ``limits.max_datagram_size``.
    """
    if type(data) is not bytes:
        data = _as_bytes(data)
    if max_size is None:
        max_size = limits.max_datagram_size
    if len(data) > max_size:
        raise LimitError(f"message of {len(data)} bytes exceeds max_datagram_size {max_size}", 513)
    start = 0
    while data.startswith(b"\r\n", start):  # RFC 3261 §7.5: CRLFs before the start line
        start += 2
    if start == len(data):
        raise ParseError("empty message")
    head, body_start = _split_head(data, start)
    message = _parse_head(head, limits)
    length = message.headers._seeds.get("content-length")
    available = len(data) - body_start
    if length is None:
        message.body = data[body_start:]
    elif length > available:
        # RFC 4475 §3.1.2.2 (clerr): on a datagram the missing octets are never coming.
        raise ParseError(f"Content-Length {length} exceeds the {available} octets after the headers")
    else:
        message.body = data[body_start : body_start + length]
    return message
