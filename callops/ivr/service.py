"""The IVR's webhooks, one function each: load the call, run the machine, act, commit, copy.

Who holds the truth (DESIGN.md): a call's state is its audit trail in the database,
``CallStateSnapshot`` rows numbered 1, 2, 3... without gaps, each row's sequence
being the state's ``version``. Redis holds a copy of the latest row, for speed and
for its time to live. The jobs the calls change live in the database only.

Every answer follows the same path:

1. Read the call's state from Redis and, in the same round trip, whether this very
   request (its ``I-Twilio-Idempotency-Token``) was answered before: a retry by
   Twilio gets the same TwiML back and changes nothing.
2. Check the copy against the truth: Redis at version ``v`` must match an audit
   trail whose latest row is ``v``. A copy that is behind (its write was lost,
   or a close it has not seen), ahead (a write that leaked from a transaction
   that never committed) or missing while the call is live (younger than its
   stage's time to live) is repaired from the latest row, with the answers of
   the requests recorded since, and the request reads again.
3. Feed the input to the pure machine (:mod:`callops.ivr.machine`); look-ups run
   outside any transaction. Then one database transaction holds the commit
   point: the job updates, audit row ``v + 1`` and, in that row, this request's
   answer keyed by its idempotency token. The unique (call, sequence) constraint
   decides between concurrent requests: the loser rolls back (no job effect is
   applied twice), reads again and runs on the winner's state.
4. Only after the commit, the new state and the answer go to Redis (a write that
   never replaces a newer version). If that write fails or its reply is lost,
   the change happened all the same: the caller hears its answer, and the next
   read repairs the copy (2), so a retry is answered from the audit row, never
   applied again. Closing a call marks it closed in Redis (and deletes the copy)
   after its commit, atomically; a copy written after that is refused, so a call
   that ended never looks live again.
5. Redis or the database unreachable before the commit: the caller hears a short
   apology (and is put through to the fallback number when there is one); no
   change was made. Never a 500. Bad data the database refuses is logged as the
   bug it is and answered the same way, never retried.

Each single failure, and what it leaves: Redis reply lost after the write (the
copy is right; the retry replays it); Redis down between commit and write (the
copy is behind; repaired on the next read); database commit failing (nothing
happened, nothing was copied: the retry runs afresh) or its reply lost (committed:
the retry finds the audit row ahead of the copy and replays its answer); the
process killed anywhere (one of the above).
"""

from __future__ import annotations

import enum
import functools
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import redis
from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from callops.ivr import machine, metrics, twiml
from callops.ivr.machine import (
    AWAITS_RESULT,
    END_STAGES,
    ActionDone,
    ActionRejected,
    AddJobNote,
    CallState,
    ClientFound,
    ClientNotFound,
    Digits,
    Effect,
    Input,
    InputNotAccepted,
    JobFound,
    JobNotFound,
    JobSummary,
    Language,
    LookUpClient,
    LookUpJob,
    MachineConfig,
    RejectReason,
    RescheduleJob,
    Resume,
    SetJobStatus,
    Silence,
    Speech,
    StartReason,
    Transition,
)
from callops.ivr.schema import (
    ABSENT,
    SCHEMA_VERSION,
    UndecodableState,
    compact_text,
    decode,
    state_to_dict,
)
from callops.ivr.store import (
    TTL_BY_STAGE,
    Replay,
    Snapshot,
    StateConflict,
    get_store,
    state_key,
    token_digest,
    ttl_for,
)
from callops.models import (
    ALLOWED_TRANSITIONS,
    CallSession,
    CallStateSnapshot,
    Client,
    Job,
    JobNote,
)

logger = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
MAX_TOKEN_LENGTH = 256
MAX_WRITE_ATTEMPTS = 10  # compare-and-set retries before a webhook gives up (and apologises)
MAX_STEPS = 4  # machine steps per request: the input, then at most one result per effect
RAW_AUDIT_CHARS = 4000  # how much of an undecodable value the audit row keeps

# https://www.twilio.com/docs/voice/api/call-resource#call-status-values
FINAL_CALL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


class Webhook(enum.StrEnum):
    VOICE = "voice"
    GATHER = "gather"
    STATUS = "status"
    FALLBACK = "fallback"


class BadWebhook(ValueError):
    """A signed request that lacks what every Twilio voice webhook carries (CallSid)."""


@dataclass(frozen=True)
class WebhookRequest:
    webhook: Webhook
    params: Mapping[str, str]
    idempotency_token: str = ""
    received_at: datetime | None = None

    @property
    def call_sid(self) -> str:
        return self.params.get("CallSid", "")

    @property
    def now(self) -> datetime:
        return self.received_at or timezone.now()


@dataclass(frozen=True)
class WebhookAnswer:
    twiml: str
    outcome: str  # for metrics and logs: ok, replayed, redis_down, ...


def mask_number(number: str) -> str:
    """A phone number for logs: "+525550001001" -> "+52******1001" tells calls apart, no more."""
    if len(number) <= 6:
        return "*" * len(number)
    return f"{number[:3]}{'*' * (len(number) - 7)}{number[-4:]}"


def machine_config() -> MachineConfig:
    return MachineConfig(max_attempts=settings.IVR_MAX_ATTEMPTS, fallback_number=settings.IVR_FALLBACK_NUMBER)


def local_now(now: datetime) -> datetime:
    # The machine judges "today" (a reschedule date in the past?) by the wall clock
    # of the business (TIME_ZONE), not UTC.
    return timezone.localtime(now)


# --- failures become apologies, every answer is counted ----------------------------------------


class _OutOfStep(Exception):
    """Redis's copy of the state does not match the audit trail; repair it and read again."""

    def __init__(self, call_sid: str, stored: str, audited: int | None):
        super().__init__(f"call {call_sid}: Redis holds {stored}, the audit trail ends at {audited}")


# What the platform expects to fail now and then, and the outcome each is counted as.
# Data the database refuses (a constraint, a value out of range) is not an outage: it
# is a bug or bad input that slipped past the edge; retrying cannot help.
_FAILURE_OUTCOMES: tuple[tuple[type[Exception], str], ...] = (
    (redis.RedisError, "redis_down"),
    (IntegrityError, "bad_data"),
    (DataError, "bad_data"),
    (DatabaseError, "database_down"),
    (StateConflict, "conflict"),
)
_EXPECTED_FAILURES = tuple(kind for kind, _ in _FAILURE_OUTCOMES)


def _answering(webhook: Webhook, *, on_failure: Callable[[], str]) -> Callable[..., Any]:
    def decorate(
        handle: Callable[[WebhookRequest], WebhookAnswer],
    ) -> Callable[[WebhookRequest], WebhookAnswer]:
        @functools.wraps(handle)
        def answer(request: WebhookRequest) -> WebhookAnswer:
            if not request.call_sid:
                metrics.WEBHOOKS.labels(webhook.value, "bad_request").inc()
                raise BadWebhook(f"{webhook.value} webhook without CallSid")
            started = time.perf_counter()
            try:
                result = handle(request)
            except _EXPECTED_FAILURES as exc:
                outcome = next(label for kind, label in _FAILURE_OUTCOMES if isinstance(exc, kind))
                logger.error(
                    "answering %s for call %s failed (%s): %r",
                    webhook,
                    request.call_sid,
                    outcome,
                    exc,
                    extra={"call_sid": request.call_sid},
                )
                result = WebhookAnswer(on_failure(), outcome)
            except Exception:
                # A bug: log it whole, but the caller still hears words, not Twilio's error message.
                logger.exception(
                    "failed answering %s for call %s",
                    webhook,
                    request.call_sid,
                    extra={"call_sid": request.call_sid},
                )
                result = WebhookAnswer(on_failure(), "error")
            metrics.WEBHOOK_SECONDS.labels(webhook.value).observe(time.perf_counter() - started)
            metrics.WEBHOOKS.labels(webhook.value, result.outcome).inc()
            return result

        return answer

    return decorate


def _apology() -> str:
    return twiml.apology(settings.IVR_FALLBACK_NUMBER)


# --- the webhooks ----------------------------------------------------------------------------


@_answering(Webhook.VOICE, on_failure=_apology)
def answer_call(request: WebhookRequest) -> WebhookAnswer:
    """``/twilio/voice/``: a call comes in (or Twilio asks again for one under way)."""
    logger.info(
        "incoming call %s from %s to %s",
        request.call_sid,
        mask_number(request.params.get("From", "")),
        mask_number(request.params.get("To", "")),
        extra={"call_sid": request.call_sid},
    )
    return _converse(request, Resume)


def _caller_input(params: Mapping[str, str]) -> Input:
    digits = params.get("Digits", "").strip()
    if digits:
        return Digits(digits)
    speech = params.get("SpeechResult", "").strip()
    if speech:
        return Speech(speech, _confidence(params.get("Confidence")))
    return Silence()


# --- Twilio's fields, checked at the edge: keep what is usable, drop what is not -----------------

MAX_DB_INTEGER = 2**31 - 1  # PostgreSQL integer, the columns these numbers go to


def _confidence(text: str | None) -> float | None:
    """Twilio's speech ``Confidence``: a number from 0 to 1, or nothing (NaN, infinities, junk)."""
    try:
        confidence = float(text) if text else None
    except ValueError:
        return None
    return confidence if confidence is not None and 0.0 <= confidence <= 1.0 else None


def _count(text: str | None, limit: int = MAX_DB_INTEGER) -> int | None:
    """A non-negative integer field (``CallDuration``, ``SequenceNumber``), or None if it is
    not one or does not fit its column: the rest of the request still counts."""
    text = (text or "").strip()
    if not text.isascii() or not text.isdigit() or len(text) > len(str(limit)):
        return None
    value = int(text)
    return value if value <= limit else None


@_answering(Webhook.GATHER, on_failure=_apology)
def handle_gather(request: WebhookRequest) -> WebhookAnswer:
    """``/twilio/gather/``: what the caller keyed or said (or nothing) after a prompt."""
    return _converse(request, lambda: _caller_input(request.params))


@_answering(Webhook.FALLBACK, on_failure=_apology)
def handle_fallback(request: WebhookRequest) -> WebhookAnswer:
    """``/twilio/fallback/``: Twilio could not get an answer from the voice or gather URL.

    Touches neither Redis nor the database (either may be why we are here).
    """
    logger.error(
        "Twilio fell back for call %s: error %s on %s",
        request.call_sid,
        request.params.get("ErrorCode", "?"),
        request.params.get("ErrorUrl", "?"),
        extra={"call_sid": request.call_sid},
    )
    return WebhookAnswer(_apology(), "ok")


@_answering(Webhook.STATUS, on_failure=twiml.empty)
def handle_status_callback(request: WebhookRequest) -> WebhookAnswer:
    """``/twilio/status/``: the call's progress; on a final status, close the call.

    Twilio may deliver these out of order; ``SequenceNumber`` orders them and a
    callback older than the newest one seen is ignored.
    https://www.twilio.com/docs/voice/api/call-resource#statuscallback
    """
    call_sid = request.call_sid
    status = request.params.get("CallStatus", "").strip().lower()
    sequence = _count(request.params.get("SequenceNumber"))
    with transaction.atomic():
        commit_without_waiting_for_disk()
        session = _session_for(request)
        recorded = _record_status(session, status, sequence)
    if status in FINAL_CALL_STATUSES:
        # Final is final, even when redelivered: closing a closed call does nothing,
        # and closing one whose first delivery failed half-way finishes the job.
        duration = _count(request.params.get("CallDuration"))
        _finish_call(call_sid, status, duration, request.now)
    elif not recorded:
        logger.info(
            "ignoring stale status %r (#%s) for call %s",
            status,
            sequence,
            call_sid,
            extra={"call_sid": call_sid},
        )
        return WebhookAnswer(twiml.empty(), "stale")
    return WebhookAnswer(twiml.empty(), "ok")


# --- conversation ------------------------------------------------------------------------------


def _converse(request: WebhookRequest, make_input: Callable[[], Input]) -> WebhookAnswer:
    store = get_store()
    token = request.idempotency_token
    for attempt in range(MAX_WRITE_ATTEMPTS):
        snapshot, answered = store.read(request.call_sid, token)
        if answered is not None:
            logger.info(
                "replaying the answer to a retried %s for call %s",
                request.webhook,
                request.call_sid,
                extra={"call_sid": request.call_sid},
            )
            return WebhookAnswer(answered.decode(), "replayed")
        try:
            return _converse_once(request, snapshot, make_input())
        except _OutOfStep as exc:
            logger.warning("%s; repairing it from the audit trail", exc, extra={"call_sid": request.call_sid})
            _repair(request, snapshot)
        except IntegrityError as exc:
            if not _is_sequence_clash(exc):
                raise
            # Another request for this call committed its row first: its change stands,
            # ours was rolled back (job effects too); run ours again on top of theirs.
            logger.info(
                "call %s changed meanwhile; running %s again",
                request.call_sid,
                request.webhook,
                extra={"call_sid": request.call_sid},
            )
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
    raise StateConflict(
        f"call {request.call_sid}: the state kept changing over {MAX_WRITE_ATTEMPTS} attempts"
    )


def _converse_once(request: WebhookRequest, snapshot: Snapshot, event: Input) -> WebhookAnswer:
    """One attempt. Reads and the machine run first; the transaction holds only the writes
    (SQLite has one writer at a time: the shorter its turn, the less the others wait)."""
    call_sid, now = request.call_sid, request.now
    if snapshot.corrupt:
        session = _session_for(request)
        with transaction.atomic():
            commit_without_waiting_for_disk()
            committed = _start_fresh_after_corruption(request, snapshot, session)
        return _write_back(request, committed)
    if snapshot.decoded is None:
        session = _session_for(request)  # the call's first webhook creates it
        if session.ended:
            # A late webhook for a call that is over: nothing to say.
            return _answer_without_writing(request, twiml.hangup(), "call_ended")
        latest = _latest_row(call_sid)
        if latest is not None and latest.event.get("kind") in CLOSING_KINDS:
            # Closed since the session was read (the insert below would have clashed
            # with the closing row had it come later).
            return _answer_without_writing(request, twiml.hangup(), "call_ended")
        if latest is not None and _still_live(latest, now):
            raise _OutOfStep(call_sid, "nothing", latest.sequence)
        sequence = (latest.sequence if latest is not None else 0) + 1
        reason = StartReason.NEW_CALL if sequence == 1 else StartReason.STATE_EXPIRED
        if reason is StartReason.STATE_EXPIRED:
            logger.warning(
                "call %s has no state (expired); starting it again",
                call_sid,
                extra={"call_sid": call_sid},
            )
        transition = machine.start_call(
            call_sid, now=local_now(now), language=Language(session.language), reason=reason
        )
        audit_event = {
            "kind": "call_started" if sequence == 1 else "fresh_start",
            "reason": reason.value,
            "webhook": request.webhook.value,
            "input": machine.record(event),
        }
        with transaction.atomic():
            commit_without_waiting_for_disk()
            committed = _commit(request, transition, version=sequence, computed_from=ABSENT,
                                audit_event=audit_event, was_language=Language(session.language))  # fmt: skip
        return _write_back(request, committed)

    decoded = snapshot.decoded
    audited = _latest_sequence(call_sid)
    if audited != decoded.version:
        raise _OutOfStep(call_sid, f"version {decoded.version}", audited)
    state = decoded.state
    try:
        transition, trail, writes = _run_machine(state, event, now, call_sid, may_write=False)
    except InputNotAccepted as exc:
        logger.warning("call %s: %s; repeating the prompt", call_sid, exc, extra={"call_sid": call_sid})
        if state.stage in END_STAGES:
            return _answer_without_writing(request, twiml.hangup(), "not_accepted")
        return _answer_without_writing(
            request, twiml.render(machine.stage_prompt(state), state.language), "not_accepted"
        )
    with transaction.atomic():
        if writes:
            # The input changes a job: run it again where the change is committed (or
            # rolled back) with the audit row (look-ups are repeated; the machine is pure).
            transition, trail, _ = _run_machine(state, event, now, call_sid, may_write=True)
        commit_without_waiting_for_disk()
        audit_event: dict[str, object] = {"kind": "input", "webhook": request.webhook.value, "steps": trail}
        if decoded.migrated:
            audit_event["migrated_from_schema"] = decoded.read_schema_version
        committed = _commit(
            request,
            transition,
            version=decoded.version + 1,
            computed_from=snapshot.guard,
            audit_event=audit_event,
            was_language=state.language,
        )
    return _write_back(request, committed)


JOB_CHANGES = (SetJobStatus, AddJobNote, RescheduleJob)


def _run_machine(
    state: CallState, event: Input, now: datetime, call_sid: str, *, may_write: bool
) -> tuple[Transition, list[dict[str, object]], bool]:
    """Step the machine, carrying out each effect that has a result and feeding it back.

    Without ``may_write`` it stops at the first effect that would change a job
    and says so (the third value): the caller must run it again in a transaction.
    """
    config, machine_now = machine_config(), local_now(now)
    transition = machine.step(state, event, now=machine_now, config=config)
    trail: list[dict[str, object]] = [
        {"input": machine.record(event), "effects": machine.record(transition.effects)}
    ]
    for _ in range(MAX_STEPS):
        pending = [effect for effect in transition.effects if isinstance(effect, AWAITS_RESULT)]
        if not pending:
            return transition, trail, False
        if isinstance(pending[0], JOB_CHANGES) and not may_write:
            return transition, trail, True
        result = _carry_out(pending[0], call_sid)
        transition = machine.step(transition.state, result, now=machine_now, config=config)
        trail.append({"input": machine.record(result), "effects": machine.record(transition.effects)})
    raise RuntimeError(f"call {call_sid}: the machine still awaited a result after {MAX_STEPS} steps")


@dataclass(frozen=True)
class _Committed:
    """A change the database has committed (audit row ``version``), to copy to Redis."""

    state: CallState
    version: int
    computed_from: str  # the Redis guard the change was computed from
    answer: str


def _commit(
    request: WebhookRequest,
    transition: Transition,
    *,
    version: int,
    computed_from: str,
    audit_event: dict[str, object],
    was_language: Language,
) -> _Committed:
    """Inside the caller's transaction: the audit row ``version``, holding this request's
    answer (so a retry can be answered from the database), and the session's language."""
    state = transition.state
    assert transition.prompt is not None, "committing a transition that still awaits a result"
    answer = twiml.render(transition.prompt, state.language, transition.effects)
    if state.language is not was_language:
        # Before the audit row: closing a call locks the session first, then appends its
        # row; taking them in the same order, the two cannot deadlock.
        CallSession.objects.filter(call_sid=request.call_sid).update(language=state.language.value)
    event = dict(audit_event)
    if request.idempotency_token:
        event[ANSWERED] = {"token": token_digest(request.idempotency_token), "twiml": answer}
    _audit(
        request.call_sid,
        version,
        state=state_to_dict(state, version),
        event=event,
        source=CallStateSnapshot.Source.WEBHOOK,
        when=request.now,
    )
    return _Committed(state, version, computed_from, answer)


def _write_back(request: WebhookRequest, committed: _Committed) -> WebhookAnswer:
    """After the commit: copy the change to Redis. It happened whatever Redis says, so
    the caller hears its answer; a copy left behind is repaired on the next read."""
    call_sid, store = request.call_sid, get_store()
    try:
        store.write_committed(
            committed.state,
            committed.version,
            computed_from=committed.computed_from,
            replay=_replay(request, committed.answer),
        )
    except redis.RedisError as exc:
        metrics.REDIS_BEHIND.inc()
        logger.error(
            "call %s: change #%s is committed but its copy in Redis failed (%r); "
            "the next read repairs it from the audit trail",
            call_sid,
            committed.version,
            exc,
            extra={"call_sid": call_sid},
        )
        return WebhookAnswer(committed.answer, "redis_behind")
    if committed.state.stage in END_STAGES:
        logger.info("call %s reached %s", call_sid, committed.state.stage, extra={"call_sid": call_sid})
    return WebhookAnswer(committed.answer, "ok")


def _replay(request: WebhookRequest, answer: str) -> Replay | None:
    if not request.idempotency_token:
        return None
    return Replay(request.idempotency_token, answer.encode(), settings.IVR_REPLAY_TTL)


def _answer_without_writing(request: WebhookRequest, answer: str, outcome: str) -> WebhookAnswer:
    replay = _replay(request, answer)
    if replay is not None:
        get_store().remember_response(request.call_sid, replay)
    return WebhookAnswer(answer, outcome)


# --- the audit trail is the truth: checking and repairing the Redis copy -----------------------

ANSWERED = "answered"  # the audit event's record of the request's token digest and answer
MAX_REPLAYS_RESTORED = 50


_LATEST_SEQUENCE_SQL = "SELECT MAX({sequence}) FROM {table} WHERE {call_sid} = %s"


def _latest_sequence(call_sid: str) -> int | None:
    """The latest audit row's number. On every webhook, so plain SQL (an index look-up on
    the unique (call, sequence) pair), without the ORM's cost of building the query."""
    quote = connection.ops.quote_name
    sql = _LATEST_SEQUENCE_SQL.format(
        sequence=quote("sequence"), table=quote(CallStateSnapshot._meta.db_table), call_sid=quote("call_sid")
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [call_sid])
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else None


def _latest_row(call_sid: str) -> CallStateSnapshot | None:
    return CallStateSnapshot.objects.filter(call_sid=call_sid).order_by("-sequence").first()


def _still_live(row: CallStateSnapshot, now: datetime) -> bool:
    """Whether the state ``row`` recorded would still be in Redis: younger than its stage's
    time to live. A live call whose copy is missing lost it (a write that failed after
    the commit, a Redis restarted empty); an older one expired."""
    if row.schema_version == 0 or row.event.get("kind") in CLOSING_KINDS:
        return False
    try:
        ttl = ttl_for(machine.Stage(row.stage))
    except ValueError:
        return False
    return row.recorded_at + timedelta(seconds=ttl) > now


def _repair(request: WebhookRequest, snapshot: Snapshot) -> None:
    """Make Redis's copy the latest audit row again, with the answers recorded lately.

    If the call is over (or has no live row), the copy is removed. Compare-and-set on
    what was read: if the copy changed meanwhile, the caller reads it again.
    """
    call_sid, store = request.call_sid, get_store()
    latest = _latest_row(call_sid)
    ended = CallSession.objects.filter(call_sid=call_sid, ended_at__isnull=False).exists()
    if latest is None or ended or latest.schema_version == 0 or latest.event.get("kind") in CLOSING_KINDS:
        if snapshot.raw is not None:
            store.compare_and_delete(call_sid, expected=snapshot.guard)
        return
    try:
        restored = decode(orjson.dumps(latest.state))
    except UndecodableState as exc:  # our own row, written by state_to_dict: a bug
        logger.error("call %s: audit row #%s does not decode: %s", call_sid, latest.sequence, exc)
        if snapshot.raw is not None:
            store.compare_and_delete(call_sid, expected=snapshot.guard)
        return
    since = request.now - timedelta(seconds=settings.IVR_REPLAY_TTL)
    events = (
        CallStateSnapshot.objects.filter(call_sid=call_sid, recorded_at__gte=since)
        .order_by("-sequence")
        .values_list("event", flat=True)[:MAX_REPLAYS_RESTORED]
    )
    replays = {
        event[ANSWERED]["token"]: str(event[ANSWERED]["twiml"]).encode()
        for event in events
        if isinstance(event, dict) and isinstance(event.get(ANSWERED), dict)
    }
    result = store.restore(
        restored.state,
        latest.sequence,
        expected=snapshot.guard,
        replays=replays,
        replay_ttl=settings.IVR_REPLAY_TTL,
    )
    if result.ok:
        metrics.STATE_REPAIRED.inc()


SEQUENCE_CONSTRAINT = "call_state_sequence_unique_per_call"


def _is_sequence_clash(exc: IntegrityError) -> bool:
    """An IntegrityError from the unique (call, sequence) constraint: a concurrent change.
    Any other (a check constraint, a NOT NULL) is a bug or bad data, not a race."""
    diag = getattr(exc.__cause__, "diag", None)  # psycopg names the constraint
    if diag is not None and getattr(diag, "constraint_name", None):
        return bool(diag.constraint_name == SEQUENCE_CONSTRAINT)
    table = CallStateSnapshot._meta.db_table
    return f"UNIQUE constraint failed: {table}.call_sid, {table}.sequence" in str(exc)  # SQLite


def _start_fresh_after_corruption(
    request: WebhookRequest, snapshot: Snapshot, session: CallSession
) -> _Committed:
    """An undecodable value: log it, keep it in the audit trail, and start the call again."""
    call_sid = request.call_sid
    assert snapshot.raw is not None
    logger.error(
        "call %s: stored state is undecodable (%s); starting the call again",
        call_sid,
        snapshot.error,
        extra={"call_sid": call_sid},
    )
    latest = _latest_row(call_sid)
    if latest is not None and latest.event.get("kind") in CLOSING_KINDS:
        raise _OutOfStep(call_sid, "a corrupt value", latest.sequence)  # the call is over: remove it
    metrics.STATE_CORRUPT.inc()
    sequence = (latest.sequence if latest is not None else 0) + 1
    # Kept as readable text; NUL spelled out, since PostgreSQL's JSON cannot hold it.
    raw_text = (
        snapshot.raw[:RAW_AUDIT_CHARS].decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")
    )
    _audit(
        call_sid,
        sequence,
        state={"raw": raw_text},
        event={"kind": "state_corrupt", "error": snapshot.error},
        source=CallStateSnapshot.Source.WEBHOOK,
        when=request.now,
        schema_version=0,
        stage="",
    )
    transition = machine.start_call(
        call_sid,
        now=local_now(request.now),
        language=Language(session.language),
        reason=StartReason.STATE_CORRUPT,
    )
    audit_event = {
        "kind": "fresh_start",
        "reason": StartReason.STATE_CORRUPT.value,
        "webhook": request.webhook.value,
    }
    return _commit(
        request,
        transition,
        version=sequence + 1,
        computed_from=snapshot.guard,
        audit_event=audit_event,
        was_language=Language(session.language),
    )


# --- side effects ------------------------------------------------------------------------------


def compact_job(job: Job) -> JobSummary:
    """The fields a call needs, shortened: descriptions and notes stay in the database."""
    return JobSummary(
        client_id=job.client.code,
        job_number=job.number,
        title=compact_text(job.title),
        address=compact_text(job.address),
        status=job.status,
        allowed_statuses=tuple(sorted(str(status) for status in ALLOWED_TRANSITIONS[job.status])),
        scheduled_for=job.scheduled_for,
    )


def _job_for_update(client_id: str, job_number: str) -> Job | None:
    return (
        Job.objects.select_for_update(of=("self",))
        .select_related("client")
        .filter(client__code=client_id, client__active=True, number=job_number)
        .first()
    )


def _carry_out(effect: Effect, call_sid: str) -> Input:
    match effect:
        case LookUpClient(client_id=client_id):
            name = Client.objects.filter(code=client_id, active=True).values_list("name", flat=True).first()
            return ClientFound(client_id, name) if name is not None else ClientNotFound(client_id)
        case LookUpJob(client_id=client_id, job_number=job_number):
            job = (
                Job.objects.select_related("client")
                .filter(client__code=client_id, client__active=True, number=job_number)
                .first()
            )
            return JobFound(compact_job(job)) if job else JobNotFound(client_id, job_number)
        case SetJobStatus(client_id=client_id, job_number=job_number, status=status):
            job = _job_for_update(client_id, job_number)
            if job is None:
                return ActionRejected(RejectReason.JOB_GONE)
            from callops import jobs  # the one way a job changes, recorded in the job's history

            try:
                jobs.set_status(job, status, by=jobs.ChangedBy.phone(call_sid))
            except jobs.StatusNotAllowed:
                return ActionRejected(RejectReason.STATUS_NOT_ALLOWED, compact_job(job))
            logger.info(
                "call %s set job %s/%s to %s",
                call_sid,
                client_id,
                job_number,
                status,
                extra={"call_sid": call_sid},
            )
            return ActionDone(compact_job(job))
        case AddJobNote(client_id=client_id, job_number=job_number, text=text):
            job = _job_for_update(client_id, job_number)
            if job is None:
                return ActionRejected(RejectReason.JOB_GONE)
            JobNote.objects.create(job=job, text=text, source=JobNote.Source.IVR, call_sid=call_sid)
            job.save(update_fields=["updated_at"])
            logger.info(
                "call %s added a note to job %s/%s",
                call_sid,
                client_id,
                job_number,
                extra={"call_sid": call_sid},
            )
            return ActionDone(compact_job(job))
        case RescheduleJob(client_id=client_id, job_number=job_number, scheduled_for=when):
            job = _job_for_update(client_id, job_number)
            if job is None:
                return ActionRejected(RejectReason.JOB_GONE)
            from callops import jobs

            try:  # a pending or on-hold job with a date is scheduled; one in progress stays so
                jobs.reschedule(job, when, by=jobs.ChangedBy.phone(call_sid))
            except jobs.JobClosed:
                return ActionRejected(RejectReason.JOB_CLOSED, compact_job(job))
            logger.info(
                "call %s rescheduled job %s/%s to %s",
                call_sid,
                client_id,
                job_number,
                when,
                extra={"call_sid": call_sid},
            )
            return ActionDone(compact_job(job))
    raise TypeError(f"no result to feed back for effect {effect!r}")


# --- call sessions, status callbacks and the audit trail ------------------------------------------------


def commit_without_waiting_for_disk() -> None:
    """With ``IVR_ASYNC_COMMIT`` (the default), let PostgreSQL acknowledge the current
    webhook transaction before its WAL is on disk.

    A caller waits on every webhook, and an fsync's tail on a shared disk runs to
    hundreds of milliseconds. Asynchronous commit never corrupts; a database server
    crash may lose the last fraction of a second of commits (the durability SQLite's
    WAL mode with synchronous=NORMAL gives too). ``IVR_ASYNC_COMMIT=0`` makes every
    webhook wait for the disk. https://www.postgresql.org/docs/current/wal-async-commit.html
    """
    if settings.IVR_ASYNC_COMMIT and connection.vendor == "postgresql" and connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def _session_for(request: WebhookRequest) -> CallSession:
    with transaction.atomic():
        commit_without_waiting_for_disk()
        return _get_or_create_session(request)


def _get_or_create_session(request: WebhookRequest) -> CallSession:
    session, _ = CallSession.objects.get_or_create(
        call_sid=request.call_sid,
        defaults={
            "from_number": request.params.get("From", "")[:32],
            "to_number": request.params.get("To", "")[:32],
            "started_at": request.now,
        },
    )
    return session


def _record_status(session: CallSession, status: str, sequence: int | None) -> bool:
    """Record ``status`` unless a newer one (higher SequenceNumber) was recorded already."""
    calls = CallSession.objects.filter(pk=session.pk, ended_at__isnull=True)
    changes: dict[str, object] = {"last_call_status": status[:16]}
    if sequence is not None:
        calls = calls.filter(Q(last_status_sequence__isnull=True) | Q(last_status_sequence__lt=sequence))
        changes["last_status_sequence"] = sequence
    elif session.last_status_sequence is not None and status not in FINAL_CALL_STATUSES:
        return False  # unnumbered, and numbered ones came already: no way to tell which is newer
    return calls.update(**changes) == 1


def _audit(
    call_sid: str,
    sequence: int,
    *,
    state: dict[str, Any],
    event: dict[str, Any],
    source: str,
    when: datetime,
    schema_version: int = SCHEMA_VERSION,
    stage: str | None = None,
) -> CallStateSnapshot:
    return CallStateSnapshot.objects.create(
        call_sid=call_sid,
        sequence=sequence,
        schema_version=schema_version,
        stage=stage if stage is not None else str(state.get("stage", "")),
        state=state,
        event=event,
        source=source,
        recorded_at=when,
    )


# The audit events that end a call: nothing is live after one.
CLOSING_KINDS = frozenset({"call_ended", "state_expired", "terminated_by_staff"})


def _close_call(
    call_sid: str,
    *,
    outcome_of: Callable[[str], str],
    event: dict[str, Any],
    source: str,
    now: datetime,
    duration: int | None = None,
    expiring: bool = False,
) -> str | None:
    """End a call: mark its session and append the final audit row (one commit), then
    delete its Redis copy.

    ``outcome_of(stage)`` picks the outcome from the stage of the call's latest audit
    row. ``expiring`` (the sweep) closes only a call whose state is gone: Redis must
    say so, and the audit trail, read under the session's lock, must agree that the
    latest state is older than its time to live (a webhook that found the key absent
    and started the call again has a fresh row). Returns the outcome, or None if the
    call was ended already (or is live). Safe to run twice.

    A webhook that committed before us may copy its change to Redis after our delete;
    the closed marker set with the delete makes that write a no-op. With Redis down
    the call is still closed; the leftover copy expires, and a read before that finds
    it behind the audit trail and removes it.
    """
    store = get_store()
    for attempt in range(MAX_WRITE_ATTEMPTS):
        if expiring:
            try:
                snapshot, _ = store.read(call_sid)
            except redis.RedisError:
                return None  # an outage proves nothing
            if snapshot.raw is not None:
                return None
        try:
            with transaction.atomic():
                commit_without_waiting_for_disk()
                session = CallSession.objects.select_for_update().filter(call_sid=call_sid).first()
                if session is None or session.ended:
                    return None
                latest = _latest_row(call_sid)
                if expiring and latest is not None and _still_live(latest, now):
                    return None
                last_state = latest.state if latest is not None and latest.schema_version else None
                stage = latest.stage if last_state else ""
                outcome = outcome_of(stage)
                sequence = (latest.sequence if latest is not None else 0) + 1
                _audit(
                    call_sid,
                    sequence,
                    state={**(last_state or {}), "version": sequence},
                    event={**event, "outcome": outcome},
                    source=source,
                    when=now,
                    schema_version=SCHEMA_VERSION if last_state else 0,
                    stage=stage,
                )
                session.outcome = outcome
                session.ended_at = now
                if duration is not None:
                    session.duration_seconds = duration
                session.save(update_fields=["outcome", "ended_at", "duration_seconds"])
        except IntegrityError as exc:
            if not _is_sequence_clash(exc):
                raise
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            continue
        try:
            store.close(call_sid)
        except redis.RedisError as exc:
            logger.warning(
                "closed call %s without Redis (%r): its state will expire by itself",
                call_sid,
                exc,
                extra={"call_sid": call_sid},
            )
        metrics.CALLS_ENDED.labels(outcome).inc()
        logger.info("call %s ended: %s", call_sid, outcome, extra={"call_sid": call_sid})
        return outcome
    raise StateConflict(f"call {call_sid}: could not close it over {MAX_WRITE_ATTEMPTS} attempts")


def _finish_call(call_sid: str, status: str, duration: int | None, now: datetime) -> str | None:
    def outcome_of(stage: str) -> str:
        if status != "completed":
            return CallSession.Outcome.FAILED
        return machine.outcome_for(machine.Stage(stage)).value if stage else CallSession.Outcome.ABANDONED

    event = {"kind": "call_ended", "call_status": status, "duration": duration}
    return _close_call(
        call_sid,
        outcome_of=outcome_of,
        event=event,
        source=CallStateSnapshot.Source.WEBHOOK,
        now=now,
        duration=duration,
    )


# --- operations: the sweep (Celery) and staff actions (admin) -------------------------------------------


def stale_session_ids(now: datetime, limit: int = 1000, batch: int = 500) -> list[int]:
    """Sessions still open, older than the shortest state TTL, whose Redis state is gone."""
    cutoff = now - timedelta(seconds=min(TTL_BY_STAGE.values()))
    open_sessions = CallSession.objects.filter(ended_at__isnull=True, started_at__lt=cutoff).order_by("id")
    stale: list[int] = []
    after = 0
    while len(stale) < limit:
        candidates = list(open_sessions.filter(id__gt=after).values_list("id", "call_sid")[:batch])
        if not candidates:
            break
        pipeline = get_store().client.pipeline(transaction=False)
        for _, call_sid in candidates:
            pipeline.exists(state_key(call_sid))
        present = pipeline.execute()
        stale += [
            session_id for (session_id, _), exists in zip(candidates, present, strict=True) if not exists
        ]
        after = candidates[-1][0]
    return stale[:limit]


def expire_session(session_id: int, now: datetime | None = None) -> str | None:
    """Close a session whose Redis state expired (the call went quiet, or its status callback
    never came). Re-checks everything; does nothing if the state is back or the call ended."""
    call_sid = CallSession.objects.filter(pk=session_id).values_list("call_sid", flat=True).first()
    if call_sid is None:
        return None

    def outcome_of(stage: str) -> str:
        return machine.outcome_for(machine.Stage(stage)).value if stage else CallSession.Outcome.ABANDONED

    return _close_call(
        call_sid,
        outcome_of=outcome_of,
        event={"kind": "state_expired"},
        source=CallStateSnapshot.Source.CELERY,
        now=now or timezone.now(),
        expiring=True,
    )


def terminate_call(call_sid: str, *, now: datetime | None = None) -> str | None:
    """Staff ends a call's IVR session: state deleted, session closed, audited (source admin)."""
    return _close_call(
        call_sid,
        outcome_of=lambda stage: CallSession.Outcome.TERMINATED,
        event={"kind": "terminated_by_staff"},
        source=CallStateSnapshot.Source.ADMIN,
        now=now or timezone.now(),
    )
