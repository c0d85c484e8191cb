"""The sans-IO SIP core: no Django, no sockets, no asyncio, no clock.

Every mutating call takes ``now`` (seconds, float); output is data.
"""

from sipcore.sip.builders import make_ack, make_cancel, make_response, new_branch, new_tag
from sipcore.sip.errors import (
    InvalidSnapshotError,
    InvalidTransitionError,
    LimitError,
    ParseError,
    TransactionMismatchError,
)
from sipcore.sip.headers import CSeq, MediaType, NameAddress, Via
from sipcore.sip.keys import TransactionKey
from sipcore.sip.limits import ParserLimits
from sipcore.sip.message import Headers, Message, Request, Response, parse_message
from sipcore.sip.snapshot import SCHEMA_VERSION, TransactionSnapshot
from sipcore.sip.stream import StreamError, StreamParser
from sipcore.sip.transaction import (
    Failure,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Outgoing,
    Timer,
    Timings,
    Transaction,
    TransactionState,
    TransportInfo,
    restore_transaction,
)
from sipcore.sip.uri import AbsoluteUri, SipUri, TelUri, parse_uri

__all__ = [
    "SCHEMA_VERSION",
    "AbsoluteUri",
    "CSeq",
    "Failure",
    "Headers",
    "InvalidSnapshotError",
    "InvalidTransitionError",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "LimitError",
    "MediaType",
    "Message",
    "NameAddress",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "Outgoing",
    "ParseError",
    "ParserLimits",
    "Request",
    "Response",
    "SipUri",
    "StreamError",
    "StreamParser",
    "TelUri",
    "Timer",
    "Timings",
    "Transaction",
    "TransactionKey",
    "TransactionMismatchError",
    "TransactionSnapshot",
    "TransactionState",
    "TransportInfo",
    "Via",
    "make_ack",
    "make_cancel",
    "make_response",
    "new_branch",
    "new_tag",
    "parse_message",
    "parse_uri",
    "restore_transaction",
]
