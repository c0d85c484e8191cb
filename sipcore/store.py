"""The durable transaction store: Redis, fenced group commit, leases, adoption.

DESIGN.md, "Persistence and ownership". One :class:`RedisTransactionStore` is
one node (``node_id``); the transaction layer hands it, once per loop turn, the
transactions that changed (``commit``) and sends their messages only when it
has answered (store before send).

Keys (Redis Cluster ready: every script touches the keys of one hash tag)
-------------------------------------------------------------------------
A transaction's shard is ``crc32(txkey) % shards`` (stable across processes and
versions). Every key of shard ``s`` carries the hash tag ``{sip:<s>}``:

``{sip:<s>}:tx:<txkey>``  string, one per live transaction: six header lines,
    then the snapshot (see :data:`RECORD_FIELDS`): ``e`` epoch, ``v`` version,
    ``o`` owner node, ``i`` the owner's incarnation (a random token per store
    instance), ``r`` released ("" no, "*" to anyone, or the node id it was
    handed over to), ``d`` next deadline ("" for none); then the snapshot
    (``TransactionSnapshot.to_json()`` deflated with a preset dictionary, see
    :func:`pack_snapshot`). One string, not a hash: a hash whose values exceed
    64 bytes is a hashtable, whose per-field overhead alone is ~350 bytes. It
    expires ``expire_grace`` seconds after its last deadline (``idle_ttl``
    after the write when no timer runs, e.g. an INVITE server transaction
    waiting for its TU), and is deleted when the transaction terminates, right
    after its final audit entry.
``{sip:<s>}:timers``  sorted set, member txkey, score = next deadline (wall-clock
    seconds): what the Celery sweep reads to serve orphans' timers. Members of
    keys that expired stay behind until the sweep drops them (it must check the
    record exists).
``{sip:<s>}:live``  sorted set, member txkey, score = when its record expires: the
    index behind :meth:`live_keys` and :meth:`owned_by` (no SCAN).
``{sip:<s>}:audit``  stream, one entry per stored version (fields in
    :data:`AUDIT_FIELDS`), trimmed with ``MAXLEN ~ audit_maxlen`` per shard.
    A transaction's versions appear in order, once each, but not all of them:
    a lazy re-arm (below) is not stored. ``end`` is "1" on the last entry.
    The ingester must keep up within that window: at 3,000 INVITE->486->ACK/s,
    about 4 versions each, over 16 shards, the default 20,000 entries per shard
    hold some 25 s of history (~1.5 KB an entry: ~480 MB at most in all).
``{sip:<s>}:lease:<node>``  string, the node's incarnation, TTL ``lease_ttl``
    (3 s), renewed every second in every shard (one pipeline,
    :meth:`renew_lease`), so a script can tell whether a transaction's owner is
    alive with a GET on a key of its own slot. The scripts build that key from
    the shard's tag (it depends on the stored owner, so it cannot be declared
    beforehand); it always hashes to the script's slot.

A node is the owner's live incarnation when ``GET lease == i``: a process that
starts again with the same node id writes a new incarnation, so the
transactions its previous process left (crashed, not released) are adoptable
at once instead of after the lease the new process keeps renewing.

Fencing (every write is one Lua script, atomic)
-----------------------------------------------
A write carries the epoch the writer holds; it is refused, and nothing of it
lands (no record change, no timer, no audit entry), when the stored epoch,
owner or released flag says the writer no longer holds it (a released
transaction is written again only after an adoption, even by its owner). A transaction new
to this node is created at epoch 1 only if its key does not exist; when it
exists (another node, or an earlier process of this one, stored it) the write
is refused: the layer must ``adopt`` it instead. Adoption bumps the epoch, so
every later write of the previous owner is refused.

Group commit
------------
``commit(changed, now)`` snapshots, encodes and compresses each changed
transaction *synchronously* (the state of that loop turn; what stays the same
across a transaction's versions, its key and its messages' JSON forms, is
encoded once and reused), queues the writes
and returns a future. One writer task sends everything queued as one pipeline
with one EVALSHA per shard touched (one round trip; a cluster client splits it
by slot; inside a shard's script each write is fenced on its own; on a single
Redis the commands are packed by hiredis and written on one pooled connection,
see :meth:`RedisTransactionStore._send`) and,
while it waits, the next turns' commits queue up behind it and go together in
the next pipeline. So writes reach Redis in the order they were made, and a
burst of turns costs one round trip per pipeline, not per turn.

Lazy re-arm (``lazy_rearm``, on by default): a change whose only difference
from the stored snapshot is that retransmission timers (A, E, G; RFC 3261
§17.1.1.2, §17.1.2.2, §17.2.1) fired and were re-armed later is not written.
A restore from the stored snapshot behaves the same: the same state, messages
and timeouts (B, F, H... and the key's expiry are unchanged); its re-arm timer
is due, so an adopter fires it once, retransmits (a retransmission the peer
absorbs, §17.1.1.2) and re-arms from its own ``now``. The timer set keeps the
earlier deadline, so a sweep serving an orphan finds it due and does just that.
``release`` and ``hand_over`` always write the latest state.

Redis down
----------
A pipeline that fails (or takes longer than ``timeout``) marks the store not
durable (:attr:`durable`); its commits resolve with nothing refused (calls must
not fail because the store is down), and until Redis answers again commits
resolve at once without trying it. Everything changed meanwhile is remembered;
the lease task notices Redis is back and calls :meth:`resync`, which stores
every live transaction again (a missing key is created with the epoch held).
A lease renewal that finds its lease gone well before its TTL means Redis lost
its data (a restart without persistence): everything is stored again too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import secrets
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import hiredis
import orjson
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from sipcore.sip import Transaction, TransactionSnapshot, TransportInfo, restore_transaction
from sipcore.sip import snapshot as snapshot_format
from sipcore.sip.timers import DEFAULT_TIMINGS

log = logging.getLogger("sipcore.store")

AsyncRedis = aioredis.Redis | RedisCluster

DEFAULT_SHARDS: Final = 16
LEASE_TTL: Final = 3.0  # seconds; DESIGN.md: at most 3 s
LEASE_INTERVAL: Final = 1.0  # renewed every second
EXPIRE_GRACE: Final = 5.0  # a stored transaction outlives its last deadline by this much
IDLE_TTL: Final = 300.0  # a transaction with no running timer (waiting for its TU)
AUDIT_MAXLEN: Final = 20_000  # per shard, approximate (XADD MAXLEN ~)
OWNERS_SEEN: Final = 10_000
COMMIT_TIMEOUT: Final = 0.5  # seconds a pipeline may take before the store calls itself not durable

# The audit stream's fields: a contract with the ingester (keep these names).
AUDIT_FIELDS: Final = ("k", "v", "e", "o", "kind", "st", "ev", "at", "snap", "end")

# What "Redis is down" looks like (not a script or usage error, which is a bug and raises).
_DOWN: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.BusyLoadingError,
    OSError,
    TimeoutError,
)

# Timers whose firing only retransmits and re-arms (RFC 3261 §17.1.1.2 A, §17.1.2.2 E, §17.2.1 G).
REARM_TIMERS: Final = frozenset({"A", "E", "G"})


class StoreError(Exception):
    """Base of the store's own errors."""


class StoreUnavailableError(StoreError):
    """Redis did not answer: the operation did not happen (or may not have)."""


class CorruptRecordError(StoreError, ValueError):
    """A stored record that cannot be read back (its blob or fields are not ours)."""


# --- snapshot packing ----------------------------------------------------------

# A preset dictionary for deflate: the text every snapshot repeats (JSON field
# names, SIP header names, SDP lines). Never change it in place: a new
# dictionary gets a new format byte, and unpack keeps reading the old ones.
_ZDICT_V1: Final = (
    b'{"schema":3,"kind":"invite_server","state":"Completed","key":"s|z9hG4bK","version":'
    b'"created":"updated":"transport":["UDP",false,["127.0.0.1",5060],["127.0.0.1",'
    b'"timers":{"G":[,0.5],"H":[32.0],"request":"response":{"lines":["SIP/2.0 486 Busy Here",'
    b'"Content-Type: application/sdp\\r\\nContent-Length: \\r\\n\\r\\n'
    b"v=0\\r\\no=user1 53655765 2353687637 IN IP4 127.0.0.1\\r\\ns=-\\r\\nc=IN IP4 127.0.0.1\\r\\n"
    b't=0 0\\r\\nm=audio 6000 RTP/AVP 0\\r\\na=rtpmap:0 PCMU/8000\\r\\n"'
    b"Max-Forwards: 70\\r\\nSubject: Performance Test\\r\\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\\r\\n"
    b"Contact: <sip:sipp@127.0.0.1:5061;transport=UDP>\\r\\n"
    b"Call-ID: 1-1234@127.0.0.1\\r\\nCSeq: 1 INVITE\\r\\n"
    b"INVITE sip:service@127.0.0.1:5060 SIP/2.0\\r\\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-1-0"
    b";received=127.0.0.1;rport\\r\\nFrom: sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag001\\r\\n"
    b"To: <sip:service@127.0.0.1:5060>;tag=\\r\\n"
)
_FORMAT_V1: Final = b"\x01"
MAX_SNAPSHOT_JSON: Final = 1 << 20  # what unpack inflates at most: a stored blob cannot balloon


def pack_snapshot(snapshot_json: bytes) -> bytes:
    """The stored form of a snapshot's JSON: a format byte, then raw deflate with
    the preset dictionary (an INVITE server transaction in Completed, SDP
    included, packs to about 450 bytes instead of ~1.4 KB)."""
    # Copying a compressor already primed with the dictionary skips hashing the
    # dictionary again for every snapshot (RFC 1951 §3.2.5 matches may point into it).
    compressor = _PRIMED_V1.copy()
    return b"".join((_FORMAT_V1, compressor.compress(snapshot_json), compressor.flush()))


# A 4 KB window holds the dictionary and a snapshot. Level 3 and memLevel 4 cost
# about a third less CPU than 6/6 for ~5% more bytes (a SIPp busy INVITE server
# transaction: 197 bytes instead of 187); the smaller state is also cheaper to copy.
# Never written to: each pack works on a copy.
_PRIMED_V1: Final = zlib.compressobj(3, zlib.DEFLATED, -12, 4, zlib.Z_DEFAULT_STRATEGY, _ZDICT_V1)


def unpack_snapshot(blob: bytes) -> bytes:
    """The snapshot JSON back from :func:`pack_snapshot`'s output (bounded inflate)."""
    if blob[:1] != _FORMAT_V1:
        raise CorruptRecordError(f"unknown stored snapshot format {blob[:1]!r}")
    inflater = zlib.decompressobj(-15, _ZDICT_V1)
    try:
        data = inflater.decompress(blob[1:], MAX_SNAPSHOT_JSON)
    except zlib.error as exc:
        raise CorruptRecordError(f"stored snapshot does not inflate: {exc}") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise CorruptRecordError("stored snapshot is truncated or larger than MAX_SNAPSHOT_JSON")
    return data


# --- keys ----------------------------------------------------------------------


def shard_of(txkey: str, shards: int = DEFAULT_SHARDS) -> int:
    """The shard of a transaction key: stable across processes (not ``hash()``)."""
    return zlib.crc32(txkey.encode("utf-8", "surrogateescape")) % shards


def shard_tag(shard: int) -> str:
    return f"{{sip:{shard}}}"


def tx_key(txkey: str, shards: int = DEFAULT_SHARDS) -> str:
    return f"{shard_tag(shard_of(txkey, shards))}:tx:{txkey}"


def timers_key(shard: int) -> str:
    return f"{shard_tag(shard)}:timers"


def live_key(shard: int) -> str:
    return f"{shard_tag(shard)}:live"


def audit_key(shard: int) -> str:
    return f"{shard_tag(shard)}:audit"


def lease_prefix(shard: int) -> str:
    return f"{shard_tag(shard)}:lease:"


def lease_key(shard: int, node_id: str) -> str:
    return lease_prefix(shard) + node_id


@functools.lru_cache(maxsize=16384)
def _shard_keys(shard: int) -> tuple[bytes, bytes, bytes]:
    """The timers, live and audit keys of a shard (the commit script's first KEYS)."""
    return timers_key(shard).encode(), live_key(shard).encode(), audit_key(shard).encode()


# --- a transaction's snapshots, encoded version after version -----------------------


class _Place:
    """What stays the same across a held transaction's versions: its shard and record
    key, and the JSON forms of its request, last response, transport and timings
    (each kept with the object it encodes, compared by identity: a transaction
    keeps its wire bytes and its TransportInfo between versions, and this holds a
    reference to each, so an ``is`` match is the same object, never a reused id)."""

    __slots__ = ("key", "request", "request_doc", "response", "response_doc", "shard", "timings",
                 "timings_doc", "transport", "transport_doc")  # fmt: skip

    def __init__(self, txkey: str, shards: int):
        self.shard = shard_of(txkey, shards)
        self.key = f"{shard_tag(self.shard)}:tx:{txkey}".encode("utf-8", "surrogateescape")
        self.request: bytes | None = None
        self.request_doc: Any = None
        self.response: bytes | None = None
        self.response_doc: Any = None
        self.transport: TransportInfo | None = None
        self.transport_doc: Any = None
        self.timings: object = None
        self.timings_doc: Any = None

    def snapshot_json(self, snapshot: TransactionSnapshot) -> bytes:
        """Exactly ``snapshot.to_json()`` (tests compare them byte for byte, and the
        audit ingester reads it with ``TransactionSnapshot.from_json``), without
        encoding again what did not change since the previous version: the last
        response's encoding (every header line looked up among the request's) is
        most of ``to_json``'s cost, and a transaction sends at most a few
        responses over many versions. Mirrors ``snapshot._to_document`` (schema 3)."""
        if snapshot.schema_version != 3 or snapshot_format.SCHEMA_VERSION != 3:
            return snapshot.to_json()  # a schema this mirror does not know
        request = snapshot.request
        if request is not self.request:
            self.request, self.request_doc = request, snapshot_format._encode_text(request)
            self.response = None  # its encoding refers to the request's lines
        response = snapshot.last_response
        if response is None:
            response_doc = None
        elif response is self.response:
            response_doc = self.response_doc
        else:
            response_doc = snapshot_format._encode_response(response, request)
            self.response, self.response_doc = response, response_doc
        transport = snapshot.transport
        if transport is not self.transport:
            self.transport = transport
            self.transport_doc = [transport.protocol, transport.reliable, list(transport.local),
                                  list(transport.remote)]  # fmt: skip
        document: dict[str, Any] = {
            "schema": 3,
            "kind": snapshot.kind,
            "state": snapshot.state,
            "key": snapshot.key,
            "version": snapshot.version,
            "created": snapshot.created_at,
            "updated": snapshot.updated_at,
            "transport": self.transport_doc,
            "timers": {name: [deadline, interval] for name, deadline, interval in snapshot.timers},
            "request": self.request_doc,
            "response": response_doc,
        }
        timings = snapshot.timings
        if timings is not self.timings:
            self.timings = timings
            default = timings is DEFAULT_TIMINGS or timings == DEFAULT_TIMINGS
            self.timings_doc = None if default else dataclasses.asdict(timings)
        if self.timings_doc is not None:
            document["timings"] = self.timings_doc
        return orjson.dumps(document)


# --- scripts ---------------------------------------------------------------------

# One call per shard and pipeline: every transaction of the batch in that shard, in
# commit order, each fenced on its own (a refused one changes nothing; the others go on).
# KEYS: timers, live, audit of the shard, then one tx hash per write.
# ARGV: node, incarnation, audit maxlen, then three per write: meta, blob, snap.
# meta is "\n"-joined (no field holds a newline: keys and node ids are header text):
#   mode, epoch, version, deadline, ttl_ms, live score, end, txkey, kind, state, event, at, released
# mode "c": create at epoch 1 if the key does not exist (or is this incarnation's own
#           create, already applied); "w": write with the epoch held; "s": resync, as "w"
#           but a missing key is created again with the epoch held (Redis lost it).
# Returns one line per write, joined by newlines (one bulk reply parses far faster than
# nested arrays): "1 <epoch>" stored (or nothing new to store), or
# "0 <reason> <stored epoch> <owner>" refused.
COMMIT_LUA: Final = """
-- A record: "e\\nv\\no\\ni\\nr\\nd\\n" then the packed snapshot (binary, last).
local function read_record(key)
  local value = redis.call('GET', key)
  if not value then return nil end
  local f, pos = {}, 1
  for n = 1, 6 do
    local nl = string.find(value, '\\n', pos, true)
    if not nl then return redis.error_reply('corrupt transaction record ' .. key) end
    f[n] = string.sub(value, pos, nl - 1)
    pos = nl + 1
  end
  return {e = tonumber(f[1]), v = tonumber(f[2]), o = f[3], i = f[4], r = f[5], d = f[6],
          s = string.sub(value, pos)}
end
local function record(e, v, o, i, r, d, s)
  return e .. '\\n' .. v .. '\\n' .. o .. '\\n' .. i .. '\\n' .. r .. '\\n' .. d .. '\\n' .. s
end
local node, inc, maxlen = ARGV[1], ARGV[2], ARGV[3]
local timers, live, audit = KEYS[1], KEYS[2], KEYS[3]
local replies = {}
for w = 1, #KEYS - 3 do
  local key, base = KEYS[w + 3], 1 + 3 * w
  local m = {}
  for field in (ARGV[base] .. '\\n'):gmatch('(.-)\\n') do m[#m + 1] = field end
  local mode, epoch, version, deadline = m[1], tonumber(m[2]), tonumber(m[3]), m[4]
  local txkey, released = m[8], m[13]
  local cur = read_record(key)
  if cur and cur.err then return cur end
  local ce, co, ci, cv, cr = nil, nil, nil, nil, nil
  if cur then ce, co, ci, cv, cr = cur.e, cur.o, cur.i, cur.v, cur.r end
  local refused = nil
  if ce == nil then
    if mode == 'w' then refused = 'missing' end
    if mode == 'c' then epoch = 1 end
    cv = -1
  elseif mode == 'c' and not (co == node and ci == inc and ce == 1) then
    refused = 'exists'
  elseif ce ~= epoch or co ~= node or (cr and cr ~= '') then
    refused = 'fenced'
  end
  if refused then
    replies[w] = '0 ' .. refused .. ' ' .. (ce or 0) .. ' ' .. (co or '')
  elseif version <= cv then
    if released ~= '' then
      redis.call('SET', key, record(ce, cv, co, ci, released, cur.d, cur.s), 'KEEPTTL')
    end
    replies[w] = '1 ' .. epoch
  else
    redis.call('XADD', audit, 'MAXLEN', '~', maxlen, '*', 'k', txkey, 'v', m[3], 'e', epoch,
      'o', node, 'kind', m[9], 'st', m[10], 'ev', m[11], 'at', m[12], 'snap', ARGV[base + 2], 'end', m[7])
    if m[7] == '1' then
      redis.call('DEL', key)
      redis.call('ZREM', timers, txkey)
      redis.call('ZREM', live, txkey)
    else
      redis.call('SET', key, record(epoch, m[3], node, inc, released, deadline, ARGV[base + 1]), 'PX', m[5])
      if deadline ~= '' then
        redis.call('ZADD', timers, deadline, txkey)
      else
        redis.call('ZREM', timers, txkey)
      end
      redis.call('ZADD', live, m[6], txkey)
    end
    replies[w] = '1 ' .. epoch
  end
end
return table.concat(replies, '\\n')
"""

# KEYS: tx.  ARGV: node, incarnation, lease prefix of the shard.
# Takes the transaction when it was released to anyone or to this node, or when its
# owner's incarnation no longer holds its lease (expired, or the node started again).
# A transaction this incarnation already owns (and has not released) is returned as is.
# Returns {1, new epoch, blob} or {0, reason, owner, released}.
ADOPT_LUA: Final = """
-- A record: "e\\nv\\no\\ni\\nr\\nd\\n" then the packed snapshot (binary, last).
local function read_record(key)
  local value = redis.call('GET', key)
  if not value then return nil end
  local f, pos = {}, 1
  for n = 1, 6 do
    local nl = string.find(value, '\\n', pos, true)
    if not nl then return redis.error_reply('corrupt transaction record ' .. key) end
    f[n] = string.sub(value, pos, nl - 1)
    pos = nl + 1
  end
  return {e = tonumber(f[1]), v = tonumber(f[2]), o = f[3], i = f[4], r = f[5], d = f[6],
          s = string.sub(value, pos)}
end
local function record(e, v, o, i, r, d, s)
  return e .. '\\n' .. v .. '\\n' .. o .. '\\n' .. i .. '\\n' .. r .. '\\n' .. d .. '\\n' .. s
end
local cur = read_record(KEYS[1])
if not cur then return {0, 'missing', '', ''} end
if cur.err then return cur end
local owner, oinc, released = cur.o, cur.i, cur.r
if owner == ARGV[1] and oinc == ARGV[2] and released == '' then
  return {1, cur.e, cur.s}  -- already ours: this call ran before (a retried round trip)
end
local alive = redis.call('GET', ARGV[3] .. owner) == oinc
if not (released == '*' or released == ARGV[1] or not alive) then
  return {0, 'owned', owner, released}
end
local epoch = cur.e + 1
redis.call('SET', KEYS[1], record(epoch, cur.v, ARGV[1], ARGV[2], '', cur.d, cur.s), 'KEEPTTL')
return {1, epoch, cur.s}
"""


# --- data ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredTransaction:
    """What :meth:`RedisTransactionStore.load` reads back, for inspection."""

    txkey: str
    snapshot: TransactionSnapshot
    owner: str
    incarnation: str
    epoch: int
    version: int
    released: str  # "" not released, "*" to anyone, else the node it was handed over to
    next_deadline: float | None


class _Write(NamedTuple):
    """One queued write of the commit script, prepared in the loop turn that made it.
    (Immutable like a frozen dataclass, and built several times faster: one per
    transaction and commit.)"""

    tx: Transaction
    txkey: str
    shard: int
    key: bytes
    meta: bytes
    blob: bytes
    snap: bytes
    version: int
    terminated: bool


@dataclass(eq=False, slots=True)
class _Batch:
    """The writes of one commit call and the future its caller awaits."""

    writes: list[_Write]
    future: asyncio.Future[set[Transaction]]
    unheard: bool = False  # nobody awaits the future: refusals go to on_lost


# --- the store -------------------------------------------------------------------


class RedisTransactionStore:
    """The transactions of one node in Redis; see the module docstring.

    ``client`` is a ``redis.asyncio.Redis`` or ``RedisCluster`` returning bytes
    (``decode_responses=False``), ideally with short socket timeouts. Call
    methods from one event loop. ``commit`` fits the layer's ``TransactionStore``
    seam; run :meth:`run_leases` (or call :meth:`renew_lease` every second)
    for as long as the node serves.
    """

    def __init__(
        self,
        client: AsyncRedis,
        node_id: str,
        *,
        shards: int = DEFAULT_SHARDS,
        lease_ttl: float = LEASE_TTL,
        expire_grace: float = EXPIRE_GRACE,
        idle_ttl: float = IDLE_TTL,
        audit_maxlen: int = AUDIT_MAXLEN,
        timeout: float = COMMIT_TIMEOUT,
        lazy_rearm: bool = True,
        on_lost: Callable[[set[Transaction]], object] | None = None,
    ):
        if not node_id or any(ch in node_id for ch in "{}*\r\n") or len(node_id) > 200:
            raise ValueError(f"node id {node_id!r} must be 1-200 characters without braces, '*' or newlines")
        if not 1 <= shards <= 16384:
            raise ValueError(f"shards must be 1-16384, got {shards}")
        if not 0 < lease_ttl <= LEASE_TTL:
            raise ValueError(f"lease_ttl must be positive and at most {LEASE_TTL} s, got {lease_ttl}")
        self.client = client
        self.node_id = node_id
        self.incarnation = secrets.token_hex(8)
        self.shards = shards
        self.lease_ttl = lease_ttl
        self.expire_grace = expire_grace
        self.idle_ttl = idle_ttl
        self.audit_maxlen = audit_maxlen
        self.timeout = timeout
        self.lazy_rearm = lazy_rearm
        # Told of transactions refused where no commit caller hears it (a resync after an
        # outage): another node took them meanwhile; the node drops them and sends nothing.
        self.on_lost = on_lost
        self.durable = True
        # What this node holds: txkey -> epoch, the live transaction, the last snapshot queued.
        self._epochs: dict[str, int] = {}
        self._held: dict[str, Transaction] = {}
        self._stored: dict[str, TransactionSnapshot] = {}
        # txkey -> what stays the same across its versions (shard, key, encoded parts).
        self._places: dict[str, _Place] = {}
        # Changed while Redis was down (or in a failed pipeline): stored again by resync.
        self._unsynced: dict[str, Transaction] = {}
        self._queue: list[_Batch] = []
        self._writer: asyncio.Task[None] | None = None
        self._shas: dict[str, str] = {}
        self._last_renewal: float | None = None  # loop time of the last successful renewal
        self._lease_task: asyncio.Task[None] | None = None
        # txkey -> the live owner a refused adoption found (bounded, oldest out): where the
        # layer relays a message for a transaction another node holds.
        self.owners_seen: dict[str, str] = {}
        # Counters (the node's metrics read them).
        self.refused_total = 0
        self.skipped_rearms = 0
        self.pipelines = 0
        self.writes = 0

    # --- what this node holds ---

    def epoch_of(self, txkey: str) -> int | None:
        """The epoch this node holds for ``txkey`` (None: not held)."""
        return self._epochs.get(txkey)

    def held(self) -> list[Transaction]:
        """The live transactions this node holds, as it knows them."""
        return list(self._held.values())

    def forget(self, txkey: str) -> None:
        """Stop tracking ``txkey`` locally (the layer dropped it); Redis is not touched."""
        self._epochs.pop(txkey, None)
        self._held.pop(txkey, None)
        self._stored.pop(txkey, None)
        self._unsynced.pop(txkey, None)
        self._places.pop(txkey, None)

    # --- commit ---

    def commit(self, changed: Sequence[Transaction], now: float) -> Awaitable[set[Transaction]]:
        """Store ``changed`` (one loop turn's changes); resolves to the ones refused.

        The snapshots are taken now, in the caller's turn; the write goes in the
        next pipeline. A refused transaction is fenced (another node holds it):
        the caller drops it and sends nothing for it.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[set[Transaction]] = loop.create_future()
        if not self.durable:
            for tx in changed:
                self._remember(tx)
            future.set_result(set())
            return future
        writes = [write for tx in changed if (write := self._prepare(tx, now)) is not None]
        if not writes:
            future.set_result(set())
            return future
        self._enqueue(_Batch(writes, future))
        return future

    def _remember(self, tx: Transaction) -> None:
        """Redis is down: note the change for resync, store nothing."""
        txkey = str(tx.key)
        self._epochs.setdefault(txkey, 1)
        if tx.terminated:
            self._held.pop(txkey, None)
        else:
            self._held[txkey] = tx
        self._unsynced[txkey] = tx

    def _prepare(
        self, tx: Transaction, now: float, *, released: str = "", resync: bool = False
    ) -> _Write | None:
        txkey = str(tx.key)
        epoch = self._epochs.get(txkey)
        if epoch is None:
            mode, epoch = "c", 1
            self._epochs[txkey] = 1
        elif resync or txkey in self._unsynced:
            mode = "s"
        else:
            mode = "w"
        stored = self._stored.get(txkey)
        if mode == "w" and not released and stored is not None and stored.version == tx.version:
            return None  # nothing changed since the last write (no snapshot taken)
        snapshot = tx.snapshot()
        terminated = tx.terminated
        lazy = self.lazy_rearm and mode == "w" and not released and not terminated
        if lazy and stored is not None and _only_rearmed(stored, snapshot):
            self.skipped_rearms += 1
            return None
        if terminated:
            self._held.pop(txkey, None)
            self._stored.pop(txkey, None)
        else:
            self._held[txkey] = tx
            self._stored[txkey] = snapshot
        if snapshot.timers:  # the next deadline (snapshot.next_deadline()) and the last one
            deadlines = [timer[1] for timer in snapshot.timers]
            deadline: float | None = min(deadlines)
            ttl = max(max(deadlines) - now, 0.0) + self.expire_grace
        else:
            deadline, ttl = None, self.idle_ttl
        place = self._places.get(txkey)
        if place is None:
            place = self._places[txkey] = _Place(txkey, self.shards)
        if terminated:
            del self._places[txkey]
        snap_json = place.snapshot_json(snapshot)
        # The fields COMMIT_LUA reads, in its order (floats as repr: they round-trip).
        meta = (
            f"{mode}\n{epoch}\n{snapshot.version}\n{'' if deadline is None else repr(deadline)}\n"
            f"{max(1, int(ttl * 1000))}\n{now + ttl!r}\n{'1' if terminated else '0'}\n{txkey}\n"
            f"{snapshot.kind}\n{snapshot.state}\n{getattr(tx, 'last_event', '') or ''}\n{now!r}\n{released}"
        )
        blob = b"" if terminated else pack_snapshot(snap_json)
        return _Write(
            tx, txkey, place.shard, place.key, meta.encode("utf-8", "surrogateescape"), blob, snap_json,
            snapshot.version, terminated,
        )  # fmt: skip

    def _enqueue(self, batch: _Batch) -> None:
        self._queue.append(batch)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        """One pipeline at a time; what queued meanwhile goes together in the next."""
        while self._queue:
            batches, self._queue = self._queue, []
            if not self.durable:
                self._resolve_down(batches)
                continue
            writes = [write for batch in batches for write in batch.writes]
            try:
                results = await asyncio.wait_for(self._run_writes(writes), self.timeout)
                refused_by_write = self._apply_results(writes, results)
            except _DOWN as exc:
                self._went_down(exc)
                self._resolve_down(batches)
                continue
            except BaseException as exc:  # a bug, or cancellation: callers must not hang
                for batch in batches:
                    if not batch.future.done():
                        batch.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                log.exception("the transaction store failed to write %d transactions", len(writes))
                continue
            for batch in batches:
                refused = {w.tx for w in batch.writes if id(w) in refused_by_write}
                if not batch.future.done():
                    batch.future.set_result(refused)
                if batch.unheard and refused:
                    self._lost(refused)

    def _resolve_down(self, batches: list[_Batch]) -> None:
        for batch in batches:
            for write in batch.writes:
                self._remember(write.tx)
            if not batch.future.done():
                batch.future.set_result(set())

    def _apply_results(self, writes: list[_Write], results: list[Any]) -> set[int]:
        refused: set[int] = set()
        for write, result in zip(writes, results, strict=True):
            if result[0] == b"1":
                unsynced = self._unsynced.get(write.txkey)
                if unsynced is write.tx and (write.terminated or write.tx.version == write.version):
                    del self._unsynced[write.txkey]  # stored as it is now
                if write.terminated and write.txkey not in self._held:
                    self._epochs.pop(write.txkey, None)
                continue
            refused.add(id(write))
            self.refused_total += 1
            reason = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
            log.info(
                "sip transaction write refused",
                extra={"event": "sip_store_refused", "txkey": write.txkey, "reason": reason},
            )
            self.forget(write.txkey)
        self.pipelines += 1
        self.writes += len(writes)
        return refused

    async def _run_writes(self, writes: list[_Write]) -> list[Any]:
        """One EVALSHA per shard touched, all in one pipeline; one reply per write."""
        by_shard: dict[int, list[int]] = {}
        for index, write in enumerate(writes):
            by_shard.setdefault(write.shard, []).append(index)
        sha = await self._sha("commit", COMMIT_LUA)
        results: list[Any] = [None] * len(writes)
        pending = list(by_shard.items())
        head = (self.node_id, self.incarnation, self.audit_maxlen)
        for attempt in range(2):
            calls: list[tuple[Any, ...]] = []
            for shard, indexes in pending:
                shard_keys = _shard_keys(shard)
                call: list[Any] = ["EVALSHA", sha, 3 + len(indexes), *shard_keys]
                call += [writes[index].key for index in indexes]
                call += head
                for index in indexes:
                    write = writes[index]
                    call += (write.meta, write.blob, write.snap)
                calls.append(tuple(call))
            out = await self._send(calls)
            missing = []
            for (shard, indexes), reply in zip(pending, out, strict=True):
                if isinstance(reply, redis.exceptions.NoScriptError) and attempt == 0:
                    # Redis restarted (or a new cluster node): the script did not run.
                    missing.append((shard, indexes))
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    for index, line in zip(indexes, reply.split(b"\n"), strict=True):
                        results[index] = line.split(b" ", 3)
            if not missing:
                break
            sha = await self._sha("commit", COMMIT_LUA, reload=True)
            pending = missing
        return results

    async def _send(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        """Run raw commands as one pipeline (no MULTI); replies in order, errors as values.

        On a single Redis the commands are packed by hiredis (C) and written on one
        pooled connection, then the replies are read: redis-py's pipeline costs
        several times more CPU per command (its Python packer, per-command
        bookkeeping and hooks), which the commit path pays for every shard of every
        pipeline. A cluster client goes through its own pipeline, which routes each
        EVALSHA by its keys (its evalsha() helper is blocked in pipelines).
        """
        if not isinstance(self.client, aioredis.Redis):
            return await self._pipeline([("execute_command", call, {}) for call in calls])
        packed = b"".join([hiredis.pack_command(call) for call in calls])
        pool = self.client.connection_pool
        for attempt in range(2):
            try:
                conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            except redis.exceptions.ConnectionError:
                if attempt:
                    raise
                continue
            try:
                await conn.send_packed_command(packed)
                replies: list[Any] = []
                for _ in calls:
                    try:
                        # No per-reply timer: the caller's wait_for bounds the whole
                        # round trip, and a timeout there disconnects (below).
                        replies.append(await conn.read_response(timeout=math.inf))
                    except redis.exceptions.ResponseError as exc:  # this command's error, as a value
                        replies.append(exc)
                return replies
            except redis.exceptions.ConnectionError:
                # A stale pooled connection (see _pipeline): retried once on a fresh one.
                await conn.disconnect()
                if attempt:
                    raise
            except BaseException:
                # Timed out or cancelled mid-reply: the connection holds unread replies.
                await conn.disconnect(nowait=True)
                raise
            finally:
                await pool.release(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pipeline(self, commands: Sequence[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """Run ``commands`` as one pipeline (no MULTI); replies in order, errors as values.

        A connection error is retried once on a fresh connection: after Redis
        restarts, the first use of each pooled connection fails although Redis
        answers. Every write script is idempotent (a version already stored is
        not written again, a create already applied is this incarnation's own),
        so running a pipeline twice stores the same thing as running it once.
        """
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for name, args, options in commands:
                getattr(pipe, name)(*args, **options)
            try:
                return list(await pipe.execute(raise_on_error=False))
            except redis.exceptions.ConnectionError:
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _sha(self, name: str, source: str, *, reload: bool = False) -> str:
        sha = self._shas.get(name)
        if sha is None or reload:
            loaded: Any = await self.client.script_load(source)  # a cluster client: on every primary
            sha = loaded.decode() if isinstance(loaded, bytes) else str(loaded)
            self._shas[name] = sha
        return sha

    async def _eval(self, name: str, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        sha = await self._sha(name, source)
        for attempt in range(2):
            try:
                return await self.client.evalsha(sha, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                sha = await self._sha(name, source, reload=True)
            except redis.exceptions.ConnectionError:  # a stale pooled connection: see _pipeline
                if attempt:
                    raise
        return await self.client.evalsha(sha, len(keys), *keys, *args)

    def _went_down(self, exc: BaseException) -> None:
        if self.durable:
            log.warning(
                "the transaction store is not durable: %s",
                exc or type(exc).__name__,
                extra={"event": "sip_store_down"},
            )
        self.durable = False

    # --- adoption, release, hand-over ---

    async def adopt(self, txkey: str, transport_info: TransportInfo | None, now: float) -> Transaction | None:
        """Take over ``txkey`` if its owner released it (to anyone or to this node) or
        is dead; None if a live owner holds it, it does not exist, or Redis is down.

        Atomic (one script): the epoch goes up by one, so the previous owner's
        writes are refused from now on. The transaction is restored with this
        node's ``transport_info`` and its timers that fell due while it was
        stored fire, each once (``handle_timer(now)``). What that queued is not
        sent yet: the caller commits the transaction first (store before send).
        """
        shard = shard_of(txkey, self.shards)
        key = f"{shard_tag(shard)}:tx:{txkey}"
        try:
            result = await asyncio.wait_for(
                self._eval("adopt", ADOPT_LUA, (key,), (self.node_id, self.incarnation, lease_prefix(shard))),
                self.timeout,
            )
        except _DOWN as exc:
            self._went_down(exc)
            return None
        if int(result[0]) != 1:
            if result[1] in (b"owned", "owned"):  # {0, 'owned', owner, released}
                owner = result[2].decode() if isinstance(result[2], bytes) else str(result[2])
                self.owners_seen[txkey] = owner
                while len(self.owners_seen) > OWNERS_SEEN:
                    del self.owners_seen[next(iter(self.owners_seen))]
            return None
        self.owners_seen.pop(txkey, None)
        epoch, blob = int(result[1]), result[2]
        self._epochs[txkey] = epoch
        try:
            snapshot = TransactionSnapshot.from_json(unpack_snapshot(blob))
            tx = restore_transaction(snapshot, transport_info)
        except ValueError:
            self.forget(txkey)
            raise
        self._held[txkey] = tx
        self._stored[txkey] = snapshot
        self._unsynced.pop(txkey, None)
        tx.handle_timer(now)
        return tx

    async def release(self, txs: Iterable[Transaction], now: float, *, to: str = "*") -> set[Transaction]:
        """Store each transaction's latest state and release it (to anyone, or to the
        node ``to``), keeping its epoch; returns the refused ones. This node stops
        holding them: it must not act on them any more (graceful stop, migration).
        StoreUnavailableError if Redis is down: nothing was released, it still holds them.
        """
        if to != "*" and (not to or any(ch in to for ch in "{}*\r\n")):
            raise ValueError(f"cannot release to node id {to!r}")
        txs = list(txs)
        if not self.durable:
            raise StoreUnavailableError("Redis is down: nothing can be released")
        writes = [w for tx in txs if (w := self._prepare(tx, now, released=to)) is not None]
        if not writes:
            return set()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[set[Transaction]] = loop.create_future()
        self._enqueue(_Batch(writes, future))
        refused = await future
        if not self.durable:
            raise StoreUnavailableError("Redis went down while releasing")
        for tx in txs:
            self.forget(str(tx.key))
        return refused

    async def hand_over(self, txkey: str, target_node: str, now: float) -> bool:
        """Release the held transaction ``txkey`` to ``target_node`` only: while this
        node's lease lives, only the target may adopt it (if this node dies,
        anyone may). False if this node does not hold it or the write was refused;
        StoreUnavailableError if Redis is down (this node still holds it)."""
        tx = self._held.get(txkey)
        if tx is None:
            return False
        refused = await self.release([tx], now, to=target_node)
        return not refused

    async def resync(self, live_transactions: Iterable[Transaction] | None = None) -> set[Transaction]:
        """Store again every live transaction (default: all this node holds, and
        what terminated while Redis was down); a key Redis lost is created again
        with the epoch held. Returns the refused ones (another node took them
        meanwhile: drop them). Marks the store durable when it succeeds."""
        now = _wall_clock()
        txs: dict[str, Transaction] = dict(self._unsynced)
        for tx in self._held.values() if live_transactions is None else live_transactions:
            txs[str(tx.key)] = tx
        writes = [w for tx in txs.values() if (w := self._prepare(tx, now, resync=True)) is not None]
        try:
            results = await asyncio.wait_for(self._run_writes(writes), max(self.timeout, 5.0))
        except _DOWN as exc:
            self._went_down(exc)
            raise StoreUnavailableError(f"resync failed: {exc}") from exc
        refused_ids = self._apply_results(writes, results)
        self.durable = True
        log.info("the transaction store is durable again", extra={"event": "sip_store_up"})
        # What changed while this resync was on its way goes in the next pipeline.
        later = [w for tx in list(self._unsynced.values()) if (w := self._prepare(tx, now, resync=True))]
        if later:
            self._enqueue(_Batch(later, asyncio.get_running_loop().create_future(), unheard=True))
        return {w.tx for w in writes if id(w) in refused_ids}

    def _lost(self, refused: set[Transaction]) -> None:
        log.warning(
            "%d transactions were taken by other nodes while Redis was away",
            len(refused),
            extra={"event": "sip_store_lost"},
        )
        if self.on_lost is not None:
            self.on_lost(refused)

    # --- leases ---

    async def renew_lease(self) -> bool:
        """Renew this node's lease in every shard (one pipeline). On the way back
        from an outage, or when a lease vanished before its TTL (Redis lost its
        data), store everything again. Returns whether the store is durable."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        ttl_ms = int(self.lease_ttl * 1000)
        try:
            previous = await asyncio.wait_for(
                self._pipeline(
                    [
                        (
                            "set",
                            (lease_key(shard, self.node_id), self.incarnation),
                            {"px": ttl_ms, "get": True},
                        )
                        for shard in range(self.shards)
                    ]
                ),
                self.timeout,
            )
            for value in previous:
                if isinstance(value, Exception):
                    raise value
        except _DOWN as exc:
            self._went_down(exc)
            return False
        fresh = self._last_renewal is not None and started - self._last_renewal < self.lease_ttl * 0.8
        self._last_renewal = started
        mine = self.incarnation.encode()
        if fresh and any(value not in (None, mine) for value in previous):
            log.warning(
                "another process renews the lease of node %s",
                self.node_id,
                extra={"event": "sip_lease_clash"},
            )
        lost = fresh and any(value is None for value in previous)
        if lost and self.durable:
            log.warning("Redis lost this node's leases: storing everything again")
            for tx in self._held.values():
                self._unsynced[str(tx.key)] = tx
        if not self.durable or lost:
            self.durable = False  # commits only remember until resync has stored everything
            try:
                refused = await self.resync()
            except StoreUnavailableError:
                return False
            if refused:
                self._lost(refused)
        return True

    async def run_leases(self, interval: float = LEASE_INTERVAL) -> None:
        """Renew the lease every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.renew_lease()
            except Exception:  # a bug must not stop the renewals (the node would lose everything)
                log.exception("renewing the lease of node %s failed", self.node_id)
            await asyncio.sleep(interval)

    def start_leases(self, interval: float = LEASE_INTERVAL) -> asyncio.Task[None]:
        if self._lease_task is None or self._lease_task.done():
            self._lease_task = asyncio.get_running_loop().create_task(self.run_leases(interval))
        return self._lease_task

    async def drop_leases(self) -> None:
        """Stop renewing and delete this node's leases (a graceful stop: whatever it did
        not release becomes adoptable at once, not after the TTL)."""
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
            self._lease_task = None
        with contextlib.suppress(redis.exceptions.RedisError, OSError, TimeoutError):
            await asyncio.wait_for(
                self._pipeline(
                    [("delete", (lease_key(shard, self.node_id),), {}) for shard in range(self.shards)]
                ),
                self.timeout,
            )

    async def flush(self) -> None:
        """Wait until every queued write has been sent."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    # --- inspection ---

    async def load(self, txkey: str) -> StoredTransaction | None:
        """The stored record of ``txkey``, or None."""
        value: Any = await self.client.get(tx_key(txkey, self.shards))  # bytes replies
        if value is None:
            return None
        try:
            header, blob = split_record(value)
            snapshot = TransactionSnapshot.from_json(unpack_snapshot(blob))
            return StoredTransaction(
                txkey=txkey,
                snapshot=snapshot,
                owner=header["o"],
                incarnation=header["i"],
                epoch=int(header["e"]),
                version=int(header["v"]),
                released=header["r"],
                next_deadline=float(header["d"]) if header["d"] else None,
            )
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise CorruptRecordError(f"stored transaction {txkey!r} cannot be read: {exc}") from None

    async def live_keys(self, shard: int, now: float | None = None) -> list[str]:
        """The keys of the transactions stored in ``shard`` (their hash has not expired)."""
        now = _wall_clock() if now is None else now
        _, members = await self._pipeline(
            [
                ("zremrangebyscore", (live_key(shard), "-inf", f"({now!r}"), {}),
                ("zrange", (live_key(shard), 0, -1), {}),
            ]
        )
        return [member.decode("utf-8", "surrogateescape") for member in members]

    async def owned_by(self, node_id: str, now: float | None = None) -> list[str]:
        """The keys of the stored transactions whose owner is ``node_id`` (released or
        not), over every shard: two round trips, O(stored transactions)."""
        now = _wall_clock() if now is None else now
        replies = await self._pipeline(
            [("zrangebyscore", (live_key(shard), f"({now!r}", "+inf"), {}) for shard in range(self.shards)]
        )
        keys = [m.decode("utf-8", "surrogateescape") for members in _checked(replies) for m in members]
        if not keys:
            return []
        owners = _checked(
            await self._pipeline(
                [("getrange", (tx_key(txkey, self.shards), 0, _HEADER_MAX), {}) for txkey in keys]
            )
        )
        wanted = node_id.encode()
        return [
            txkey
            for txkey, head in zip(keys, owners, strict=True)
            if head and head.split(b"\n", 3)[2:3] == [wanted]  # e, v, then the owner
        ]


def _only_rearmed(stored: TransactionSnapshot, new: TransactionSnapshot) -> bool:
    """True when ``new`` differs from ``stored`` only by retransmission timers that
    fired and were re-armed later (see "Lazy re-arm" in the module docstring)."""
    if (
        new.state != stored.state
        or new.last_response != stored.last_response
        or new.request != stored.request
        or new.transport != stored.transport
        or len(new.timers) != len(stored.timers)
    ):
        return False
    rearmed = False
    for (name, deadline, interval), (old_name, old_deadline, old_interval) in zip(
        new.timers, stored.timers, strict=True
    ):
        if name != old_name:
            return False
        if (deadline, interval) == (old_deadline, old_interval):
            continue
        if name not in REARM_TIMERS or deadline <= old_deadline:
            return False
        rearmed = True
    return rearmed


# The stored record's header lines, in order; the packed snapshot follows the last one.
RECORD_FIELDS: Final = ("e", "v", "o", "i", "r", "d")
_HEADER_MAX: Final = 511  # bytes: numbers, two node ids (<= 200 each), a token, a deadline


def split_record(value: bytes) -> tuple[dict[str, str], bytes]:
    """A stored record's header fields (``RECORD_FIELDS``) and its packed snapshot."""
    parts = value.split(b"\n", len(RECORD_FIELDS))
    if len(parts) != len(RECORD_FIELDS) + 1:
        raise ValueError("the record has fewer header lines than RECORD_FIELDS")
    header = {name: part.decode() for name, part in zip(RECORD_FIELDS, parts, strict=False)}
    return header, parts[-1]


def _checked(replies: list[Any]) -> list[Any]:
    """Replies of a pipeline run with errors as values: raise the first error."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _wall_clock() -> float:
    import time

    return time.time()


def default_client(url: str, *, cluster: bool = False, timeout: float = COMMIT_TIMEOUT) -> AsyncRedis:
    """An asyncio client for the store: bytes replies and short timeouts, so a Redis
    that is down is noticed within ``timeout`` (redis-py uses hiredis when installed)."""
    if cluster:
        return RedisCluster.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


__all__ = [
    "AUDIT_FIELDS",
    "CorruptRecordError",
    "RedisTransactionStore",
    "StoreError",
    "StoreUnavailableError",
    "StoredTransaction",
    "audit_key",
    "default_client",
    "lease_key",
    "live_key",
    "pack_snapshot",
    "shard_of",
    "timers_key",
    "tx_key",
    "unpack_snapshot",
]
