"""The call-state store against the real Redis: TTLs, compare-and-set, migrations, corruption."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from io import StringIO

import orjson
import pytest
from django.core.management import call_command

from callops.ivr import store as store_module
from callops.ivr.machine import ActionType, CallState, JobSummary, Language, Stage
from callops.ivr.schema import (
    ABSENT,
    CORRUPT,
    MIGRATIONS,
    SCHEMA_VERSION,
    UndecodableState,
    decode,
    encode,
    guard_of,
)
from callops.ivr.store import CallStateStore, Replay, state_key
from tests.callops.ivr.support import new_call_sid

NOW = datetime(2026, 11, 23, 15, 30, 5, 123456, tzinfo=UTC)
JOB = JobSummary("1001", "501", "Replace rooftop compressor", "Av. Reforma 120", "scheduled",
                 ("in_progress", "on_hold"), date(2026, 11, 26))  # fmt: skip


@pytest.fixture
def store(redis_client):
    return CallStateStore(redis_client)


@pytest.fixture
def call_sid(redis_client):
    sid = new_call_sid()
    yield sid
    redis_client.delete(state_key(sid))


def state(call_sid: str, stage: Stage = Stage.COLLECT_CLIENT_ID, **changes) -> CallState:
    fields = {"attempts": 0, "language": Language.SPANISH, "last_updated": NOW, **changes}
    return CallState(call_sid=call_sid, stage=stage, **fields)


def test_keys_name_the_call_and_share_a_cluster_slot():
    from redis.crc import key_slot  # redis-py's own Redis Cluster slot function

    assert state_key("CA123") == "call_state:CA123"
    replay = store_module.replay_key("CA123", "token")
    assert replay.startswith("{call_state:CA123}:replay:")
    # One Lua script writes both, which Redis Cluster allows only within one slot.
    assert key_slot(replay.encode()) == key_slot(state_key("CA123").encode())
    assert key_slot(store_module.replay_key("CA124", "token").encode()) != key_slot(replay.encode())


# --- TTL ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "ttl"),
    [
        (Stage.COLLECT_CLIENT_ID, 300),
        (Stage.COLLECT_JOB_NUMBER, 300),
        (Stage.CONFIRM_JOB, 600),
        (Stage.ASK_ACTION, 600),
        (Stage.EXECUTE_ACTION, 1800),
        (Stage.GOODBYE, 3600),
        (Stage.GAVE_UP, 3600),
        (Stage.TRANSFERRED, 3600),
    ],
)
def test_each_stage_has_its_ttl(store, redis_client, call_sid, stage, ttl):
    job = JOB if stage not in (Stage.COLLECT_CLIENT_ID, Stage.COLLECT_JOB_NUMBER) else None
    store.save(state(call_sid, stage, job=job), 1)
    assert redis_client.ttl(state_key(call_sid)) == ttl
    # A compare-and-set writes the TTL of the new stage.
    assert store.compare_and_set(state(call_sid, Stage.COLLECT_CLIENT_ID), 2, expected="1").ok
    assert redis_client.ttl(state_key(call_sid)) == 300


def test_extend_ttl_only_when_the_key_has_one(store, redis_client, call_sid):
    assert store.extend_ttl(call_sid, 60) is None  # no key
    store.save(state(call_sid), 1)
    extended = store.extend_ttl(call_sid, 60)
    assert 359 <= extended <= 360
    assert 359 <= store.ttl(call_sid) <= 360
    redis_client.persist(state_key(call_sid))  # someone kept it on purpose
    assert store.extend_ttl(call_sid, 60) is None
    assert redis_client.ttl(state_key(call_sid)) == -1  # still without a TTL
    assert store.ttl(call_sid) == -1.0


# --- save, get, delete, and the JSON -----------------------------------------------------------------


def test_round_trip_keeps_every_field_and_writes_iso_dates(store, redis_client, call_sid):
    full = state(call_sid, Stage.EXECUTE_ACTION, attempts=2, language=Language.ENGLISH, client_id="1001",
                 client_name="Hospital", job_number="501", action_type=ActionType.RESCHEDULE,
                 action_value="2026-12-01", job=JOB)  # fmt: skip
    store.save(full, 7)
    document = orjson.loads(redis_client.get(state_key(call_sid)))
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["version"] == 7
    assert document["last_updated"] == "2026-11-23T15:30:05.123456+00:00"
    assert document["job"]["scheduled_for"] == "2026-11-26"
    assert "description" not in document["job"]
    decoded = store.get(call_sid)
    assert decoded.state == full
    assert decoded.version == 7
    assert not decoded.migrated
    assert store.delete(call_sid) is True
    assert store.get(call_sid) is None
    assert store.delete(call_sid) is False


def test_a_state_with_a_naive_date_is_undecodable(call_sid):
    document = orjson.loads(encode(state(call_sid), 1))
    document["last_updated"] = "2026-11-23T15:30:05"
    with pytest.raises(UndecodableState, match="UTC offset"):
        decode(orjson.dumps(document))


# --- compare-and-set ------------------------------------------------------------------------------------


def test_compare_and_set_refuses_a_stale_version(store, call_sid):
    first = store.compare_and_set(state(call_sid), 1, expected=ABSENT)
    assert (first.outcome, first.found_guard) == ("ok", ABSENT)
    again = store.compare_and_set(state(call_sid, attempts=1), 1, expected=ABSENT)
    assert (again.outcome, again.found_guard) == ("conflict", "1")
    assert store.compare_and_set(state(call_sid, attempts=1), 2, expected="1").ok
    stale = store.compare_and_set(state(call_sid, attempts=5), 2, expected="1")
    assert (stale.outcome, stale.found_guard) == ("conflict", "2")
    decoded = store.get(call_sid)
    assert (decoded.version, decoded.state.attempts) == (2, 1)


def test_compare_and_set_remembers_the_answer_and_replays_it(store, redis_client, call_sid):
    token = "idem-" + call_sid
    replay = Replay(token, b"<Response><Say>uno</Say></Response>", 120)
    assert store.compare_and_set(state(call_sid), 1, expected=ABSENT, replay=replay).ok
    assert 119 <= redis_client.ttl(store_module.replay_key(call_sid, token)) <= 120
    # The same request again (a retry): its answer comes back, the state is not touched.
    retry = Replay(token, b"<Response><Say>dos</Say></Response>", 120)
    result = store.compare_and_set(state(call_sid, attempts=1), 2, expected="1", replay=retry)
    assert (result.outcome, result.replayed) == ("replay", b"<Response><Say>uno</Say></Response>")
    assert store.get(call_sid).version == 1
    snapshot, answered = store.read(call_sid, token)
    assert answered == b"<Response><Say>uno</Say></Response>"
    assert snapshot.guard == "1"
    redis_client.delete(store_module.replay_key(call_sid, token))


def test_compare_and_delete(store, call_sid):
    store.save(state(call_sid), 3)
    assert store.compare_and_delete(call_sid, expected="2").outcome == "conflict"
    assert store.get(call_sid) is not None
    assert store.compare_and_delete(call_sid, expected="3").ok
    assert store.get(call_sid) is None


def test_two_threads_of_read_modify_write_lose_no_update(store, call_sid):
    """Real concurrency on the real Redis: every increment of ``attempts`` survives."""
    store.save(state(call_sid), 1)
    threads, increments = 8, 40
    calls = []
    start = threading.Barrier(threads)

    def increment(current):
        calls.append(1)
        return state(call_sid, attempts=current.state.attempts + 1)

    errors = []

    def worker():
        start.wait()
        try:
            for _ in range(increments):
                store.update(call_sid, increment)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert errors == []
    decoded = store.get(call_sid)
    assert decoded.state.attempts == threads * increments
    assert decoded.version == 1 + threads * increments
    # The writers really did collide: some read-modify-writes had to run again.
    assert len(calls) > threads * increments


# --- schema migrations ------------------------------------------------------------------------------------

V1 = {"schema_version": 1, "version": 4, "call_sid": "", "stage": "execute_action", "attempts": 1,
      "client_id": "1001", "client_name": "Hospital", "job_number": "501", "action": "note", "action_value": "",
      "job": {"client_id": "1001", "job_number": "501", "title": "T", "address": "A", "status": "scheduled",
              "allowed_statuses": ["in_progress"], "scheduled_for": None},
      "last_updated": "2026-11-23T15:30:05+00:00"}  # fmt: skip
V2 = {**V1, "schema_version": 2, "language": "en"}


def test_one_migration_per_schema_step():
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))
    v2 = MIGRATIONS[1](dict(V1))
    assert (v2["schema_version"], v2["language"]) == (2, "es")
    v3 = MIGRATIONS[2](dict(V2))
    assert v3["schema_version"] == 3
    assert v3["action_type"] == "note"
    assert "action" not in v3


@pytest.mark.parametrize(("document", "language"), [(V1, Language.SPANISH), (V2, Language.ENGLISH)])
def test_older_schemas_migrate_on_read(store, redis_client, call_sid, document, language):
    redis_client.set(state_key(call_sid), orjson.dumps({**document, "call_sid": call_sid}), ex=900)
    decoded = store.get(call_sid)
    assert decoded.migrated
    assert decoded.read_schema_version == document["schema_version"]
    assert decoded.version == 4
    assert decoded.state.language is language
    assert decoded.state.action_type is ActionType.NOTE
    assert decoded.state.stage is Stage.EXECUTE_ACTION
    # Reading does not write: the stored value is still the old one.
    assert orjson.loads(redis_client.get(state_key(call_sid)))["schema_version"] == document["schema_version"]


def test_bulk_migration_rewrites_old_values_keeping_version_and_ttl(store, redis_client):
    sids = [new_call_sid() for _ in range(4)]
    try:
        redis_client.set(state_key(sids[0]), orjson.dumps({**V1, "call_sid": sids[0]}), ex=900)
        redis_client.set(state_key(sids[1]), orjson.dumps({**V2, "call_sid": sids[1]}), ex=800)
        store.save(state(sids[2]), 2)
        redis_client.set(state_key(sids[3]), b"\x00garbage", ex=700)

        dry = StringIO()
        call_command("migrate_call_states", "--dry-run", stdout=dry)
        assert "would migrate 2 (v1: 1, v2: 1)" in dry.getvalue()
        assert orjson.loads(redis_client.get(state_key(sids[0])))["schema_version"] == 1

        out = StringIO()
        call_command("migrate_call_states", stdout=out)
        assert "migrated 2 (v1: 1, v2: 1)" in out.getvalue()
        assert f"undecodable: {sids[3]}" in out.getvalue()
        for sid, ttl in ((sids[0], 900), (sids[1], 800)):
            document = orjson.loads(redis_client.get(state_key(sid)))
            assert (document["schema_version"], document["version"]) == (SCHEMA_VERSION, 4)
            assert document["action_type"] == "note"
            assert ttl - 5 <= redis_client.ttl(state_key(sid)) <= ttl
        assert redis_client.get(state_key(sids[3])) == b"\x00garbage"  # left for its call to handle

        again = store.migrate_all()
        assert again.migrated == {}
    finally:
        redis_client.delete(*[state_key(sid) for sid in sids])


# --- values that cannot be decoded ---------------------------------------------------------------------------

CORRUPT_VALUES = [
    b"{not json",
    b"[1, 2, 3]",
    b'"a string"',
    b'{"version": "7", "schema_version": 3}',
    b'{"version": true, "schema_version": 3}',
    b'{"version": -1, "schema_version": 3}',
    b'{"version": 2.5, "schema_version": 3}',
]
DECODABLE_GUARD_BUT_BAD_STATE = [
    b'{"version": 7, "schema_version": 99}',
    b'{"version": 7, "schema_version": 3, "stage": "dancing"}',
    b'{"version": 7.0}',
]


@pytest.mark.parametrize("raw", CORRUPT_VALUES + DECODABLE_GUARD_BUT_BAD_STATE)
def test_python_and_lua_agree_on_the_guard(store, redis_client, call_sid, raw):
    """The compare-and-set computes in Lua what guard_of computes in Python."""
    redis_client.set(state_key(call_sid), raw, ex=60)
    result = store.compare_and_set(state(call_sid), 1, expected="no-such-guard")
    assert result.outcome == "conflict"
    assert result.found_guard == guard_of(raw)


@pytest.mark.parametrize("raw", CORRUPT_VALUES + DECODABLE_GUARD_BUT_BAD_STATE)
def test_an_undecodable_value_is_reported_and_can_be_replaced(store, redis_client, call_sid, raw):
    redis_client.set(state_key(call_sid), raw, ex=60)
    snapshot, _ = store.read(call_sid)
    assert snapshot.corrupt
    assert snapshot.error
    with pytest.raises(UndecodableState):
        store.get(call_sid)
    assert store.compare_and_set(state(call_sid), 1, expected=snapshot.guard).ok
    assert store.get(call_sid).version == 1


def test_guard_values():
    assert guard_of(None) == ABSENT
    assert guard_of(b"{not json") == CORRUPT
    assert guard_of(b'{"version": 12}') == "12"


def test_store_operations_are_counted_and_timed(store, call_sid, client):
    store.save(state(call_sid), 1)
    store.compare_and_set(state(call_sid), 2, expected="1")
    store.compare_and_set(state(call_sid), 2, expected="1")  # a conflict
    store.extend_ttl(call_sid, 1)
    store.get(call_sid)
    store.delete(call_sid)
    text = client.get("/metrics").content.decode()
    for operation, outcome in (("save", "ok"), ("cas", "ok"), ("cas", "conflict"), ("extend", "ok"),
                               ("get", "ok"), ("delete", "ok")):  # fmt: skip
        assert f'callops_ivr_state_operations_total{{operation="{operation}",outcome="{outcome}"}}' in text
        assert f'callops_ivr_state_operation_seconds_count{{operation="{operation}"}}' in text


def test_get_store_follows_the_redis_url_setting(settings, private_redis):
    from callops.ivr.store import get_store

    default = get_store()
    settings.REDIS_URL = private_redis.url
    private = get_store()
    assert private is not default
    assert private.client.connection_pool.connection_kwargs["port"] == private_redis.port
    sid = new_call_sid()
    private.save(state(sid), 1)
    assert default.get(sid) is None


def test_a_committed_copy_never_replaces_a_newer_one_and_always_keeps_its_answer(store, call_sid):
    replay = Replay("token-7", b"<Response>seven</Response>", 60)
    assert store.write_committed(state(call_sid), 8, computed_from=ABSENT).ok
    late = store.write_committed(
        state(call_sid, Stage.COLLECT_JOB_NUMBER), 7, computed_from="6", replay=replay
    )
    assert late.outcome == "newer"
    assert store.get(call_sid).version == 8
    assert store.read(call_sid, "token-7")[1] == replay.response  # a retry is still answered
    # The copy it was computed from is replaced, even when numbered higher (a leaked write).
    assert store.write_committed(state(call_sid), 9, computed_from="8").ok
    assert store.get(call_sid).version == 9


def test_after_a_close_no_copy_is_written_or_restored(store, call_sid, redis_client):
    assert store.write_committed(state(call_sid), 3, computed_from=ABSENT).ok
    assert store.close(call_sid) is True
    assert redis_client.get(state_key(call_sid)) is None
    replay = Replay("token-4", b"<Response>four</Response>", 60)
    late = store.write_committed(
        state(call_sid), 4, computed_from="3", replay=replay
    )  # committed before the close
    assert late.outcome == "closed"
    assert store.restore(state(call_sid), 4, expected=ABSENT).outcome == "closed"
    assert redis_client.get(state_key(call_sid)) is None
    assert store.read(call_sid, "token-4")[1] == replay.response
    assert list(store.call_sids()).count(call_sid) == 0  # the marker is no call state
    redis_client.delete(store_module.closed_key(call_sid))
