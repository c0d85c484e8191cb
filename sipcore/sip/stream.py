"""Framing SIP messages on a byte stream such as TCP (RFC 3261 §18.3, §7.5)."""

from __future__ import annotations

import dataclasses
import re
from typing import Final

from sipcore.sip.errors import ParseError
from sipcore.sip.limits import DEFAULT_LIMITS, ParserLimits
from sipcore.sip.message import Request, Response, _parse_head

DEFAULT_MAX_HEADER_SIZE: Final = DEFAULT_LIMITS.max_header_size
DEFAULT_MAX_BODY_SIZE: Final = DEFAULT_LIMITS.max_body_size
# A Content-Length line in a head that failed to parse: enough to skip the message.
# Starts with a literal CRLF, runs possessive and each followed by what it cannot
# take (linear, as in sipcore.sip.grammar).
_RAW_CONTENT_LENGTH_RE: Final = re.compile(
    rb"\r\n(?:content-length|l)[ \t]*+:[ \t]*+([0-9]{1,12}+)[ \t]*+(?=\r\n|\Z)", re.I
)


class StreamError(ParseError):
    """A bad message on a stream.

    ``messages`` holds the complete messages that came before it in the same
    ``feed()``. When ``fatal`` is false the bad message was skipped (its
    Content-Length was readable): answer it if possible and call ``feed(b"")``
    to go on with what is buffered. When true, framing is lost: close the
    connection (RFC 4475 §3.1.2.3). ``head`` is the skipped message's header
    section (with its blank line), from which a stateless answer can be built
    (RFC 3261 §8.2.6); empty when fatal.
    """

    def __init__(self, message: str, status_code: int, *, fatal: bool, head: bytes = b""):
        super().__init__(message, status_code)
        self.fatal = fatal
        self.head = head
        self.messages: list[Request | Response] = []


class StreamParser:
    """Feed bytes as they arrive; get back each message once it is complete.

    Messages are framed by Content-Length, which a stream requires (RFC 3261
    §18.3). CRLFs between messages, such as RFC 5626 keep-alives, are skipped
    (§7.5). The same bytes give the same messages and the same errors however
    they are split into ``feed()`` calls, and feeding costs time linear in the
    bytes fed: the search for the end of a header section resumes where it
    stopped, and nothing buffered is scanned twice.

    ``limits.max_header_size`` bounds a message's header section: the start
    line, the header fields and the empty line that ends them (everything
    before the body). A section of exactly that many bytes is accepted, one byte
    more is refused (513), and a section that has not ended once that many
    bytes are buffered is refused then, without buffering more. The other
    limits apply to each header section as to a datagram's; ``max_header_size``
    and ``max_body_size`` override the two of ``limits``.
    """

    def __init__(
        self,
        *,
        limits: ParserLimits = DEFAULT_LIMITS,
        max_header_size: int | None = None,
        max_body_size: int | None = None,
    ):
        if max_header_size is not None:
            limits = dataclasses.replace(limits, max_header_size=max_header_size)
        if max_body_size is not None:
            limits = dataclasses.replace(limits, max_body_size=max_body_size)
        self.limits = limits
        self.max_header_size = limits.max_header_size
        self.max_body_size = limits.max_body_size
        self._buffer = bytearray()
        self._scan_from = 0  # where the search for CRLF CRLF resumes
        self._pending: tuple[Request | Response, int, int] | None = None  # (message, body offset, length)
        self._discard = 0  # bytes of a skipped bad message still to drop
        self._broken: StreamError | None = None
        self.keepalives = 0  # CRLFs skipped between messages

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Request | Response]:
        if self._broken is not None:
            raise StreamError(f"stream unusable after an earlier error: {self._broken}", 400, fatal=True)
        self._buffer += data
        messages: list[Request | Response] = []
        try:
            while (message := self._next()) is not None:
                messages.append(message)
        except StreamError as exc:
            exc.messages = messages
            if exc.fatal:
                self._broken = exc
            raise
        return messages

    def _next(self) -> Request | Response | None:
        buffer = self._buffer
        if self._discard:
            dropped = min(self._discard, len(buffer))
            del buffer[:dropped]
            self._discard -= dropped
            if self._discard:
                return None
        if self._pending is None:
            skipped = 0
            while buffer[skipped : skipped + 2] == b"\r\n":
                skipped += 2
            if skipped:
                del buffer[:skipped]
                self.keepalives += skipped // 2
            if not buffer:
                return None
            end = buffer.find(b"\r\n\r\n", max(0, self._scan_from - 3))
            # The section ends at end + 4. Undecided only while fewer bytes than the
            # limit are buffered: a section within it would have been found.
            if end < 0 and len(buffer) < self.max_header_size:
                self._scan_from = len(buffer)
                return None
            if end < 0 or end + 4 > self.max_header_size:
                raise StreamError(f"header section exceeds {self.max_header_size} bytes", 513, fatal=True)
            self._scan_from = 0
            head = bytes(buffer[:end])
            try:
                message = _parse_head(head, self.limits)
            except ParseError as exc:
                raise self._skip_bad(head, end, exc) from exc
            length = message.content_length
            if length is None:
                raise StreamError(
                    "Content-Length is required on a stream transport (RFC 3261 §18.3)", 400, fatal=True
                )
            if length > self.max_body_size:
                raise StreamError(f"body of {length} bytes exceeds {self.max_body_size}", 413, fatal=True)
            self._pending = (message, end + 4, length)
        message, body_start, length = self._pending
        if len(buffer) < body_start + length:
            return None
        message.body = bytes(buffer[body_start : body_start + length])
        del buffer[: body_start + length]
        self._pending = None
        return message

    def _skip_bad(self, head: bytes, end: int, error: ParseError) -> StreamError:
        """Arrange to drop the bad message if its length is knowable; the error to raise."""
        lengths = _RAW_CONTENT_LENGTH_RE.findall(head)
        if len(lengths) != 1 or int(lengths[0]) > self.max_body_size:
            return StreamError(f"{error} (framing lost)", error.status_code, fatal=True)
        self._discard = end + 4 + int(lengths[0])
        return StreamError(str(error), error.status_code, fatal=False, head=head + b"\r\n\r\n")
