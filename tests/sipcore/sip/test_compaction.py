"""A non-INVITE server transaction in Completed keeps its messages as bytes only
(RFC 3261 §17.2.2: it has nothing left to do but resend its final response and
absorb retransmissions), and still behaves, snapshots and restores exactly as
before."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from sipcore.sip import (
    InvalidTransitionError,
    NonInviteServerTransaction,
    Timings,
    TransactionMismatchError,
    TransactionSnapshot,
    TransactionState,
    make_response,
    parse_message,
    restore_transaction,
)
from tests.sipcore.sip.support import TCP, UDP, Recorder, request

T1 = Timings().t1


def _options(branch: str = "z9hG4bKcompact", via_params: str = "") -> bytes:
    return bytes(request("OPTIONS", branch=branch + via_params))


def _completed(data: bytes | None = None, now: float = 0.0) -> tuple[NonInviteServerTransaction, bytes]:
    req = parse_message(data or _options())
    tx = NonInviteServerTransaction(req, UDP, now=now)  # type: ignore[arg-type]
    ok = make_response(req, 200, to_tag="t1", headers=[("Allow", "INVITE, ACK, OPTIONS")])  # type: ignore[arg-type]
    tx.send_response(ok, now)
    (out,) = tx.drain_outgoing()
    return tx, bytes(out.message)


def test_a_completed_non_invite_server_transaction_keeps_its_messages_as_bytes_only():
    datagrams = [_options(f"z9hG4bKmem{i}") for i in range(300)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [_completed(data)[0] for data in datagrams]
    gc.collect()
    per_transaction = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    tracemalloc.stop()

    wire = len(kept[0].snapshot().request) + len(kept[0].snapshot().last_response or b"")
    assert all(tx.compacted and tx.state is TransactionState.COMPLETED for tx in kept)
    # The two messages' bytes and a few small objects; parsed, the messages took ~9 KB.
    assert per_transaction < wire + 2000, (per_transaction, wire)


def test_it_reads_back_the_same_request_and_response_as_copies():
    data = _options()
    tx, sent = _completed(data)
    assert tx.compacted
    assert bytes(tx.request) == bytes(parse_message(data))
    assert bytes(tx.last_response) == sent  # type: ignore[arg-type]
    held = tx.request
    held.headers.set("Call-ID", "spoiled@example.com")
    assert tx.request.call_id == parse_message(data).call_id
    assert tx.request is not tx.request


@pytest.mark.parametrize(
    ("via_params", "destination"),
    [
        ("", ("192.0.2.2", 5060)),  # §18.2.1: the source address stands for sent-by; default port
        (";received=192.0.2.9", ("192.0.2.9", 5060)),
        (";rport=5062;received=192.0.2.2", UDP.remote),  # RFC 3581 §4: back to the source
        (";maddr=239.0.0.1", ("239.0.0.1", 5060)),
    ],
)
def test_it_resends_the_same_bytes_to_the_same_place_for_each_retransmission(via_params, destination):
    data = _options(via_params=via_params)
    tx, sent = _completed(data)
    twin = NonInviteServerTransaction(parse_message(data), UDP, now=0.0)  # type: ignore[arg-type]
    assert tx.response_destination() == destination
    for now in (0.5, 1.0, 4.0):
        tx.receive(parse_message(data), now)
        (out,) = tx.drain_outgoing()
        assert (bytes(out.message), out.destination) == (sent, destination)
    assert twin.response_destination() == destination


def test_it_absorbs_late_finals_refuses_strangers_and_ends_at_timer_j():
    tx, _ = _completed()
    events = Recorder().attach(tx)
    tx.send_response(make_response(tx.request, 500), 1.0)  # §17.2.2: discarded
    assert tx.drain_outgoing() == []
    with pytest.raises(TransactionMismatchError):
        tx.receive(request("OPTIONS", branch="z9hG4bKother"), 1.0)
    with pytest.raises(TransactionMismatchError):
        tx.receive(request("INVITE", branch="z9hG4bKcompact"), 1.0)
    assert tx.next_deadline() == pytest.approx(64 * T1)
    tx.handle_timer(64 * T1 - 0.001)
    assert tx.state is TransactionState.COMPLETED
    tx.handle_timer(64 * T1)
    assert tx.state is TransactionState.TERMINATED
    assert events.events == [("state", "Completed", "Terminated")]
    assert tx.drain_outgoing() == []
    with pytest.raises(InvalidTransitionError):
        tx.receive(parse_message(_options()), 70.0)


def test_its_snapshot_is_the_uncompacted_ones_and_a_restore_is_compacted_and_carries_on():
    data = _options()
    tx, sent = _completed(data)
    req = parse_message(data)
    # The request's bytes are those a transaction holding the parsed request stores.
    expected = NonInviteServerTransaction(req, UDP, now=0.0).snapshot()  # type: ignore[arg-type]
    snap = tx.snapshot()
    assert snap.request == expected.request
    assert snap.last_response == sent
    assert snap == TransactionSnapshot.from_json(snap.to_json())

    restored = restore_transaction(TransactionSnapshot.from_json(snap.to_json()))
    assert restored.compacted
    assert restored.snapshot() == snap
    restored.receive(parse_message(data), 2.0)
    (out,) = restored.drain_outgoing()
    assert (bytes(out.message), out.destination) == (sent, ("192.0.2.2", 5060))
    restored.handle_timer(64 * T1)
    assert restored.state is TransactionState.TERMINATED


def test_a_restore_on_another_node_sends_to_the_new_transport_when_the_via_says_rport():
    data = _options(via_params=";rport=5062;received=192.0.2.2")
    tx, sent = _completed(data)
    elsewhere = UDP.__class__("UDP", False, ("198.51.100.1", 5060), ("203.0.113.7", 6000))
    restored = restore_transaction(tx.snapshot(), elsewhere)
    restored.receive(parse_message(data), 1.0)
    (out,) = restored.drain_outgoing()
    assert (bytes(out.message), out.destination) == (sent, ("203.0.113.7", 6000))


def test_over_tcp_it_ends_at_once_and_trying_or_proceeding_are_never_compacted():
    req = request("OPTIONS", transport="TCP")
    tx = NonInviteServerTransaction(req, TCP, now=0.0)
    assert not tx.compacted
    tx.send_response(make_response(req, 100), 0.0)
    assert tx.state is TransactionState.PROCEEDING
    assert not tx.compacted
    tx.send_response(make_response(req, 200), 0.1)
    assert tx.state is TransactionState.TERMINATED  # Timer J is zero on a reliable transport
    assert tx.last_response.status_code == 200  # type: ignore[union-attr]
