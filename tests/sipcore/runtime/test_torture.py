"""Every RFC 4475 and RFC 5118 message, as a datagram to a running node, gets the answer those
RFCs (and RFC 3261 for a UAS) prescribe, or none; the node keeps serving afterwards.

Responses go where RFC 3261 §18.2.2 says: the source address and the top Via's port (5060
unless given, 5061 for TLS). The test sends from port 5060 of an address of its own in
127.0.0.0/8 and listens there on every port the messages' Vias name.
"""

from __future__ import annotations

import random
import select
import socket
import time
from pathlib import Path

import pytest

from tests.sipcore.runtime.support import run_sipp, scenario
from tests.support.processes import wait_for

DATA = Path(__file__).resolve().parents[1] / "data"

# name: the final status the node must answer with, None when it must not answer.
EXPECTED_4475 = {
    # §3.1.1 valid messages
    "wsinv": 481,  # a To tag of no dialog of ours (RFC 3261 §12.2.2)
    "intmeth": 501,  # a method nobody knows (§21.5.2), with Allow
    "esc01": 200,  # INVITE: the dial plan answers
    "escnull": 405,  # REGISTER: a known method this UAS does not serve (§8.2.1)
    "esc02": 501,  # RE%47IST%45R is not REGISTER
    "lwsdisp": 200,
    "longreq": 200,
    "dblreq": 405,
    "semiuri": 200,
    "transports": 200,
    "mpart01": 405,  # MESSAGE
    "unreason": None,  # responses matching no transaction are dropped
    "noreason": None,
    # §3.1.2 invalid messages: the ParseError's code, statelessly (§8.2.6)
    "badinv01": 400,
    "clerr": 400,
    "ncl": 400,
    "scalar02": 400,
    "scalarlg": None,  # a response
    "quotbal": 400,
    "ltgtruri": 400,
    "lwsruri": 400,
    "lwsstart": 400,
    "trws": 400,
    "escruri": 400,
    "baddate": 400,
    "regbadct": 400,
    "badaspec": 400,
    "baddn": 400,
    "badvers": 505,
    "mismatch01": 400,
    "mismatch02": 501,
    "bigcode": None,  # a response
    "test": None,  # no Via and no CSeq (and no SIP-Version): nowhere to answer
    # §3.2 transaction layer
    "badbranch": 200,  # matched by the RFC 2543 rules
    # §3.3 application layer
    "insuf": None,  # no Call-ID, From or To: nothing to build a response from (§8.2.6.2)
    "unkscm": 416,
    "novelsc": 416,
    "unksm2": 405,
    "bext01": 420,
    "invut": 415,
    "regaut01": 405,
    "multi01": 400,
    "mcl01": 400,
    "bcast": None,
    "zeromf": 200,  # an endpoint answers OPTIONS with Max-Forwards 0 (RFC 4475 §3.3.11)
    "cparam01": 405,
    "cparam02": 405,
    "regescrt": 405,
    "sdp01": 406,  # RFC 4475 §3.3.15
    # §3.4 backward compatibility
    "inv2543": 200,  # no Contact, Max-Forwards or branch, as RFC 2543 allowed
}
EXPECTED_5118 = {
    "ipv6-good": 405,
    "ipv6-bad": 400,
    "port-ambiguous": 405,
    "port-unambiguous": 405,
    # The received= these clients wrote is replaced by the source address (§18.2.1): answered here.
    "via-received-param-with-delim": 481,  # BYE outside any dialog
    "via-received-param-no-delim": 200,  # OPTIONS
    "ipv6-in-sdp": 400,  # as published, Content-Length exceeds the body
    "mult-ip-in-header": 481,  # BYE outside any dialog, to Via port 6050
    "mult-ip-in-sdp": 400,
    "ipv4-mapped-ipv6": 200,  # to Via port 19823
    "ipv6-bug-abnf-3-colons": 200,
    "ipv6-correct-abnf-2-colons": 200,
}
LISTEN_PORTS = (5060, 5061, 6050, 19823)


def vectors():
    for name, status in EXPECTED_4475.items():
        yield name, (DATA / "rfc4475" / f"{name}.dat").read_bytes(), status
    for name, status in EXPECTED_5118.items():
        yield name, (DATA / "rfc5118" / f"{name}.dat").read_bytes(), status


def call_id_of(data: bytes) -> tuple[bytes, bytes] | None:
    """(Call-ID, CSeq number) as first written: what ties a response to its request here
    (RFC 5118's messages share Call-IDs; RFC 4475's fold and repeat headers)."""
    found: dict[bytes, bytes] = {}
    for line in data.replace(b"\r\n", b"\n").split(b"\n\n")[0].split(b"\n"):
        name, _, value = line.partition(b":")
        key = {b"call-id": b"i", b"i": b"i", b"cseq": b"cseq"}.get(name.strip().lower())
        if key is not None and key not in found:
            found[key] = value.split()[0] if value.split() else b""
    if b"i" not in found:
        return None
    return found[b"i"], found.get(b"cseq", b"")


def test_every_vector_has_an_expectation():
    assert {p.stem for p in (DATA / "rfc4475").glob("*.dat")} == set(EXPECTED_4475)
    assert {p.stem for p in (DATA / "rfc5118").glob("*.dat")} == set(EXPECTED_5118)


def open_sockets() -> tuple[str, list[socket.socket]]:
    for _ in range(20):
        host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
        sockets = []
        try:
            for port in LISTEN_PORTS:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind((host, port))
        except OSError:
            for sock in sockets:
                sock.close()
            continue
        return host, sockets
    pytest.fail("no free 127.x.y.z address with ports 5060, 5061, 6050, 19823")


def test_torture_messages_get_the_prescribed_answers_and_the_node_keeps_serving(sip_node, tmp_path):
    _, sockets = open_sockets()
    finals: dict[str, list[int]] = {}
    stray = []
    seen = set()
    try:
        for name, data, expected in vectors():
            key = call_id_of(data)
            if key in seen:  # RFC 5118's messages share Call-ID and CSeq: let the earlier one end first
                wait_for(
                    lambda: sip_node.metric("sip_transactions") == 0,
                    timeout=10,
                    interval=0.1,
                    what="the node's transactions to end",
                )
            seen.add(key)
            sockets[0].sendto(data, ("127.0.0.1", sip_node.port))
            deadline = time.monotonic() + (1.0 if expected is not None else 0.3)
            while time.monotonic() < deadline and not finals.get(name):
                ready, _, _ = select.select(sockets, [], [], 0.05)
                for sock in ready:
                    datagram = sock.recv(65535)
                    if call_id_of(datagram) != key:
                        stray.append((name, datagram))
                        continue
                    status = int(datagram.split(b" ", 2)[1])
                    if status >= 200:
                        finals.setdefault(name, []).append(status)
    finally:
        for sock in sockets:
            sock.close()

    wrong = {}
    for name, _, expected in vectors():
        got = sorted(set(finals.get(name, [])))
        want = [] if expected is None else [expected]
        if got != want:
            wrong[name] = (want, got)
    assert not wrong, f"(expected, got) per vector: {wrong}"
    # Only retransmissions of earlier answers (a 2xx until its ACK, which never comes) may straggle
    # in, and the BYE that ends such a session after 64*T1 (RFC 3261 §13.3.1.4).
    unexpected = [
        (name, datagram)
        for name, datagram in stray
        if not datagram.startswith((b"SIP/2.0 200", b"SIP/2.0 180", b"BYE "))
    ]
    assert not unexpected, unexpected[:3]
    assert sip_node.process.alive()
    errors = sip_node.metric("sip_dropped_total", reason="internal_error")
    assert errors == 0, sip_node.process.output()[-4000:]
    result = run_sipp(sip_node.address, tmp_path, "-sf", scenario("options"), "-m", "10", "-r", "100")
    assert result.stat("SuccessfulCall") == 10
