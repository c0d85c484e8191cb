"""In-dialog requests built from an INVITE and its 2xx (RFC 3261 §12.1, §12.2.1.1)."""

from __future__ import annotations

from sipcore.dialog import uac_bye, uas_bye
from sipcore.sip import parse_message

INVITE = (
    b"INVITE sip:bob@192.0.2.2 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKinv1\r\n"
    b"Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: Alice <sip:alice@192.0.2.1>;tag=a1\r\n"
    b"To: Bob <sip:bob@192.0.2.2>\r\n"
    b"Call-ID: dlg-1@192.0.2.1\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.1:5070>\r\n"
    b"Content-Length: 0\r\n\r\n"
)
OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKinv1\r\n"
    b"Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>\r\n"
    b"From: Alice <sip:alice@192.0.2.1>;tag=a1\r\n"
    b"To: Bob <sip:bob@192.0.2.2>;tag=b2\r\n"
    b"Call-ID: dlg-1@192.0.2.1\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.2:5080>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_the_uas_bye_targets_the_invites_contact_with_the_record_route_in_order():
    bye = parse_message(bytes(uas_bye(parse_message(INVITE), "b2", "UDP", ("192.0.2.2", 5060))))
    assert (bye.method, bye.uri) == ("BYE", "sip:alice@192.0.2.1:5070")
    assert bye.headers.get("From") == "Bob <sip:bob@192.0.2.2>;tag=b2"
    assert bye.headers.get("To") == "Alice <sip:alice@192.0.2.1>;tag=a1"
    assert bye.call_id == "dlg-1@192.0.2.1"
    assert (bye.cseq.number, bye.cseq.method) == (1, "BYE")  # the UAS's own CSeq space (§12.1.1)
    assert [route.uri for route in bye.route] == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
    assert bye.top_via.host == "192.0.2.2"
    assert bye.branch.startswith("z9hG4bK")
    assert bye.branch != "z9hG4bKinv1"


def test_the_uac_bye_targets_the_2xx_contact_with_the_record_route_reversed():
    invite, ok = parse_message(INVITE), parse_message(OK)
    bye = parse_message(bytes(uac_bye(invite, ok, "TCP", ("192.0.2.1", 5060))))
    assert (bye.method, bye.uri) == ("BYE", "sip:bob@192.0.2.2:5080")
    assert bye.headers.get("From") == "Alice <sip:alice@192.0.2.1>;tag=a1"
    assert bye.headers.get("To") == "Bob <sip:bob@192.0.2.2>;tag=b2"
    assert (bye.cseq.number, bye.cseq.method) == (8, "BYE")  # the INVITE's plus one (§12.2.1.1)
    assert [route.uri for route in bye.route] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert bye.top_via.transport == "TCP"
