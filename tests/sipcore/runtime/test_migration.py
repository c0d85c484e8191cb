"""Migration between live nodes (`manage.py sipmigrate`): the owner hands a ringing
INVITE over, the target carries on with the same call, and what the peer keeps sending
to the old owner is relayed to the new one. Real processes, real Redis."""

from __future__ import annotations

import secrets
import socket
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from sipcore.sip import TransactionKey, parse_message
from sipcore.store import split_record, tx_key
from tests.sipcore.runtime.support import free_udp_tcp_port, start_node
from tests.sipcore.runtime.test_durable import Receiver
from tests.sipcore.runtime.test_sipp import invite
from tests.support.processes import wait_for

TIMERS = ("--t1", "0.5", "--t2", "4", "--t4", "0.5", "--timer-c", "60", "--reuse-port")


def record(redis_client, key: str) -> dict[str, str] | None:
    value = redis_client.get(tx_key(key))
    return None if value is None else split_record(value)[0]


def cancel_of(request: str) -> str:
    return request.replace("INVITE sip:", "CANCEL sip:", 1).replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")


def ack_of(request: str, tag: str) -> str:
    ack = request.replace("INVITE sip:", "ACK sip:", 1).replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
    return ack.replace("To: <sip:noanswer@127.0.0.1>", f"To: <sip:noanswer@127.0.0.1>;tag={tag}")


def test_a_ringing_invite_moves_to_another_node_which_answers_its_cancel(node_env, tmp_path, redis_client):
    port = free_udp_tcp_port()
    ids = (f"mig-a-{port}", f"mig-b-{port}")
    nodes = {
        node_id: start_node(node_env, tmp_path, *TIMERS, "--node-id", node_id, port=port) for node_id in ids
    }
    try:
        time.sleep(1.5)  # both heartbeats carry their relay addresses
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            receiver = Receiver(sock)
            receiver.start()
            request = invite("noanswer", sock.getsockname()[1], branch=f"z9hG4bK{secrets.token_hex(6)}")
            sock.sendto(request.encode(), ("127.0.0.1", port))
            wait_for(
                lambda: any(d.startswith(b"SIP/2.0 180") for _, d in receiver.got), timeout=3, what="180"
            )
            ringing = next(d for _, d in receiver.got if d.startswith(b"SIP/2.0 180"))
            key = str(TransactionKey.for_server(parse_message(request.encode())))
            owner = record(redis_client, key)["o"]
            target = next(node_id for node_id in ids if node_id != owner)

            call_command("sipmigrate", "--key", key, "--to", target)
            moved = record(redis_client, key)
            assert (moved["o"], moved["e"], moved["r"]) == (target, "2", ""), moved

            # The peer's packets still reach the old owner (same source, same kernel choice).
            sock.sendto(cancel_of(request).encode(), ("127.0.0.1", port))
            wait_for(
                lambda: any(d.startswith(b"SIP/2.0 487") for _, d in receiver.got), timeout=3, what="487"
            )
            answers = [d for _, d in receiver.got]
            final = next(d for d in answers if d.startswith(b"SIP/2.0 487"))
            assert any(d.startswith(b"SIP/2.0 200") and b"CANCEL" in d for d in answers), answers
            assert parse_message(final).to_tag == parse_message(ringing).to_tag  # the same call, carried on
            sock.sendto(ack_of(request, parse_message(final).to_tag or "").encode(), ("127.0.0.1", port))
            wait_for(lambda: record(redis_client, key) is None, timeout=5, what="the INVITE to end")
            receiver.stop()
        assert nodes[owner].metric("sip_relayed_total") >= 2  # the CANCEL and the ACK
        assert nodes[target].metric("sip_adopted_total") == 1
        assert nodes[owner].metric("sip_messages_out_total", status="487") == 0  # only the target answered
    finally:
        for node in nodes.values():
            node.process.stop()


def test_sipmigrate_refuses_a_target_that_is_not_live(node_env):
    with pytest.raises(CommandError, match="not live"):
        call_command("sipmigrate", "--key", "s|z9hG4bKx|127.0.0.1:5060|INVITE", "--to", "no-such-node")
