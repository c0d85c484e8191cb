"""Transaction snapshot and restore cost: ours against a gosip-like baseline.

Run from the repository root: ``.venv/bin/python bench/snapshot.py [--quick]``.

For each transaction type in a typical state (INVITE client in Proceeding, non-INVITE
client in Trying, INVITE server in Completed, non-INVITE server in Completed; UDP,
a ~900-byte INVITE with SDP), it measures in microseconds:

* **snapshot**: ``tx.snapshot().to_json()`` (orjson; the last response stored as
  references to the request's header lines);
* **restore**: ``restore_transaction(TransactionSnapshot.from_json(data))``, which
  re-parses both messages and validates the snapshot;
* **bytes**: the JSON size.

The baseline does what gosip's snapshot does, in Python: a full ``copy.deepcopy`` of
the live objects, the stdlib ``json`` module, both messages stored in full, and a
restore that rebuilds the transaction without checking anything. Both run in the same
process, interleaved, best of several repeats (the machine is shared and noisy; noise
only ever adds time). The output is a report; the exit status is 0 either way.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sipcore.sip import (
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Request,
    Timings,
    Transaction,
    TransactionSnapshot,
    TransactionState,
    TransportInfo,
    make_response,
    parse_message,
    restore_transaction,
)
from sipcore.sip.transaction import TRANSACTION_CLASSES, Timer

UDP = TransportInfo("UDP", False, ("192.0.2.10", 5060), ("192.0.2.101", 5060))
SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\ns=-\r\nc=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)


def _request(method: str, body: bytes = b"") -> Request:
    lines = [
        f"{method} sip:bob@biloxi.example.com SIP/2.0",
        "Via: SIP/2.0/UDP proxy1.atlanta.example.com:5060;branch=z9hG4bK2d4790.1",
        "Via: SIP/2.0/UDP 192.0.2.101:5060;received=192.0.2.101;branch=z9hG4bK74bf9a3c",
        "Max-Forwards: 69",
        "Record-Route: <sip:proxy1.atlanta.example.com;lr>",
        "To: Bob <sip:bob@biloxi.example.com>",
        'From: "Alice" <sip:alice@atlanta.example.com>;tag=9fxced76sl',
        "Call-ID: 3848276298220188511@atlanta.example.com",
        f"CSeq: 314159 {method}",
        "Contact: <sip:alice@192.0.2.101:5060;transport=udp>",
        "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, INFO",
        "User-Agent: PolycomVVX-VVX_411-UA/5.9.5.0614",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + body)  # type: ignore[return-value]


def typical_transactions(now: float) -> dict[str, Transaction]:
    invite = _request("INVITE", SDP)
    invite_client = InviteClientTransaction(invite, UDP, now=now)
    invite_client.receive(make_response(invite, 180, to_tag="uas"), now + 0.1)
    non_invite_client = NonInviteClientTransaction(_request("OPTIONS"), UDP, now=now)
    invite_server = InviteServerTransaction(invite, UDP, now=now)
    invite_server.send_response(make_response(invite, 486, to_tag="uas"), now + 0.4)
    non_invite_server = NonInviteServerTransaction(_request("OPTIONS"), UDP, now=now)
    non_invite_server.send_response(make_response(non_invite_server.request, 200, to_tag="uas"), now + 0.01)
    transactions = {
        "INVITE client, Proceeding": invite_client,
        "non-INVITE client, Trying": non_invite_client,
        "INVITE server, Completed": invite_server,
        "non-INVITE server, Completed": non_invite_server,
    }
    for tx in transactions.values():
        tx.drain_outgoing()
    return transactions


# --- the gosip-like baseline -------------------------------------------------


def baseline_snapshot(tx: Transaction) -> str:
    copied = copy.deepcopy(
        # The live objects themselves (tx.request and tx.last_response hand out copies).
        {
            "request": tx._request,
            "response": tx._last_response,
            "timers": tx.timers,
            "transport": tx.transport,
        }
    )
    document = {
        "kind": tx.KIND,
        "state": tx.state.value,
        "key": str(tx.key),
        "request": bytes(copied["request"]).decode("utf-8", "surrogateescape"),
        "response": None
        if copied["response"] is None
        else bytes(copied["response"]).decode("utf-8", "surrogateescape"),
        "timers": {name: [timer.deadline, timer.interval] for name, timer in copied["timers"].items()},
        "transport": [
            copied["transport"].protocol,
            copied["transport"].reliable,
            list(copied["transport"].local),
            list(copied["transport"].remote),
        ],
        "created": tx.created_at,
        "updated": tx.updated_at,
    }
    return json.dumps(document)


def baseline_restore(data: str) -> Transaction:
    document = json.loads(data)
    cls = TRANSACTION_CLASSES[document["kind"]]
    tx = cls.__new__(cls)
    protocol, reliable, local, remote = document["transport"]
    response = document["response"]
    tx._setup(
        request=parse_message(document["request"].encode()),  # type: ignore[arg-type]
        transport=TransportInfo(protocol, reliable, tuple(local), tuple(remote)),  # type: ignore[arg-type]
        timings=Timings(),
        state=TransactionState(document["state"]),
        created_at=document["created"],
        updated_at=document["updated"],
        last_response=None if response is None else parse_message(response.encode()),  # type: ignore[arg-type]
        timers={name: Timer(*values) for name, values in document["timers"].items()},
        version=0,
    )
    return tx


# --- measurement -------------------------------------------------------------


def best_microseconds(fn: Callable[[], object], repeats: int, budget: float) -> float:
    count = 1
    while True:  # calibrate: one repeat takes about `budget` seconds
        started = time.perf_counter()
        for _ in range(count):
            fn()
        if time.perf_counter() - started > budget / 4 or count > 1_000_000:
            break
        count *= 4
    count = max(1, int(count * budget / max(time.perf_counter() - started, 1e-9)))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(count):
            fn()
        best = min(best, (time.perf_counter() - started) / count)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats (a smoke run)")
    args = parser.parse_args()
    repeats, budget = (2, 0.05) if args.quick else (5, 0.25)

    rows = []
    for name, tx in typical_transactions(now=1_800_000_000.0).items():
        ours_json = tx.snapshot().to_json()
        base_json = baseline_snapshot(tx)
        restored = restore_transaction(TransactionSnapshot.from_json(ours_json))
        assert restored.snapshot() == tx.snapshot(), name
        assert baseline_restore(base_json).last_response == tx.last_response, name
        ours_snap = best_microseconds(lambda tx=tx: tx.snapshot().to_json(), repeats, budget)
        base_snap = best_microseconds(lambda tx=tx: baseline_snapshot(tx), repeats, budget)
        ours_restore = best_microseconds(
            lambda data=ours_json: restore_transaction(TransactionSnapshot.from_json(data)), repeats, budget
        )
        base_restore = best_microseconds(lambda data=base_json: baseline_restore(data), repeats, budget)
        rows.append(
            (name, ours_snap, base_snap, ours_restore, base_restore, len(ours_json), len(base_json.encode()))
        )

    print(f"snapshot benchmark (best of {repeats}; microseconds, lower is better; bytes of JSON)")
    header = f"{'transaction':30} {'snapshot':>9} {'baseline':>9} {'ratio':>6}   {'restore':>8} {'baseline':>9} {'ratio':>6}   {'bytes':>6} {'baseline':>8}"
    print(header)
    for name, snap, base_snap, restore, base_restore, size, base_size in rows:
        print(
            f"{name:30} {snap:9.1f} {base_snap:9.1f} {base_snap / snap:5.1f}x   {restore:8.1f} {base_restore:9.1f} "
            f"{base_restore / restore:5.1f}x   {size:6d} {base_size:8d}"
        )
    print(
        "ratio = baseline time / ours (above 1: ours is faster). Restore includes full validation; the baseline checks nothing."
    )
    worst_snap = max(row[1] for row in rows)
    worst_restore = max(row[3] for row in rows)
    invite_server_bytes = next(row[5] for row in rows if row[0].startswith("INVITE server"))
    print("\ntargets:")
    for ok, text in (
        (worst_snap <= 30, f"snapshot + to_json <= 30 us (worst {worst_snap:.1f} us)"),
        (worst_restore <= 50, f"from_json + restore <= 50 us (worst {worst_restore:.1f} us)"),
        (invite_server_bytes <= 1500, f"INVITE server in Completed <= 1.5 KB ({invite_server_bytes} bytes)"),
    ):
        print(f"  {'PASS' if ok else 'MISS'}  {text}")


if __name__ == "__main__":
    main()
