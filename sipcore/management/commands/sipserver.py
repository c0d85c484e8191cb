"""Run a SIP node: ``manage.py sipserver --listen udp:127.0.0.1:5060,tcp:127.0.0.1:5060``.

With ``--processes N`` the command starts N nodes sharing each address with
SO_REUSEPORT, node ids ``<node-id>-<i>``, metrics ports ``--metrics`` + i, and
passes SIGTERM/SIGINT on to them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from callops.config import ConfigError, parse_listen_address
from sipcore.endpoint import Endpoint
from sipcore.node import NodeConfig, run_node
from sipcore.peers import PeerProber
from sipcore.sip import Timings


def load_plan():  # type: ignore[no-untyped-def]
    from django.db import close_old_connections

    from sipcore.models import DialPlanRule

    close_old_connections()
    try:
        return DialPlanRule.load_plan()
    finally:
        close_old_connections()


def peer_prober(endpoint: Endpoint, refresh: float) -> PeerProber:
    from sipcore.models import SipPeer

    def load():  # type: ignore[no-untyped-def]
        from django.db import close_old_connections

        close_old_connections()
        return SipPeer.load_probes()

    def record(result):  # type: ignore[no-untyped-def]
        from django.db import close_old_connections

        close_old_connections()
        SipPeer.record_probe(result)

    return PeerProber(endpoint, load, record, refresh=refresh)


# Options each child of --processes gets as its parent was given them.
FORWARDED_OPTIONS = (
    "t1", "t2", "t4", "timer_c", "grace", "dialplan_refresh",
    "tcp_idle_timeout", "tcp_max_connections", "max_transactions", "persistence",
)  # fmt: skip


class Command(BaseCommand):
    help = "Run a SIP node (UDP and TCP) answering as the dial plan says."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument(
            "--listen", default=None, help="comma-separated, e.g. udp:127.0.0.1:5060,tcp:[::1]:5060"
        )
        parser.add_argument("--node-id", default=None, help="this node's id (default NODE_ID)")
        parser.add_argument(
            "--processes", type=int, default=1, help="nodes sharing each address (SO_REUSEPORT)"
        )
        parser.add_argument(
            "--reuse-port", action="store_true", help="share the addresses with other processes"
        )
        parser.add_argument(
            "--metrics",
            default="127.0.0.1:9460",
            help="host:port of this node's Prometheus /metrics; 'off' for none",
        )
        parser.add_argument("--t1", type=float, default=0.5, help="RFC 3261 T1, seconds")
        parser.add_argument("--t2", type=float, default=4.0, help="RFC 3261 T2, seconds")
        parser.add_argument("--t4", type=float, default=5.0, help="RFC 3261 T4, seconds")
        parser.add_argument(
            "--timer-c", type=float, default=180.0, help="how long an unanswered INVITE rings"
        )
        parser.add_argument(
            "--dialplan-refresh",
            type=float,
            default=10.0,
            help="seconds between dial plan reloads from the database",
        )
        parser.add_argument(
            "--peers-refresh",
            type=float,
            default=5.0,
            help="seconds between reloads of the SIP peers to probe with OPTIONS; 0: no probes",
        )
        parser.add_argument(
            "--max-transactions", type=int, default=200_000, help="beyond this, new requests get 503"
        )
        parser.add_argument(
            "--tcp-idle-timeout", type=float, default=120.0, help="close idle TCP connections"
        )
        parser.add_argument(
            "--tcp-max-connections", type=int, default=1024, help="TCP connections per listener"
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=5.0,
            help="with --persistence off: seconds to let transactions finish on stop",
        )
        parser.add_argument(
            "--persistence",
            choices=("on", "off"),
            default="on",
            help="on: store every transaction in Redis before sending (adoptable after a crash, "
            "released on stop); off: memory only",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            listen = tuple(
                parse_listen_address(item) for item in (options["listen"] or "").split(",") if item.strip()
            ) or tuple(settings.SIP_LISTEN)
            timings = Timings(t1=options["t1"], t2=options["t2"], t4=options["t4"])
        except (ConfigError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        node_id = options["node_id"] or settings.NODE_ID
        metrics = None
        if options["metrics"] != "off":
            host, _, port = options["metrics"].rpartition(":")
            if not port.isdigit():
                raise CommandError(f"--metrics {options['metrics']!r}: expected host:port or off")
            metrics = (host.strip("[]") or "127.0.0.1", int(port))
        if options["processes"] > 1:
            sys.exit(self._supervise(options, node_id, metrics))
        config = NodeConfig(
            node_id=node_id,
            listen=listen,
            timings=timings,
            timer_c=options["timer_c"],
            reuse_port=options["reuse_port"],
            metrics=metrics,
            grace=options["grace"],
            dialplan_refresh=options["dialplan_refresh"],
            tcp_idle_timeout=options["tcp_idle_timeout"],
            tcp_max_connections=options["tcp_max_connections"],
            max_transactions=options["max_transactions"],
            redis_url=settings.REDIS_URL or None,
            persistence=options["persistence"] == "on",
            store_shards=settings.SIP_STORE_SHARDS,
            relay_secret=settings.SECRET_KEY.encode(),
        )
        if config.persistence and not config.redis_url:
            raise CommandError("--persistence on needs REDIS_URL (or run with --persistence off)")
        refresh = options["peers_refresh"]
        prober = None if refresh <= 0 else (lambda endpoint: peer_prober(endpoint, refresh))
        sys.exit(run_node(config, load_plan, prober))

    def _supervise(self, options: dict[str, Any], node_id: str, metrics: tuple[str, int] | None) -> int:
        children = []
        for index in range(options["processes"]):
            argv = [
                sys.executable,
                sys.argv[0],
                "sipserver",
                "--reuse-port",
                "--node-id",
                f"{node_id}-{index}",
                *(
                    arg
                    for name in FORWARDED_OPTIONS
                    for arg in (f"--{name.replace('_', '-')}", str(options[name]))
                ),
                "--peers-refresh",  # one prober is enough
                str(options["peers_refresh"] if index == 0 else 0),
                "--metrics",
                "off" if metrics is None else f"{metrics[0]}:{metrics[1] + index}",
            ]
            if options["listen"]:
                argv += ["--listen", options["listen"]]
            children.append(subprocess.Popen(argv))

        def forward(signum: int, frame: object) -> None:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        return max(child.wait() for child in children)
