"""Snapshots: plain, versioned, restorable anywhere; each invalid one refused by name."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipcore.sip import (
    SCHEMA_VERSION,
    InvalidSnapshotError,
    InviteServerTransaction,
    TransactionSnapshot,
    TransactionState,
    TransportInfo,
    restore_transaction,
)
from sipcore.sip.snapshot import MIGRATIONS
from tests.sipcore.sip.support import TCP, UDP, Recorder, ack_for, first_line, request, response
from tests.sipcore.sip.test_transaction_fsm import PATHS, reach


def round_trip(tx):
    return restore_transaction(TransactionSnapshot.from_json(tx.snapshot().to_json()))


@pytest.mark.parametrize(("kind", "state"), sorted(PATHS), ids=["-".join(k) for k in sorted(PATHS)])
def test_restore_in_every_reachable_state(kind, state):
    tx = reach(kind, state)
    snapshot = tx.snapshot()
    restored = restore_transaction(TransactionSnapshot.from_json(snapshot.to_json()))
    assert type(restored) is type(tx)
    assert (restored.state, restored.key, restored.version) == (tx.state, tx.key, tx.version)
    assert restored.request == tx.request
    assert restored.last_response == tx.last_response
    assert restored.timers == tx.timers
    assert (restored.created_at, restored.updated_at) == (tx.created_at, tx.updated_at)
    assert restored.drain_outgoing() == []  # nothing is sent on restore
    assert restored.snapshot() == snapshot


def test_snapshot_holds_every_fact_and_shares_nothing_mutable():
    tx = InviteServerTransaction(request(), UDP, now=100.0)
    tx.send_response(response(tx.request, 486), now=100.5)
    snapshot = tx.snapshot()
    assert snapshot.schema_version == SCHEMA_VERSION
    assert (snapshot.kind, snapshot.state, snapshot.key) == ("invite_server", "Completed", str(tx.key))
    assert snapshot.timers == (("G", 101.0, 0.5), ("H", 132.5, 32.0))
    assert snapshot.transport == UDP
    assert (snapshot.created_at, snapshot.updated_at) == (100.0, 100.5)
    assert isinstance(snapshot.request, bytes)
    assert isinstance(snapshot.last_response, bytes)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.state = "Terminated"  # type: ignore[misc]
    # The live transaction moves on; the snapshot does not.
    tx.request.headers.add("X-Later", "1")
    tx.handle_timer(101.0)
    assert snapshot.timers == (("G", 101.0, 0.5), ("H", 132.5, 32.0))
    assert b"X-Later" not in snapshot.request
    assert tx.snapshot().version == snapshot.version + 1


TYPICAL_EXTRA = (
    "Via: SIP/2.0/UDP 192.0.2.101:5060;received=192.0.2.101;branch=z9hG4bK74bf9a3c\r\n"
    "Record-Route: <sip:proxy1.atlanta.example.com;lr>\r\n"
    "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, INFO\r\n"
    "Supported: replaces, timer\r\n"
    "User-Agent: PolycomVVX-VVX_411-UA/5.9.5.0614\r\n"
)


def test_completed_invite_server_snapshot_is_under_1_5_kb():
    tx = InviteServerTransaction(request(extra=TYPICAL_EXTRA), UDP, now=1.8e9)
    sdp = (b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\ns=-\r\nc=IN IP4 192.0.2.101\r\nt=0 0\r\n"
           b"m=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
           b"a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")  # fmt: skip
    invite = tx.request
    invite.set_body(sdp, "application/sdp")
    assert 800 < len(bytes(invite)) < 1000  # a typical INVITE with SDP
    tx = InviteServerTransaction(invite, UDP, now=1.8e9)
    tx.send_response(response(invite, 486), now=1.8e9 + 0.4)
    data = tx.snapshot().to_json()
    assert len(data) <= 1500, len(data)
    assert restore_transaction(TransactionSnapshot.from_json(data)).last_response == tx.last_response


def test_binary_body_survives_json():
    invite = request()
    invite.set_body(b"\x00\xff\xfe binary", "application/octet-stream")
    tx = InviteServerTransaction(invite, UDP, now=0.0)
    assert round_trip(tx).request.body == b"\x00\xff\xfe binary"


def test_a_timer_that_expired_while_stored_fires_once_and_rearms_from_now():
    tx = InviteServerTransaction(request(), UDP, now=0.0)
    tx.send_response(response(tx.request, 486), now=0.0)
    tx.drain_outgoing()
    stored = tx.snapshot().to_json()  # G due at 0.5, H at 32

    restored = restore_transaction(TransactionSnapshot.from_json(stored))
    restored.handle_timer(10.0)  # G fell due at 0.5 while stored
    assert [first_line(o.message) for o in restored.drain_outgoing()] == [
        "SIP/2.0 486 Busy Here"
    ]  # once, no burst
    assert restored.timers["G"].deadline == 11.0  # re-armed from now with the doubled interval
    assert restored.timers["H"].deadline == 32.0  # not due: untouched
    restored.handle_timer(10.0)
    assert restored.drain_outgoing() == []  # a fired timer cannot fire again

    late = restore_transaction(TransactionSnapshot.from_json(stored))
    events = Recorder().attach(late)
    late.handle_timer(60.0)  # G and H both fell due: H ends it, and the stale 486 is not sent
    assert late.drain_outgoing() == []
    assert events.events == [
        ("error", "timeout", "Timer H: no ACK for the final response"),
        ("state", "Completed", "Terminated"),
    ]
    assert late.terminated


def test_restored_server_absorbs_a_retransmitted_invite_and_takes_the_ack():
    tx = InviteServerTransaction(request(), UDP, now=0.0)
    final = response(tx.request, 603)
    tx.send_response(final, now=0.1)
    restored = round_trip(tx)
    events = Recorder().attach(restored)
    restored.receive(request(), now=0.6)  # the INVITE again: the 603 again
    assert [o.message.status_code for o in restored.drain_outgoing()] == [603]
    restored.receive(ack_for(restored.request, final), now=0.7)
    assert restored.state is TransactionState.CONFIRMED
    assert events.events[0] == ("ack", "ACK", 1)


def test_restore_onto_another_node_uses_the_new_transport():
    tx = InviteServerTransaction(request(), TCP, now=0.0)
    tx.send_response(response(tx.request, 180), now=0.1)
    other_node = TransportInfo("TCP", True, ("198.51.100.7", 5060), ("192.0.2.2", 40001))
    restored = restore_transaction(tx.snapshot(), transport=other_node)
    restored.receive(request(transport="TCP"), now=0.5)
    (out,) = restored.drain_outgoing()
    assert out.destination == ("192.0.2.2", 40001)
    assert restored.transport == other_node
    with pytest.raises(InvalidSnapshotError, match="as reliable"):
        restore_transaction(tx.snapshot(), transport=UDP)


# --- every invalid-snapshot error, by name ---


def _document(tx=None) -> dict:
    if tx is None:
        tx = InviteServerTransaction(request(), UDP, now=0.0)
        tx.send_response(response(tx.request, 486), now=0.1)
    return orjson.loads(tx.snapshot().to_json())


def _load(document: dict) -> None:
    restore_transaction(TransactionSnapshot.from_json(orjson.dumps(document)))


def _edit(**changes):
    def edit(document: dict) -> dict:
        document.update(changes)
        return document

    return edit


def _timer(name: str, *, deadline: object = None, interval: object = None):
    def edit(document: dict) -> dict:
        old_deadline, old_interval = document["timers"][name]
        document["timers"][name] = [
            old_deadline if deadline is None else deadline,
            old_interval if interval is None else interval,
        ]
        return document

    return edit


INVALID = [
    ("not json", lambda d: b"{nope", "not JSON"),
    ("a list", lambda d: [1, 2], "JSON list, not an object"),
    ("no schema", lambda d: {k: v for k, v in d.items() if k != "schema"}, "no schema version"),
    ("newer schema", _edit(schema=SCHEMA_VERSION + 1), "newer than this code"),
    ("unknown old schema", _edit(schema=0), "no migration from snapshot schema version 0"),
    ("unknown kind", _edit(kind="proxy"), "unknown transaction kind 'proxy'"),
    ("unknown state", _edit(state="Ringing"), "unknown state 'Ringing'"),
    (
        "state of another machine",
        _edit(state="Calling"),
        "state Calling is not a state of InviteServerTransaction",
    ),
    (
        "method of another machine",
        _edit(kind="non_invite_server", state="Completed"),
        "request method does not fit",
    ),
    (
        "key of another request",
        _edit(key="s|z9hG4bKother|pc33.atlanta.example.com:5060|INVITE"),
        "does not match the request's key",
    ),
    ("unparseable request", _edit(request="INVITE nonsense", response=None), "stored request does not parse"),
    (
        "response for another request",
        lambda d: {
            **d,
            "response": {
                "lines": ["SIP/2.0 486 Busy Here", 1, 3, 4, "Call-ID: other@x", 6, "Content-Length: 0"]
            },
        },
        "Call-ID differ",
    ),
    (
        "response line out of range",
        lambda d: {**d, "response": {"lines": ["SIP/2.0 486 Busy Here", 99]}},
        "request line 99",
    ),
    ("completed without response", _edit(response=None), "needs the last response"),
    ("missing timer H", lambda d: {**d, "timers": {"G": d["timers"]["G"]}}, "needs timer H"),
    (
        "timer of another state",
        lambda d: {**d, "timers": {**d["timers"], "L": [40.0, 32.0]}},
        "timer L cannot run in state Completed",
    ),
    ("malformed timers", _edit(timers={"G": "soon"}), "malformed"),
    ("bad transport", _edit(transport=["UDP", True, ["a", 1], ["b", 2]]), "malformed"),
    ("missing field", lambda d: {k: v for k, v in d.items() if k != "key"}, "malformed: KeyError"),
    ("bad timings", _edit(timings={"t1": -1}), "malformed"),
    # Numbers that would stop time: handle_timer would spin (interval <= 0) or the
    # transaction would never end (NaN, infinite deadlines).
    ("zero interval", _timer("G", interval=0), "timer G has interval 0.0"),
    ("negative interval", _timer("G", interval=-0.5), "timer G has interval -0.5"),
    ("interval lost at a large now", _timer("G", interval=1e-300), "timer G has interval 1e-300"),
    ("NaN interval", _timer("H", interval="nan"), "timer H has interval nan"),
    ("infinite interval", _timer("H", interval="inf"), "timer H has interval inf"),
    ("NaN deadline", _timer("H", deadline="nan"), "timer H has deadline nan"),
    ("infinite deadline", _timer("H", deadline="inf"), "timer H has deadline inf"),
    ("deadline beyond any clock", _timer("H", deadline=1e300), "timer H has deadline 1e"),
    (
        "interval never armed",
        _timer("G", interval=0.3),
        "timer G has interval 0.3, which these timings never",
    ),
    ("Timer H not 64*T1", _timer("H", interval=31.0), "timer H has interval 31.0"),
    # G due at 0.6: H can be due at most 64*T1 = 32 s after it, else G retransmits for ever.
    (
        "timeout far past its retransmissions",
        _timer("H", deadline=792.0),
        "timer H is due 791.4 s after timer G",
    ),
    ("timeout just past 64*T1", _timer("H", deadline=32.6 + 1e-9), "timer H is due 32.0000000"),
    ("NaN created", _edit(created="nan"), "created_at must be a finite clock reading"),
    ("infinite updated", _edit(updated="-inf"), "updated_at must be a finite clock reading"),
    ("negative version", _edit(version=-1), "version must be a non-negative 64-bit integer"),
    (
        "Completed holding a 180",
        lambda d: {
            **d,
            "response": {**d["response"], "lines": ["SIP/2.0 180 Ringing", *d["response"]["lines"][1:]]},
        },
        "state Completed of InviteServerTransaction holds a 3xx-6xx response, not a 180",
    ),
]


@pytest.mark.parametrize(("edit", "message"), [(e, m) for _, e, m in INVALID], ids=[n for n, _, _ in INVALID])
def test_each_invalid_snapshot_is_refused_with_a_clear_message(edit, message):
    document = edit(_document())
    load = TransactionSnapshot.from_json if isinstance(document, bytes) else _load
    with pytest.raises(InvalidSnapshotError, match=message) as caught:
        load(document)
    assert isinstance(caught.value, ValueError)


def test_reliable_completed_invite_client_is_not_a_real_state():
    tx = reach("invite_client", "Completed")  # on UDP
    document = _document(tx)
    document["transport"] = ["TCP", True, ["192.0.2.1", 5060], ["192.0.2.2", 5062]]
    document["timers"] = {}
    with pytest.raises(InvalidSnapshotError, match="does not last on a reliable transport"):
        _load(document)


def test_version_1_snapshots_are_migrated():
    tx = InviteServerTransaction(request(), UDP, now=0.0)
    tx.send_response(response(tx.request, 486), now=0.1)
    current = _document(tx)
    v1 = {k: v for k, v in current.items() if k != "version"}
    v1["schema"] = 1
    v1["response"] = bytes(tx.last_response).decode()  # v1 stored the response in full
    assert set(MIGRATIONS) == {1, 2}
    restored = restore_transaction(TransactionSnapshot.from_json(orjson.dumps(v1)))
    assert restored.last_response == tx.last_response
    assert restored.version == 0
    assert restored.snapshot().schema_version == SCHEMA_VERSION


def test_class_restore_checks_the_kind():
    tx = reach("invite_server", "Completed")
    snapshot = tx.snapshot()
    assert InviteServerTransaction.restore(snapshot).state is TransactionState.COMPLETED
    from sipcore.sip import NonInviteServerTransaction

    with pytest.raises(InvalidSnapshotError, match="cannot restore a NonInviteServerTransaction"):
        NonInviteServerTransaction.restore(snapshot)


def test_handle_timer_before_any_deadline_does_nothing():
    tx = reach("invite_server", "Completed")
    version = tx.version
    tx.handle_timer(tx.next_deadline() - 0.001)
    assert (tx.version, tx.drain_outgoing(), tx.state) == (version, [], TransactionState.COMPLETED)


# --- each state holds the response it can hold, for all four machines ---

ALL = {"none", "1xx", "2xx", "3xx-6xx"}
# Written out from RFC 3261 §17 and RFC 6026, not read from the code.
ALLOWED_RESPONSES: dict[tuple[str, str], set[str]] = {
    ("invite_client", "Calling"): {"none"},
    ("invite_client", "Proceeding"): {"1xx"},
    ("invite_client", "Proceeding/guarded"): {"1xx"},
    ("invite_client", "Completed"): {"3xx-6xx"},
    ("invite_client", "Accepted"): {"2xx"},
    ("invite_client", "Terminated"): ALL,
    ("non_invite_client", "Trying"): {"none"},
    ("non_invite_client", "Proceeding"): {"1xx"},
    ("non_invite_client", "Completed"): {"2xx", "3xx-6xx"},
    ("non_invite_client", "Terminated"): ALL,
    ("invite_server", "Proceeding"): {"none"},  # the 100 Trying timer still runs
    ("invite_server", "Proceeding/answered"): {"1xx"},
    ("invite_server", "Completed"): {"3xx-6xx"},
    ("invite_server", "Confirmed"): {"3xx-6xx"},
    ("invite_server", "Accepted"): {"2xx"},
    ("invite_server", "Terminated"): ALL,
    ("non_invite_server", "Trying"): {"none"},
    ("non_invite_server", "Proceeding"): {"1xx"},
    ("non_invite_server", "Completed"): {"2xx", "3xx-6xx"},
    ("non_invite_server", "Terminated"): ALL,
}
STATUS_OF = {"1xx": 180, "2xx": 200, "3xx-6xx": 486}
RESPONSE_CASES = [(kind, state, kind_of) for (kind, state) in sorted(PATHS) for kind_of in sorted(ALL)]


def test_every_reachable_state_has_its_response_rule():
    assert set(ALLOWED_RESPONSES) == set(PATHS)


@pytest.mark.parametrize(
    ("kind", "state", "response_class"), RESPONSE_CASES, ids=["-".join(case) for case in RESPONSE_CASES]
)
def test_a_stored_response_must_fit_the_state(kind, state, response_class):
    tx = reach(kind, state)
    stored = tx.snapshot()
    last = None if response_class == "none" else bytes(response(tx.request, STATUS_OF[response_class]))
    snapshot = dataclasses.replace(stored, last_response=last)
    if response_class in ALLOWED_RESPONSES[(kind, state)]:
        restored = restore_transaction(TransactionSnapshot.from_json(snapshot.to_json()))
        assert restored.state is tx.state
    else:
        with pytest.raises(InvalidSnapshotError, match=f"state {tx.state.value}"):
            restore_transaction(TransactionSnapshot.from_json(snapshot.to_json()))


def test_a_completed_invite_client_holding_a_200_is_refused_not_crashed():
    tx = reach("invite_client", "Completed")
    snapshot = dataclasses.replace(tx.snapshot(), last_response=bytes(response(tx.request, 200)))
    with pytest.raises(InvalidSnapshotError, match="holds a 3xx-6xx response, not a 200"):
        restore_transaction(snapshot)


@pytest.mark.parametrize(("kind", "state"), sorted(PATHS), ids=["-".join(k) for k in sorted(PATHS)])
def test_timers_of_the_other_transport_are_refused(kind, state):
    """Timers A, E and G never run on reliable transports; moving a UDP snapshot that
    runs them onto TCP would be a transaction that cannot exist."""
    tx = reach(kind, state)
    document = orjson.loads(tx.snapshot().to_json())
    document["transport"] = ["TCP", True, ["192.0.2.1", 5060], ["192.0.2.2", 5062]]
    retransmitting = set(document["timers"]) & {"A", "E", "G"}
    zero_on_tcp = set(document["timers"]) & {"D", "I", "J", "K"}
    if retransmitting or zero_on_tcp:
        with pytest.raises(InvalidSnapshotError, match=r"cannot run in state|does not last on a reliable"):
            _load(document)
    else:
        _load(document)


def test_restore_refuses_a_clock_it_cannot_use_and_handle_timer_refuses_nan():
    tx = reach("invite_server", "Completed")
    with pytest.raises(ValueError, match="finite clock reading"):
        tx.handle_timer(float("nan"))
    with pytest.raises(ValueError, match="finite clock reading"):
        tx.receive(request(), now=float("inf"))
    assert tx.state is TransactionState.COMPLETED


@settings(max_examples=300, deadline=None)
@given(
    start=st.sampled_from(sorted(PATHS)),
    shifts=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=3, max_size=3),
    now=st.floats(-1e9, 1e10, allow_nan=False),
)
def test_handle_timer_fires_each_timer_at_most_once_whatever_the_deadlines(start, shifts, now):
    """Any restorable snapshot, with its deadlines moved anywhere: one handle_timer
    call fires each running timer at most once and returns."""
    tx = reach(*start)
    snapshot = tx.snapshot()
    moved = tuple(
        (name, deadline + shift, interval)
        for (name, deadline, interval), shift in zip(snapshot.timers, shifts, strict=False)
    )
    try:
        restored = restore_transaction(dataclasses.replace(snapshot, timers=moved))
    except InvalidSnapshotError as exc:
        # The one rule moved deadlines can break: a timeout more than 64*T1 after its retransmissions.
        assert "more than 64*T1" in str(exc)
        return
    version = restored.version
    restored.handle_timer(now)
    assert restored.version - version <= len(moved)
    assert len(restored.drain_outgoing()) <= len(moved)
    assert all(timer.deadline > now for timer in restored.timers.values())


# Written by the previous release (schema 2), byte for byte.
SCHEMA_2_DOCUMENTS = [
    b'{"schema":2,"kind":"invite_server","state":"Completed","key":"s|z9hG4bK74bf9|pc33.atlanta.example.com:5060|'
    b'INVITE","version":1,"created":1800000000.0,"updated":1800000000.25,"transport":["UDP",false,["192.0.2.1",5060'
    b'],["192.0.2.2",5062]],"timers":{"G":[1800000000.75,0.5],"H":[1800000032.25,32.0]},"request":"INVITE sip:bob@'
    b"biloxi.example.com SIP/2.0\\r\\nVia: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK74bf9\\r\\nMax-Forwa"
    b"rds: 70\\r\\nTo: Bob <sip:bob@biloxi.example.com>\\r\\nFrom: Alice <sip:alice@atlanta.example.com>;tag=9fxce"
    b"d76sl\\r\\nCall-ID: 3848276298220188511@atlanta.example.com\\r\\nCSeq: 1 INVITE\\r\\nContact: <sip:alice@pc3"
    b'3.atlanta.example.com>\\r\\nContent-Length: 0\\r\\n\\r\\n","response":{"lines":["SIP/2.0 486 Busy Here",1,4,"'
    b'To: Bob <sip:bob@biloxi.example.com>;tag=314159",5,6,8]}}',
    b'{"schema":2,"kind":"invite_client","state":"Proceeding","key":"c|z9hG4bK74bf9|INVITE","version":1,"created":1'
    b'800000000.0,"updated":1800000000.5,"transport":["TCP",true,["192.0.2.1",5060],["192.0.2.2",40000]],"timers":{'
    b'"C":[1800000180.5,180.0]},"request":"INVITE sip:bob@biloxi.example.com SIP/2.0\\r\\nVia: SIP/2.0/TCP pc33.atl'
    b"anta.example.com;branch=z9hG4bK74bf9\\r\\nMax-Forwards: 70\\r\\nTo: Bob <sip:bob@biloxi.example.com>\\r\\nFrom"
    b": Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\\r\\nCall-ID: 3848276298220188511@atlanta.example.com"
    b'\\r\\nCSeq: 1 INVITE\\r\\nContact: <sip:alice@pc33.atlanta.example.com>\\r\\nContent-Length: 0\\r\\n\\r\\n","re'
    b'sponse":{"lines":["SIP/2.0 180 Ringing",1,4,"To: Bob <sip:bob@biloxi.example.com>;tag=314159",5,6,8]}}',
]


@pytest.mark.parametrize(
    "data", SCHEMA_2_DOCUMENTS, ids=["invite server Completed", "invite client Proceeding"]
)
def test_schema_2_documents_of_the_previous_release_restore_and_carry_on(data):
    restored = restore_transaction(TransactionSnapshot.from_json(data))
    assert restored.snapshot().schema_version == SCHEMA_VERSION == 3
    document = orjson.loads(data)
    assert restored.state.value == document["state"]
    assert str(restored.key) == document["key"]  # RFC 3261 keys are unchanged
    assert {name: [t.deadline, t.interval] for name, t in restored.timers.items()} == document["timers"]
    restored.handle_timer(restored.next_deadline())
    assert restored.version == document["version"] + 1


# --- hostile documents: refused by name, never a crash ---

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["nan", "inf", "-inf", "", "Completed", "G", "UDP", "1e999", "SIP/2.0 200 OK"])
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


@settings(max_examples=500, deadline=None)
@given(start=st.sampled_from(sorted(PATHS)), data=st.data())
def test_a_mutated_document_restores_or_is_refused_by_name(start, data):
    document = orjson.loads(reach(*start).snapshot().to_json())
    paths = [path for path in _paths(document) if path]
    path = data.draw(st.sampled_from(paths), label="path")
    value = data.draw(JSON_VALUES, label="value")
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    try:
        restored = restore_transaction(TransactionSnapshot.from_json(orjson.dumps(document)))
    except InvalidSnapshotError:
        return
    # Whatever was accepted is a transaction that works: its timers fire and end.
    for _ in range(200):
        deadline = restored.next_deadline()
        if deadline is None:
            break
        restored.handle_timer(deadline)
        restored.drain_outgoing()
    assert restored.next_deadline() is None
    assert restored.snapshot().to_json()
