"""Every state x input of each machine, against an expectation written out here.

An outcome is (state after, what was sent, callbacks) or ``INVALID`` (the state
does not accept the input: InvalidTransitionError naming both).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sipcore.sip import (
    InvalidTransitionError,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Transaction,
    TransactionMismatchError,
    TransactionState,
    TransportInfo,
)
from sipcore.sip.transaction import EVENT_IDS, Event
from tests.sipcore.sip.support import (
    TCP,
    UDP,
    Recorder,
    ack_for,
    first_line,
    new_transaction,
    request,
    response,
)

INVALID = "invalid"
S = TransactionState


def _fire(name: str) -> Callable[[Transaction], None]:
    def fire(tx: Transaction) -> None:
        tx.handle_timer(tx.timers[name].deadline)

    return fire


def _net(status: int) -> Callable[[Transaction], None]:
    return lambda tx: tx.receive(response(tx.request, status), now=tx.updated_at + 0.01)


def _tu(status: int) -> Callable[[Transaction], None]:
    return lambda tx: tx.send_response(response(tx.request, status), now=tx.updated_at + 0.01)  # type: ignore[attr-defined]


def _retransmitted_request(tx: Transaction) -> None:
    tx.receive(request(tx.request.method), now=tx.updated_at + 0.01)


def _ack(tx: Transaction) -> None:
    final = (
        tx.last_response
        if tx.last_response is not None and tx.last_response.status_code >= 300
        else response(tx.request, 486)
    )
    tx.receive(ack_for(tx.request, final), now=tx.updated_at + 0.01)


INPUTS: dict[str, Callable[[Transaction], None]] = {
    "1xx": _net(180),
    "2xx": _net(200),
    "3xx-6xx": _net(486),
    "tu 1xx": _tu(180),
    "tu 2xx": _tu(200),
    "tu 3xx-6xx": _tu(486),
    "request": _retransmitted_request,
    "ack": _ack,
    "transport error": lambda tx: tx.transport_error(tx.updated_at + 0.01, "ICMP port unreachable"),
    "terminate": lambda tx: tx.terminate(tx.updated_at + 0.01),
    **{
        f"timer {name}": _fire(name)
        for name in ("A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "100")
    },
}

# How to reach each state from a new transaction (UDP).
PATHS: dict[tuple[str, str], list[str]] = {
    ("invite_client", "Calling"): [],
    ("invite_client", "Proceeding"): ["1xx"],
    ("invite_client", "Proceeding/guarded"): ["1xx", "timer C"],  # the Proceeding guard fired
    ("invite_client", "Completed"): ["3xx-6xx"],
    ("invite_client", "Accepted"): ["2xx"],
    ("invite_client", "Terminated"): ["timer B"],
    ("non_invite_client", "Trying"): [],
    ("non_invite_client", "Proceeding"): ["1xx"],
    ("non_invite_client", "Completed"): ["2xx"],
    ("non_invite_client", "Terminated"): ["timer F"],
    ("invite_server", "Proceeding"): [],
    ("invite_server", "Proceeding/answered"): ["tu 1xx"],
    ("invite_server", "Completed"): ["tu 3xx-6xx"],
    ("invite_server", "Confirmed"): ["tu 3xx-6xx", "ack"],
    ("invite_server", "Accepted"): ["tu 2xx"],
    ("invite_server", "Terminated"): ["tu 2xx", "timer L"],
    ("non_invite_server", "Trying"): [],
    ("non_invite_server", "Proceeding"): ["tu 1xx"],
    ("non_invite_server", "Completed"): ["tu 3xx-6xx"],
    ("non_invite_server", "Terminated"): ["tu 3xx-6xx", "timer J"],
}

INVITE_LINE = "INVITE sip:bob@biloxi.example.com SIP/2.0"
OPTIONS_LINE = "OPTIONS sip:bob@biloxi.example.com SIP/2.0"
ACK_LINE = "ACK sip:bob@biloxi.example.com SIP/2.0"
R100, R180, R200, R486 = (
    "SIP/2.0 100 Trying",
    "SIP/2.0 180 Ringing",
    "SIP/2.0 200 OK",
    "SIP/2.0 486 Busy Here",
)
TERM = "Terminated"
ERR_T = ("error", "transport", "ICMP port unreachable")

# (kind, state) -> input -> (state after, sent, callbacks). Inputs not listed: INVALID.
# Server transactions have no way to take network responses or TU answers on a
# client; those are mismatches, tested separately below.
EXPECTED: dict[tuple[str, str], dict[str, tuple[str, list[str], list[tuple]]]] = {
    ("invite_client", "Calling"): {
        "1xx": ("Proceeding", [], [("response", 180), ("state", "Calling", "Proceeding")]),
        "2xx": ("Accepted", [], [("response", 200), ("state", "Calling", "Accepted")]),
        "3xx-6xx": ("Completed", [ACK_LINE], [("response", 486), ("state", "Calling", "Completed")]),
        "timer A": ("Calling", [INVITE_LINE], []),
        "timer B": (
            TERM,
            [],
            [("error", "timeout", "Timer B: no response to the INVITE"), ("state", "Calling", TERM)],
        ),
        "transport error": (TERM, [], [ERR_T, ("state", "Calling", TERM)]),
        "terminate": (TERM, [], [("state", "Calling", TERM)]),
    },
    ("invite_client", "Proceeding"): {
        "1xx": ("Proceeding", [], [("response", 180)]),
        "2xx": ("Accepted", [], [("response", 200), ("state", "Proceeding", "Accepted")]),
        "3xx-6xx": ("Completed", [ACK_LINE], [("response", 486), ("state", "Proceeding", "Completed")]),
        # §16.8: the TU hears of it (and sends CANCEL); the transaction stays for the final.
        "timer C": (
            "Proceeding",
            [],
            [("error", "timeout", "Proceeding guard: no final response (send CANCEL)")],
        ),
        "transport error": (TERM, [], [ERR_T, ("state", "Proceeding", TERM)]),
        "terminate": (TERM, [], [("state", "Proceeding", TERM)]),
    },
    ("invite_client", "Proceeding/guarded"): {
        "1xx": ("Proceeding", [], [("response", 180)]),
        "2xx": ("Accepted", [], [("response", 200), ("state", "Proceeding", "Accepted")]),
        # The 487 the CANCEL brings is ACKed (§9.1, §17.1.1.2).
        "3xx-6xx": ("Completed", [ACK_LINE], [("response", 486), ("state", "Proceeding", "Completed")]),
        "timer B": (
            TERM,
            [],
            [
                ("error", "timeout", "Timer B: no final response after the Proceeding guard"),
                ("state", "Proceeding", TERM),
            ],
        ),
        "transport error": (TERM, [], [ERR_T, ("state", "Proceeding", TERM)]),
        "terminate": (TERM, [], [("state", "Proceeding", TERM)]),
    },
    ("invite_client", "Completed"): {
        "1xx": ("Completed", [], []),  # late, out of order: absorbed
        "2xx": ("Completed", [], [("response", 200)]),  # another fork's: to the TU (§13.2.2.4)
        "3xx-6xx": ("Completed", [ACK_LINE], []),  # absorbed: ACKed again, not passed up
        "timer D": (TERM, [], [("state", "Completed", TERM)]),
        "transport error": (TERM, [], [ERR_T, ("state", "Completed", TERM)]),
        "terminate": (TERM, [], [("state", "Completed", TERM)]),
    },
    ("invite_client", "Accepted"): {
        "1xx": ("Accepted", [], []),  # late: absorbed
        "2xx": ("Accepted", [], [("response", 200)]),  # RFC 6026: each 2xx to the TU
        "3xx-6xx": ("Accepted", [ACK_LINE], []),  # another fork's final: ACKed, not passed up
        "timer M": (TERM, [], [("state", "Accepted", TERM)]),
        "terminate": (TERM, [], [("state", "Accepted", TERM)]),
    },
    ("invite_client", "Terminated"): {"terminate": (TERM, [], [])},
    ("non_invite_client", "Trying"): {
        "1xx": ("Proceeding", [], [("response", 180), ("state", "Trying", "Proceeding")]),
        "2xx": ("Completed", [], [("response", 200), ("state", "Trying", "Completed")]),
        "3xx-6xx": ("Completed", [], [("response", 486), ("state", "Trying", "Completed")]),
        "timer E": ("Trying", [OPTIONS_LINE], []),
        "timer F": (
            TERM,
            [],
            [("error", "timeout", "Timer F: no final response"), ("state", "Trying", TERM)],
        ),
        "transport error": (TERM, [], [ERR_T, ("state", "Trying", TERM)]),
        "terminate": (TERM, [], [("state", "Trying", TERM)]),
    },
    ("non_invite_client", "Proceeding"): {
        "1xx": ("Proceeding", [], [("response", 180)]),
        "2xx": ("Completed", [], [("response", 200), ("state", "Proceeding", "Completed")]),
        "3xx-6xx": ("Completed", [], [("response", 486), ("state", "Proceeding", "Completed")]),
        "timer E": ("Proceeding", [OPTIONS_LINE], []),
        "timer F": (
            TERM,
            [],
            [("error", "timeout", "Timer F: no final response"), ("state", "Proceeding", TERM)],
        ),
        "transport error": (TERM, [], [ERR_T, ("state", "Proceeding", TERM)]),
        "terminate": (TERM, [], [("state", "Proceeding", TERM)]),
    },
    ("non_invite_client", "Completed"): {
        # Retransmitted responses are absorbed (gosip passes them up again).
        "1xx": ("Completed", [], []),
        "2xx": ("Completed", [], []),
        "3xx-6xx": ("Completed", [], []),
        "timer K": (TERM, [], [("state", "Completed", TERM)]),
        "terminate": (TERM, [], [("state", "Completed", TERM)]),
    },
    ("non_invite_client", "Terminated"): {"terminate": (TERM, [], [])},
    ("invite_server", "Proceeding"): {
        "tu 1xx": ("Proceeding", [R180], []),
        "tu 2xx": ("Accepted", [R200], [("state", "Proceeding", "Accepted")]),
        "tu 3xx-6xx": ("Completed", [R486], [("state", "Proceeding", "Completed")]),
        "request": ("Proceeding", [], []),  # nothing sent yet: nothing to repeat
        "timer 100": ("Proceeding", [R100], []),
        "transport error": ("Proceeding", [], [ERR_T]),  # RFC 6026 §7.1: state kept
        "terminate": (TERM, [], [("state", "Proceeding", TERM)]),
    },
    ("invite_server", "Proceeding/answered"): {
        "tu 1xx": ("Proceeding", [R180], []),
        "tu 2xx": ("Accepted", [R200], [("state", "Proceeding", "Accepted")]),
        "tu 3xx-6xx": ("Completed", [R486], [("state", "Proceeding", "Completed")]),
        "request": ("Proceeding", [R180], []),  # the last provisional again
        "transport error": ("Proceeding", [], [ERR_T]),  # RFC 6026 §7.1: state kept
        "terminate": (TERM, [], [("state", "Proceeding", TERM)]),
    },
    ("invite_server", "Completed"): {
        "request": ("Completed", [R486], []),
        "ack": ("Confirmed", [], [("ack", "ACK", 1), ("state", "Completed", "Confirmed")]),
        "timer G": ("Completed", [R486], []),
        "timer H": (
            TERM,
            [],
            [("error", "timeout", "Timer H: no ACK for the final response"), ("state", "Completed", TERM)],
        ),
        "transport error": ("Completed", [], [ERR_T]),  # RFC 6026 §7.1: state kept
        "terminate": (TERM, [], [("state", "Completed", TERM)]),
    },
    ("invite_server", "Confirmed"): {
        "request": ("Confirmed", [], []),
        "ack": ("Confirmed", [], []),
        "timer I": (TERM, [], [("state", "Confirmed", TERM)]),
        "terminate": (TERM, [], [("state", "Confirmed", TERM)]),
    },
    ("invite_server", "Accepted"): {
        "request": ("Accepted", [], []),  # RFC 6026: absorbed
        "tu 2xx": ("Accepted", [R200], []),  # the TU's 2xx retransmission goes out
        "ack": ("Accepted", [], [("ack", "ACK", 1)]),
        "timer L": (TERM, [], [("state", "Accepted", TERM)]),
        "transport error": ("Accepted", [], [ERR_T]),  # RFC 6026 §7.1: state kept
        "terminate": (TERM, [], [("state", "Accepted", TERM)]),
    },
    ("invite_server", "Terminated"): {"terminate": (TERM, [], [])},
    ("non_invite_server", "Trying"): {
        "tu 1xx": ("Proceeding", [R180], [("state", "Trying", "Proceeding")]),
        "tu 2xx": ("Completed", [R200], [("state", "Trying", "Completed")]),
        "tu 3xx-6xx": ("Completed", [R486], [("state", "Trying", "Completed")]),
        "request": ("Trying", [], []),
        "transport error": (TERM, [], [ERR_T, ("state", "Trying", TERM)]),
        "terminate": (TERM, [], [("state", "Trying", TERM)]),
    },
    ("non_invite_server", "Proceeding"): {
        "tu 1xx": ("Proceeding", [R180], []),
        "tu 2xx": ("Completed", [R200], [("state", "Proceeding", "Completed")]),
        "tu 3xx-6xx": ("Completed", [R486], [("state", "Proceeding", "Completed")]),
        "request": ("Proceeding", [R180], []),
        "transport error": (TERM, [], [ERR_T, ("state", "Proceeding", TERM)]),
        "terminate": (TERM, [], [("state", "Proceeding", TERM)]),
    },
    ("non_invite_server", "Completed"): {
        "request": ("Completed", [R486], []),
        "tu 2xx": ("Completed", [], []),  # §17.2.2: later finals are discarded
        "tu 3xx-6xx": ("Completed", [], []),
        "timer J": (TERM, [], [("state", "Completed", TERM)]),
        "transport error": (TERM, [], [ERR_T, ("state", "Completed", TERM)]),
        "terminate": (TERM, [], [("state", "Completed", TERM)]),
    },
    ("non_invite_server", "Terminated"): {"terminate": (TERM, [], [])},
}

CLIENT_INPUTS = ["1xx", "2xx", "3xx-6xx", "transport error", "terminate"] + [f"timer {n}" for n in "ABCDEFKM"]
SERVER_INPUTS = ["tu 1xx", "tu 2xx", "tu 3xx-6xx", "request", "ack", "transport error", "terminate"] + [
    f"timer {n}" for n in ("G", "H", "I", "J", "L", "100")
]


def reach(kind: str, state: str, transport: TransportInfo = UDP) -> Transaction:
    tx = new_transaction(kind, transport)
    for step in PATHS[(kind, state)]:
        INPUTS[step](tx)
    tx.drain_outgoing()
    assert tx.state.value == state.split("/", maxsplit=1)[0]
    return tx


CASES = [
    (kind, state, event)
    for (kind, state) in PATHS
    for event in (CLIENT_INPUTS if kind.endswith("client") else SERVER_INPUTS)
    if not (event.startswith("ack") and kind == "non_invite_server")
]


@pytest.mark.parametrize(("kind", "state", "event"), CASES, ids=[f"{k}-{s}-{e}" for k, s, e in CASES])
def test_every_state_and_input(kind, state, event):
    tx = reach(kind, state)
    recorder = Recorder().attach(tx)
    expected = EXPECTED[(kind, state)].get(event, INVALID)
    if event.startswith("timer ") and event[6:] not in tx.timers:
        # A timer that is not running cannot fire; check the expectation agrees.
        assert expected == INVALID, f"{event} should be running in {state}"
        tx.handle_timer(tx.updated_at + 1000 if tx.terminated else (tx.next_deadline() or 0) - 1e-9)
        return
    if event.startswith("timer "):
        # Let the clock reach the timer: earlier ones (A before B, say) fire first.
        while (deadline := tx.next_deadline()) is not None and deadline < tx.timers[event[6:]].deadline:
            tx.handle_timer(deadline)
        tx.drain_outgoing()
        recorder.events.clear()
    version, last_event = tx.version, tx.last_event
    if expected == INVALID:
        with pytest.raises(InvalidTransitionError) as caught:
            INPUTS[event](tx)
        assert state.split("/")[0] in str(caught.value)
        assert caught.value.state == state.split("/")[0]
        assert tx.version == version  # nothing changed
        assert tx.last_event == last_event
        assert tx.drain_outgoing() == []
        return
    new_state, sent, callbacks = expected
    INPUTS[event](tx)
    assert tx.state.value == new_state
    assert [first_line(out.message) for out in tx.drain_outgoing()] == sent
    assert recorder.events == callbacks
    if callbacks or sent or new_state != state.split("/")[0]:
        assert tx.version > version
    if event != "terminate":
        assert tx.last_event == EVENT_IDS[EVENT_OF_INPUT[event]]
    else:  # terminate() is not a table event; ending a Terminated one is a no-op
        assert tx.last_event == (last_event if state == "Terminated" else "terminate")


def test_expectations_name_only_real_inputs_and_states():
    for (kind, state), by_event in EXPECTED.items():
        assert (kind, state) in PATHS
        assert set(by_event) <= set(INPUTS)


# --- messages that do not belong to the transaction ---


def test_client_refuses_responses_of_another_transaction_and_requests():
    tx = new_transaction("invite_client", UDP)
    other = request("INVITE", branch="z9hG4bKother")
    with pytest.raises(TransactionMismatchError, match="does not match"):
        tx.receive(response(other, 180), now=1)
    with pytest.raises(TransactionMismatchError):
        tx.receive(response(request("CANCEL"), 200), now=1)
    with pytest.raises(TransactionMismatchError, match="receives responses"):
        tx.receive(request("INVITE"), now=1)
    assert tx.state is S.CALLING


@pytest.mark.parametrize(
    ("header", "value", "problem"),
    [
        ("Via", "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKother", "top Via"),
        ("Call-ID", "other@atlanta.example.com", "Call-ID"),
        ("From", "Alice <sip:alice@atlanta.example.com>;tag=other", "From"),
        ("To", "Carol <sip:carol@biloxi.example.com>;tag=1", "To"),
        ("CSeq", "2 INVITE", "CSeq"),
    ],
)
def test_server_refuses_a_tu_response_that_does_not_belong(header, value, problem):
    tx = new_transaction("invite_server", UDP)
    bad = response(tx.request, 486)
    bad.headers.set(header, value)
    with pytest.raises(TransactionMismatchError, match=problem):
        tx.send_response(bad, now=0.1)
    assert isinstance(TransactionMismatchError("x"), ValueError)
    assert tx.state is S.PROCEEDING
    assert tx.drain_outgoing() == []


def test_server_refuses_requests_of_another_transaction_and_responses():
    tx = new_transaction("invite_server", UDP)
    with pytest.raises(TransactionMismatchError):
        tx.receive(request("INVITE", branch="z9hG4bKother"), now=0.1)
    with pytest.raises(TransactionMismatchError, match="receives requests"):
        tx.receive(response(tx.request, 200), now=0.1)


def test_callbacks_registered_late_and_several_of_them_all_fire():
    tx = new_transaction("invite_client", UDP)
    seen: list[str] = []
    tx.on_response(lambda t, r: seen.append(f"first {r.status_code}"))
    tx.receive(response(tx.request, 180), now=0.1)
    tx.on_response(lambda t, r: seen.append(f"second {r.status_code}"))
    tx.receive(response(tx.request, 183), now=0.2)
    assert seen == ["first 180", "first 183", "second 183"]


# --- the state graph, read from the tables alone ---

MACHINES: dict[str, type[Transaction]] = {
    "invite_client": InviteClientTransaction,
    "non_invite_client": NonInviteClientTransaction,
    "invite_server": InviteServerTransaction,
    "non_invite_server": NonInviteServerTransaction,
}
# The table event each input of this file is.
EVENT_OF_INPUT: dict[str, Event] = {
    "1xx": Event.PROVISIONAL, "2xx": Event.SUCCESS, "3xx-6xx": Event.FAILURE,
    "tu 1xx": Event.TU_PROVISIONAL, "tu 2xx": Event.TU_SUCCESS, "tu 3xx-6xx": Event.TU_FAILURE,
    "request": Event.REQUEST, "ack": Event.ACK, "transport error": Event.TRANSPORT_ERROR,
    **{f"timer {name}": Event(f"Timer {name}") for name in "ABDEFGHIJKLM"},
    "timer C": Event.TIMER_C, "timer 100": Event.TIMER_100,
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(MACHINES))
def test_every_state_is_reachable_and_every_state_can_end(kind):
    cls = MACHINES[kind]
    rows = cls.transitions()
    assert rows
    assert all(isinstance(row[2], TransactionState) for row in rows)
    assert {state for state, _, _ in rows} | {target for _, _, target in rows} == set(cls.STATES)
    edges: dict[TransactionState, set[TransactionState]] = {}
    for state, _, target in rows:
        edges.setdefault(state, set()).add(target)

    def reachable(start: TransactionState) -> set[TransactionState]:
        seen, todo = {start}, [start]
        while todo:
            for target in edges.get(todo.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    assert reachable(cls.INITIAL_STATE) == set(cls.STATES)
    for state in cls.STATES:
        assert S.TERMINATED in reachable(state), f"{kind}: {state} cannot end through the table"
    assert not edges.get(S.TERMINATED), "nothing leaves Terminated"


@pytest.mark.parametrize(("kind", "state"), sorted(PATHS), ids=["-".join(k) for k in sorted(PATHS)])
def test_the_table_says_where_each_input_goes(kind, state):
    """Each row's declared next state is where driving the machine lands (UDP), and
    the rows are exactly the inputs the expectations above accept."""
    cls = MACHINES[kind]
    declared = {event: target for st, event, target in cls.transitions() if st.value == state.split("/")[0]}
    inputs = CLIENT_INPUTS if kind.endswith("client") else SERVER_INPUTS
    expected = EXPECTED[(kind, state)]
    for name in inputs:
        if name == "terminate" or (name == "ack" and kind == "non_invite_server"):
            continue
        event = EVENT_OF_INPUT[name]
        if name not in expected:
            # Refused by the table, or accepted there but not running in this variant of the state.
            assert event not in declared or name.startswith("timer "), (kind, state, name)
            continue
        assert event in declared, (kind, state, name)
        tx = reach(kind, state)
        if name.startswith("timer "):
            tx.handle_timer(tx.timers[name[6:]].deadline)
        else:
            INPUTS[name](tx)
        assert tx.state is declared[event], (kind, state, name)


@pytest.mark.parametrize(("kind", "state"), sorted(PATHS), ids=["-".join(k) for k in sorted(PATHS)])
def test_on_reliable_transports_zero_timers_follow_their_rows(kind, state):
    """On TCP, D, I, J and K are zero: the machine lands in the declared state and
    goes on at once through that state's timer row, as the table says."""
    cls = MACHINES[kind]
    tx = reach(kind, state, TCP) if _reachable_on_tcp(kind, state) else None
    if tx is None:
        return
    table = {(st, event): target for st, event, target in cls.transitions()}
    zero = {Event.TIMER_D, Event.TIMER_I, Event.TIMER_J, Event.TIMER_K}
    for name, event in EVENT_OF_INPUT.items():
        if name.startswith("timer ") or (tx.state, event) not in table:
            continue
        if name == "ack" and kind == "non_invite_server":
            continue
        probe = reach(kind, state, TCP)
        INPUTS[name](probe)
        landing = table[(tx.state, event)]
        chained = [table[(landing, z)] for z in zero if (landing, z) in table]
        assert probe.state in {landing, *chained}, (kind, state, name)
        if chained:
            assert probe.state is chained[0]
            assert not probe.timers
            # The zero-length timer's row ran last, in the same step.
            assert probe.last_event in {EVENT_IDS[z] for z in zero}


def _reachable_on_tcp(kind: str, state: str) -> bool:
    try:
        reach(kind, state, TCP)
    except (AssertionError, KeyError, InvalidTransitionError):
        return False  # e.g. Completed INVITE client: Timer D is zero on TCP
    return True


def test_no_import_cycle_through_the_transaction_modules():
    """snapshot.py is data and schema; transaction.py builds on it, never the reverse
    (imports anywhere in a module count, lazy and TYPE_CHECKING ones included)."""
    import ast
    from pathlib import Path

    import sipcore.sip

    package = Path(sipcore.sip.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        if path.stem == "__init__":
            continue
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sipcore.sip."):
                imported.add(node.module.removeprefix("sipcore.sip."))
            elif isinstance(node, ast.Import):
                imported |= {
                    a.name.removeprefix("sipcore.sip.")
                    for a in node.names
                    if a.name.startswith("sipcore.sip.")
                }
        graph[path.stem] = imported

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), list(graph.get(start, ()))
        while todo:
            module = todo.pop()
            if module == goal:
                return True
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
        return False

    assert "snapshot" in graph["transaction"]
    for module in ("snapshot", "transaction", "keys", "timers"):
        assert not reaches(module, module), f"{module}.py is part of an import cycle"


# --- legitimate traffic an INVITE client meets (RFC 3261 §13.2.2.4, RFC 6026 §8.4) ---


def test_a_fork_answering_after_a_failure_reaches_the_tu_and_gets_its_own_ack():
    tx = new_transaction("invite_client", UDP)
    tx.drain_outgoing()
    seen = []
    tx.on_response(lambda t, r: seen.append((r.status_code, r.to_tag)))
    tx.receive(response(tx.request, 486, to_tag="fork-a"), now=0.1)
    (ack,) = tx.drain_outgoing()
    assert ack.message.to_tag == "fork-a"
    # Another fork's 2xx: the TU must ACK and BYE it, so it hears of it.
    tx.receive(response(tx.request, 200, to_tag="fork-b"), now=0.2)
    assert tx.drain_outgoing() == []
    # Another fork's final: ACKed with that fork's To tag, not the first one's.
    tx.receive(response(tx.request, 603, to_tag="fork-c"), now=0.3)
    (ack_c,) = tx.drain_outgoing()
    assert ack_c.message.to_tag == "fork-c"
    tx.receive(response(tx.request, 183, to_tag="fork-d"), now=0.4)  # late provisional: absorbed
    assert seen == [(486, "fork-a"), (200, "fork-b")]
    assert tx.state is S.COMPLETED
    assert tx.last_response.to_tag == "fork-a"  # the final that completed the transaction


def test_invite_server_keeps_its_state_through_a_transport_error():
    """RFC 6026 §7.1: the retransmitted INVITE still finds the transaction (and gets
    the final again) instead of looking like a new call; the ACK still confirms."""
    tx = new_transaction("invite_server", UDP)
    errors = []
    tx.on_error(lambda t, failure: errors.append(failure))
    final = response(tx.request, 486)
    tx.send_response(final, now=0.1)
    tx.drain_outgoing()
    tx.transport_error(0.15, "ICMP port unreachable")
    assert [(f.reason, f.detail) for f in errors] == [("transport", "ICMP port unreachable")]
    assert tx.state is S.COMPLETED
    assert set(tx.timers) == {"G", "H"}
    tx.receive(request("INVITE"), now=0.3)
    assert [out.message.status_code for out in tx.drain_outgoing()] == [486]
    tx.receive(ack_for(tx.request, final), now=0.4)
    assert tx.state is S.CONFIRMED


def test_a_failing_callback_does_not_hide_the_others():
    """The step has happened: every callback hears of it, then the first error is raised."""
    tx = new_transaction("invite_client", UDP)
    tx.drain_outgoing()
    seen = []

    def broken(t, r):
        raise RuntimeError("TU bug")

    tx.on_response(broken)
    tx.on_state_changed(lambda t, old, new: seen.append((old.value, new.value)))
    with pytest.raises(RuntimeError, match="TU bug"):
        tx.receive(response(tx.request, 486), now=0.1)
    assert seen == [("Calling", "Completed")]
    assert tx.state is S.COMPLETED
    assert [first_line(out.message) for out in tx.drain_outgoing()] == [ACK_LINE]


@pytest.mark.parametrize(
    ("request_to", "response_to", "problem"),
    [
        ("<sip:bob@biloxi.example.com>", "<sip:bob@biloxi.example.com>;tag=1", None),
        ("Bob <sip:bob@biloxi.example.com>", "Bob <sip:bob@biloxi.example.com>;tag=1;x=y", None),
        ("Bob <sip:bob@biloxi.example.com>", '"Bob" <sip:bob@biloxi.example.com>;tag=1', None),
        ("sip:bob@biloxi.example.com", "sip:bob@biloxi.example.com;tag=1", None),
        ("<sip:bob@biloxi.example.com>", "<sip:bob@biloxi.example.com.evil>;tag=1", "To"),
        ("<sip:bob@biloxi.example.com>", "<sip:bob@biloxi.example.co>;tag=1", "To"),
        ("sip:bob@biloxi.example.com", "sip:bob@biloxi.example.com.evil;tag=1", "To"),
        ("<sip:bob@biloxi.example.com>;tag=a", "<sip:bob@biloxi.example.com>;tag=b", "To tag"),
        ("<sip:bob@biloxi.example.com>;tag=a", "<sip:bob@biloxi.example.com>;tag=a", None),
    ],
)
def test_server_compares_the_responses_to_by_uri_and_tag_however_it_is_spelled(
    request_to, response_to, problem
):
    req = request("OPTIONS")
    req.headers.set("To", request_to)
    tx = NonInviteServerTransaction(req, UDP, now=0.0)
    answer = response(req, 200)
    answer.headers.set("To", response_to)
    if problem is None:
        tx.send_response(answer, now=0.1)
        assert tx.state is S.COMPLETED
    else:
        with pytest.raises(TransactionMismatchError, match=f"{problem} differ"):
            tx.send_response(answer, now=0.1)
        assert tx.state is S.TRYING


@pytest.mark.parametrize("source", ["transaction's copy", "request given", "request parsed again"])
@pytest.mark.parametrize(
    ("header", "value", "problem"),
    [
        (None, None, None),
        ("Via", "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKother", "top Via"),
        ("Via", "SIP/2.0/UDP pc33.atlanta.example.com:5070;branch=z9hG4bK74bf9", "top Via"),
        ("Call-ID", "other@atlanta.example.com", "Call-ID"),
        ("From", "Alice <sip:alice@atlanta.example.com>;tag=other", "From"),
        ("To", "Bob <sip:bob@biloxi.example.com.evil>;tag=1", "To"),
        ("CSeq", "1 OPTIONS", "CSeq"),
    ],
)
def test_a_response_is_checked_whichever_copy_of_the_request_it_was_built_from(
    source, header, value, problem
):
    """make_response shares the request's checked values with the response, and a
    server transaction trusts values that are the very same objects as its own;
    any header changed after, on either side, is compared and refused."""
    given = request("INVITE")
    tx = InviteServerTransaction(given, UDP, now=0.0)
    origin = {
        "transaction's copy": tx.request,
        "request given": given,
        "request parsed again": request("INVITE"),
    }[source]
    answer = response(origin, 486)
    if header is not None:
        answer.headers.set(header, value)
    if problem is None:
        tx.send_response(answer, now=0.1)
        assert tx.state is S.COMPLETED
        assert tx.last_response == answer
        return
    with pytest.raises(TransactionMismatchError, match=f"{problem} differ"):
        tx.send_response(answer, now=0.1)
    assert tx.state is S.PROCEEDING
    assert tx.drain_outgoing() == []


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Via", "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKother"),
        ("Call-ID", "other@atlanta.example.com"),
        ("From", "Alice <sip:alice@atlanta.example.com>;tag=other"),
        ("CSeq", "1 OPTIONS"),
    ],
)
def test_a_response_built_from_the_callers_request_changed_after_the_transaction_copied_it_is_refused(
    header, value
):
    given = request("INVITE")
    tx = InviteServerTransaction(given, UDP, now=0.0)
    given.headers.set(header, value)
    if header == "CSeq":
        given.method = "OPTIONS"  # a CSeq method must match the request's
    with pytest.raises(TransactionMismatchError, match="differ"):
        tx.send_response(response(given, 486), now=0.1)
    assert tx.state is S.PROCEEDING


# --- last_event: what last changed a transaction, for a store's audit trail ---


def test_every_event_has_a_short_stable_id():
    assert set(EVENT_IDS) == set(Event)
    ids = list(EVENT_IDS.values())
    assert len(set(ids)) == len(ids)
    assert all(event_id.isidentifier() and event_id.islower() and len(event_id) <= 64 for event_id in ids)
    assert EVENT_IDS[Event.TIMER_G] == "timer_g"
    assert EVENT_IDS[Event.TRANSPORT_ERROR] == "transport_error"
    assert {"created", "restored", "terminate"}.isdisjoint(ids)


@pytest.mark.parametrize("kind", sorted(MACHINES))
def test_a_new_transaction_was_created(kind):
    assert new_transaction(kind, UDP).last_event == "created"
    assert new_transaction(kind, TCP).last_event == "created"


def test_last_event_follows_an_invite_server_transaction_through_its_life():
    from sipcore.sip import TransactionSnapshot, restore_transaction

    invite = request("INVITE")
    tx = InviteServerTransaction(invite, UDP, now=0.0)
    assert tx.last_event == "created"
    tx.handle_timer(0.2)
    assert tx.last_event == "timer_100"
    tx.receive(request("INVITE"), now=0.3)
    assert tx.last_event == "request"
    final = response(invite, 486)
    tx.send_response(final, now=0.4)
    assert tx.last_event == "tu_failure"
    tx.handle_timer(tx.timers["G"].deadline)
    assert tx.last_event == "timer_g"
    tx.transport_error(now=1.0, detail="ICMP unreachable")
    assert tx.last_event == "transport_error"
    with pytest.raises(InvalidTransitionError):
        tx.send_response(response(invite, 180), now=1.1)
    assert tx.last_event == "transport_error"  # a refused input changes nothing

    # Kept beside the snapshot, not in it: the snapshot of a restored one is the same.
    snapshot = tx.snapshot()
    assert b"transport_error" not in snapshot.to_json()
    restored = restore_transaction(TransactionSnapshot.from_json(snapshot.to_json()))
    assert restored.last_event == "restored"
    assert restored.snapshot() == snapshot

    restored.receive(ack_for(invite, final), now=1.2)
    assert restored.last_event == "ack"
    restored.handle_timer(restored.timers["I"].deadline)
    assert (restored.state, restored.last_event) == (S.TERMINATED, "timer_i")
    restored.terminate(now=9.0)  # already over: nothing happens
    assert restored.last_event == "timer_i"


def test_terminate_is_the_last_event_of_a_transaction_its_tu_ended():
    tx = new_transaction("non_invite_client", UDP)
    tx.receive(response(tx.request, 100), now=0.1)
    assert tx.last_event == "provisional"
    tx.terminate(now=0.2)
    assert (tx.state, tx.last_event) == (S.TERMINATED, "terminate")


def test_a_final_response_on_tcp_ends_with_its_zero_timer():
    tx = new_transaction("non_invite_server", TCP)
    tx.send_response(response(tx.request, 200), now=0.1)  # type: ignore[attr-defined]
    assert (tx.state, tx.last_event) == (S.TERMINATED, "timer_j")


@pytest.mark.parametrize("now", [float("nan"), float("inf"), -float("inf"), 2.0**41, -(2.0**41)])
def test_every_input_refuses_a_clock_reading_it_cannot_use(now):
    tx = new_transaction("invite_server", UDP)
    with pytest.raises(ValueError, match="finite clock reading"):
        tx.send_response(response(tx.request, 486), now=now)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="finite clock reading"):
        tx.receive(request("INVITE"), now=now)
    with pytest.raises(ValueError, match="finite clock reading"):
        tx.handle_timer(now)
    with pytest.raises(ValueError, match="finite clock reading"):
        tx.terminate(now)
    with pytest.raises(ValueError, match="finite clock reading"):
        InviteServerTransaction(request("INVITE"), UDP, now=now)
    assert (tx.state, tx.version, tx.last_event) == (S.PROCEEDING, 0, "created")
