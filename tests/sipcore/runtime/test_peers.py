"""OPTIONS keep-alive probes from a node to the configured SipPeers."""

from __future__ import annotations

import pytest

from sipcore.models import PeerStatus, SipPeer
from tests.sipcore.runtime.conftest import FAST_TIMERS
from tests.sipcore.runtime.support import free_udp_tcp_port, start_node
from tests.support.processes import wait_for


@pytest.mark.django_db(transaction=True)
def test_node_probes_peers_and_records_up_with_rtt_and_down_after_timer_f(sip_node, node_env, tmp_path):
    alive = SipPeer.objects.create(name="alive", uri=f"sip:ping@127.0.0.1:{sip_node.port}", interval=1.0)
    dead = SipPeer.objects.create(name="dead", uri=f"sip:ping@127.0.0.1:{free_udp_tcp_port()}", interval=1.0)
    tcp = SipPeer.objects.create(
        name="alive-tcp", uri=f"sip:ping@127.0.0.1:{sip_node.port};transport=tcp", interval=1.0
    )
    prober = start_node(node_env, tmp_path, *FAST_TIMERS, "--peers-refresh", "0.5")
    try:
        for peer in (alive, tcp):
            wait_for(
                lambda peer=peer: SipPeer.objects.get(pk=peer.pk).status == PeerStatus.UP,
                timeout=15,
                what=f"{peer.name} to be up",
            )
            peer.refresh_from_db()
            assert peer.last_status_code == 200
            assert 0 < peer.last_rtt_ms < 2000
            assert peer.last_probe_at is not None
            assert peer.last_change_at is not None
        # No answer: down once Timer F (64*T1 = 3.2 s) ends the probe.
        wait_for(
            lambda: SipPeer.objects.get(pk=dead.pk).status == PeerStatus.DOWN,
            timeout=15,
            what="the dead peer to be down",
        )
        dead.refresh_from_db()
        assert dead.last_status_code is None
        assert dead.last_rtt_ms is None
        assert sip_node.metric("sip_messages_in_total", method="OPTIONS") >= 2
        summary = SipPeer.summary()
        assert summary["alive"]["status"] == "up"
        assert summary["dead"] == {"status": "down", "code": None, "rtt_ms": None, "required": False}
    finally:
        prober.process.stop()
