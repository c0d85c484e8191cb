"""Real transactions from the pure core, run to their end, and the stream entries the store writes for them."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from sipcore.audit import dead_letter_counter, dead_letter_stream, stream_name
from sipcore.sip import (
    InviteServerTransaction,
    NonInviteClientTransaction,
    Timings,
    Transaction,
    TransactionSnapshot,
    TransportInfo,
    make_ack,
    make_response,
    parse_message,
)

UDP = TransportInfo("UDP", False, ("192.0.2.1", 5060), ("192.0.2.2", 5062))
SHARDS = range(16)


def invite(
    branch: str = "z9hG4bKaudit1", call_id: str = "audit-1@atlanta.example.com", method: str = "INVITE"
):
    return parse_message(
        (
            f"{method} sip:bob@biloxi.example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch={branch}\r\n"
            "Max-Forwards: 70\r\n"
            "To: Bob <sip:bob@biloxi.example.com>\r\n"
            "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: 1 {method}\r\n"
            "Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )


@dataclass(frozen=True)
class Version:
    snapshot: TransactionSnapshot
    event: str


def _take(tx: Transaction, versions: list[Version]) -> None:
    """The version as the store writes it: the snapshot, and the event that made it."""
    snap = tx.snapshot()
    if not versions or versions[-1].snapshot.version != snap.version:
        versions.append(Version(snap, tx.last_event))


def invite_server_versions(
    *,
    branch: str = "z9hG4bKaudit1",
    call_id: str = "audit-1@atlanta.example.com",
    status: int = 486,
    ack=True,
) -> list[Version]:
    """INVITE -> 100 -> 180 -> final -> Timer G -> (ACK -> Timer I | Timer G... -> Timer H)."""
    request = invite(branch, call_id)
    versions: list[Version] = []
    tx = InviteServerTransaction(request, UDP, 0.0)
    _take(tx, versions)
    tx.send_response(make_response(request, 100), 0.01)
    _take(tx, versions)
    tx.send_response(make_response(request, 180, to_tag="314159"), 0.02)
    _take(tx, versions)
    final = make_response(request, status, to_tag="314159")
    tx.send_response(final, 0.5)
    _take(tx, versions)
    tx.handle_timer(tx.next_deadline())
    _take(tx, versions)
    if ack:
        tx.receive(make_ack(request, final), 1.7)
        _take(tx, versions)
        tx.handle_timer(tx.next_deadline())
        _take(tx, versions)
    else:
        while tx.next_deadline() is not None:
            tx.handle_timer(tx.next_deadline())
            _take(tx, versions)
    return versions


def non_invite_client_versions(
    branch: str = "z9hG4bKaudit2", timings: Timings | None = None
) -> list[Version]:
    """OPTIONS -> Timer E twice -> 200 -> Timer K."""
    request = invite(branch, "audit-2@atlanta.example.com", method="OPTIONS")
    versions: list[Version] = []
    tx = NonInviteClientTransaction(request, UDP, 0.0, timings)
    _take(tx, versions)
    for _ in range(2):
        tx.handle_timer(tx.next_deadline())
        _take(tx, versions)
    tx.receive(make_response(request, 200, to_tag="99"), 1.6)
    _take(tx, versions)
    tx.handle_timer(tx.next_deadline())
    _take(tx, versions)
    return versions


def entry_fields(version: Version, *, owner: str = "node-a", epoch: int = 1, at: float | None = None) -> dict:
    snap = version.snapshot
    fields = {
        "k": snap.key,
        "v": str(snap.version),
        "e": str(epoch),
        "o": owner,
        "kind": snap.kind,
        "st": snap.state,
        "ev": version.event,
        "at": repr(time.time() if at is None else at),
        "snap": snap.to_json(),
    }
    if snap.state == "Terminated":
        fields["end"] = "1"
    elif snap.version % 2:
        fields["end"] = "0"  # the store writes "0"; "absent" is as good
    return fields


def xadd(client: redis.Redis, shard: int, versions, **kwargs) -> list[bytes]:
    return [client.xadd(stream_name(shard), entry_fields(v, **kwargs)) for v in versions]


def clean(client: redis.Redis) -> None:
    """Only this suite's keys, in the test Redis db."""
    client.delete(
        *(name(s) for s in SHARDS for name in (stream_name, dead_letter_stream, dead_letter_counter))
    )
