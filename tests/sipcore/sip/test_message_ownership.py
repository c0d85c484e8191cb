"""A transaction owns its messages: nothing a caller holds can change what it sends,
retransmits or snapshots (requests given to constructors, responses given to
send_response, messages received, and every message handed out are copies)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sipcore.sip import (
    InviteClientTransaction,
    InviteServerTransaction,
    Message,
    Transaction,
    TransactionSnapshot,
    restore_transaction,
)
from tests.sipcore.sip.support import UDP, request, response


def _spoil(message: Message) -> None:
    """What a careless caller might do to a message it still holds."""
    message.headers.set("Call-ID", "spoiled@elsewhere.example.com")
    message.headers.set("CSeq", "99 INFO" if hasattr(message, "method") else "99 INVITE")
    message.set_body(b"spoiled", "text/plain")


def _client_constructor_request() -> tuple[Transaction, Message]:
    invite = request()
    tx = InviteClientTransaction(invite, UDP, now=0.0)
    tx.drain_outgoing()
    return tx, invite


def _client_received_response() -> tuple[Transaction, Message]:
    tx = InviteClientTransaction(request(), UDP, now=0.0)
    tx.drain_outgoing()
    ringing = response(tx.request, 180)
    tx.receive(ringing, now=0.1)
    return tx, ringing


def _client_request_attribute() -> tuple[Transaction, Message]:
    tx = InviteClientTransaction(request(), UDP, now=0.0)
    tx.drain_outgoing()
    return tx, tx.request


def _client_outgoing_message() -> tuple[Transaction, Message]:
    tx = InviteClientTransaction(request(), UDP, now=0.0)
    (out,) = tx.drain_outgoing()
    return tx, out.message


def _server_given_response() -> tuple[Transaction, Message]:
    tx = InviteServerTransaction(request(), UDP, now=0.0)
    busy = response(tx.request, 486)
    tx.send_response(busy, now=0.1)
    tx.drain_outgoing()
    return tx, busy


def _server_last_response_attribute() -> tuple[Transaction, Message]:
    tx = InviteServerTransaction(request(), UDP, now=0.0)
    tx.send_response(response(tx.request, 486), now=0.1)
    tx.drain_outgoing()
    return tx, tx.last_response  # type: ignore[return-value]


def _server_outgoing_message() -> tuple[Transaction, Message]:
    tx = InviteServerTransaction(request(), UDP, now=0.0)
    tx.send_response(response(tx.request, 486), now=0.1)
    (out,) = tx.drain_outgoing()
    return tx, out.message


def _server_constructor_request() -> tuple[Transaction, Message]:
    invite = request()
    tx = InviteServerTransaction(invite, UDP, now=0.0)
    tx.send_response(response(tx.request, 486), now=0.1)
    tx.drain_outgoing()
    return tx, invite


CASES: dict[str, Callable[[], tuple[Transaction, Message]]] = {
    "request given to a client constructor": _client_constructor_request,
    "response a client received": _client_received_response,
    "client's tx.request": _client_request_attribute,
    "client's Outgoing.message": _client_outgoing_message,
    "response given to send_response": _server_given_response,
    "server's tx.last_response": _server_last_response_attribute,
    "server's Outgoing.message": _server_outgoing_message,
    "request given to a server constructor": _server_constructor_request,
}


def _next_retransmission(tx: Transaction) -> bytes | None:
    name = "A" if "A" in tx.timers else "G" if "G" in tx.timers else None
    if name is None:
        return None
    tx.handle_timer(tx.timers[name].deadline)
    (out,) = tx.drain_outgoing()
    return bytes(out.message)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_message_the_caller_holds_cannot_change_the_transaction(case):
    tx, held = CASES[case]()
    twin, _ = CASES[case]()  # the same history, untouched
    before = tx.snapshot()
    _spoil(held)

    assert tx.snapshot() == before
    assert bytes(tx.request) == bytes(twin.request)
    assert (tx.last_response is None) is (twin.last_response is None)
    if tx.last_response is not None:
        assert bytes(tx.last_response) == bytes(twin.last_response)  # type: ignore[arg-type]
    restored = restore_transaction(TransactionSnapshot.from_json(tx.snapshot().to_json()))
    assert restored.snapshot() == before
    assert _next_retransmission(tx) == _next_retransmission(twin)


def test_each_read_of_request_and_last_response_is_a_copy():
    tx, _ = _server_given_response()
    assert tx.request is not tx.request
    assert tx.request == tx.request
    assert tx.last_response is not tx.last_response
    assert tx.last_response == tx.last_response


def _many_headers_request() -> Message:
    invite = request()
    for i in range(200):
        invite.headers.add("X-Filler", f"value {i}")
    invite.headers.get("Call-ID")  # the lookup index is built
    return invite


@pytest.mark.parametrize("side", ["original", "copy"])
@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.headers.add("Via", "SIP/2.0/UDP other.example.com;branch=z9hG4bKother"),
        lambda m: m.headers.remove("Via"),
        lambda m: m.headers.set("To", "<sip:x@example.com>;tag=changed"),
        lambda m: m.set_body(b"v=0\r\n", "application/sdp"),
    ],
    ids=["add", "remove", "set", "set_body"],
)
def test_a_copy_and_its_original_never_see_each_others_changes(side, mutate):
    original = _many_headers_request()
    copied = original.copy()
    # Typed values and lookups on both sides before the change.
    assert copied.to_tag == original.to_tag
    assert copied.via == original.via
    pristine = bytes(original)
    changed, other = (original, copied) if side == "original" else (copied, original)
    mutate(changed)

    assert bytes(other) == pristine
    assert other.headers.get_all("Via") == [v for n, v in other.headers if n == "Via"]
    assert len(other.via) == 1
    assert other.to_tag == request().to_tag
    assert bytes(changed) != pristine
    assert changed.headers.get_all("Via") == [v for n, v in changed.headers if n == "Via"]
    assert changed.headers.get("To") == next((v for n, v in changed.headers if n == "To"), None)


def test_copying_a_message_costs_the_same_however_many_headers_it_has():
    import tracemalloc

    small, large = request(), _many_headers_request()

    def allocated(message: Message) -> int:
        tracemalloc.start()
        copies = [message.copy() for _ in range(50)]
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del copies
        return size

    # Copy-on-write: a copy shares the header lines until one side changes them.
    assert allocated(large) < 2 * allocated(small) + 4096


def test_values_read_off_the_headers_follow_every_change_and_never_leak_to_copies():
    original = request()
    assert (original.branch, original.to_tag, original.from_tag) == ("z9hG4bK74bf9", None, "9fxced76sl")
    copied = original.copy()
    copied.headers.set("Via", "SIP/2.0/UDP other.example.com;branch=z9hG4bKnew")
    copied.headers.set("To", "Bob <sip:bob@biloxi.example.com>;tag=added")
    copied.headers.remove("From")
    copied.headers.add("From", "<sip:carol@chicago.example.com>;tag=carol")
    assert (copied.branch, copied.to_tag, copied.from_tag) == ("z9hG4bKnew", "added", "carol")
    assert (original.branch, original.to_tag, original.from_tag) == ("z9hG4bK74bf9", None, "9fxced76sl")
    original.headers.set("Via", "SIP/2.0/UDP x.example.com;BRANCH=z9hG4bKupper")
    assert original.branch == "z9hG4bKupper"
    assert copied.branch == "z9hG4bKnew"
