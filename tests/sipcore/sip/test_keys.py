"""Transaction keys and matching (RFC 3261 §17.1.3, §17.2.3, §9.2; RFC 2543 fallback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipcore.sip import (
    InviteServerTransaction,
    Request,
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


# --- RFC 3261 §17.2.3, RFC 2543 fallback: the whole rule, To tag included ---


def _rfc2543(method: str = "INVITE", *, to_tag: str | None = None, cseq: str = "1 INVITE") -> Request:
    """A request without a branch (an RFC 2543 peer)."""
    to = "Bob <sip:bob@biloxi.example.com>" + (f";tag={to_tag}" if to_tag else "")
    return parse_message(
        (
            f"{method} sip:bob@biloxi.example.com SIP/2.0\r\n"
            "Via: SIP/2.0/UDP pc33.atlanta.example.com\r\n"
            f"To: {to}\r\n"
            "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
            "Call-ID: 2543@atlanta.example.com\r\n"
            f"CSeq: {cseq}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        # A retransmission: everything §17.2.3 compares is equal.
        (_rfc2543(), _rfc2543(), True),
        (_rfc2543(to_tag="a"), _rfc2543(to_tag="a"), True),
        # The To tag is part of the rule for INVITE and every other non-ACK method.
        (_rfc2543(), _rfc2543(to_tag="a"), False),
        (_rfc2543(to_tag="a"), _rfc2543(to_tag="b"), False),
        (_rfc2543("BYE", to_tag="a", cseq="2 BYE"), _rfc2543("BYE", to_tag="b", cseq="2 BYE"), False),
        (_rfc2543("BYE", to_tag="a", cseq="2 BYE"), _rfc2543("BYE", to_tag="a", cseq="2 BYE"), True),
        # CSeq including the method.
        (_rfc2543("BYE", to_tag="a", cseq="2 BYE"), _rfc2543("INFO", to_tag="a", cseq="2 INFO"), False),
        (_rfc2543(cseq="1 INVITE"), _rfc2543(cseq="2 INVITE"), False),
    ],
)
def test_rfc2543_keys_follow_the_whole_rule(first, second, same):
    assert (TransactionKey.for_server(first) == TransactionKey.for_server(second)) is same
    assert (str(TransactionKey.for_server(first)) == str(TransactionKey.for_server(second))) is same


def test_rfc2543_a_different_invite_is_not_a_retransmission():
    tx = InviteServerTransaction(_rfc2543(), UDP, now=0.0)
    tx.send_response(response(tx.request, 486, to_tag="uas"), now=0.1)
    tx.drain_outgoing()
    with pytest.raises(TransactionMismatchError):
        tx.receive(_rfc2543(to_tag="someone"), now=0.2)  # another INVITE: not answered with our 486
    assert tx.drain_outgoing() == []
    tx.receive(_rfc2543(), now=0.3)  # the same INVITE again: the 486 again
    assert [out.message.status_code for out in tx.drain_outgoing()] == [486]


@pytest.mark.parametrize("invite_to_tag", [None, "dialog"])
def test_rfc2543_ack_finds_its_invite_by_the_response_to_tag(invite_to_tag):
    """§17.2.3: the ACK matches on the INVITE's Request-URI, From tag, Call-ID, CSeq
    number and top Via, and on the To tag of the response sent, which is a new tag
    for an initial INVITE and the dialog's own inside one."""
    invite = _rfc2543(to_tag=invite_to_tag)
    tx = InviteServerTransaction(invite, UDP, now=0.0)
    final = response(invite, 486, to_tag="uas")
    tx.send_response(final, now=0.1)
    ack = make_ack(invite, tx.last_response)
    assert tx.key in TransactionKey.server_keys_for(ack)
    assert TransactionKey.server_keys_for(ack)[0] == TransactionKey.for_server(ack)
    tx.receive(ack, now=0.2)
    assert tx.state is TransactionState.CONFIRMED


def test_rfc3261_requests_have_one_server_key():
    invite = request("INVITE", branch="z9hG4bKa1")
    ack = make_ack(invite, response(invite, 486))
    assert TransactionKey.server_keys_for(ack) == (TransactionKey.for_server(invite),)
    assert TransactionKey.server_keys_for(invite) == (TransactionKey.for_server(invite),)


def test_a_stored_rfc2543_transaction_of_schema_2_migrates_to_the_new_key():
    import orjson

    from sipcore.sip import TransactionSnapshot, restore_transaction

    tx = InviteServerTransaction(_rfc2543(), UDP, now=0.0)
    tx.send_response(response(tx.request, 486, to_tag="uas"), now=0.1)
    document = orjson.loads(tx.snapshot().to_json())
    document["schema"] = 2
    document["key"] = "s|2543|0123456789abcdef0123456789abcdef|INVITE"  # the v2 digest left the To tag out
    restored = restore_transaction(TransactionSnapshot.from_json(orjson.dumps(document)))
    assert restored.key == tx.key
    assert restored.snapshot() == tx.snapshot()


def test_a_requests_key_follows_every_change_of_what_it_is_made_of():
    message = request("OPTIONS")
    first = TransactionKey.for_server(message)
    assert TransactionKey.for_server(message) == first
    message.headers.set("Via", "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKchanged")
    assert TransactionKey.for_server(message).branch == "z9hG4bKchanged"
    message.method = "INFO"
    assert TransactionKey.for_server(message).method == "INFO"
    assert message.top_via is not None
    assert message.top_via.branch == "z9hG4bKchanged"

    legacy = parse_message((DATA / "rfc4475" / "inv2543.dat").read_bytes())
    before = TransactionKey.for_server(legacy)
    legacy.uri = "sip:someone-else@example.com"  # the RFC 2543 key includes the Request-URI
    assert TransactionKey.for_server(legacy) != before
    copied = legacy.copy()
    copied.headers.set("Call-ID", "other@example.com")
    assert TransactionKey.for_server(copied) != TransactionKey.for_server(legacy)
    assert TransactionKey.for_server(parse_message(bytes(legacy))) == TransactionKey.for_server(legacy)


@pytest.mark.parametrize(
    "params",
    [
        ";branch=z9hG4bKx1",
        ";BRANCH=z9hG4bKx1",
        ";branch=z9hG4bKx1;rport",
        ";rport;branch=z9hG4bKx1",
        ";branch=z9hG4bKx1;received=192.0.2.9",
        ";branch=z9hG4bK",
        ";branch=abc",
        ";received=192.0.2.9",
        "",
    ],
)
def test_the_server_key_reads_the_same_branch_as_the_message_however_the_via_is_spelled(params):
    data = bytes(request("OPTIONS", branch="z9hG4bKplaceholder"))
    data = data.replace(b";branch=z9hG4bKplaceholder", params.encode())
    message = parse_message(data)
    key = TransactionKey.for_server(message)
    branch = message.branch
    if branch is not None and branch.startswith("z9hG4bK") and len(branch) > len("z9hG4bK"):
        assert (key.branch, key.sent_by, key.legacy) == (branch, "pc33.atlanta.example.com:5060", "")
    else:
        assert key.is_rfc2543
        assert key.branch == ""
