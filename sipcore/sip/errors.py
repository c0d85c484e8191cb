"""Typed errors of the SIP core, split by who is to blame.

* A peer's bad message: :class:`ParseError` carries the response code a server
  should answer with (400, 413, 505...).
* A caller's misuse of the API: a plain ``ValueError`` subclass whose message
  says what was wrong (:class:`InvalidSnapshotError`, :class:`TransactionMismatchError`,
  :class:`InvalidTransitionError`).
"""

from __future__ import annotations


class ParseError(ValueError):
    """A message (or part of one) that does not follow RFC 3261.

    ``status_code`` is what a server should answer a request with; a bad
    response is simply discarded (RFC 3261 §16.7 / §18.1.2).
    """

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.status_code = status_code


class LimitError(ParseError):
    """A message past one of the parser's limits (:class:`sipcore.sip.limits.ParserLimits`).

    Raised before the work the limit bounds; the message names the limit.
    """


class InvalidSnapshotError(ValueError):
    """A transaction snapshot that cannot be restored; the message names the problem."""


class TransactionMismatchError(ValueError):
    """A message handed to a transaction that does not belong to it (Via, Call-ID, CSeq...)."""


class InvalidTransitionError(ValueError):
    """An event that the transaction's current state does not accept."""

    def __init__(self, kind: str, state: str, event: str):
        super().__init__(f"{kind} in state {state} does not accept {event}")
        self.kind = kind
        self.state = state
        self.event = event
