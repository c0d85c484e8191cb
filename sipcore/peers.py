"""OPTIONS keep-alive probes to the configured SIP peers (``SipPeer``, RFC 3261 §11).

A peer is up while it answers (any final response: it is there and speaks SIP),
down when a probe gets none (Timer F) or cannot be sent. Each result, with the
round-trip time, is written back to the peer's row, off the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sipcore.endpoint import Endpoint, RequestFailed

log = logging.getLogger("sipcore.node")


@dataclass(frozen=True, slots=True)
class Peer:
    id: int
    name: str
    uri: str
    interval: float


@dataclass(frozen=True, slots=True)
class ProbeResult:
    peer_id: int
    up: bool
    status_code: int | None
    rtt_ms: float | None
    detail: str


class PeerProber:
    def __init__(
        self,
        endpoint: Endpoint,
        load_peers: Callable[[], list[Peer]],
        save_result: Callable[[ProbeResult], None],
        *,
        refresh: float = 5.0,
    ):
        self.endpoint = endpoint
        self.load_peers = load_peers
        self.save_result = save_result
        self.refresh = refresh
        self._next_probe: dict[int, float] = {}
        self._in_flight: dict[int, asyncio.Task[None]] = {}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        peers: list[Peer] = []
        loaded_at = float("-inf")
        while True:
            now = time.monotonic()
            if now - loaded_at >= self.refresh:
                try:
                    peers = await loop.run_in_executor(None, self.load_peers)
                except Exception:
                    log.exception("could not load the SIP peers; keeping the previous list")
                loaded_at = now
            for peer in peers:
                if peer.id not in self._in_flight and self._next_probe.get(peer.id, 0.0) <= now:
                    self._next_probe[peer.id] = now + peer.interval
                    task = asyncio.ensure_future(self.probe(peer))
                    self._in_flight[peer.id] = task
                    task.add_done_callback(self._finished(peer.id))
            await asyncio.sleep(0.5)

    def _finished(self, peer_id: int) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._in_flight.pop(peer_id, None)

        return done

    async def probe(self, peer: Peer) -> None:
        started = time.monotonic()
        try:
            response = await self.endpoint.request("OPTIONS", peer.uri)
        except RequestFailed as exc:
            result = ProbeResult(peer.id, False, None, None, str(exc))
        except (ValueError, OSError) as exc:
            result = ProbeResult(peer.id, False, None, None, f"cannot probe {peer.uri!r}: {exc}")
        else:
            rtt = (time.monotonic() - started) * 1000
            result = ProbeResult(peer.id, True, response.status_code, rtt, response.reason)
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.save_result, result)
        except Exception:
            log.exception("could not record the probe of SIP peer %s", peer.name)
