"""The store encodes a transaction's snapshots version after version, reusing what did
not change (the request's, last response's, transport's and timings' JSON forms).
What it writes to the audit stream must stay exactly ``TransactionSnapshot.to_json()``:
the ingester reads it with ``from_json`` and the contract is that JSON. These tests
walk every kind of transaction through its states (responses that change, a
non-UTF-8 body, non-default timings, a restore) and compare byte for byte."""

from __future__ import annotations

from sipcore.sip import (
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Request,
    Timings,
    Transaction,
    TransportInfo,
    make_ack,
    make_response,
    parse_message,
    restore_transaction,
)
from sipcore.store import _Place
from tests.sipcore.store.conftest import UDP_A, UDP_B, options_tx, sipp_invite

TCP = TransportInfo("TCP", True, ("127.0.0.1", 5060), ("127.0.0.1", 40123))


def check(place: _Place, tx: Transaction, seen: list[bytes]) -> None:
    snapshot = tx.snapshot()
    encoded = place.snapshot_json(snapshot)
    assert encoded == snapshot.to_json()
    seen.append(encoded)


def test_invite_server_every_version_matches_to_json_including_a_changed_response(wall):
    request = sipp_invite(1)
    tx = InviteServerTransaction(request, UDP_A, wall)
    place, seen = _Place(str(tx.key), 16), []
    check(place, tx, seen)  # Proceeding, no response yet
    tx.handle_timer(wall + 0.2)  # 100 Trying (RFC 3261 §17.2.1)
    check(place, tx, seen)
    tx.send_response(make_response(request, 180, to_tag="t1"), wall + 0.3)
    check(place, tx, seen)
    tx.send_response(make_response(request, 486, to_tag="t1"), wall + 0.4)  # another response
    check(place, tx, seen)
    tx.handle_timer(wall + 0.9)  # Timer G re-armed
    check(place, tx, seen)
    assert tx.last_response is not None
    tx.receive(make_ack(request, tx.last_response), wall + 1.0)  # Confirmed
    check(place, tx, seen)
    tx.handle_timer(wall + 6.0)  # Timer I: Terminated
    check(place, tx, seen)
    assert len(set(seen)) == len(seen)  # every version differs: nothing stale was reused


def test_invite_client_and_a_restore_mid_way(wall):
    request = sipp_invite(2)
    tx = InviteClientTransaction(request, UDP_A, wall)
    place, seen = _Place(str(tx.key), 16), []
    check(place, tx, seen)
    tx.handle_timer(wall + 0.5)  # Timer A
    check(place, tx, seen)
    tx.receive(make_response(request, 180, to_tag="c2"), wall + 0.6)
    check(place, tx, seen)
    # Another node's copy: new objects for every part, encoded with the same place.
    restored = restore_transaction(tx.snapshot(), UDP_B)
    check(place, restored, seen)
    restored.receive(make_response(request, 486, to_tag="c2"), wall + 0.7)
    check(place, restored, seen)
    restored.handle_timer(wall + 40.0)  # Timer D
    check(place, restored, seen)


def test_non_invite_client_with_a_body_that_is_not_utf8_and_own_timings(wall):
    body = b"\xff\xfe binary \x00 payload"
    text = (
        "MESSAGE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 127.0.0.1:40123;branch=z9hG4bK-msg-3\r\n"
        "From: <sip:tech@127.0.0.1>;tag=m3\r\n"
        "To: <sip:service@127.0.0.1:5060>\r\n"
        "Call-ID: msg-3@127.0.0.1\r\n"
        "CSeq: 7 MESSAGE\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    request = parse_message(text.encode() + body)
    assert isinstance(request, Request)
    timings = Timings(t1=0.25, t2=2.0)
    tx = NonInviteClientTransaction(request, TCP, wall, timings=timings)
    place, seen = _Place(str(tx.key), 16), []
    check(place, tx, seen)
    assert b'"timings"' in seen[-1]
    assert b'"base64"' in seen[-1]
    tx.receive(make_response(request, 200), wall + 0.1)
    check(place, tx, seen)
    server = NonInviteServerTransaction(request, TCP, wall)  # default timings, same place
    check(place, server, seen)
    assert b'"timings"' not in seen[-1]


def test_non_invite_server(wall):
    tx = options_tx(4, wall)
    place, seen = _Place(str(tx.key), 16), []
    check(place, tx, seen)
    tx.send_response(make_response(tx.request, 200, to_tag="o4"), wall)
    check(place, tx, seen)
    tx.handle_timer(wall + 40.0)  # Timer J
    check(place, tx, seen)
