"""The restore property: snapshot at any point, through JSON, restore, feed both the
same remaining inputs: identical outgoing messages, states and callbacks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sipcore.sip import TransactionSnapshot, restore_transaction
from tests.sipcore.sip.support import TCP, UDP, Recorder, ack_for, new_transaction, request, response
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
