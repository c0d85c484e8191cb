"""Responses (RFC 3261 §8.2.6), ACK for non-2xx (§17.1.1.3), CANCEL (§9.1), branches."""

from __future__ import annotations

import pytest

from sipcore.sip import make_ack, make_cancel, make_response, new_branch, new_tag, parse_message

INVITE = parse_message(
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP proxy.atlanta.example.com;branch=z9hG4bKproxy, SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKpc33\r\n"
    b"Via: SIP/2.0/UDP older.example.com;branch=z9hG4bKolder\r\n"
    b"Max-Forwards: 69\r\n"
    b"Route: <sip:edge.biloxi.example.com;lr>\r\n"
    b"Record-Route: <sip:proxy.atlanta.example.com;lr>\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Timestamp: 54\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_response_copies_via_from_callid_cseq_and_tags_to():
    response = make_response(INVITE, 486)
    assert (response.status_code, response.reason) == (486, "Busy Here")
    assert [v.branch for v in response.via] == ["z9hG4bKproxy", "z9hG4bKpc33", "z9hG4bKolder"]
    assert response.headers.get_all("Via") == INVITE.headers.get_all("Via")  # as written, in order
    assert response.from_ == INVITE.from_
    assert (response.call_id, response.cseq) == (INVITE.call_id, INVITE.cseq)
    assert response.to is not None
    assert response.to.uri == "sip:bob@biloxi.example.com"
    assert response.to_tag is not None
    assert len(response.to_tag) >= 8
    assert response.headers.get("Record-Route") is None  # not on a final non-2xx
    assert parse_message(bytes(response)) == response


def test_100_trying_has_no_to_tag_and_copies_timestamp():
    trying = make_response(INVITE, 100)
    assert trying.to_tag is None
    assert trying.headers.get("Timestamp") == "54"  # RFC 3261 §8.2.6.1


def test_2xx_copies_record_route_and_keeps_a_given_tag_and_body():
    ok = make_response(INVITE, 200, to_tag="uas-tag", body=b"v=0\r\n", content_type="application/sdp",
                       headers=[("Contact", "<sip:bob@192.0.2.4>")])  # fmt: skip
    assert ok.to_tag == "uas-tag"
    assert [r.uri for r in ok.record_route] == ["sip:proxy.atlanta.example.com;lr"]
    assert (ok.body, ok.content_length, ok.content_type.mime) == (b"v=0\r\n", 5, "application/sdp")
    assert ok.contact[0].uri == "sip:bob@192.0.2.4"


def test_existing_to_tag_is_kept():
    in_dialog = INVITE.copy()
    in_dialog.headers.set("To", "Bob <sip:bob@biloxi.example.com>;tag=existing")
    assert make_response(in_dialog, 200).to_tag == "existing"


def test_ack_for_a_non_2xx_final():
    busy = make_response(INVITE, 486, to_tag="busy-tag")
    ack = make_ack(INVITE, busy)
    assert (ack.method, ack.uri) == ("ACK", INVITE.uri)
    assert ack.headers.get_all("Via") == [
        "SIP/2.0/UDP proxy.atlanta.example.com;branch=z9hG4bKproxy"
    ]  # top only
    assert tuple(ack.cseq) == (314159, "ACK")
    assert (ack.call_id, ack.from_) == (INVITE.call_id, INVITE.from_)
    assert ack.to_tag == "busy-tag"  # To of the response
    assert ack.headers.get_all("Route") == ["<sip:edge.biloxi.example.com;lr>"]
    assert parse_message(bytes(ack)) == ack


def test_ack_refuses_2xx_and_non_invite():
    with pytest.raises(ValueError, match="dialog"):
        make_ack(INVITE, make_response(INVITE, 200))
    options = parse_message(bytes(INVITE).replace(b"INVITE", b"OPTIONS"))
    with pytest.raises(ValueError, match="answers an INVITE"):
        make_ack(options, make_response(options, 404))


def test_cancel():
    cancel = make_cancel(INVITE)
    assert (cancel.method, cancel.uri) == ("CANCEL", INVITE.uri)
    assert cancel.branch == "z9hG4bKproxy"  # same top Via: it matches the INVITE's transaction
    assert len(cancel.via) == 1
    assert tuple(cancel.cseq) == (314159, "CANCEL")
    assert (cancel.to, cancel.from_, cancel.call_id) == (INVITE.to, INVITE.from_, INVITE.call_id)
    assert cancel.headers.get_all("Route") == ["<sip:edge.biloxi.example.com;lr>"]
    with pytest.raises(ValueError, match="cannot be cancelled"):
        make_cancel(make_ack(INVITE, make_response(INVITE, 404)))


def test_branches_and_tags_are_fresh_and_well_formed():
    branches = {new_branch() for _ in range(1000)}
    assert len(branches) == 1000
    assert all(b.startswith("z9hG4bK") and len(b) >= 7 + 16 for b in branches)  # >= 64 random bits
    tags = {new_tag() for _ in range(1000)}
    assert len(tags) == 1000


def _checked_response(request, status_code, to_tag):  # type: ignore[no-untyped-def]
    """What make_response builds, the slow way: every copied line checked again by Headers.add."""
    from sipcore.sip import Headers, Response

    headers = Headers()
    for via in request.headers.get_all("Via"):
        headers.add("Via", via)
    headers.add("From", request.headers.get("From"))
    to = request.headers.get("To")
    if status_code != 100 and request.to_tag is None:
        to = f"{to};tag={to_tag}"
    headers.add("To", to)
    headers.add("Call-ID", request.headers.get("Call-ID"))
    headers.add("CSeq", request.headers.get("CSeq"))
    if status_code == 100 and request.headers.get("Timestamp") is not None:
        headers.add("Timestamp", request.headers.get("Timestamp"))
    if 101 <= status_code < 300:
        for record_route in request.headers.get_all("Record-Route"):
            headers.add("Record-Route", record_route)
    headers.add("Content-Length", "0")
    return Response(status_code, "Some Reason", headers)


COMPACT = parse_message(
    b"OPTIONS sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP a.example.com;branch=z9hG4bKa;rport , SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bKb\r\n"
    b'f: <sip:alice@atlanta.example.com>;tag=x\r\nt: "Bob" <sip:bob@biloxi.example.com>\r\n'
    b"i: compact@example.com\r\nCSEQ: 7 OPTIONS\r\nrecord-route: <sip:p1.example.com;lr>, <sip:p2;lr>\r\n"
    b"l: 0\r\n\r\n"
)


@pytest.mark.parametrize("request_", [INVITE, COMPACT], ids=["invite", "compact"])
@pytest.mark.parametrize("status_code", [100, 180, 200, 486])
def test_a_response_is_exactly_what_checking_every_copied_line_would_build(request_, status_code):
    built = make_response(request_, status_code, "Some Reason", to_tag="t1")
    reference = _checked_response(request_, status_code, "t1")
    assert bytes(built) == bytes(reference)
    for attribute in ("via", "from_", "to", "to_tag", "call_id", "cseq", "record_route", "content_length"):
        assert getattr(built, attribute) == getattr(reference, attribute), attribute
    assert built.headers.normalized() == reference.headers.normalized()
    assert parse_message(bytes(built)) == built


def test_what_the_caller_adds_to_a_response_is_still_checked():
    from sipcore.sip import ParseError, Request

    with pytest.raises(ParseError):
        make_response(INVITE, 486, to_tag="not a token")
    with pytest.raises(ParseError):
        make_response(INVITE, 486, headers=[("Via", "not a via")])
    with pytest.raises(ParseError):
        make_response(INVITE, 200, content_type="no slash")
    with pytest.raises(ValueError, match="no From"):
        make_response(Request("OPTIONS", "sip:a@b", [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1")]), 200)


def test_make_response_does_not_check_again_what_the_request_already_passed():
    import statistics
    import time

    vias = ", ".join(
        f"SIP/2.0/UDP proxy{i}.example.com:5060;branch=z9hG4bK{i};received=192.0.2.{i}" for i in range(60)
    )
    many = parse_message(
        bytes(INVITE).replace(b"Via: SIP/2.0/UDP older", f"Via: {vias}\r\nVia: SIP/2.0/UDP older".encode())
    )

    def cpu(build) -> float:  # type: ignore[no-untyped-def]
        runs = []
        for _ in range(9):
            started = time.process_time()
            for _ in range(30):
                build()
            runs.append(time.process_time() - started)
        return statistics.median(runs)

    fast = cpu(lambda: make_response(many, 486, "Some Reason", to_tag="t1"))
    checked = cpu(lambda: _checked_response(many, 486, "t1"))
    assert fast < checked / 2, (fast, checked)
