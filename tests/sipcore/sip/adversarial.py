"""Adversarial SIP messages for the parser's linear-time property (and bench/parser.py).

Each case is a *place* the grammar reads (a checked header's value at a given
point of its rule, the start lines, a URI inside them), filled with a long run of
one *unit* (every character class the grammar uses, alone and in the pairs that
make a backtracking engine hesitate: ``a:``, ``[:``, ``"a``, ``;a=``...) and then a
*tail* ("" or a control character that fails the match only at the very end).
``build(case, size)`` gives a whole datagram whose run is about ``size`` bytes.

``parse_and_read`` is the work that is timed: parse, then read every typed
view the transaction layer or a proxy may read, so lazy work is counted too.

Two properties are checked on these (tests/sipcore/sip/test_linear.py): with the
parser's limits lifted (``LIFTED``), the grammar itself parses or refuses each
one in time linear in its size; with the default limits, no 60 KB datagram costs
more than a few milliseconds, most being refused by a cheap count before any
per-item work. ``at_the_limits()`` gives the most expensive messages the default
limits still accept: every limit reached at once where they combine.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from sipcore.sip import ParseError, ParserLimits, parse_message
from sipcore.sip.headers import HEADER_RULES
from sipcore.sip.limits import DEFAULT_LIMITS

# Every count and length limit out of the way (a datagram still fits in 64 KB).
_HUGE = 1 << 30
LIFTED = ParserLimits(
    max_header_lines=_HUGE,
    max_header_length=_HUGE,
    max_list_entries=_HUGE,
    max_message_entries=_HUGE,
    max_params=_HUGE,
    max_message_params=_HUGE,
    max_uri_length=_HUGE,
)

REQUEST_LINE = "INVITE sip:bob@example.com SIP/2.0"
STATUS_LINE = "SIP/2.0 200 OK"
BASE_HEADERS = (
    ("Via", "SIP/2.0/UDP h.example.com;branch=z9hG4bK1"),
    ("To", "<sip:bob@example.com>"),
    ("From", "<sip:alice@example.com>;tag=1"),
    ("Call-ID", "c1@example.com"),
    ("CSeq", "1 INVITE"),
    ("Max-Forwards", "70"),
    ("Content-Length", "0"),
)

_ADDRESS_PLACES = (
    "{}",
    "<{}",
    "<sip:{}",
    "<sip:{}>",
    "<sip:a@{}>",
    "<sip:a@[{}]>",
    "<sip:a@[{}>",
    "<sip:a@b;{}>",
    "<sip:a@b?{}>",
    "<sip:a@b>{}",
    "<sip:a@b>;x={}",
    "<sip:a@b>;x=[{}",
    '<sip:a@b>;x="{}',
    '"{}',
    '"{}" <sip:a@b>',
    "{} <sip:a@b>",
    "a {}<sip:a@b>",
    "sip:{}",
    "sip:a@b;x={}",
    "<sip:a@b>;x={}@",
)

# (header name, or "request line" / "status line" / "line"; template with "{}")
PLACES: tuple[tuple[str, str], ...] = (
    ("request line", "INVITE {} SIP/2.0"),
    ("request line", "INVITE sip:{} SIP/2.0"),
    ("request line", "INVITE sip:a@{} SIP/2.0"),
    ("request line", "INVITE sip:[{} SIP/2.0"),
    ("request line", "INVITE sip:a@b;{} SIP/2.0"),
    ("request line", "INVITE sip:a@b?{} SIP/2.0"),
    ("request line", "INVITE tel:{} SIP/2.0"),
    ("request line", "INVITE {}"),
    ("request line", "{} sip:a@b SIP/2.0"),
    ("status line", "SIP/2.0 200 {}"),
    ("status line", "SIP/2.0 {}"),
    ("line", "{}: a"),
    ("line", "X-Pad: a{}"),
    ("line", "X-Pad: a\r\n {}"),  # a folded message: unfolding reads the run
    ("Via", "{}"),
    ("Via", "SIP/2.0/UDP {}"),
    ("Via", "SIP/2.0/UDP h{}"),
    ("Via", "SIP/2.0/UDP [{}"),
    ("Via", "SIP/2.0/UDP [{}]"),
    ("Via", "SIP/2.0/UDP h:{}"),
    ("Via", "SIP/2.0/UDP h;x={}"),
    ("Via", "SIP/2.0/UDP h;x=[{}"),
    ("Via", 'SIP/2.0/UDP h;x="{}'),
    ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1;received={}"),
    ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1, {}"),
    *(("From", place) for place in _ADDRESS_PLACES),
    *(("Contact", place) for place in _ADDRESS_PLACES),
    ("To", "<sip:a@b>;x={}"),
    ("Reply-To", "<sip:a@b>;x={}"),
    ("Reply-To", "{}"),
    ("Route", "<sip:a@b;lr>, {}"),
    ("Record-Route", "{}"),
    ("Refer-To", "<sip:a@b?{}>"),
    ("Call-ID", "{}"),
    ("Call-ID", "a@{}"),
    ("CSeq", "{}"),
    ("CSeq", "1 {}"),
    ("CSeq", "{} INVITE"),
    ("Content-Type", "{}"),
    ("Content-Type", "application/{}"),
    ("Content-Type", "application/sdp{}"),
    ("Content-Type", "application/sdp;a={}"),
    ("Content-Type", "application/sdp;a={}@"),
    ("Content-Type", 'application/sdp;a="{}'),
    ("Content-Length", "{}"),
    ("Max-Forwards", "{}"),
    ("Expires", "{}"),
    ("Min-Expires", "{}"),
    ("Retry-After", "{}"),
    ("Retry-After", "1 ({}"),
    ("Retry-After", "1 (a){}"),
    ("Retry-After", "1;a={}"),
    ("Warning", "{}"),
    ("Warning", "399 {}"),
    ("Warning", "399 h {}"),
    ("Warning", '399 h "{}'),
    ("Date", "{}"),
    ("Date", "Mon, {}"),
    ("Require", "{}"),
    ("Supported", "{}"),
    ("Allow", "{}"),
    ("Accept", "{}"),
)

TOKEN_CHARS = "aZ7-.!%*_+`'~"
UNITS: tuple[str, ...] = (
    *TOKEN_CHARS,
    *'()<>:\\"/[]?{}',  # what word adds to token
    *"@;=, \t&$#^|",
    "é",  # UTF-8
    "\udcff",  # an undecodable byte
    "\x00",
    "\x01",
    "\x7f",
    ";a",
    ";a=",
    ";a=b",
    ';a="b"',
    "a=",
    "a;",
    ":a",
    "a:",
    "::",
    "1.",
    "1:",
    "[:",
    ":]",
    '"a',
    '\\"',
    "\\a",
    "%4",
    "%4a",
    "a ",
    " a",
    ", ",
    ",a",
    "a@",
    "@a",
    "a/",
    "(a",
    "\\(",
    "sip:",
    "<sip:a>,",
    "a <sip:a>;a,",
    "sip:a,",
    "SIP/2.0/UDP h,",
    "SIP/2.0/UDP [::1],",
    '399 h "a",',
    ";x=::1",
    ";x=[::1]",
    "\r\n ",  # folded lines
    " \r\n\t",
    "\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1",  # thousands of header lines
    "\r\nRoute: <sip:a;lr>",
    "\r\nX: a",
)
TAILS = ("", "\x01")


@dataclass(frozen=True, slots=True)
class Case:
    where: str
    template: str
    unit: str
    tail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.template!r} with {self.unit!r} repeated, then {self.tail!r}"


def cases() -> Iterator[Case]:
    for where, template in PLACES:
        for unit in UNITS:
            for tail in TAILS:
                yield Case(where, template, unit, tail)


def _encoded(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def build(case: Case, size: int) -> bytes:
    """The datagram for ``case`` whose run of units is about ``size`` bytes."""
    run = case.unit * max(1, size // len(_encoded(case.unit)))
    filled = case.template.replace("{}", run + case.tail)
    headers = list(BASE_HEADERS)
    start = STATUS_LINE if case.where == "status line" else REQUEST_LINE
    if case.where in ("request line", "status line"):
        start = filled
    elif case.where == "line":
        headers.insert(-1, ("", filled))
    else:
        names = [name for name, _ in headers]
        if case.where in names:
            headers[names.index(case.where)] = (case.where, filled)
        else:
            headers.insert(-1, (case.where, filled))
    lines = [start, *(f"{name}: {value}" if name else value for name, value in headers)]
    return _encoded("\r\n".join(lines) + "\r\n\r\n")


def _message(headers: list[tuple[str, str]], start: str = REQUEST_LINE) -> bytes:
    """BASE_HEADERS with ``headers`` replacing those of the same name, or added before Content-Length."""
    names = {name for name, _ in headers}
    kept = [(name, value) for name, value in BASE_HEADERS if name not in names]
    lines = [start, *(f"{name}: {value}" for name, value in [*kept[:-1], *headers, kept[-1]])]
    return _encoded("\r\n".join(lines) + "\r\n\r\n")


def at_the_limits(limits: ParserLimits = DEFAULT_LIMITS) -> dict[str, bytes]:
    """The costliest messages ``limits`` accept: per-item work at its most.

    Each puts as many items as the limits allow where each item costs most to
    check and to read: entries that are name-addrs with a URI to parse, and
    parameters whose value must be checked as an IPv6 address.
    """
    semicolons = limits.max_message_params - 2  # BASE_HEADERS hold two
    entries = limits.max_message_entries  # the Vias below replace BASE_HEADERS' one
    per_list = min(limits.max_list_entries, entries // 4)
    per_entry = min(limits.max_params, limits.max_header_length // 40)
    ipv6_lines = min(semicolons // per_entry, limits.max_header_lines - 8)
    lists = [
        ("Via", ", ".join(["SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1;rport"] * per_list)),
        ("Contact", ", ".join(['"A" <sip:a@[2001:db8::1];lr>;expires=60'] * per_list)),
        ("Route", ", ".join(["<sip:a@[2001:db8::1];lr>"] * per_list)),
        ("Record-Route", ", ".join(["<sip:a@[2001:db8::1];lr>"] * (entries - 3 * per_list))),
    ]
    return {
        "list entries, each a URI with an IPv6 host": _message(lists),
        "IPv6 parameter values, in Vias": _message(
            [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1" + ";received=1:2:3:4:5:6:1.2.3.4" * (per_entry - 1))]
            * ipv6_lines
        ),
        "URI parameters, in Contacts": _message(
            [("Contact", "<sip:a@b" + ";x=a" * per_entry + ">")] * (semicolons // per_entry)
        ),
        "header lines": _message(
            [("Route", "<sip:a@b;lr>")] * per_list
            + [("X", "a")] * (limits.max_header_lines - len(BASE_HEADERS) - per_list)
        ),
    }


def parse_and_read(data: bytes, limits: ParserLimits = DEFAULT_LIMITS) -> None:
    """Parse ``data`` and read every typed view; only ParseError may come out."""
    try:
        message = parse_message(data, limits=limits)
    except ParseError:
        return
    for key in HEADER_RULES:
        message.headers.typed(key)
    _ = (message.branch, message.sent_by, message.cseq, message.call_id, message.from_tag, message.to_tag)
    _ = [(via.branch, via.rport, via.ttl, via.received, via.maddr) for via in message.via]
    addresses = [*message.contact, *message.route, *message.record_route]
    for address in (message.from_, message.to, *addresses):
        if address is None:
            continue
        _ = (address.tag, address.params)
        with contextlib.suppress(ParseError):
            _ = address.parsed_uri
    if hasattr(message, "uri"):
        with contextlib.suppress(ParseError):
            _ = message.request_uri


def cpu_seconds(
    data: bytes, repeats: int = 3, at_least: float = 0.0, limits: ParserLimits = DEFAULT_LIMITS
) -> float:
    """Best of ``repeats`` CPU times of one ``parse_and_read(data)``.

    Each repeat runs the parse often enough to take ``at_least`` seconds and
    is divided back, so tiny inputs are timed above the clock's noise. CPU time
    of this process only: other processes on the machine do not count.
    """
    loops = 1
    while True:
        start = time.process_time()
        for _ in range(loops):
            parse_and_read(data, limits)
        elapsed = time.process_time() - start
        if elapsed >= at_least or loops >= 1 << 16:
            break
        loops *= 4
    best = elapsed / loops
    for _ in range(repeats - 1):
        start = time.process_time()
        for _ in range(loops):
            parse_and_read(data, limits)
        best = min(best, (time.process_time() - start) / loops)
    return best
