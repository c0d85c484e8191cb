"""The sans-IO SIP core: no Django, no sockets, no asyncio, no clock.

Every mutating call takes ``now`` (seconds, float); output is data.
"""

from sipcore.sip.builders import make_ack, make_cancel, make_response, new_branch, new_tag
from sipcore.sip.errors import (
    InvalidSnapshotError,
    InvalidTransitionError,
    ParseError,
    TransactionMismatchError,
)
from sipcore.sip.headers import CSeq, MediaType, NameAddress, Via
from sipcore.sip.message import Headers, Message, Request, Response, parse_message
from sipcore.sip.stream import StreamParser
from sipcore.sip.uri import AbsoluteUri, SipUri, TelUri, parse_uri

__all__ = [
    "AbsoluteUri",
    "CSeq",
    "Headers",
    "InvalidSnapshotError",
    "InvalidTransitionError",
    "MediaType",
    "Message",
    "NameAddress",
    "ParseError",
    "Request",
    "Response",
    "SipUri",
    "StreamParser",
    "TelUri",
    "TransactionMismatchError",
    "Via",
    "make_ack",
    "make_cancel",
    "make_response",
    "new_branch",
    "new_tag",
    "parse_message",
    "parse_uri",
]
