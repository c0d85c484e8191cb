"""The durable transaction store's cost: commits/s and CPU per transaction.

Run from the repository root: ``.venv/bin/python bench/store.py [--url redis://...] [--calls N]``;
other benchmarks call :func:`store_bench` and read the rows it returns.

Each call is an INVITE server transaction living through INVITE -> 486 -> ACK ->
Timer I on UDP, the life SIPp's busy scenario gives it, committed as a node's
layer would: one commit per step for a whole batch (group commit), so three
writes per call (the 486, the ACK, the deletion with its final audit entry).
For batches of 50 and 500 it reports:

* **commits/s**: store writes per second of wall time (one pipeline per batch);
* **cpu/call (fsm)**: this process's CPU per call for the transaction machines
  alone (persistence off);
* **cpu/call (fsm+store)**: the same with every step committed (snapshot, JSON,
  deflate, the pipeline, the replies); the ratio is persistence's cost in the node;
* **cpu/commit**: the difference of the two, per commit: the store's own CPU;
* **redis cpu/call**: the Redis server's own CPU per call (INFO cpu), so what a
  call costs in all.

By default it starts a private redis-server (``callops.devstack.PrivateRedis``)
so nothing else runs on it; ``--url`` measures against another one (its keys
``{sip:*`` are deleted after). Best of several repeats (the machine is shared and
noisy; noise only ever adds time). The exit status is 0 either way.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
import redis.asyncio as aioredis
from redis.utils import HIREDIS_AVAILABLE

from callops.devstack import PrivateRedis
from sipcore.sip import (
    InviteServerTransaction,
    Request,
    TransportInfo,
    make_ack,
    make_response,
    parse_message,
)
from sipcore.store import RedisTransactionStore

UDP = TransportInfo("UDP", False, ("192.0.2.10", 5060), ("192.0.2.101", 5061))
SDP = (
    "v=0\r\no=user1 53655765 2353687637 IN IP4 192.0.2.101\r\ns=-\r\nc=IN IP4 192.0.2.101\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def invite(call: int, salt: str) -> Request:
    text = (
        "INVITE sip:service@192.0.2.10:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.101:5061;branch=z9hG4bK-{salt}-{call}-1-0\r\n"
        f"From: sipp <sip:sipp@192.0.2.101:5061>;tag={salt}SIPpTag00{call}\r\n"
        "To: service <sip:service@192.0.2.10:5060>\r\n"
        f"Call-ID: {call}-{salt}@192.0.2.101\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: sip:sipp@192.0.2.101:5061\r\n"
        "Max-Forwards: 70\r\n"
        "Subject: Performance Test\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
    )
    request = parse_message(text.encode())
    assert isinstance(request, Request)
    return request


@dataclass(frozen=True)
class Row:
    batch: int
    calls: int
    commits_per_s: float
    cpu_fsm_us: float
    cpu_store_us: float
    redis_cpu_us: float

    @property
    def ratio(self) -> float:
        return self.cpu_store_us / self.cpu_fsm_us if self.cpu_fsm_us else float("nan")

    @property
    def cpu_commit_us(self) -> float:
        """The store's own CPU per commit (snapshot, JSON, deflate, pipeline, replies)."""
        return (self.cpu_store_us - self.cpu_fsm_us) / 3


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _calls(
    batch: int, calls: int, store: RedisTransactionStore | None, salt: str
) -> tuple[float, float]:
    """Run ``calls`` INVITE->486->ACK->Timer I lives in batches; (wall s, CPU s) of this process."""
    requests = [invite(n, salt) for n in range(calls)]  # parsing the INVITE is the transport's cost
    wall0, cpu0 = time.perf_counter(), time.process_time()
    now = time.time()
    for start in range(0, calls, batch):
        txs = []
        for request in requests[start : start + batch]:
            tx = InviteServerTransaction(request, UDP, now)
            tx.send_response(make_response(request, 486, to_tag="b" + salt), now)
            tx.drain_outgoing()
            txs.append(tx)
        if store is not None:
            await store.commit(txs, now)
        acks = [make_ack(tx.request, tx.last_response) for tx in txs]  # type: ignore[arg-type]
        for tx, ack in zip(txs, acks, strict=True):
            tx.receive(ack, now + 0.05)
        if store is not None:
            await store.commit(txs, now + 0.05)
        for tx in txs:
            tx.handle_timer(now + 5.05)  # Timer I (T4 on UDP): Terminated
        if store is not None:
            await store.commit(txs, now + 5.05)
    return time.perf_counter() - wall0, time.process_time() - cpu0


def store_bench(
    url: str | None = None, batches: tuple[int, ...] = (50, 500), calls: int = 3000, repeats: int = 5
) -> list[Row]:
    """Measure and return one :class:`Row` per batch size (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if url is None:
            server = PrivateRedis(Path(tmp) / "redis")
            url = server.start()
        sync = redis.Redis.from_url(url)
        try:
            return asyncio.run(_bench(url, sync, batches, calls, repeats))
        finally:
            for key in sync.scan_iter(match="{sip:*", count=1000):
                sync.delete(key)
            sync.close()
            if server is not None:
                server.stop()


async def _bench(
    url: str, sync: redis.Redis, batches: tuple[int, ...], calls: int, repeats: int
) -> list[Row]:
    client = aioredis.Redis.from_url(url, socket_timeout=5)
    rows = []
    try:
        for batch in batches:
            best_fsm = best_store = best_wall = best_redis = float("inf")
            for repeat in range(repeats):
                _, cpu_fsm = await _calls(batch, calls, None, f"f{batch}r{repeat}")
                store = RedisTransactionStore(client, f"bench-{os.getpid()}", audit_maxlen=calls * 4)
                await store.renew_lease()
                redis0 = _redis_cpu(sync)
                wall, cpu_store = await _calls(batch, calls, store, f"s{batch}r{repeat}")
                redis_cpu = _redis_cpu(sync) - redis0
                assert store.refused_total == 0
                assert store.durable
                best_fsm, best_store = min(best_fsm, cpu_fsm), min(best_store, cpu_store)
                best_wall, best_redis = min(best_wall, wall), min(best_redis, redis_cpu)
                for key in sync.scan_iter(match="{sip:*", count=1000):
                    sync.delete(key)
            rows.append(
                Row(
                    batch=batch,
                    calls=calls,
                    commits_per_s=3 * calls / best_wall,
                    cpu_fsm_us=best_fsm / calls * 1e6,
                    cpu_store_us=best_store / calls * 1e6,
                    redis_cpu_us=best_redis / calls * 1e6,
                )
            )
    finally:
        await client.aclose()
    return rows


def report(rows: list[Row]) -> str:
    lines = [
        f"store: INVITE->486->ACK->Timer I, 3 commits per call; redis-py parser: "
        f"{'hiredis' if HIREDIS_AVAILABLE else 'pure Python (hiredis not installed)'}",
        f"{'batch':>6} {'calls':>6} {'commits/s':>10} {'cpu/call fsm':>13} {'fsm+store':>10} "
        f"{'ratio':>6} {'cpu/commit':>11} {'redis cpu/call':>15}",
    ]
    for row in rows:
        lines.append(
            f"{row.batch:>6} {row.calls:>6} {row.commits_per_s:>10.0f} {row.cpu_fsm_us:>11.0f}us "
            f"{row.cpu_store_us:>8.0f}us {row.ratio:>6.2f} {row.cpu_commit_us:>9.0f}us {row.redis_cpu_us:>13.0f}us"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="measure against this Redis (default: a private redis-server)")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(report(store_bench(args.url, calls=args.calls, repeats=args.repeats)))


if __name__ == "__main__":
    main()
