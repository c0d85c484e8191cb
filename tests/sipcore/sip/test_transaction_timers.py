"""Exact timer schedules of the four machines (RFC 3261 §17, Table 4; RFC 6026),
on a scripted clock, for unreliable and reliable transports."""

from __future__ import annotations

import pytest

from sipcore.sip import InviteClientTransaction, InviteServerTransaction, Timer, Timings, TransactionState
from tests.sipcore.sip.support import (
    TCP,
    UDP,
    Network,
    Recorder,
    ack_for,
    new_transaction,
    request,
    response,
    run_timers,
)

INVITE = "INVITE sip:bob@biloxi.example.com SIP/2.0"
OPTIONS = "OPTIONS sip:bob@biloxi.example.com SIP/2.0"


def test_timer_a_doubles_from_t1_until_timer_b_at_64_t1():
    tx = new_transaction("invite_client", UDP)
    recorder = Recorder().attach(tx)
    assert [o.destination for o in tx.drain_outgoing()] == [UDP.remote]
    assert tx.timers["A"].interval == 0.5
    assert tx.timers["B"].deadline == 32.0
    sent = run_timers(tx, until=100)
    # Timer A: 0.5, 1, 2, 4, 8, 16 s apart; then Timer B at 32 s.
    assert sent == [(t, INVITE) for t in (0.5, 1.5, 3.5, 7.5, 15.5, 31.5)]
    assert tx.state is TransactionState.TERMINATED
    assert recorder.events == [
        ("error", "timeout", "Timer B: no response to the INVITE"),
        ("state", "Calling", "Terminated"),
    ]
    assert tx.updated_at == 32.0


def test_invite_client_on_tcp_never_retransmits():
    tx = new_transaction("invite_client", TCP)
    tx.drain_outgoing()
    assert set(tx.timers) == {"B"}
    assert run_timers(tx, until=100) == []
    assert tx.state is TransactionState.TERMINATED
    assert tx.updated_at == 32.0


def test_timer_e_doubles_up_to_t2_then_f_at_64_t1():
    tx = new_transaction("non_invite_client", UDP)
    tx.drain_outgoing()
    sent = run_timers(tx, until=100)
    # 0.5, 1, 2, 4, then capped at T2 = 4 s.
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert {line for _, line in sent} == {OPTIONS}
    assert tx.state is TransactionState.TERMINATED
    assert tx.updated_at == 32.0


def test_timer_e_is_t2_once_proceeding():
    tx = new_transaction("non_invite_client", UDP)
    tx.drain_outgoing()
    assert run_timers(tx, until=0.5) == [(0.5, OPTIONS)]
    tx.receive(response(tx.request, 100), now=0.7)
    assert tx.state is TransactionState.PROCEEDING
    # The next E was armed at 0.5 for 1 s; after it, every E is T2.
    sent = run_timers(tx, until=14)
    assert [t for t, _ in sent] == [1.5, 5.5, 9.5, 13.5]


def test_custom_timings():
    timings = Timings(t1=0.1, t2=0.4, t4=1.0)
    tx = InviteClientTransaction(request(), UDP, now=10.0, timings=timings)
    tx.drain_outgoing()
    sent = run_timers(tx, until=100)
    assert [round(t - 10, 6) for t, _ in sent] == [0.1, 0.3, 0.7, 1.5, 3.1, 6.3]  # B at 6.4
    assert tx.updated_at == pytest.approx(10 + 6.4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"t1": 0}, "t1 must be positive"),
        ({"t1": 5, "t2": 4}, "t2"),
        ({"timer_d": 31}, "at least 32"),
        ({"t4": -1.0}, "t4 must be positive"),
        ({"t1": float("nan")}, "t1 must be positive"),
        ({"t2": float("inf")}, "t2 must be finite"),
        ({"proceeding_guard": float("inf")}, "proceeding_guard must be finite"),
        # So small that now + interval == now for a clock reading the core accepts.
        ({"t1": 1e-300}, "now \\+ interval == now"),
        ({"trying_delay": 1e-5}, "now \\+ interval == now"),
        ({"t1": 1e8, "t2": 1e8}, "64\\*T1 longer than"),
        ({"t4": "5"}, "t4 must be positive"),
    ],
)
def test_timings_refuse_values_against_the_rfc(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Timings(**kwargs)


def test_invite_server_sends_100_trying_after_200_ms_unless_answered():
    silent = new_transaction("invite_server", UDP)
    assert run_timers(silent, until=1) == [(0.2, "SIP/2.0 100 Trying")]
    assert silent.last_response.to_tag is None  # no tag on a 100 (RFC 3261 §8.2.6.2)

    quick = new_transaction("invite_server", UDP)
    quick.send_response(response(quick.request, 180), now=0.1)
    assert "100" not in quick.timers
    assert [o.message.status_code for o in quick.drain_outgoing()] == [180]
    assert run_timers(quick, until=1) == []


def test_timer_g_doubles_up_to_t2_until_timer_h():
    tx = new_transaction("invite_server", UDP)
    recorder = Recorder().attach(tx)
    tx.send_response(response(tx.request, 486), now=1.0)
    assert [o.message.status_code for o in tx.drain_outgoing()] == [486]
    sent = run_timers(tx, until=100)
    assert [round(t - 1.0, 6) for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert {line for _, line in sent} == {"SIP/2.0 486 Busy Here"}
    assert tx.updated_at == 33.0  # Timer H: 64*T1 after the final response
    assert recorder.events[-2:] == [
        ("error", "timeout", "Timer H: no ACK for the final response"),
        ("state", "Completed", "Terminated"),
    ]


def test_invite_server_on_tcp_has_no_timer_g_and_no_timer_i():
    tx = new_transaction("invite_server", TCP)
    final = response(tx.request, 404)
    tx.send_response(final, now=0.0)
    assert set(tx.timers) == {"H"}
    tx.receive(ack_for(tx.request, final), now=0.1)
    assert tx.state is TransactionState.TERMINATED  # Confirmed, then Timer I = 0


def test_timer_i_is_t4_after_the_ack_on_udp():
    tx = new_transaction("invite_server", UDP)
    final = response(tx.request, 404)
    tx.send_response(final, now=0.0)
    tx.receive(ack_for(tx.request, final), now=0.3)
    assert tx.state is TransactionState.CONFIRMED
    assert tx.timers["I"].deadline == pytest.approx(5.3)
    run_timers(tx, until=10)
    assert (tx.state, tx.updated_at) == (TransactionState.TERMINATED, pytest.approx(5.3))


@pytest.mark.parametrize(("transport", "lifetime"), [(UDP, 32.0), (TCP, 0.0)])
def test_timer_d(transport, lifetime):
    tx = new_transaction("invite_client", transport)
    tx.receive(response(tx.request, 503), now=1.0)
    if lifetime:
        assert tx.state is TransactionState.COMPLETED
        assert tx.timers == {"D": tx.timers["D"]}
        assert tx.timers["D"].deadline == 1.0 + lifetime
        run_timers(tx, until=100)
    assert tx.state is TransactionState.TERMINATED
    assert tx.updated_at == 1.0 + lifetime


@pytest.mark.parametrize(("transport", "lifetime"), [(UDP, 5.0), (TCP, 0.0)])
def test_timer_k(transport, lifetime):
    tx = new_transaction("non_invite_client", transport)
    tx.receive(response(tx.request, 200), now=2.0)
    run_timers(tx, until=100)
    assert (tx.state, tx.updated_at) == (TransactionState.TERMINATED, 2.0 + lifetime)


@pytest.mark.parametrize(("transport", "lifetime"), [(UDP, 32.0), (TCP, 0.0)])
def test_timer_j(transport, lifetime):
    tx = new_transaction("non_invite_server", transport)
    tx.send_response(response(tx.request, 200), now=2.0)
    run_timers(tx, until=100)
    assert (tx.state, tx.updated_at) == (TransactionState.TERMINATED, 2.0 + lifetime)


@pytest.mark.parametrize("transport", [UDP, TCP])
def test_timer_l_and_m_keep_accepted_for_64_t1(transport):
    server = new_transaction("invite_server", transport)
    server.send_response(response(server.request, 200), now=1.0)
    assert (server.state, server.timers["L"].deadline) == (TransactionState.ACCEPTED, 33.0)
    client = new_transaction("invite_client", transport)
    client.receive(response(client.request, 200), now=1.0)
    assert (client.state, client.timers["M"].deadline) == (TransactionState.ACCEPTED, 33.0)
    for tx in (server, client):
        run_timers(tx, until=100)
        assert (tx.state, tx.updated_at) == (TransactionState.TERMINATED, 33.0)


def test_proceeding_guard_tells_the_tu_and_is_reset_by_ringing():
    tx = new_transaction("invite_client", UDP)
    recorder = Recorder().attach(tx)
    tx.receive(response(tx.request, 100), now=1.0)
    assert tx.timers["C"].deadline == 181.0  # 100 Trying arms it; no retransmissions, no Timer B
    assert set(tx.timers) == {"C"}
    tx.receive(response(tx.request, 100), now=50.0)
    assert tx.timers["C"].deadline == 181.0  # a 100 does not reset it
    tx.receive(response(tx.request, 180), now=60.0)
    assert tx.timers["C"].deadline == 240.0  # a provisional other than 100 does (RFC 3261 §16.7)
    recorder.events.clear()
    run_timers(tx, until=240.0)
    # The TU hears of it (it sends CANCEL); the transaction waits 64*T1 for the final.
    assert recorder.events == [("error", "timeout", "Proceeding guard: no final response (send CANCEL)")]
    assert (tx.state, tx.timers) == (TransactionState.PROCEEDING, {"B": Timer(272.0, 32.0)})
    tx.receive(response(tx.request, 183), now=241.0)
    assert tx.timers == {"B": Timer(272.0, 32.0)}  # no second guard once it fired
    run_timers(tx, until=1000)
    assert (tx.state, tx.updated_at) == (TransactionState.TERMINATED, 272.0)
    assert recorder.events[-2:] == [
        ("error", "timeout", "Timer B: no final response after the Proceeding guard"),
        ("state", "Proceeding", "Terminated"),
    ]


def test_after_the_guard_the_487_to_the_cancel_is_acked():
    """RFC 3261 §9.1, §17.1.1.2: the TU cancels when the guard fires; the 487 that
    follows is ACKed by the INVITE transaction, which then completes."""
    net = Network.start("invite")
    client_events = Recorder().attach(net.client)
    net.server.send_response(response(net.server.request, 180), now=0.1)
    net.flush(0.1)
    assert net.client.state is TransactionState.PROCEEDING
    run_timers(net.client, until=180.1)
    assert net.client.state is TransactionState.PROCEEDING
    assert ("error", "timeout", "Proceeding guard: no final response (send CANCEL)") in client_events.events
    net.server.send_response(response(net.server.request, 487), now=181.0)  # the UAS got the CANCEL
    net.flush(181.0)
    assert net.delivered[-2:] == ["SIP/2.0 487 Request Terminated", "ACK sip:bob@biloxi.example.com SIP/2.0"]
    assert (net.client.state, net.server.state) == (TransactionState.COMPLETED, TransactionState.CONFIRMED)
    assert client_events.events[-2:] == [("response", 487), ("state", "Proceeding", "Completed")]


def test_a_whole_lossy_invite_exchange_over_a_fake_network():
    """The 100 Trying and two INVITE retransmissions are lost, then the first 486;
    retransmissions recover each loss and the ACK ends both sides."""
    losses = {"SIP/2.0 100 Trying": 1, INVITE: 2, "SIP/2.0 486 Busy Here": 1}

    def drop(message):
        line = bytes(message).split(b"\r\n", 1)[0].decode()
        if losses.get(line, 0):
            losses[line] -= 1
            return True
        return False

    net = Network.start("invite", drop=drop)
    client_events = Recorder().attach(net.client)
    server_events = Recorder().attach(net.server)
    for now in (0.2, 0.5, 1.5, 3.5):  # 100 Trying (lost), INVITE x3 (two lost)
        net.client.handle_timer(now)
        net.server.handle_timer(now)
        net.flush(now)
    assert net.dropped == ["SIP/2.0 100 Trying", INVITE, INVITE]
    # The third retransmission reached the server, which answered with its last response.
    assert net.delivered == [INVITE, "SIP/2.0 100 Trying"]
    assert net.client.state is TransactionState.PROCEEDING

    net.server.send_response(response(net.server.request, 486), now=4.0)
    net.flush(4.0)
    assert net.dropped[-1] == "SIP/2.0 486 Busy Here"
    assert net.client.state is TransactionState.PROCEEDING
    net.server.handle_timer(4.5)  # Timer G: the 486 again, and the client ACKs it
    net.flush(4.5)
    assert net.delivered[-2:] == ["SIP/2.0 486 Busy Here", "ACK sip:bob@biloxi.example.com SIP/2.0"]
    assert (net.client.state, net.server.state) == (TransactionState.COMPLETED, TransactionState.CONFIRMED)
    assert client_events.events == [("response", 100), ("state", "Calling", "Proceeding"), ("response", 486),
                                     ("state", "Proceeding", "Completed")]  # fmt: skip
    assert server_events.events == [("state", "Proceeding", "Completed"), ("ack", "ACK", 1),
                                    ("state", "Completed", "Confirmed")]  # fmt: skip
    net.client.handle_timer(40.0)
    net.server.handle_timer(40.0)
    assert net.client.terminated
    assert net.server.terminated


def test_invite_server_retransmission_timers_survive_custom_t1():
    tx = InviteServerTransaction(request(), UDP, now=0.0, timings=Timings(t1=0.25, t2=1.0))
    tx.send_response(response(tx.request, 500), now=0.0)
    tx.drain_outgoing()
    assert [t for t, _ in run_timers(tx, until=4)] == [0.25, 0.75, 1.75, 2.75, 3.75]


def test_timings_accept_the_smallest_interval_that_moves_every_clock_reading():
    from sipcore.sip.timers import MAX_CLOCK, MIN_INTERVAL

    timings = Timings(t1=MIN_INTERVAL, t2=MIN_INTERVAL, trying_delay=MIN_INTERVAL)
    for now in (MAX_CLOCK, -MAX_CLOCK, 1.8e9, 0.0):
        assert now + timings.t1 > now
    start = MAX_CLOCK - 1.0
    tx = InviteClientTransaction(request(), UDP, now=start, timings=timings)
    fired_at = tx.timers["A"].deadline
    assert fired_at > start
    tx.handle_timer(fired_at)
    assert tx.timers["A"].deadline > fired_at  # re-armed strictly later: no spin
