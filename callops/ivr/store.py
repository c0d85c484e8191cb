"""The call-state store: one Redis key per call, ``call_state:<CallSid>``.

* The value is the versioned JSON of :mod:`callops.ivr.schema`; its time to live
  depends on the stage (quick inputs 5 min, decisions 10, execution 30, else 1 h)
  and is set again by every write.
* Writes are compare-and-set on the value's ``version`` counter, in one Lua
  script, so a read-modify-write by one webhook cannot overwrite another's.
  The same script can record the TwiML answer to a Twilio request under that
  request's idempotency token, atomically with the state it produced: a retry
  of the request then finds the answer instead of applying its input twice.
* Older schema versions are migrated on read (and in bulk by ``migrate_all``,
  the ``migrate_call_states`` command).

Every operation is timed and counted in :mod:`callops.ivr.metrics`; Redis
errors are counted and re-raised for the caller to turn into an apology.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

from callops.ivr import metrics
from callops.ivr.machine import CallState, Stage
from callops.ivr.schema import ABSENT, Decoded, UndecodableState, decode, encode, guard_of
from callops.redis import get_redis

logger = logging.getLogger(__name__)

KEY_PREFIX = "call_state:"

# Seconds a call's state lives after its last write, by stage (issue #5).
TTL_BY_STAGE: dict[Stage, int] = {
    Stage.COLLECT_CLIENT_ID: 300,
    Stage.COLLECT_JOB_NUMBER: 300,
    Stage.CONFIRM_JOB: 600,
    Stage.ASK_ACTION: 600,
    Stage.EXECUTE_ACTION: 1800,
}
DEFAULT_TTL = 3600
# How long a closed call's marker outlives the close: longer than any webhook of it can
# still be under way (a state's longest TTL).
CLOSED_TTL = DEFAULT_TTL


def ttl_for(stage: Stage) -> int:
    return TTL_BY_STAGE.get(stage, DEFAULT_TTL)


def state_key(call_sid: str) -> str:
    """``call_state:CA…`` (the key the design names)."""
    return f"{KEY_PREFIX}{call_sid}"


def replay_key(call_sid: str, token: str) -> str:
    """``{call_state:CA…}:replay:<digest>``. Redis Cluster hashes a key without braces
    whole and a key with a ``{hash tag}`` by the tag alone, so this key and the call's
    state key land in one slot and one Lua script may touch both.

    The token is Twilio's opaque string; hashed, it is a safe, bounded key part."""
    return replay_key_for_digest(call_sid, token_digest(token))


def closed_key(call_sid: str) -> str:
    """``{call_state:CA…}:closed``: set when the call is closed; no copy is written after it."""
    return f"{{{state_key(call_sid)}}}:closed"


def token_digest(token: str) -> str:
    """A request's idempotency token as stored: in its replay key and in its audit row."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def replay_key_for_digest(call_sid: str, digest: str) -> str:
    return f"{{{state_key(call_sid)}}}:replay:{digest}"


# The guard computation here must stay identical to schema.guard_of().
_GUARD_LUA = """
local function guard_of(raw)
  if not raw then return 'absent' end
  local ok, doc = pcall(cjson.decode, raw)
  if not ok or type(doc) ~= 'table' then return 'corrupt' end
  local v = doc['version']
  if type(v) ~= 'number' or v < 0 or v >= 9007199254740992 or v ~= math.floor(v) then
    return 'corrupt'
  end
  return string.format('%d', v)
end
"""

# KEYS[1] the state; KEYS[2] (optional) the replay key of the request making this write.
# ARGV: expected guard, new value, TTL seconds or "keep", [response to remember, its TTL].
CAS_SCRIPT = (
    _GUARD_LUA
    + """
if #KEYS > 1 then
  local answered = redis.call('GET', KEYS[2])
  if answered then return {'replay', answered} end
end
local found = guard_of(redis.call('GET', KEYS[1]))
if found ~= ARGV[1] then return {'conflict', found} end
if ARGV[3] == 'keep' then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
if #KEYS > 1 then redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5]) end
return {'ok', found}
"""
)

# The copy of a change the database has committed (see callops.ivr.service: the audit
# row is the commit point). The replay is always remembered; the state replaces what is
# stored unless the call was closed meanwhile, or what is stored is already newer: a
# number above ``version`` that is not the one this change was computed from. Absent
# and corrupt values are replaced.
# KEYS[1] the state, KEYS[2] its closed marker, KEYS[3] (optional) the replay key.
# ARGV: version, guard the change was computed from, value, TTL, [response, its TTL].
WRITE_COMMITTED_SCRIPT = (
    _GUARD_LUA
    + """
if #KEYS > 2 then redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[6]) end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'closed', ''} end
local found = guard_of(redis.call('GET', KEYS[1]))
if found ~= ARGV[2] and found ~= 'absent' and found ~= 'corrupt'
   and tonumber(found) >= tonumber(ARGV[1]) then
  return {'newer', found}
end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
return {'ok', found}
"""
)

# Repair from the audit trail: the state as its latest row recorded it, if the stored
# guard is still the one the repair read, with the answers of the rows Redis missed.
# KEYS[1] the state, KEYS[2] its closed marker, KEYS[3..] replay keys; ARGV: expected
# guard, value, TTL, replay TTL, then one response per replay key.
RESTORE_SCRIPT = (
    _GUARD_LUA
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return {'closed', ''} end
local found = guard_of(redis.call('GET', KEYS[1]))
if found ~= ARGV[1] then return {'conflict', found} end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 2], 'EX', ARGV[4]) end
return {'ok', found}
"""
)

# Closing a call (after its final audit row is committed): mark it closed, so that a
# webhook copying its own earlier commit afterwards writes nothing, and delete the copy.
# Each side acts atomically in Redis, so whichever comes second sees the other.
# KEYS[1] the state, KEYS[2] its closed marker; ARGV: the marker's TTL.
CLOSE_SCRIPT = """
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
return redis.call('DEL', KEYS[1])
"""

CAS_DELETE_SCRIPT = (
    _GUARD_LUA
    + """
local found = guard_of(redis.call('GET', KEYS[1]))
if found ~= ARGV[1] then return {'conflict', found} end
redis.call('DEL', KEYS[1])
return {'ok', found}
"""
)

# Adds ARGV[1] milliseconds to the remaining time to live, only if the key has one:
# -2 when the key is missing, -1 when it has no TTL (someone PERSISTed it on purpose).
EXTEND_TTL_SCRIPT = """
local remaining = redis.call('PTTL', KEYS[1])
if remaining == -2 then return -2 end
if remaining < 0 then return -1 end
local extended = remaining + tonumber(ARGV[1])
redis.call('PEXPIRE', KEYS[1], extended)
return extended
"""


class StateConflict(RuntimeError):
    """The state kept changing under a read-modify-write; it gave up after its retries."""


@dataclass(frozen=True)
class Snapshot:
    """What a read found under ``call_state:{CallSid}``."""

    call_sid: str
    raw: bytes | None
    guard: str  # what a compare-and-set must expect to replace it
    decoded: Decoded | None = None
    error: str = ""  # why the value could not be decoded

    @property
    def corrupt(self) -> bool:
        return self.raw is not None and self.decoded is None


@dataclass(frozen=True)
class Replay:
    """The answer to remember for one Twilio request (its idempotency token)."""

    token: str
    response: bytes
    ttl: int


@dataclass(frozen=True)
class CasResult:
    outcome: str  # "ok", "conflict", or "replay" (the request was answered already)
    found_guard: str = ""
    replayed: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass
class MigrationReport:
    scanned: int = 0
    current: int = 0
    migrated: dict[int, int] = field(default_factory=dict)  # schema version read -> count
    corrupt: list[str] = field(default_factory=list)  # call sids
    changed_meanwhile: int = 0  # rewritten by a webhook between our read and write
    vanished: int = 0  # expired or deleted between the scan and the read


@contextmanager
def _operation(name: str) -> Iterator[dict[str, str]]:
    with metrics.timed_state_operation(name) as labels:
        try:
            yield labels
        except redis.RedisError:
            metrics.REDIS_FAILURES.labels(name).inc()
            raise


class CallStateStore:
    def __init__(self, client: redis.Redis):
        self.client = client
        self._cas = client.register_script(CAS_SCRIPT)
        self._cas_delete = client.register_script(CAS_DELETE_SCRIPT)
        self._extend = client.register_script(EXTEND_TTL_SCRIPT)
        self._write_committed = client.register_script(WRITE_COMMITTED_SCRIPT)
        self._restore = client.register_script(RESTORE_SCRIPT)
        self._close = client.register_script(CLOSE_SCRIPT)

    # --- reads ---------------------------------------------------------------------------

    def read(self, call_sid: str, replay_token: str = "") -> tuple[Snapshot, bytes | None]:
        """The call's state (decoded, or marked corrupt) and, given a token, its remembered answer.

        One round trip. Never raises for a bad value: ``Snapshot.error`` says what is wrong.
        """
        keys = [state_key(call_sid)]
        if replay_token:
            keys.append(replay_key(call_sid, replay_token))
        with _operation("get") as labels:
            values = self.client.mget(keys)
            raw = values[0]
            snapshot = self._snapshot(call_sid, raw)
            labels["outcome"] = "miss" if raw is None else "corrupt" if snapshot.corrupt else "ok"
        return snapshot, (values[1] if replay_token else None)

    def _snapshot(self, call_sid: str, raw: bytes | None) -> Snapshot:
        if raw is None:
            return Snapshot(call_sid, None, ABSENT)
        try:
            decoded = decode(raw)
        except UndecodableState as exc:
            return Snapshot(call_sid, raw, guard_of(raw), error=str(exc))
        if decoded.migrated:
            metrics.STATE_MIGRATED.labels(str(decoded.read_schema_version)).inc()
        return Snapshot(call_sid, raw, str(decoded.version), decoded)

    def get(self, call_sid: str) -> Decoded | None:
        """The decoded state, None if there is none; UndecodableState if it cannot be read."""
        snapshot, _ = self.read(call_sid)
        if snapshot.corrupt:
            raise UndecodableState(f"{state_key(call_sid)}: {snapshot.error}")
        return snapshot.decoded

    def ttl(self, call_sid: str) -> float | None:
        """Seconds left, None when the key is missing, -1.0 when it has no TTL."""
        remaining = self.client.pttl(state_key(call_sid))
        if remaining == -2:
            return None
        return -1.0 if remaining == -1 else remaining / 1000

    # --- writes --------------------------------------------------------------------------

    def save(self, state: CallState, version: int) -> None:
        """Unconditional write (no compare-and-set): for tools and tests that own the call."""
        with _operation("save"):
            self.client.set(state_key(state.call_sid), encode(state, version), ex=ttl_for(state.stage))

    def compare_and_set(
        self, state: CallState, version: int, *, expected: str, replay: Replay | None = None
    ) -> CasResult:
        """Write ``state`` as ``version`` if the stored guard is still ``expected``.

        With ``replay``, also remember the request's answer, unless that request
        was answered already (then its answer comes back and nothing is written).
        """
        return self._compare_and_set(
            state.call_sid, expected, encode(state, version), ttl_for(state.stage), replay
        )

    def _compare_and_set(
        self, call_sid: str, expected: str, value: bytes, ttl: int | str, replay: Replay | None
    ) -> CasResult:
        keys = [state_key(call_sid)]
        args: list[str | bytes | int] = [expected, value, ttl]
        if replay is not None:
            keys.append(replay_key(call_sid, replay.token))
            args += [replay.response, replay.ttl]
        with _operation("cas") as labels:
            outcome, found = self._cas(keys=keys, args=args)
            labels["outcome"] = outcome.decode()
        if outcome == b"replay":
            return CasResult("replay", replayed=found)
        return CasResult(outcome.decode(), found.decode())

    def write_committed(
        self, state: CallState, version: int, *, computed_from: str, replay: Replay | None = None
    ) -> CasResult:
        """Copy a committed change (``version``) to Redis, with its answer for replays.

        Outcome "newer" when Redis already holds a later version (the change is in
        it, or a repair will bring it), "closed" when the call was closed meanwhile:
        nothing written but the replay.
        """
        keys = [state_key(state.call_sid), closed_key(state.call_sid)]
        args: list[str | bytes | int] = [version, computed_from, encode(state, version), ttl_for(state.stage)]
        if replay is not None:
            keys.append(replay_key(state.call_sid, replay.token))
            args += [replay.response, replay.ttl]
        with _operation("write") as labels:
            outcome, found = self._write_committed(keys=keys, args=args)
            labels["outcome"] = outcome.decode()
        return CasResult(outcome.decode(), found.decode())

    def restore(
        self,
        state: CallState,
        version: int,
        *,
        expected: str,
        replays: Mapping[str, bytes] | None = None,
        replay_ttl: int = 0,
    ) -> CasResult:
        """Replace the stored value (if its guard is still ``expected``) by ``state`` at
        ``version``, remembering ``replays`` (token digest -> answer). Refused ("closed")
        once the call is closed."""
        keys = [state_key(state.call_sid), closed_key(state.call_sid)]
        args: list[str | bytes | int] = [expected, encode(state, version), ttl_for(state.stage), replay_ttl]
        for digest, response in (replays or {}).items():
            keys.append(replay_key_for_digest(state.call_sid, digest))
            args.append(response)
        with _operation("restore") as labels:
            outcome, found = self._restore(keys=keys, args=args)
            labels["outcome"] = outcome.decode()
        return CasResult(outcome.decode(), found.decode())

    def close(self, call_sid: str) -> bool:
        """The call is over: no copy of its state from now on. True if one was deleted."""
        with _operation("delete") as labels:
            deleted = bool(self._close(keys=[state_key(call_sid), closed_key(call_sid)], args=[CLOSED_TTL]))
            labels["outcome"] = "ok" if deleted else "miss"
        return deleted

    def compare_and_delete(self, call_sid: str, *, expected: str) -> CasResult:
        with _operation("delete") as labels:
            outcome, found = self._cas_delete(keys=[state_key(call_sid)], args=[expected])
            labels["outcome"] = outcome.decode()
        return CasResult(outcome.decode(), found.decode())

    def delete(self, call_sid: str) -> bool:
        with _operation("delete") as labels:
            deleted = bool(self.client.delete(state_key(call_sid)))
            labels["outcome"] = "ok" if deleted else "miss"
        return deleted

    def extend_ttl(self, call_sid: str, seconds: float) -> float | None:
        """Add ``seconds`` to the state's remaining TTL; None (nothing done) unless it has one."""
        with _operation("extend") as labels:
            result = int(self._extend(keys=[state_key(call_sid)], args=[int(seconds * 1000)]))
            labels["outcome"] = "ok" if result >= 0 else "miss"
        return result / 1000 if result >= 0 else None

    def update(
        self, call_sid: str, change: Callable[[Decoded | None], CallState], *, retries: int = 50
    ) -> tuple[CallState, int]:
        """Atomic read-modify-write: ``change`` sees the current state and returns the next one.

        On a concurrent write it re-reads and calls ``change`` again; returns the
        state written and its version. A corrupt value raises UndecodableState.
        """
        for attempt in range(retries):
            snapshot, _ = self.read(call_sid)
            if snapshot.corrupt:
                raise UndecodableState(f"{state_key(call_sid)}: {snapshot.error}")
            current = snapshot.decoded
            state = change(current)
            version = (current.version if current else 0) + 1
            if self.compare_and_set(state, version, expected=snapshot.guard).ok:
                return state, version
            time.sleep(min(0.001 * (attempt + 1), 0.02))
        raise StateConflict(f"{state_key(call_sid)} kept changing; gave up after {retries} attempts")

    # --- replay of answered requests ----------------------------------------------------------

    def remember_response(self, call_sid: str, replay: Replay) -> bool:
        """Remember an answer given without a state write; False if one was remembered first."""
        return bool(
            self.client.set(replay_key(call_sid, replay.token), replay.response, ex=replay.ttl, nx=True)
        )

    # --- bulk ---------------------------------------------------------------------------------

    def call_sids(self, batch: int = 500) -> Iterator[str]:
        for key in self.client.scan_iter(match=f"{KEY_PREFIX}*", count=batch):
            yield key.decode()[len(KEY_PREFIX) :]

    def migrate_all(self, *, dry_run: bool = False) -> MigrationReport:
        """Rewrite every state stored in an older schema in the current one, keeping its TTL.

        The version counter is kept: the rewrite changes the form, not the state,
        so a webhook that read the old form and writes its own update still
        wins its compare-and-set (and writes the same migrated fields).
        """
        report = MigrationReport()
        for call_sid in self.call_sids():
            report.scanned += 1
            snapshot, _ = self.read(call_sid)
            if snapshot.raw is None:
                report.vanished += 1
            elif snapshot.corrupt:
                report.corrupt.append(call_sid)
                logger.warning("call state %s is undecodable: %s", call_sid, snapshot.error)
            elif snapshot.decoded is None or not snapshot.decoded.migrated:
                report.current += 1
            else:
                decoded = snapshot.decoded
                read = decoded.read_schema_version
                if not dry_run:
                    value = encode(decoded.state, decoded.version)
                    result = self._compare_and_set(call_sid, snapshot.guard, value, "keep", None)
                    if not result.ok:
                        report.changed_meanwhile += 1
                        continue
                report.migrated[read] = report.migrated.get(read, 0) + 1
        return report


_stores: dict[int, CallStateStore] = {}
_stores_lock = threading.Lock()


def get_store() -> CallStateStore:
    """The store on the shared client for ``settings.REDIS_URL`` (read at call time)."""
    client = get_redis()
    store = _stores.get(id(client))
    if store is None or store.client is not client:
        with _stores_lock:
            store = CallStateStore(client)
            _stores[id(client)] = store
    return store
