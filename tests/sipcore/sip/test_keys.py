"""Transaction keys and matching (RFC 3261 §17.1.3, §17.2.3, §9.2; RFC 2543 fallback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipcore.sip import (
    InviteServerTransaction,
    TransactionKey,
    TransactionMismatchError,
    TransactionState,
    make_ack,
    make_cancel,
    parse_message,
)
from tests.sipcore.sip.support import UDP, request, response

DATA = Path(__file__).resolve().parents[1] / "data"


def test_client_key_is_branch_and_cseq_method():
    invite = request("INVITE", branch="z9hG4bKa1")
    assert str(TransactionKey.for_client(invite)) == "c|z9hG4bKa1|INVITE"
    assert TransactionKey.for_client(response(invite, 180)) == TransactionKey.for_client(invite)
    # A CANCEL shares the branch but is its own transaction.
    assert TransactionKey.for_client(make_cancel(invite)) != TransactionKey.for_client(invite)


def test_server_key_is_branch_sent_by_and_method_with_ack_as_invite():
    invite = request("INVITE", branch="z9hG4bKa1")
    key = TransactionKey.for_server(invite)
    assert str(key) == "s|z9hG4bKa1|pc33.atlanta.example.com:5060|INVITE"  # default port made explicit
    assert TransactionKey.for_server(make_ack(invite, response(invite, 486))) == key
    other_host = request("INVITE", branch="z9hG4bKa1")
    other_host.headers.set("Via", "SIP/2.0/UDP attacker.example.com;branch=z9hG4bKa1")
    assert TransactionKey.for_server(other_host) != key  # same branch, other sent-by


def test_cancel_finds_the_invite_it_cancels():
    invite = request("INVITE", branch="z9hG4bKa1")
    cancel = make_cancel(invite)
    assert TransactionKey.for_server(cancel).method == "CANCEL"
    assert TransactionKey.cancelled_by(cancel) == TransactionKey.for_server(invite)
    with pytest.raises(ValueError, match="not a CANCEL"):
        TransactionKey.cancelled_by(invite)


def test_str_is_stable_for_storage():
    invite = request("INVITE", branch="z9hG4bKa1")
    assert str(TransactionKey.for_server(invite)) == str(
        TransactionKey.for_server(parse_message(bytes(invite)))
    )


@pytest.mark.parametrize("name", ["badbranch", "inv2543"])
def test_rfc2543_fallback_for_a_bare_cookie_or_no_branch(name):
    """RFC 4475 §3.2.1 (badbranch: branch=z9hG4bK alone) and §3.4.1 (inv2543: none)."""
    message = parse_message((DATA / "rfc4475" / f"{name}.dat").read_bytes())
    key = TransactionKey.for_server(message)
    assert key.is_rfc2543
    assert str(key).startswith("s|2543|")
    assert TransactionKey.for_server(parse_message(bytes(message))) == key  # a retransmission matches


def test_rfc2543_invite_transaction_matches_its_ack_by_to_tag():
    invite = parse_message((DATA / "rfc4475" / "inv2543.dat").read_bytes())
    tx = InviteServerTransaction(invite, UDP, now=0.0)
    assert tx.key.is_rfc2543
    final = response(invite, 486, to_tag="uas-1")
    tx.send_response(final, now=0.1)
    tx.drain_outgoing()

    tx.receive(parse_message(bytes(invite)), now=0.2)  # a retransmitted INVITE: the 486 again
    assert [o.message.status_code for o in tx.drain_outgoing()] == [486]

    wrong_tag = make_ack(invite, response(invite, 486, to_tag="someone-else"))
    with pytest.raises(TransactionMismatchError, match="To tag"):
        tx.receive(wrong_tag, now=0.3)
    tx.receive(make_ack(invite, final), now=0.4)
    assert tx.state is TransactionState.CONFIRMED


def test_rfc2543_key_changes_with_what_identifies_the_request():
    invite = parse_message((DATA / "rfc4475" / "inv2543.dat").read_bytes())
    base = TransactionKey.for_server(invite)
    for header, value in [
        ("Call-ID", "other@example.com"),
        ("CSeq", "57 INVITE"),
        ("Via", "SIP/2.0/UDP elsewhere.example.com"),
    ]:
        changed = invite.copy()
        changed.headers.set(header, value)
        assert TransactionKey.for_server(changed) != base, header
