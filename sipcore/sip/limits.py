"""How much of a message the parser is willing to read: explicit, documented limits.

Every grammar pattern is linear in its input (sipcore.sip.grammar), but what
follows a match is Python work per item: a header line looked up, a list entry
turned into a value, a parameter split, checked and read. Linear is not enough
when one datagram can hold ten thousand items, so the number of items is
bounded too, and checked with cheap counts (``len``, ``str.count``, a counter
per list line) *before* the per-item work they bound starts. With the defaults, parsing one 64 KB datagram and
reading every typed value costs at most a few milliseconds of CPU
(``bench/parser.py`` prints the worst case it finds).

Going past a limit is a :class:`~sipcore.sip.errors.LimitError` (a ``ParseError``)
naming the limit, with the status a server answers (on a stream, the header
section and body limits are a fatal ``StreamError``: framing is lost):

* 513 Message Too Large (RFC 3261 §21.5.14) for sizes: the datagram, a stream's
  header section, one header field, a URI in a header field;
* 414 Request-URI Too Long (§21.4.12) for the Request-URI;
* 413 Request Entity Too Large (§21.4.11) for a stream's body;
* 400 Bad Request for counts: header lines, list entries, parameters.

The defaults are generous beside what production stacks accept, so that real
traffic and every RFC 4475 / RFC 5118 message parse as before.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class ParserLimits:
    """The parser's limits; pass one to ``parse_message`` or ``StreamParser``.

    Sizes are counted in characters of the decoded header text, which for ASCII
    are octets (a UTF-8 sequence counts once).
    """

    # RFC 3261 §18.1.1: a UDP datagram holds at most 65,535 octets (Kamailio's
    # BUF_SIZE is the same number).
    max_datagram_size: int = 65_535
    # On a stream the header section (start line to the empty line, inclusive)
    # must be buffered before its end is known (§18.3); the body is then framed
    # by Content-Length. (A datagram's header section is bounded by its size.)
    max_header_size: int = 32 * 1024
    max_body_size: int = 1024 * 1024
    # Header lines after the start line, each continuation line of a folded
    # header counting as one (§7.3.1). Asterisk's chan_sip kept 64
    # (SIP_MAX_HEADERS); RFC 4475's longreq has 43, a request through the 70
    # proxies Max-Forwards allows (§8.1.1.6) about 150.
    max_header_lines: int = 256
    # One header field, name and value, after unfolding; also the start line.
    # HTTP servers allow 8 KB per field (Apache's LimitRequestFieldSize 8190,
    # nginx's large_client_header_buffers 8k).
    max_header_length: int = 8 * 1024
    # Entries of one comma-separated header (Via, Contact, Route, Record-Route,
    # Warning), all its lines together. Max-Forwards 70 (§8.1.1.6) bounds Via
    # and Record-Route at about 70 entries on any real path.
    max_list_entries: int = 128
    # Entries of all those headers together: each entry is a value built and
    # read, so this is what bounds that work (max_list_entries alone would allow
    # one full list per header).
    max_message_entries: int = 256
    # Parameters of one header entry (a via-parm, a name-addr, a media type) or
    # of one URI. An IMS Contact with all its feature tags has about 15.
    max_params: int = 64
    # Parameters of the whole message, counted by their ";" (an upper bound: a
    # ";" in a quoted string or a URI's user part counts too). This is what
    # bounds the per-parameter work: max_params alone would allow
    # max_list_entries times as many.
    max_message_params: int = 1024
    # A URI: the Request-URI, or one in From, To, Contact, Route... Kamailio
    # rewrites URIs in 1 KB buffers (MAX_URI_SIZE), pjsip in 256 to 1 KB
    # (PJSIP_MAX_URL_SIZE).
    max_uri_length: int = 4096

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"ParserLimits.{field.name} must be a positive int, not {value!r}")


DEFAULT_LIMITS = ParserLimits()
