"""The IVR's webhooks, one function each: load the call, run the machine, act, save, audit.

Every answer follows the same path:

1. Read the call's state and, with the same round trip, whether this very
   request (its ``I-Twilio-Idempotency-Token``) was answered before: a retry by
   Twilio gets the same TwiML back and changes nothing.
2. Feed the input to the pure machine (:mod:`callops.ivr.machine`) and carry
   out its side effects, feeding their results back in: look-ups first, outside
   any transaction; then, in one database transaction, the job updates, the
   audit row, and the new state written to Redis with compare-and-set together
   with the TwiML for replays. If another request changed the state meanwhile,
   the transaction rolls back (so no job update happens twice) and the whole
   step runs again on the new state: nothing is lost.
3. Redis or the database unreachable: the caller hears a short apology (and is
   put through to the fallback number when there is one). Never a 500.
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

import redis
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Max, Q
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
from callops.ivr.schema import ABSENT, SCHEMA_VERSION, compact_text, state_to_dict
from callops.ivr.store import TTL_BY_STAGE, Replay, Snapshot, StateConflict, get_store, state_key
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


class _Conflict(Exception):
    """Rolls back one attempt's transaction: the state changed under it."""


class _AlreadyAnswered(Exception):
    """Rolls back: this request was answered by an earlier delivery (a Twilio retry)."""

    def __init__(self, twiml: str):
        super().__init__("answered already")
        self.twiml = twiml


# What the platform expects to fail now and then, and the outcome each is counted as.
_FAILURE_OUTCOMES: tuple[tuple[type[Exception], str], ...] = (
    (redis.RedisError, "redis_down"),
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
        try:
            confidence: float | None = float(params.get("Confidence", ""))
        except ValueError:
            confidence = None
        return Speech(speech, confidence)
    return Silence()


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
    sequence = _int_or_none(request.params.get("SequenceNumber"))
    with transaction.atomic():
        commit_without_waiting_for_disk()
        session = _session_for(request)
        recorded = _record_status(session, status, sequence)
    if status in FINAL_CALL_STATUSES:
        # Final is final, even when redelivered: closing a closed call does nothing,
        # and closing one whose first delivery failed half-way finishes the job.
        duration = _int_or_none(request.params.get("CallDuration"))
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
        except _AlreadyAnswered as replay:
            return WebhookAnswer(replay.twiml, "replayed")
        except (_Conflict, IntegrityError) as exc:
            # Someone else wrote this call's state (or audit row) first: their change
            # stands, ours was rolled back; run ours again on top of theirs.
            logger.info(
                "call %s changed meanwhile (%s); running %s again",
                request.call_sid,
                type(exc).__name__,
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
            return _start_fresh_after_corruption(request, snapshot, session)
    if snapshot.decoded is None:
        session = _session_for(request)  # the call's first webhook creates it
        if session.ended:
            # A late webhook for a call that is over: nothing to say.
            return _answer_without_writing(request, twiml.hangup(), "call_ended")
        sequence = _next_sequence(call_sid)
        reason = StartReason.NEW_CALL if sequence == 1 else StartReason.STATE_EXPIRED
        if reason is StartReason.STATE_EXPIRED:
            logger.warning(
                "call %s has no state (expired or lost); starting it again",
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
            return _commit(request, transition, version=sequence, expected=ABSENT, audit_event=audit_event,
                           was_language=Language(session.language))  # fmt: skip

    state = snapshot.decoded.state
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
            # The input changes a job: run it again where the change can be rolled back
            # with the state write (look-ups are repeated; the machine is pure).
            transition, trail, _ = _run_machine(state, event, now, call_sid, may_write=True)
        commit_without_waiting_for_disk()
        audit_event: dict[str, object] = {"kind": "input", "webhook": request.webhook.value, "steps": trail}
        if snapshot.decoded.migrated:
            audit_event["migrated_from_schema"] = snapshot.decoded.read_schema_version
        return _commit(
            request,
            transition,
            version=snapshot.decoded.version + 1,
            expected=snapshot.guard,
            audit_event=audit_event,
            was_language=state.language,
        )


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


def _commit(
    request: WebhookRequest,
    transition: Transition,
    *,
    version: int,
    expected: str,
    audit_event: dict[str, object],
    was_language: Language,
) -> WebhookAnswer:
    """Audit, then compare-and-set the new state with this request's TwiML (inside the transaction)."""
    state = transition.state
    assert transition.prompt is not None, "committing a transition that still awaits a result"
    answer = twiml.render(transition.prompt, state.language, transition.effects)
    _audit(
        request.call_sid,
        version,
        state=state_to_dict(state, version),
        event=audit_event,
        source=CallStateSnapshot.Source.WEBHOOK,
        when=request.now,
    )
    if state.language is not was_language:
        CallSession.objects.filter(call_sid=request.call_sid).update(language=state.language.value)
    replay = _replay(request, answer)
    result = get_store().compare_and_set(state, version, expected=expected, replay=replay)
    if result.outcome == "replay":
        raise _AlreadyAnswered(result.replayed.decode() if result.replayed else answer)
    if not result.ok:
        raise _Conflict
    if state.stage in END_STAGES:
        logger.info("call %s reached %s", request.call_sid, state.stage, extra={"call_sid": request.call_sid})
    return WebhookAnswer(answer, "ok")


def _replay(request: WebhookRequest, answer: str) -> Replay | None:
    if not request.idempotency_token:
        return None
    return Replay(request.idempotency_token, answer.encode(), settings.IVR_REPLAY_TTL)


def _answer_without_writing(request: WebhookRequest, answer: str, outcome: str) -> WebhookAnswer:
    replay = _replay(request, answer)
    if replay is not None:
        get_store().remember_response(request.call_sid, replay)
    return WebhookAnswer(answer, outcome)


def _start_fresh_after_corruption(
    request: WebhookRequest, snapshot: Snapshot, session: CallSession
) -> WebhookAnswer:
    """An undecodable value: log it, keep it in the audit trail, and start the call again."""
    call_sid = request.call_sid
    assert snapshot.raw is not None
    logger.error(
        "call %s: stored state is undecodable (%s); starting the call again",
        call_sid,
        snapshot.error,
        extra={"call_sid": call_sid},
    )
    metrics.STATE_CORRUPT.inc()
    sequence = _next_sequence(call_sid)
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
        expected=snapshot.guard,
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


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None and text.strip() else None
    except ValueError:
        return None


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


def _next_sequence(call_sid: str) -> int:
    latest = CallStateSnapshot.objects.filter(call_sid=call_sid).aggregate(latest=Max("sequence"))["latest"]
    return (latest or 0) + 1


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


def _latest_audited_state(call_sid: str) -> dict[str, Any] | None:
    row = (
        CallStateSnapshot.objects.filter(call_sid=call_sid)
        .exclude(schema_version=0)  # corrupt values, kept raw
        .order_by("-sequence")
        .values_list("state", flat=True)
        .first()
    )
    return row if isinstance(row, dict) else None


def _close_call(
    call_sid: str,
    *,
    outcome_of: Callable[[str], str],
    event: dict[str, Any],
    source: str,
    now: datetime,
    duration: int | None = None,
    only_if: Callable[[Snapshot | None], bool] = lambda snapshot: True,
) -> str | None:
    """End a call: mark its session, append the final audit row, delete its Redis state.

    ``outcome_of(stage)`` picks the outcome from the stage the call ended in. With
    Redis down the call is still closed in the database (its state expires on
    its own). Returns the outcome, or None if the call was ended already (or
    ``only_if`` declined). Safe to run twice.
    """
    store = get_store()
    for attempt in range(MAX_WRITE_ATTEMPTS):
        try:
            snapshot: Snapshot | None = store.read(call_sid)[0]
        except redis.RedisError as exc:
            logger.warning(
                "closing call %s without Redis (%r): its state will expire by itself",
                call_sid,
                exc,
                extra={"call_sid": call_sid},
            )
            snapshot = None
        if not only_if(snapshot):
            return None
        try:
            with transaction.atomic():
                commit_without_waiting_for_disk()
                session = CallSession.objects.select_for_update().filter(call_sid=call_sid).first()
                if session is None or session.ended:
                    return None
                if snapshot is not None and snapshot.decoded is not None:
                    last_state: dict[str, Any] | None = state_to_dict(
                        snapshot.decoded.state, snapshot.decoded.version
                    )
                else:
                    last_state = _latest_audited_state(call_sid)
                stage = str(last_state.get("stage", "")) if last_state else ""
                outcome = outcome_of(stage)
                sequence = _next_sequence(call_sid)
                if snapshot is not None and snapshot.decoded is not None:
                    sequence = max(sequence, snapshot.decoded.version + 1)
                final_state = {**(last_state or {}), "version": sequence}
                _audit(
                    call_sid,
                    sequence,
                    state=final_state,
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
                deleting = snapshot is not None and snapshot.raw is not None
                if deleting and not store.compare_and_delete(call_sid, expected=snapshot.guard).ok:
                    raise _Conflict
        except (_Conflict, IntegrityError):
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            continue
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
        # Redis must positively say the state is gone: an outage proves nothing.
        only_if=lambda snapshot: snapshot is not None and snapshot.raw is None,
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
