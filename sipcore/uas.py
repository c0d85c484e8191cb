"""The UAS core of a node: RFC 3261 §8.2 checks, the dial plan, minimal dialogs.

A new request first passes the §8.2 checks, in the RFC's order; a refusal is
answered statelessly and creates no transaction. What passes gets a server
transaction and is answered as the dial plan says. Each INVITE is a
:class:`Call`, a small timed machine (ring, answer, 2xx retransmission until
the ACK, CANCEL, Timer C) served by the layer's one scheduler. A 2xx makes a
dialog; a BYE in it gets 200, a request in an unknown dialog 481 (§12.2.2).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum
from typing import ClassVar

from sipcore.dialog import uas_bye
from sipcore.dialplan import FALLBACK_RULE, DialPlan, Rule
from sipcore.layer import Source, TransactionLayer, stateless_tag
from sipcore.sip import (
    AbsoluteUri,
    InviteServerTransaction,
    NonInviteServerTransaction,
    ParseError,
    Request,
    Response,
    SipUri,
    TelUri,
    Timings,
    Transaction,
    TransactionState,
    make_response,
    new_tag,
)
from sipcore.sip.keys import default_port
from sipcore.sip.uri import Uri

log = logging.getLogger("sipcore.node")

ALLOWED_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS")
ALLOW = ", ".join(ALLOWED_METHODS)
ACCEPTED_TYPES = ("application/sdp",)
ACCEPT = ", ".join(ACCEPTED_TYPES)
SUPPORTED: tuple[str, ...] = ()  # no extensions (no 100rel, timer, replaces)
SUPPORTED_SCHEMES = ("sip", "sips", "tel")
# §11.2: what an OPTIONS answer advertises.
SUPPORTED_VALUE = ", ".join(SUPPORTED)
OPTIONS_HEADERS = (("Allow", ALLOW), ("Accept", ACCEPT), ("Supported", SUPPORTED_VALUE))
# RFC 3261 §21.5.2: a method nobody here recognises is 501; a known one we do not serve is 405.
KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "INFO",
        "REFER",
        "MESSAGE",
        "UPDATE",
    }
)
MAX_DIALOGS = 100_000
DIALOG_LIFETIME = 4 * 3600.0
DEFAULT_TIMER_C = 180.0  # RFC 3261 §16.6: more than 3 minutes
DEFAULT_MAX_TRANSACTIONS = 200_000  # live server and client transactions of one node
OVERLOAD_RETRY_AFTER = 5


def sdp_answer(session_id: int, host: str) -> bytes:
    """A minimal SDP answer (RFC 4566, RFC 3264): PCMU on a port nobody listens on."""
    family = "IP6" if ":" in host else "IP4"
    return (
        f"v=0\r\no=callops {session_id} {session_id} IN {family} {host}\r\ns=callops\r\n"
        f"c=IN {family} {host}\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()


def check_request(request: Request, uri: Uri | None = None) -> tuple[int, str, list[tuple[str, str]]] | None:
    """RFC 3261 §8.2.1-§8.2.3 in order: (status, reason, extra headers) to refuse with, or None.

    ``uri`` is the parsed Request-URI when the caller has it already.
    """
    method = request.method
    # §8.2.1 Method inspection.
    if method not in ALLOWED_METHODS:
        status = 405 if method in KNOWN_METHODS else 501
        return status, "Method Not Allowed" if status == 405 else "Not Implemented", [("Allow", ALLOW)]
    # §8.2.2.1 To and Request-URI: a scheme we do not serve is 416.
    if uri is None:
        try:
            uri = request.request_uri
        except ParseError:
            return 400, "Bad Request-URI", []
    if isinstance(uri, AbsoluteUri) or getattr(uri, "scheme", "sip").lower() not in SUPPORTED_SCHEMES:
        return 416, "Unsupported URI Scheme", []
    require, accept, encoding = _negotiation_headers(request)
    # §8.2.2.3 Require: every extension named is unsupported here (Proxy-Require is for proxies).
    unsupported = [option for option in require if option.lower() not in SUPPORTED]
    if unsupported and method not in ("CANCEL", "ACK"):
        return 420, "Bad Extension", [("Unsupported", ", ".join(unsupported))]
    # §8.2.3 Content processing: a body of a type we do not take is 415.
    if request.body and method != "CANCEL":
        content_type = request.content_type
        mime = content_type.mime.lower() if content_type is not None else "application/sdp"
        if mime not in ACCEPTED_TYPES:
            return 415, "Unsupported Media Type", [("Accept", ACCEPT)]
        if encoding and encoding.lower() != "identity":
            return 415, "Unsupported Media Type", [("Accept-Encoding", "identity")]
    # §8.2.3 / §21.4.7: a 2xx to this INVITE carries SDP; an Accept without it is 406 (RFC 4475 §3.3.15).
    takes_sdp = (
        media.split(";")[0].strip().lower() in ("application/sdp", "application/*", "*/*") for media in accept
    )
    if method == "INVITE" and accept and not any(takes_sdp):
        return 406, "Not Acceptable", [("Accept", ACCEPT)]
    # RFC 3261 §16.3 step 2 for what would go further: OPTIONS is answered here (§11).
    if request.max_forwards == 0 and method != "OPTIONS":
        return 483, "Too Many Hops", []
    return None


def _negotiation_headers(request: Request) -> tuple[list[str], list[str], str | None]:
    """Require and Accept items and the first Content-Encoding (through the headers' lookup
    index, which the response built from this request reads too)."""
    headers = request.headers
    encoding = headers.get("Content-Encoding")
    return (
        _tokens(headers.get_all("Require")),
        _tokens(headers.get_all("Accept")),
        None if encoding is None else encoding.strip(),
    )


def _tokens(values: list[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def uri_user(uri: Uri) -> str:
    if isinstance(uri, SipUri):
        return uri.user_unescaped or ""
    if isinstance(uri, TelUri):
        return str(uri.number)
    return ""


class CallState(StrEnum):
    WAITING = "waiting"  # before 180
    RINGING = "ringing"
    ANSWERED = "answered"  # 2xx sent, retransmitted until the ACK (§13.3.1.4)
    ENDED = "ended"


class CallEvent(StrEnum):
    RING = "ring"
    ANSWER = "answer"
    RETRANSMIT = "2xx retransmission timer"
    NO_ACK = "no ACK for the 2xx"
    TIMER_C = "Timer C"
    CANCEL = "CANCEL"
    ACK = "ACK"


# Timers due at the same instant fire in this order (a zero ring and answer delay: 180, then 200).
_ORDER = {event: index for index, event in enumerate(CallEvent)}


class Call:
    """One INVITE answered by the dial plan: one ``(state, event) -> handler`` table.

    Timers are absolute deadlines, served by the layer's scheduler like a
    transaction's.
    """

    def __init__(self, core: UasCore, tx: Transaction, rule: Rule, now: float):
        self.core = core
        self.tx = tx
        self.request = tx.request
        self.rule = rule
        self.state = CallState.WAITING
        self.to_tag = new_tag()
        self.timers: dict[CallEvent, tuple[float, float]] = {}  # event -> (deadline, interval)
        self.answer: Response | None = None
        if rule.ring_delay is not None:
            self._arm(CallEvent.RING, rule.ring_delay, now)
        if rule.final_status is not None:
            self._arm(CallEvent.ANSWER, rule.answer_delay, now)
        else:
            self._arm(CallEvent.TIMER_C, core.timer_c, now)

    def next_deadline(self) -> float | None:
        return min((deadline for deadline, _ in self.timers.values()), default=None)

    def handle_timer(self, now: float) -> None:
        while True:
            due = [
                (deadline, _ORDER[event], event)
                for event, (deadline, _) in self.timers.items()
                if deadline <= now
            ]
            if not due:
                return
            _, _, event = min(due)
            _, interval = self.timers.pop(event)
            self.dispatch(event, now, interval)

    def dispatch(self, event: CallEvent, now: float, data: float = 0.0) -> None:
        handler = self.TABLE.get((self.state, event))
        if handler is not None:  # events a state does not take are late or duplicate: ignored
            handler(self, now, data)

    def _arm(self, event: CallEvent, interval: float, now: float) -> None:
        self.timers[event] = (now + interval, interval)

    def _respond(self, status: int, reason: str | None, now: float, **kwargs: object) -> Response:
        response = make_response(self.request, status, reason or None, to_tag=self.to_tag, **kwargs)  # type: ignore[arg-type]
        self.core.layer.respond(self.tx, response, now)
        return response

    def _ring(self, now: float, _: float) -> None:
        self._respond(180, None, now)
        self.state = CallState.RINGING

    def _answer(self, now: float, _: float) -> None:
        rule = self.rule
        status = rule.final_status
        assert status is not None
        self.timers.pop(CallEvent.RING, None)
        if status >= 300:
            headers = [("Retry-After", str(rule.retry_after))] if rule.retry_after is not None else []
            self._respond(status, rule.reason, now, headers=headers)
            self._end()
            return
        host = self.tx.transport.local[0]
        contact = f"<sip:{host if ':' not in host else f'[{host}]'}:{self.tx.transport.local[1]}>"
        self.answer = self._respond(
            status,
            rule.reason,
            now,
            headers=[("Contact", contact), ("Allow", ALLOW), ("Supported", SUPPORTED_VALUE)],
            body=sdp_answer(int(now), host),
            content_type="application/sdp",
        )
        self.state = CallState.ANSWERED
        self.core.dialogs.open(self, now)
        if not self.tx.transport.reliable:  # §13.3.1.4: T1, doubling to T2, until the ACK
            self._arm(CallEvent.RETRANSMIT, self.core.timings.t1, now)
        self._arm(CallEvent.NO_ACK, self.core.timings.transaction_timeout, now)

    def _retransmit(self, now: float, interval: float) -> None:
        assert self.answer is not None
        if self.tx.state is TransactionState.ACCEPTED:
            self.core.layer.respond(self.tx, self.answer, now)
        self._arm(CallEvent.RETRANSMIT, min(interval * 2, self.core.timings.t2), now)

    def _acked(self, now: float, _: float) -> None:
        self.timers.clear()
        self._end()

    def _no_ack(self, now: float, _: float) -> None:
        # §13.3.1.4: no ACK within 64*T1: the dialog is confirmed, and the session ends with a
        # BYE from us (its own client transaction: retransmitted, Timer F). It goes where the
        # INVITE came from (the peer is there; the Contact may be a name we cannot resolve).
        self.core.dialogs.close_call(self)
        self._end()
        layer = self.core.layer
        transport = layer.transport_for(self.tx.transport)
        if transport is not None:
            bye = uas_bye(self.request, self.to_tag, transport.protocol, transport.local)
            layer.create_client_transaction(bye, transport, self.tx.transport.remote, now)

    def _cancelled(self, now: float, _: float) -> None:  # §9.2: 487 for the INVITE
        self._respond(487, None, now)
        self._end()

    def _timer_c(self, now: float, _: float) -> None:  # §16.6 item 11's outcome for a UAS
        self._respond(408, None, now)
        self._end()

    def _end(self) -> None:
        self.timers.clear()
        self.state = CallState.ENDED
        self.core.calls.pop(self.tx, None)

    S, E = CallState, CallEvent
    TABLE: ClassVar[dict[tuple[CallState, CallEvent], Callable[[Call, float, float], None]]] = {
        (S.WAITING, E.RING): _ring,
        (S.WAITING, E.ANSWER): _answer,
        (S.WAITING, E.CANCEL): _cancelled,
        (S.WAITING, E.TIMER_C): _timer_c,
        (S.RINGING, E.ANSWER): _answer,
        (S.RINGING, E.CANCEL): _cancelled,
        (S.RINGING, E.TIMER_C): _timer_c,
        (S.ANSWERED, E.RETRANSMIT): _retransmit,
        (S.ANSWERED, E.ACK): _acked,
        (S.ANSWERED, E.NO_ACK): _no_ack,
    }
    del S, E


DialogId = tuple[str, str, str]  # Call-ID, local (To) tag, remote (From) tag


class Dialogs:
    """Dialogs this node accepted (§12): enough to answer BYE and absorb the 2xx ACK.

    Bounded: at most ``MAX_DIALOGS``, the oldest forgotten first, and none
    older than ``DIALOG_LIFETIME``.
    """

    def __init__(self) -> None:
        self._dialogs: OrderedDict[DialogId, tuple[float, Call | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._dialogs)

    @staticmethod
    def id_of(request: Request) -> DialogId:
        return (request.call_id or "", request.to_tag or "", request.from_tag or "")

    def open(self, call: Call, now: float) -> None:
        request = call.request
        self._dialogs[(request.call_id or "", call.to_tag, request.from_tag or "")] = (now, call)
        while len(self._dialogs) > MAX_DIALOGS or (
            self._dialogs and next(iter(self._dialogs.values()))[0] < now - DIALOG_LIFETIME
        ):
            self._dialogs.popitem(last=False)

    def get(self, request: Request) -> tuple[float, Call | None] | None:
        return self._dialogs.get(self.id_of(request))

    def confirm(self, request: Request) -> Call | None:
        entry = self._dialogs.get(key := self.id_of(request))
        if entry is None:
            return None
        self._dialogs[key] = (entry[0], None)
        return entry[1]

    def close(self, request: Request) -> Call | None:
        """Forget the dialog; the call still waiting for its 2xx ACK, if any."""
        entry = self._dialogs.pop(self.id_of(request), None)
        return entry[1] if entry is not None else None

    def close_call(self, call: Call) -> None:
        request = call.request
        self._dialogs.pop((request.call_id or "", call.to_tag, request.from_tag or ""), None)


class UasCore:
    """The transaction user of a node's server side."""

    def __init__(
        self,
        layer: TransactionLayer,
        plan: DialPlan,
        *,
        timer_c: float = DEFAULT_TIMER_C,
        max_transactions: int = DEFAULT_MAX_TRANSACTIONS,
    ):
        self.layer = layer
        self.plan = plan
        self.max_transactions = max_transactions
        self.timings: Timings = layer.timings
        self.timer_c = timer_c
        self.calls: dict[Transaction, Call] = {}
        self.dialogs = Dialogs()
        self.client_tu: object | None = None  # the endpoint: responses to our own requests

    # --- TransactionUser ---

    def request_received(self, request: Request, source: Source, now: float) -> None:
        try:
            uri: Uri | None = request.request_uri  # parsed once: the checks and the dial plan read it
        except ParseError:
            uri = None
        refusal = check_request(request, uri)
        if refusal is None and request.to_tag is None:
            merged = self.layer.merged_with(request)  # §8.2.2.2
            if merged is not None:
                refusal = (482, "Loop Detected", [])
        if refusal is None and request.to_tag is not None:
            refusal = self._in_dialog(request, source, now)
            if refusal is None:
                return
        if refusal is None and request.method in ("BYE", "CANCEL"):
            refusal = (481, "Call/Transaction Does Not Exist", [])  # §15.1.2, §9.2
        if refusal is None and self.layer.live() >= self.max_transactions:
            # §21.5.4: overloaded; memory stays bounded whatever peers send.
            refusal = (503, "Service Unavailable", [("Retry-After", str(OVERLOAD_RETRY_AFTER))])
        if refusal is not None:
            self._refuse(request, source, *refusal)
            return
        tx = self.layer.create_server_transaction(request, source, now)
        if request.method == "INVITE":
            assert uri is not None
            rule = self.plan.match("INVITE", uri_user(uri)) or FALLBACK_RULE
            call = Call(self, tx, rule, now)
            self.calls[tx] = call
            self._run(call, now)
            return
        # OPTIONS (the one other method served outside a dialog): 200, unless a rule says otherwise.
        options_rule = self.plan.match(request.method, uri_user(uri)) if uri is not None else None
        status = options_rule.final_status if options_rule is not None else None
        if options_rule is not None and status is not None and status != 200:
            self.layer.respond(tx, make_response(request, status, options_rule.reason or None), now)
        else:
            self.layer.respond(tx, self._options_answer(request), now)

    def ack_received(self, ack: Request, source: Source, now: float) -> bool:
        if ack.to_tag is None or self.dialogs.get(ack) is None:
            return False  # matches nothing here: absorbed, never answered (§17.2.3)
        call = self.dialogs.confirm(ack)
        if call is not None:
            call.dispatch(CallEvent.ACK, now)
            self.layer.scheduler.update(call)
        return True

    def cancel_received(
        self, cancel_tx: NonInviteServerTransaction, invite_tx: Transaction, now: float
    ) -> None:
        # §9.2: 200 for the CANCEL; the INVITE, if still unanswered, ends with 487.
        self.layer.respond(cancel_tx, make_response(cancel_tx.request, 200), now)
        call = self.calls.get(invite_tx)
        if call is not None:
            call.dispatch(CallEvent.CANCEL, now)
            self.layer.scheduler.update(call)

    def response_received(self, response: Response, source: Source, now: float) -> None:
        handler = getattr(self.client_tu, "response_received", None)
        if handler is not None:
            handler(response, source, now)
            return
        self.layer.drop("stray_response", source.remote, response)

    def transaction_adopted(self, tx: Transaction, now: float) -> None:
        """An INVITE stored unanswered by another node (or this node's previous process):
        its call is rebuilt from the request, the dial plan and the transaction's age,
        so the same rule answers it on the same schedule (the 180 sent keeps its tag)."""
        if not isinstance(tx, InviteServerTransaction) or tx.state is not TransactionState.PROCEEDING:
            return
        try:
            user = uri_user(tx.request.request_uri)
        except ParseError:
            user = ""
        rule = self.plan.match("INVITE", user) or FALLBACK_RULE
        call = Call(self, tx, rule, tx.created_at)
        sent = tx.last_response
        if sent is not None and sent.to_tag:
            call.to_tag = sent.to_tag
            call.timers.pop(CallEvent.RING, None)
            call.state = CallState.RINGING
        self.calls[tx] = call
        self._run(call, now)

    def transaction_terminated(self, tx: Transaction, now: float) -> None:
        call = self.calls.pop(tx, None)
        if call is not None and call.state is not CallState.ANSWERED:
            call.timers.clear()
            self.layer.scheduler.forget(call)

    # --- helpers ---

    def _run(self, call: Call, now: float) -> None:
        call.handle_timer(now)  # zero delays answer at once, in this turn
        if call.state is not CallState.ENDED:
            self.layer.scheduler.update(call)

    def _in_dialog(
        self, request: Request, source: Source, now: float
    ) -> tuple[int, str, list[tuple[str, str]]] | None:
        """A request with a To tag (§12.2.2): None once handled, else the refusal."""
        if self.dialogs.get(request) is None:
            return 481, "Call/Transaction Does Not Exist", []
        tx = self.layer.create_server_transaction(request, source, now)
        if request.method == "BYE":  # §15.1.2
            call = self.dialogs.close(request)
            if call is not None:  # a BYE means the 2xx arrived: stop retransmitting it
                call.dispatch(CallEvent.ACK, now)
                self.layer.scheduler.update(call)
            self.layer.respond(tx, make_response(request, 200), now)
        elif request.method == "OPTIONS":
            self.layer.respond(tx, self._options_answer(request), now)
        else:  # a re-INVITE: this node does not renegotiate (§14.2)
            self.layer.respond(tx, make_response(request, 488, "Not Acceptable Here"), now)
        return None

    def _options_answer(self, request: Request) -> Response:  # §11.2
        return make_response(request, 200, headers=OPTIONS_HEADERS)

    def _refuse(
        self, request: Request, source: Source, status: int, reason: str, headers: list[tuple[str, str]]
    ) -> None:
        # §8.2.6.2: every response to a request carries the same To tag; without state, that
        # means one derived from the request, so its retransmissions get the same answer.
        tag = stateless_tag(request.branch, request.call_id, request.from_tag, request.cseq)
        response = make_response(request, status, reason, headers=headers, to_tag=tag)
        self.layer.refused(status, reason, request, source.remote)
        destination = response_destination(request, source)
        self.layer.send_stateless(response, source.transport, destination)


def response_destination(request: Request, source: Source) -> tuple[str, int]:
    """Where a stateless response goes: as a server transaction sends (§18.2.2, RFC 3581)."""
    if source.transport.protocol != "UDP":
        return source.remote  # back on the connection the request came in on
    via = request.top_via
    if via is None or via.rport is not None:
        return source.remote
    port = via.port if via.port is not None else default_port(via.transport)
    if via.maddr:
        return (via.maddr, port)
    return (via.received or source.remote[0], port)
