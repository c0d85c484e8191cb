"""The UAS core's §8.2 checks on their own (no node): Require, Accept and
Content-Encoding are found however their header lines are spelled or split."""

from __future__ import annotations

import pytest

from sipcore.sip import parse_message
from sipcore.uas import check_request

HEAD = (
    "{method} sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\r\n"
    "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: 1@x\r\nCSeq: 1 {method}\r\n"
    "Max-Forwards: 70\r\n{extra}Content-Length: {length}\r\n\r\n{body}"
)


def _request(extra: str, method: str = "INVITE", body: str = ""):  # type: ignore[no-untyped-def]
    text = HEAD.format(method=method, extra=extra, length=len(body), body=body)
    return parse_message(text.encode())


@pytest.mark.parametrize(
    ("extra", "body", "expected"),
    [
        ("", "", None),
        ("Require: 100rel, timer\r\n", "", (420, [("Unsupported", "100rel, timer")])),
        ("REQUIRE: foo\r\nrequire: bar\r\n", "", (420, [("Unsupported", "foo, bar")])),
        ("Accept: text/plain\r\nACCEPT: application/pidf+xml\r\n", "", (406, None)),
        ("Accept: text/plain\r\naccept: application/sdp;level=1\r\n", "", None),
        ("Content-Type: application/sdp\r\ne: gzip\r\n", "v=0\r\n", (415, [("Accept-Encoding", "identity")])),
        ("Content-Type: application/sdp\r\nContent-Encoding: identity\r\n", "v=0\r\n", None),
        ("Content-Type: text/plain\r\n", "hi", (415, None)),
    ],
)
def test_negotiation_headers_are_read_however_they_are_spelled(extra, body, expected):
    verdict = check_request(_request(extra, body=body))
    if expected is None:
        assert verdict is None
    else:
        status, headers = expected
        assert verdict is not None
        assert verdict[0] == status
        if headers is not None:
            assert verdict[2] == headers
