"""One SIP node: transports, transaction layer, UAS core, heartbeat, metrics, graceful stop.

``run_node(config)`` runs until SIGTERM or SIGINT, then stops and returns 0:

* persistence on (the default): every change is stored in Redis before its
  messages are sent (``sipcore.store``). On stop the node stops reading,
  stores and releases every live transaction and exits at once; a node
  starting with the same id adopts what it released (its timers carry on,
  each due one fired once) and what a crashed process of it left.
* persistence off: stops reading new requests and lets live transactions
  finish for up to ``grace`` seconds.

The dial plan is read from the database at start and every
``dialplan_refresh`` seconds (in a thread, off the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from callops.config import ListenAddress
from sipcore.control import serve as control_serve
from sipcore.dialplan import DialPlan
from sipcore.endpoint import Endpoint
from sipcore.layer import TransactionLayer, TransactionStore
from sipcore.metrics import NodeMetrics
from sipcore.peers import PeerProber
from sipcore.relay import Relay, relay_key
from sipcore.sip import Timings, TransportInfo
from sipcore.transport import TcpTransport, Transport, UdpTransport
from sipcore.uas import DEFAULT_MAX_TRANSACTIONS, DEFAULT_TIMER_C, UasCore

if TYPE_CHECKING:
    from sipcore.store import RedisTransactionStore

log = logging.getLogger("sipcore.node")


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    listen: tuple[ListenAddress, ...]
    timings: Timings = field(default_factory=Timings)
    timer_c: float = DEFAULT_TIMER_C
    reuse_port: bool = False
    metrics: tuple[str, int] | None = None
    grace: float = 5.0
    redis_url: str | None = None
    dialplan_refresh: float = 10.0
    tcp_idle_timeout: float = 120.0
    tcp_max_connections: int = 1024
    max_transactions: int = DEFAULT_MAX_TRANSACTIONS
    persistence: bool = False
    store_shards: int = 16
    relay_secret: bytes = b""  # keys the relay's envelopes (sipcore.relay): the deployment's secret


class Node:
    def __init__(
        self,
        config: NodeConfig,
        load_plan: Callable[[], DialPlan],
        store: TransactionStore | None = None,
        prober: Callable[[Endpoint], PeerProber] | None = None,
    ):
        self.config = config
        self.load_plan = load_plan
        self.prober = prober
        self.store = store
        self.metrics = NodeMetrics(config.node_id)
        self.transports: list[Transport] = []
        self.stopping = asyncio.Event()
        self.relay: Relay | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        plan = await loop.run_in_executor(None, self.load_plan)
        if self.store is None and config.persistence:
            assert config.redis_url, "persistence needs a Redis URL"
            from sipcore.store import RedisTransactionStore, default_client

            self.store = RedisTransactionStore(
                default_client(config.redis_url), config.node_id, shards=config.store_shards
            )
        self.layer = TransactionLayer(
            timings=config.timings, store=self.store, loop=loop, metrics=self.metrics
        )
        self.core = UasCore(
            self.layer, plan, timer_c=config.timer_c, max_transactions=config.max_transactions
        )
        self.layer.attach(self.core)
        if self.durable_store is not None:
            self.durable_store.on_lost = self.layer.lost
        self.metrics.watch_transactions(lambda: [*self.layer.server.values(), *self.layer.client.values()])
        self.metrics.durable.set_function(lambda: 1.0 if getattr(self.store, "durable", False) else 0.0)
        for listen in config.listen:
            transport: Transport
            if listen.protocol == "udp":
                transport = await UdpTransport.listen(
                    self.layer, listen.host, listen.port, reuse_port=config.reuse_port
                )
            else:
                transport = await TcpTransport.listen(
                    self.layer,
                    listen.host,
                    listen.port,
                    reuse_port=config.reuse_port,
                    idle_timeout=config.tcp_idle_timeout,
                    max_connections=config.tcp_max_connections,
                )
            self.transports.append(transport)
        if self.durable_store is not None:
            await self.durable_store.renew_lease()  # the lease first: adopting needs it
            self._tasks.append(self.durable_store.start_leases())
            await self._adopt_own()
            udp = next((t for t in self.transports if t.protocol == "UDP"), None)
            if udp is not None and config.relay_secret:
                self.relay = Relay(self.layer, relay_key(config.relay_secret))
                await self.relay.listen(udp.local[0])
                self.layer.relay = self.relay
            assert config.redis_url is not None
            import redis.asyncio as aioredis

            control = aioredis.from_url(config.redis_url, socket_timeout=10, socket_connect_timeout=2)
            self._tasks.append(asyncio.ensure_future(control_serve(self, control)))
        if config.metrics is not None:
            try:
                self.metrics.serve(*config.metrics)
            except OSError as exc:
                log.warning("metrics port %s:%s unavailable: %s", *config.metrics, exc)
        self._tasks.append(asyncio.ensure_future(self.metrics.watch_loop_lag()))
        self._tasks.append(asyncio.ensure_future(self._refresh_plan()))
        if self.prober is not None:
            self.endpoint = Endpoint(self.layer)
            self._tasks.append(asyncio.ensure_future(self.prober(self.endpoint).run()))
        if config.redis_url:
            self._tasks.append(asyncio.ensure_future(self._heartbeat()))
        addresses = ", ".join(f"{t.protocol.lower()}:{t.local[0]}:{t.local[1]}" for t in self.transports)
        log.info(
            "sip node %s listening on %s (pid %d)",
            config.node_id,
            addresses,
            os.getpid(),
            extra={"event": "sip_node_started", "node_id": config.node_id, "listen": addresses},
        )
        print(f"sipserver {config.node_id} listening on {addresses}", flush=True)

    @property
    def durable_store(self) -> RedisTransactionStore | None:
        from sipcore.store import RedisTransactionStore

        return self.store if isinstance(self.store, RedisTransactionStore) else None

    async def _adopt_own(self) -> int:
        """Adopt what this node id left in the store: released on a graceful stop, or
        held by a crashed process of it (whose lease incarnation is not ours)."""
        store = self.durable_store
        assert store is not None
        try:
            keys = await store.owned_by(self.config.node_id)
        except Exception as exc:
            log.warning("could not list the transactions this node left: %s", exc)
            return 0
        adopted = 0
        for txkey in keys:
            try:
                stored = await store.load(txkey)
                if stored is None:
                    continue
                tx = await store.adopt(txkey, self.local_info(stored.snapshot.transport), self.layer.clock())
            except Exception:
                log.exception("could not adopt %s", txkey)
                continue
            if tx is not None and self.layer.install(tx, self.layer.clock()):
                adopted += 1
                self.metrics.adopted.inc()
        if keys:
            log.info(
                "adopted %d of %d transactions this node left",
                adopted,
                len(keys),
                extra={"event": "sip_node_adopted", "node_id": self.config.node_id, "adopted": adopted},
            )
        return adopted

    def local_info(self, stored: TransportInfo) -> TransportInfo | None:
        """This node's transport facts for a transaction stored with ``stored``: the same
        listener if it has it, else one of the same protocol and address family."""
        same = [t for t in self.transports if t.protocol == stored.protocol]
        for transport in same:
            if transport.local == stored.local:
                return transport.info_for(stored.remote)
        family = ":" in stored.remote[0]
        for transport in same:
            if (":" in transport.local[0]) == family:
                return transport.info_for(stored.remote)
        return None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        await self.start()
        await self.stopping.wait()
        return await self.stop()

    async def stop(self) -> int:
        log.info(
            "sip node %s stopping: %d live transactions",
            self.config.node_id,
            self.layer.live(),
            extra={"event": "sip_node_stopping", "node_id": self.config.node_id},
        )
        if self.durable_store is not None:
            left = await self._release_all()
        else:
            left = await self.layer.drain(self.config.grace)
        for task in self._tasks:
            task.cancel()
        for transport in self.transports:
            transport.close()
        if self.relay is not None:
            self.relay.close()
        self.layer.close()
        if self.config.redis_url:
            with contextlib.suppress(Exception):
                from callops.redis import get_redis
                from sipcore.nodes import forget

                await asyncio.get_running_loop().run_in_executor(
                    None, forget, get_redis(self.config.redis_url), self.config.node_id
                )
        log.info(
            "sip node %s stopped; %d transactions left unfinished",
            self.config.node_id,
            left,
            extra={"event": "sip_node_stopped", "node_id": self.config.node_id, "left": left},
        )
        return 0

    async def _release_all(self) -> int:
        """Stop reading, store and release every live transaction; the ones left unreleased
        (Redis down) are returned as a count: a node with this id adopts them later."""
        store = self.durable_store
        assert store is not None
        for transport in self.transports:
            transport.close()  # stop reading: nothing new reaches a transaction from now on
        self.layer.scheduler.close()  # and no timer fires: the state released is the last
        await self.layer.settle()
        live = self.layer.live_transactions()
        try:
            await store.release(live, self.layer.clock())
            left = 0
        except Exception as exc:
            log.warning("could not release %d transactions: %s", len(live), exc)
            left = len(live)
        self.layer.server.clear()
        self.layer.client.clear()
        await store.drop_leases()
        return left

    async def _refresh_plan(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.dialplan_refresh)
            try:
                self.core.plan = await loop.run_in_executor(None, self.load_plan)
            except Exception:
                log.exception("could not reload the dial plan; keeping the current one")

    async def _heartbeat(self) -> None:
        from callops.redis import get_redis
        from sipcore.nodes import beat, live_nodes

        loop = asyncio.get_running_loop()
        client = get_redis(self.config.redis_url)
        started = time.time()
        while True:
            info: dict[str, object] = {
                "pid": os.getpid(),
                "listen": [str(listen) for listen in self.config.listen],
                "started": started,
                "transactions": self.layer.live(),
                "durable": bool(getattr(self.store, "durable", False)),
                "persistence": self.durable_store is not None,
            }
            if self.relay is not None and self.relay.address is not None:
                info["relay"] = f"{self.relay.address[0]}|{self.relay.address[1]}"
            try:
                await loop.run_in_executor(None, beat, client, self.config.node_id, info)
                if self.relay is not None:
                    beats = await loop.run_in_executor(None, live_nodes, client)
                    self.relay.peers = relay_addresses(beats)
            except Exception as exc:  # Redis down: keep serving, say so
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_INTERVAL)


HEARTBEAT_INTERVAL = 1.0  # also how soon a node learns another's relay address


def relay_addresses(beats: list[dict[str, object]]) -> dict[str, tuple[str, int]]:
    """node id -> relay address, from the live nodes' heartbeats."""
    found = {}
    for beat in beats:
        host, _, port = str(beat.get("relay") or "").rpartition("|")
        if host and port.isdigit():
            found[str(beat["node_id"])] = (host, int(port))
    return found


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is pinned; plain asyncio still works
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_node(
    config: NodeConfig,
    load_plan: Callable[[], DialPlan],
    prober: Callable[[Endpoint], PeerProber] | None = None,
) -> int:
    # Live transactions are many small, long-lived objects: keep the cyclic collector from
    # walking all of them every few thousand allocations (what start-up loaded is frozen).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(Node(config, load_plan, prober=prober).run())
    finally:
        loop.close()
