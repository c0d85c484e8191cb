"""The restore property: snapshot at any point, through JSON, restore, feed both the
same remaining inputs: identical outgoing messages, states and callbacks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sipcore.sip import Timer, TransactionSnapshot, restore_transaction
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
from tests.sipcore.sip.test_transaction_fsm import PATHS

DELAYS = [0.0, 0.05, 0.2, 0.3, 0.5, 1.0, 2.5, 4.0, 6.0, 10.0, 33.0, 200.0]
WAIT = st.tuples(st.just("wait"), st.sampled_from(DELAYS))
CLIENT_STEPS = st.one_of(
    WAIT,
    WAIT,
    st.tuples(st.just("response"), st.sampled_from([100, 180, 183, 200, 202, 302, 486, 503])),
    st.tuples(st.just("transport_error"), st.just(0)),
    st.tuples(st.just("terminate"), st.just(0)),
)
SERVER_STEPS = st.one_of(
    WAIT,
    WAIT,
    st.tuples(st.just("answer"), st.sampled_from([180, 183, 200, 202, 302, 486, 503])),
    st.tuples(st.just("request"), st.just(0)),
    st.tuples(st.just("ack"), st.just(0)),
    st.tuples(st.just("transport_error"), st.just(0)),
    st.tuples(st.just("terminate"), st.just(0)),
)


class Driver:
    """Feeds one transaction and writes down everything observable."""

    def __init__(self, tx, now: float):
        self.tx = tx
        self.now = now
        self.recorder = Recorder().attach(tx)
        self.log: list[tuple] = []

    def step(self, kind: str, value: float) -> None:
        tx = self.tx
        try:
            if kind == "wait":
                self.now += value
                tx.handle_timer(self.now)
            elif kind == "response":
                tx.receive(response(tx.request, int(value), to_tag="uas"), self.now)
            elif kind == "answer":
                tx.send_response(response(tx.request, int(value), to_tag="uas"), self.now)
            elif kind == "request":
                tx.receive(request(tx.request.method, transport=tx.transport.protocol), self.now)
            elif kind == "ack":
                final = (
                    tx.last_response
                    if tx.last_response and tx.last_response.status_code >= 300
                    else response(tx.request, 486, to_tag="uas")
                )
                tx.receive(ack_for(tx.request, final), self.now)
            elif kind == "transport_error":
                tx.transport_error(self.now, "unreachable")
            else:
                tx.terminate(self.now)
            outcome = None
        except ValueError as exc:  # InvalidTransitionError, TransactionMismatchError
            outcome = (type(exc).__name__, str(exc))
        sent = [(bytes(out.message), out.destination) for out in tx.drain_outgoing()]
        self.log.append((kind, value, outcome, sent, tx.state.value, tx.next_deadline(), tx.version))


def _is_server(kind: str) -> bool:
    return kind.endswith("server")


# Paths to every reachable state (test_transaction_fsm.PATHS) as driver steps, so
# that random inputs start from each state often, not only from the first ones.
_PATH_STEPS = {
    "1xx": ("response", 180), "2xx": ("response", 200), "3xx-6xx": ("response", 486),
    "tu 1xx": ("answer", 180), "tu 2xx": ("answer", 200), "tu 3xx-6xx": ("answer", 486),
    "ack": ("ack", 0), "timer B": ("wait", 33.0), "timer F": ("wait", 33.0),
    "timer L": ("wait", 33.0), "timer J": ("wait", 33.0), "timer C": ("wait", 181.0),
}  # fmt: skip
STARTS = sorted(PATHS)


@settings(max_examples=600, deadline=None)
@given(start_state=st.sampled_from(STARTS), reliable=st.booleans(), data=st.data())
def test_restored_transaction_behaves_exactly_like_the_original(start_state, reliable, data):
    kind = start_state[0]
    path = [_PATH_STEPS[step] for step in PATHS[start_state]]
    more = data.draw(st.lists(SERVER_STEPS if _is_server(kind) else CLIENT_STEPS, max_size=10), label="then")
    steps = path + more
    # Mostly snapshot once the path has reached its state; sometimes anywhere.
    cut = data.draw(
        st.one_of(st.integers(len(path), len(steps)), st.integers(0, len(steps))), label="snapshot after"
    )
    transport = TCP if reliable else UDP
    start = 1_800_000_000.0  # wall-clock epoch seconds, as in production

    original = Driver(new_transaction(kind, transport, now=start), start)
    original.tx.drain_outgoing()
    for kind_, value in steps[:cut]:
        original.step(kind_, value)

    stored = original.tx.snapshot().to_json()
    restored = Driver(restore_transaction(TransactionSnapshot.from_json(stored)), original.now)
    original.log.clear()
    original.recorder.events.clear()
    assert restored.tx.drain_outgoing() == []  # restoring sends nothing

    for kind_, value in steps[cut:]:
        original.step(kind_, value)
        restored.step(kind_, value)

    assert restored.log == original.log
    assert restored.recorder.events == original.recorder.events
    assert restored.tx.snapshot() == original.tx.snapshot()


def test_restore_after_the_timeout_ends_without_sending_anything():
    """Stored for 10 minutes, past Timer B: the INVITE client ends, and does not
    send a stale retransmission of its INVITE first (Timer A before B)."""
    tx = new_transaction("invite_client", UDP, now=0.0)
    tx.drain_outgoing()
    restored = restore_transaction(TransactionSnapshot.from_json(tx.snapshot().to_json()))
    events = Recorder().attach(restored)
    restored.handle_timer(600.0)
    assert restored.drain_outgoing() == []
    assert events.events == [
        ("error", "timeout", "Timer B: no response to the INVITE"),
        ("state", "Calling", "Terminated"),
    ]
    restored.handle_timer(600.0)
    assert restored.drain_outgoing() == []


# Timers whose firing ends the transaction, and what each other timer sends.
ENDING = {"B", "D", "F", "H", "I", "J", "K", "L", "M"}
SENDS = {"A": "INVITE", "E": "OPTIONS", "G": "final", "100": "100", "C": None}


@settings(max_examples=400, deadline=None)
@given(
    start_state=st.sampled_from(STARTS),
    reliable=st.booleans(),
    stored_for=st.one_of(
        st.floats(0.0, 400.0, allow_nan=False),
        st.sampled_from([0.0, 0.2, 0.5, 4.0, 5.0, 31.9, 32.0, 32.1, 180.0, 600.0, 86_400.0]),
    ),
)
def test_catching_up_after_any_store_duration(start_state, reliable, stored_for):
    """Restored after ``stored_for`` seconds, one handle_timer(now): a transaction whose
    timeout fell due meanwhile ends and sends nothing; otherwise each retransmission
    timer that fell due fires once and re-arms from now (DESIGN.md)."""
    kind = start_state[0]
    transport = TCP if reliable else UDP
    start = 1_800_000_000.0
    original = Driver(new_transaction(kind, transport, now=start), start)
    original.tx.drain_outgoing()
    for step in PATHS[start_state]:
        original.step(*_PATH_STEPS[step])
    tx = original.tx
    tx.drain_outgoing()
    before = tx.timers
    restored = restore_transaction(TransactionSnapshot.from_json(tx.snapshot().to_json()))
    events = Recorder().attach(restored)
    now = original.now + stored_for
    restored.handle_timer(now)
    sent = [first_line(out.message) for out in restored.drain_outgoing()]
    due = {name for name, timer in before.items() if timer.deadline <= now}

    if due & ENDING:
        assert sent == []
        assert restored.terminated
        assert [event for event in events.events if event[0] == "state"][-1][2] == "Terminated"
    else:
        expected = sorted(SENDS[name] for name in due if SENDS[name] is not None)
        assert sorted(_what(line) for line in sent) == expected
        for name in due & {"A", "E", "G"}:  # retransmissions re-arm from now, strictly later
            assert restored.timers[name].deadline > now
            assert restored.timers[name].deadline == now + restored.timers[name].interval
        if "100" in due:  # one-shot
            assert "100" not in restored.timers
        if "C" in due:  # the guard: the TU is told, and Timer B bounds the wait
            assert restored.timers == {"B": Timer(now + 32.0, 32.0)}
            assert events.events == [
                ("error", "timeout", "Proceeding guard: no final response (send CANCEL)")
            ]
        for name in set(before) - due:
            assert restored.timers[name] == before[name]  # not due: untouched
    restored.handle_timer(now)  # a timer never fires twice at one now
    assert restored.drain_outgoing() == []


def _what(line: str) -> str:
    if line.startswith("SIP/2.0 100"):
        return "100"
    if line.startswith("SIP/2.0"):
        return "final"
    return line.split(" ", 1)[0]


@settings(max_examples=300, deadline=None)
@given(start_state=st.sampled_from(STARTS), reliable=st.booleans(), data=st.data())
def test_every_transaction_ends_by_its_timers_whatever_came_before(start_state, reliable, data):
    """Liveness: after any inputs (refused ones included) and, for a server, a final
    answer from the TU, the timers alone end the transaction; the clock reaches
    Terminated in a bounded number of handle_timer calls."""
    kind = start_state[0]
    steps = [_PATH_STEPS[step] for step in PATHS[start_state]]
    steps += data.draw(
        st.lists(SERVER_STEPS if _is_server(kind) else CLIENT_STEPS, max_size=12), label="then"
    )
    if _is_server(kind):
        steps.append(("answer", data.draw(st.sampled_from([200, 486]), label="final")))
    start = 1_800_000_000.0
    driver = Driver(new_transaction(kind, TCP if reliable else UDP, now=start), start)
    for step in steps:
        driver.step(*step)
    tx = driver.tx
    for _ in range(100):
        deadline = tx.next_deadline()
        if deadline is None:
            break
        tx.handle_timer(deadline)
    assert tx.terminated, (tx.state, tx.timers)
    assert tx.next_deadline() is None
