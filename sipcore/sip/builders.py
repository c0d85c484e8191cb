"""Messages the transaction layer builds: responses (RFC 3261 §8.2.6), the ACK for
a non-2xx final response (§17.1.1.3), CANCEL (§9.1), branches and tags."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any, Final

from sipcore.sip.errors import ParseError
from sipcore.sip.headers import HEADER_RULES
from sipcore.sip.limits import DEFAULT_LIMITS
from sipcore.sip.message import Headers, Request, Response

# RFC 3261 §8.1.1.7: the branch of an RFC 3261 transaction starts with the magic cookie.
MAGIC_COOKIE: Final = "z9hG4bK"

REASON_PHRASES: Final[dict[int, str]] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated", 200: "OK", 202: "Accepted",
    204: "No Notification", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service", 400: "Bad Request",
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}  # fmt: skip


# RFC 3261 §8.2.6.2: the headers a response copies from its request, in the order written.
_COPIED: Final = (("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))
_TO: Final = HEADER_RULES["to"]


def new_branch() -> str:
    """A fresh branch: the magic cookie and 64 random bits (RFC 3261 §8.1.1.7)."""
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    """A fresh From/To tag: 64 random bits (RFC 3261 §19.3 asks for at least 32)."""
    return secrets.token_hex(8)


def _top_via(request: Request) -> str:
    seeds = request.headers._seeds.get("via")
    if not seeds:
        raise ValueError("the request has no Via header")
    top: str = seeds[0][0]  # the text of the first via-parm, even if a line lists several
    return top


def _required(request: Request, name: str) -> str:
    value = request.headers.get(name)
    if value is None:
        raise ValueError(f"the request has no {name} header")
    return value


def make_response(
    request: Request,
    status_code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """A response to ``request`` (RFC 3261 §8.2.6.2).

    Via (all, in order), From, Call-ID and CSeq are copied; To is copied and
    gets a tag when it has none, except on 100 Trying. A 100 copies Timestamp
    (§8.2.6.1); 101-299 responses copy Record-Route (§12.1.1).

    The copied lines were checked when the request was parsed or built, so they
    are copied with their checked values (``Headers._trusted``) rather than
    checked again: each seed is a match on its line's value (``match.string``;
    a line's first entry starts at 0). A To that gets a tag, ``headers`` and
    ``content_type`` are checked as ``Headers.add`` checks them; Content-Length
    is written from the body.
    """
    if not 100 <= status_code <= 699:
        raise ParseError(f"status code {status_code} is not in 100-699")
    source_seeds = request.headers._seeds
    seeds: dict[str, Any] = {}
    vias = source_seeds.get("via")
    if vias:
        lines = [f"Via: {via.string}" for via in vias if via.start() == 0]
        seeds["via"] = list(vias)
    else:
        lines = []
    for key, name in _COPIED:
        seed = source_seeds.get(key)
        if seed is None:
            raise ValueError(f"the request has no {name} header")
        value = seed.string
        if key == "to" and status_code != 100 and request.to_tag is None:
            value = f"{value};tag={to_tag or new_tag()}"
            seed = _TO.check(value, DEFAULT_LIMITS)  # the tag is the caller's: checked
        lines.append(f"{name}: {value}")
        seeds[key] = seed
    others: set[str] = set()
    if status_code == 100 and (timestamp := request.headers.get("Timestamp")) is not None:
        lines.append(f"Timestamp: {timestamp}")
        others.add("timestamp")
    if 101 <= status_code < 300 and (record_routes := source_seeds.get("record-route")):
        lines += [f"Record-Route: {route.string}" for route in record_routes if route.start() == 0]
        seeds["record-route"] = list(record_routes)
    response_headers = Headers._trusted(lines, seeds, others)
    if headers:
        response_headers._add_all(headers)
    if content_type is not None:
        response_headers.add("Content-Type", content_type)
    if "content-length" in response_headers._seeds:
        raise ParseError("Content-Length may appear only once")  # as Headers.add says it
    response_headers._lines.append(f"Content-Length: {len(body)}")
    response_headers._seeds["content-length"] = len(body)
    response = Response.__new__(Response)
    response.status_code = status_code
    response.reason = reason if reason is not None else REASON_PHRASES.get(status_code, "")
    response.headers = response_headers
    response.body = bytes(body)
    return response


def _in_transaction(original: Request, method: str, to: str) -> Request:
    """A request sharing ``original``'s transaction: its top Via, From, Call-ID, CSeq
    number and Route set, with ``method`` and the given To."""
    cseq = original.cseq
    if cseq is None:
        raise ValueError("the request has no CSeq header")
    headers = Headers()
    headers.add("Via", _top_via(original))
    headers.add("Max-Forwards", "70")
    headers.add("From", _required(original, "From"))
    headers.add("To", to)
    headers.add("Call-ID", _required(original, "Call-ID"))
    headers.add("CSeq", f"{cseq.number} {method}")
    for route in original.headers.get_all("Route"):
        headers.add("Route", route)
    headers.add("Content-Length", "0")
    return Request(method, original.uri, headers)


def make_ack(invite: Request, response: Response) -> Request:
    """The ACK a client transaction sends for a non-2xx final response (RFC 3261 §17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number as the INVITE, To from the
    response (with its tag), one Via equal to the INVITE's top Via, and the
    INVITE's Route headers.
    """
    if invite.method != "INVITE":
        raise ValueError(f"an ACK answers an INVITE, not {invite.method}")
    if response.status_code < 300:
        raise ValueError("the ACK for a 2xx response belongs to the dialog (RFC 3261 §13.2.2.4), not here")
    return _in_transaction(invite, "ACK", response.headers.get("To") or _required(invite, "To"))


def make_cancel(request: Request) -> Request:
    """CANCEL for a pending request (RFC 3261 §9.1): same Request-URI, Call-ID, To,
    From, CSeq number and top Via; method CANCEL; the request's Route headers."""
    if request.method in ("ACK", "CANCEL"):
        raise ValueError(f"{request.method} cannot be cancelled (RFC 3261 §9.1)")
    return _in_transaction(request, "CANCEL", _required(request, "To"))
