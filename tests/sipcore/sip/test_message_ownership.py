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
