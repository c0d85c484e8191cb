"""The pure call-state machine: data in, data out; no doubles needed, only a time."""

from __future__ import annotations

import ast
import itertools
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from callops.ivr import machine, numbers
from callops.ivr.machine import (
    END_STAGES,
    ActionDone,
    ActionRejected,
    ActionType,
    AddJobNote,
    CallState,
    ClientFound,
    ClientNotFound,
    Digits,
    EndCall,
    InputKind,
    InputNotAccepted,
    JobFound,
    JobNotFound,
    JobSummary,
    Language,
    Listen,
    LookUpClient,
    LookUpJob,
    MachineConfig,
    Outcome,
    PromptKey,
    RejectReason,
    RescheduleJob,
    Resume,
    SetJobStatus,
    Silence,
    Speech,
    Stage,
    StartReason,
    TransferCall,
    UnexpectedResult,
    start_call,
    step,
)
from callops.models import ALLOWED_TRANSITIONS, JobStatus

NOW = datetime(2026, 11, 23, 15, 30, tzinfo=UTC)
TODAY = NOW.date()
CONFIG = MachineConfig()
JOB = JobSummary(
    client_id="1001",
    job_number="501",
    title="Replace rooftop compressor",
    address="Av. Reforma 120",
    status="scheduled",
    allowed_statuses=("cancelled", "in_progress", "on_hold", "scheduled"),
    scheduled_for=date(2026, 11, 26),
)


def at(stage: Stage, **changes) -> CallState:
    """A plausible state at ``stage`` (what the earlier stages would have filled in)."""
    state = CallState(call_sid="CA1", stage=stage, attempts=0, language=Language.SPANISH, last_updated=NOW)
    if stage is Stage.COLLECT_JOB_NUMBER:
        state = replace(state, client_id="1001", client_name="Hospital")
    elif stage is not Stage.COLLECT_CLIENT_ID:
        state = replace(state, client_id="1001", client_name="Hospital", job_number="501", job=JOB)
    if stage is Stage.EXECUTE_ACTION:
        state = replace(state, action_type=ActionType.STATUS)
    return replace(state, **changes)


def feed(state: CallState, event, config: MachineConfig = CONFIG, now: datetime = NOW):
    return step(state, event, now=now, config=config)


def keys(transition) -> list[PromptKey]:
    assert transition.prompt is not None
    return [line.key for line in transition.prompt.lines]


# --- the table: every stage x every input kind --------------------------------------------------

SAMPLE_INPUTS = {
    InputKind.DIGITS: Digits("1"),
    InputKind.SPEECH: Speech("sí"),
    InputKind.SILENCE: Silence(),
    InputKind.RESUME: Resume(),
    InputKind.CLIENT_FOUND: ClientFound("1001", "Hospital"),
    InputKind.CLIENT_NOT_FOUND: ClientNotFound("1001"),
    InputKind.JOB_FOUND: JobFound(JOB),
    InputKind.JOB_NOT_FOUND: JobNotFound("1001", "501"),
    InputKind.ACTION_DONE: ActionDone(JOB),
    InputKind.ACTION_REJECTED: ActionRejected(RejectReason.JOB_GONE),
}
CALLER = {InputKind.DIGITS, InputKind.SPEECH, InputKind.SILENCE, InputKind.RESUME}
# Written out, not derived from machine.TABLE, so that a change to the table must change this too.
ACCEPTED = {
    Stage.COLLECT_CLIENT_ID: CALLER | {InputKind.CLIENT_FOUND, InputKind.CLIENT_NOT_FOUND},
    Stage.COLLECT_JOB_NUMBER: CALLER | {InputKind.JOB_FOUND, InputKind.JOB_NOT_FOUND},
    Stage.CONFIRM_JOB: CALLER,
    Stage.ASK_ACTION: CALLER,
    Stage.EXECUTE_ACTION: CALLER | {InputKind.ACTION_DONE, InputKind.ACTION_REJECTED},
    Stage.GOODBYE: set(),
    Stage.GAVE_UP: set(),
    Stage.TRANSFERRED: set(),
}


def test_sample_inputs_cover_every_kind():
    assert set(SAMPLE_INPUTS) == set(InputKind)
    assert all(event.kind is kind for kind, event in SAMPLE_INPUTS.items())
    assert set(ACCEPTED) == set(Stage)


def state_awaiting(stage: Stage, kind: InputKind) -> CallState:
    """The state in which a result of ``kind`` is what the machine waits for."""
    state = at(stage)
    if kind in (InputKind.CLIENT_FOUND, InputKind.CLIENT_NOT_FOUND):
        state = replace(state, client_id="1001")
    if kind in (InputKind.JOB_FOUND, InputKind.JOB_NOT_FOUND):
        state = replace(state, job_number="501")
    if kind in (InputKind.ACTION_DONE, InputKind.ACTION_REJECTED):
        state = replace(state, action_value="in_progress")
    return state


@pytest.mark.parametrize(("stage", "kind"), list(itertools.product(Stage, InputKind)))
def test_every_stage_and_input_kind(stage, kind):
    state = state_awaiting(stage, kind)
    event = SAMPLE_INPUTS[kind]
    if kind in ACCEPTED[stage]:
        transition = feed(state, event)
        assert transition.state.call_sid == "CA1"
        assert transition.state.last_updated == NOW
        assert transition.prompt is not None or transition.effects, "neither words nor work"
    else:
        with pytest.raises(InputNotAccepted) as caught:
            feed(state, event)
        assert caught.value.stage is stage
        assert caught.value.kind is kind
        assert str(caught.value) == f"stage {stage.value!r} does not accept input {kind.value!r}"
        assert isinstance(caught.value, ValueError)


def test_the_table_is_exactly_the_accepted_pairs():
    assert set(machine.TABLE) == {(stage, kind) for stage, kinds in ACCEPTED.items() for kind in kinds}


# --- a call, step by step ------------------------------------------------------------------------

CASES = [
    # (name, state, input, stage after, attempts after, effects, prompt keys (None: awaits a result))
    ("client id keyed", at(Stage.COLLECT_CLIENT_ID), Digits("1001"),
     Stage.COLLECT_CLIENT_ID, 0, (LookUpClient("1001"),), None),
    ("client id spoken in words", at(Stage.COLLECT_CLIENT_ID), Speech("Uno, cero, cero, uno."),
     Stage.COLLECT_CLIENT_ID, 0, (LookUpClient("1001"),), None),
    ("client id spoken as numerals", at(Stage.COLLECT_CLIENT_ID), Speech("My number is 10 01"),
     Stage.COLLECT_CLIENT_ID, 0, (LookUpClient("1001"),), None),
    ("client id spoken as a number", at(Stage.COLLECT_CLIENT_ID), Speech("Dos mil uno"),
     Stage.COLLECT_CLIENT_ID, 0, (LookUpClient("2001"),), None),
    ("client id spoken as a number in English", at(Stage.COLLECT_CLIENT_ID), Speech("one thousand and one"),
     Stage.COLLECT_CLIENT_ID, 0, (LookUpClient("1001"),), None),
    ("client id spoken too long", at(Stage.COLLECT_CLIENT_ID), Speech("un millón un millón un millón"),
     Stage.COLLECT_CLIENT_ID, 1, (), [PromptKey.NUMBER_TOO_LONG, PromptKey.ASK_CLIENT_ID, PromptKey.LANGUAGE_HINT]),
    ("client id not a number", at(Stage.COLLECT_CLIENT_ID), Speech("buenas tardes"),
     Stage.COLLECT_CLIENT_ID, 1, (), [PromptKey.NOT_UNDERSTOOD, PromptKey.ASK_CLIENT_ID, PromptKey.LANGUAGE_HINT]),
    ("client id too long", at(Stage.COLLECT_CLIENT_ID), Digits("1234567890123"),
     Stage.COLLECT_CLIENT_ID, 1, (), [PromptKey.NUMBER_TOO_LONG, PromptKey.ASK_CLIENT_ID, PromptKey.LANGUAGE_HINT]),
    ("client found", at(Stage.COLLECT_CLIENT_ID, client_id="1001", attempts=2), ClientFound("1001", "Hospital"),
     Stage.COLLECT_JOB_NUMBER, 0, (), [PromptKey.CLIENT_GREETING, PromptKey.ASK_JOB_NUMBER]),
    ("client not found", at(Stage.COLLECT_CLIENT_ID, client_id="9"), ClientNotFound("9"),
     Stage.COLLECT_CLIENT_ID, 1, (), [PromptKey.CLIENT_NOT_FOUND, PromptKey.ASK_CLIENT_ID, PromptKey.LANGUAGE_HINT]),
    ("job number keyed", at(Stage.COLLECT_JOB_NUMBER), Digits("501"),
     Stage.COLLECT_JOB_NUMBER, 0, (LookUpJob("1001", "501"),), None),
    ("job number said", at(Stage.COLLECT_JOB_NUMBER), Speech("Quinientos uno"),
     Stage.COLLECT_JOB_NUMBER, 0, (LookUpJob("1001", "501"),), None),
    ("job found", at(Stage.COLLECT_JOB_NUMBER, job_number="501"), JobFound(JOB),
     Stage.CONFIRM_JOB, 0, (), [PromptKey.READ_JOB, PromptKey.CONFIRM_JOB]),
    ("job not found", at(Stage.COLLECT_JOB_NUMBER, job_number="999"), JobNotFound("1001", "999"),
     Stage.COLLECT_JOB_NUMBER, 1, (), [PromptKey.JOB_NOT_FOUND, PromptKey.ASK_JOB_NUMBER]),
    ("confirm by key", at(Stage.CONFIRM_JOB), Digits("1"), Stage.ASK_ACTION, 0, (), [PromptKey.ASK_ACTION]),
    ("confirm by word", at(Stage.CONFIRM_JOB), Speech("Sí, correcto"), Stage.ASK_ACTION, 0, (), [PromptKey.ASK_ACTION]),
    ("another job", at(Stage.CONFIRM_JOB), Speech("no"), Stage.COLLECT_JOB_NUMBER, 0, (), [PromptKey.ASK_JOB_NUMBER]),
    ("confirm unclear", at(Stage.CONFIRM_JOB), Speech("no sí"), Stage.CONFIRM_JOB, 1, (),
     [PromptKey.NOT_UNDERSTOOD, PromptKey.READ_JOB, PromptKey.CONFIRM_JOB]),
    ("status chosen: only real changes offered", at(Stage.ASK_ACTION), Digits("1"), Stage.EXECUTE_ACTION, 0, (),
     [PromptKey.ASK_STATUS] + [PromptKey.STATUS_OPTION] * 3 + [PromptKey.GO_BACK_HINT]),
    ("note chosen by word", at(Stage.ASK_ACTION), Speech("Quiero agregar una nota"), Stage.EXECUTE_ACTION, 0, (),
     [PromptKey.ASK_NOTE, PromptKey.GO_BACK_HINT]),
    ("reschedule chosen", at(Stage.ASK_ACTION), Digits("3"), Stage.EXECUTE_ACTION, 0, (),
     [PromptKey.ASK_DATE, PromptKey.GO_BACK_HINT]),
    ("goodbye", at(Stage.ASK_ACTION), Speech("No, adiós"), Stage.GOODBYE, 0, (EndCall(Outcome.COMPLETED),),
     [PromptKey.GOODBYE]),
    ("menu key not offered", at(Stage.ASK_ACTION), Digits("7"), Stage.ASK_ACTION, 1, (),
     [PromptKey.NOT_UNDERSTOOD, PromptKey.ASK_ACTION]),
    ("status of a closed job", at(Stage.ASK_ACTION, job=replace(JOB, status="completed", allowed_statuses=())),
     Digits("1"), Stage.ASK_ACTION, 1, (), [PromptKey.STATUS_IS_FINAL, PromptKey.ASK_ACTION]),
    ("status keyed", at(Stage.EXECUTE_ACTION), Digits("2"), Stage.EXECUTE_ACTION, 0,
     (SetJobStatus("1001", "501", "in_progress"),), None),
    ("status said", at(Stage.EXECUTE_ACTION), Speech("en espera"), Stage.EXECUTE_ACTION, 0,
     (SetJobStatus("1001", "501", "on_hold"),), None),
    ("status not offered", at(Stage.EXECUTE_ACTION), Digits("1"), Stage.EXECUTE_ACTION, 1, (),
     [PromptKey.STATUS_NOT_OFFERED, PromptKey.ASK_STATUS] + [PromptKey.STATUS_OPTION] * 3 + [PromptKey.GO_BACK_HINT]),
    ("status keyed is the current one", at(Stage.EXECUTE_ACTION), Digits("4"), Stage.EXECUTE_ACTION, 1, (),
     [PromptKey.STATUS_NOT_OFFERED, PromptKey.ASK_STATUS] + [PromptKey.STATUS_OPTION] * 3 + [PromptKey.GO_BACK_HINT]),
    ("status said is the current one", at(Stage.EXECUTE_ACTION), Speech("programado"), Stage.EXECUTE_ACTION, 1, (),
     [PromptKey.STATUS_NOT_OFFERED, PromptKey.ASK_STATUS] + [PromptKey.STATUS_OPTION] * 3 + [PromptKey.GO_BACK_HINT]),
    ("status whose only transition is to itself", at(Stage.ASK_ACTION, job=replace(JOB, allowed_statuses=("scheduled",))),
     Digits("1"), Stage.ASK_ACTION, 1, (), [PromptKey.STATUS_IS_FINAL, PromptKey.ASK_ACTION]),
    ("back to the menu", at(Stage.EXECUTE_ACTION), Digits("0"), Stage.ASK_ACTION, 0, (), [PromptKey.ASK_ACTION]),
    ("note said", at(Stage.EXECUTE_ACTION, action_type=ActionType.NOTE), Speech("Volver a revisar el filtro."),
     Stage.EXECUTE_ACTION, 0, (AddJobNote("1001", "501", "Volver a revisar el filtro."),), None),
    ("note keyed", at(Stage.EXECUTE_ACTION, action_type=ActionType.NOTE), Digits("5"), Stage.EXECUTE_ACTION, 1, (),
     [PromptKey.SAY_YOUR_NOTE, PromptKey.ASK_NOTE, PromptKey.GO_BACK_HINT]),
    ("note abandoned by word", at(Stage.EXECUTE_ACTION, action_type=ActionType.NOTE), Speech("volver"),
     Stage.ASK_ACTION, 0, (), [PromptKey.ASK_ACTION]),
    ("date keyed", at(Stage.EXECUTE_ACTION, action_type=ActionType.RESCHEDULE), Digits("20261130"),
     Stage.EXECUTE_ACTION, 0, (RescheduleJob("1001", "501", date(2026, 11, 30)),), None),
    ("date said", at(Stage.EXECUTE_ACTION, action_type=ActionType.RESCHEDULE), Speech("dos mil veintiséis once treinta"),
     Stage.EXECUTE_ACTION, 0, (RescheduleJob("1001", "501", date(2026, 11, 30)),), None),
    ("date today", at(Stage.EXECUTE_ACTION, action_type=ActionType.RESCHEDULE), Digits("20261123"),
     Stage.EXECUTE_ACTION, 0, (RescheduleJob("1001", "501", TODAY),), None),
    ("date in the past", at(Stage.EXECUTE_ACTION, action_type=ActionType.RESCHEDULE), Digits("20261122"),
     Stage.EXECUTE_ACTION, 1, (), [PromptKey.DATE_IN_PAST, PromptKey.ASK_DATE, PromptKey.GO_BACK_HINT]),
    ("date not a date", at(Stage.EXECUTE_ACTION, action_type=ActionType.RESCHEDULE), Digits("20261131"),
     Stage.EXECUTE_ACTION, 1, (), [PromptKey.INVALID_DATE, PromptKey.ASK_DATE, PromptKey.GO_BACK_HINT]),
    ("date too far", at(Stage.EXECUTE_ACTION, action_type=ActionType.RESCHEDULE), Digits("20290101"),
     Stage.EXECUTE_ACTION, 1, (), [PromptKey.DATE_TOO_FAR, PromptKey.ASK_DATE, PromptKey.GO_BACK_HINT]),
    ("action done", at(Stage.EXECUTE_ACTION, action_value="in_progress", attempts=1),
     ActionDone(replace(JOB, status="in_progress")), Stage.ASK_ACTION, 0, (),
     [PromptKey.STATUS_DONE, PromptKey.ANYTHING_ELSE, PromptKey.ASK_ACTION]),
    ("action rejected: back to the menu", at(Stage.EXECUTE_ACTION, action_value="in_progress", attempts=1),
     ActionRejected(RejectReason.STATUS_NOT_ALLOWED, replace(JOB, status="cancelled", allowed_statuses=())),
     Stage.ASK_ACTION, 0, (), [PromptKey.REJECTED_STATUS_NOT_ALLOWED, PromptKey.ASK_ACTION]),
    ("action rejected: job gone", at(Stage.EXECUTE_ACTION, action_value="in_progress"),
     ActionRejected(RejectReason.JOB_GONE), Stage.COLLECT_JOB_NUMBER, 0, (),
     [PromptKey.REJECTED_JOB_GONE, PromptKey.ASK_JOB_NUMBER]),
    ("menu choice by spoken digit", at(Stage.ASK_ACTION), Speech("opción dos"), Stage.EXECUTE_ACTION, 0, (),
     [PromptKey.ASK_NOTE, PromptKey.GO_BACK_HINT]),
    ("silence", at(Stage.CONFIRM_JOB), Silence(), Stage.CONFIRM_JOB, 1, (),
     [PromptKey.NO_INPUT, PromptKey.READ_JOB, PromptKey.CONFIRM_JOB]),
    ("empty keys count as silence", at(Stage.COLLECT_CLIENT_ID), Digits(""), Stage.COLLECT_CLIENT_ID, 1, (),
     [PromptKey.NO_INPUT, PromptKey.ASK_CLIENT_ID, PromptKey.LANGUAGE_HINT]),
    ("resume repeats, counts nothing", at(Stage.ASK_ACTION, attempts=2), Resume(), Stage.ASK_ACTION, 2, (),
     [PromptKey.ASK_ACTION]),
]  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_step(case):
    state, event, stage, attempts, effects, prompt_keys = case
    transition = feed(state, event)
    assert transition.state.stage is stage
    assert transition.state.attempts == attempts
    assert transition.effects == effects
    if prompt_keys is None:
        assert transition.prompt is None  # the service must feed the result back first
    else:
        assert keys(transition) == prompt_keys


def test_action_rejected_says_why_and_keeps_the_job_as_it_is_now():
    now_cancelled = replace(JOB, status="cancelled", allowed_statuses=())
    state = at(Stage.EXECUTE_ACTION, action_value="in_progress")
    transition = feed(state, ActionRejected(RejectReason.STATUS_NOT_ALLOWED, now_cancelled))
    assert transition.prompt.lines[0].key is PromptKey.REJECTED_STATUS_NOT_ALLOWED
    assert transition.prompt.lines[0].arg("status") == "cancelled"
    assert transition.state.job == now_cancelled
    assert (transition.state.action_type, transition.state.action_value) == (None, "")


def test_a_full_call_carries_its_data_along():
    state = start_call("CA9", now=NOW).state
    for event in (Digits("1001"), ClientFound("1001", "Hospital"), Digits("501"), JobFound(JOB), Digits("1"),
                  Digits("3"), Digits("20261201")):  # fmt: skip
        state = feed(state, event).state
    assert (state.stage, state.client_id, state.client_name, state.job_number) == (
        Stage.EXECUTE_ACTION, "1001", "Hospital", "501")  # fmt: skip
    assert (state.action_type, state.action_value) == (ActionType.RESCHEDULE, "2026-12-01")
    done = feed(state, ActionDone(replace(JOB, scheduled_for=date(2026, 12, 1))))
    assert done.state.stage is Stage.ASK_ACTION
    assert (done.state.action_type, done.state.action_value) == (None, "")
    assert done.prompt.lines[0].arg("date") == "2026-12-01"
    assert done.prompt.listen is Listen.CHOICE


def test_start_call_greets_and_listens_for_a_number():
    transition = start_call("CA1", now=NOW)
    assert transition.state == CallState("CA1", Stage.COLLECT_CLIENT_ID, 0, Language.SPANISH, NOW)
    assert keys(transition) == [PromptKey.WELCOME, PromptKey.ASK_CLIENT_ID, PromptKey.LANGUAGE_HINT]
    assert transition.prompt.lines[-1].language is Language.ENGLISH  # the hint, in the other language
    assert transition.prompt.listen is Listen.NUMBER
    again = start_call("CA1", now=NOW, language=Language.ENGLISH, reason=StartReason.STATE_CORRUPT)
    assert keys(again)[0] is PromptKey.STATE_LOST
    assert again.prompt.lines[-1].language is Language.SPANISH


# --- attempts, per stage ---------------------------------------------------------------------------

LISTENING = [stage for stage in Stage if stage not in END_STAGES]


@pytest.mark.parametrize("stage", LISTENING)
def test_third_failure_at_any_stage_ends_the_call_politely(stage):
    state = at(stage)
    first = feed(state, Silence())
    second = feed(first.state, Silence())
    assert (first.state.attempts, second.state.attempts) == (1, 2)
    assert second.prompt.listen is not None
    third = feed(second.state, Silence())
    assert third.state.stage is Stage.GAVE_UP
    assert third.effects == (EndCall(Outcome.GAVE_UP),)
    assert keys(third) == [PromptKey.NO_INPUT, PromptKey.TOO_MANY_ATTEMPTS, PromptKey.GOODBYE]
    assert third.prompt.listen is None


@pytest.mark.parametrize("stage", LISTENING)
def test_third_failure_transfers_when_a_fallback_number_is_set(stage):
    config = MachineConfig(max_attempts=3, fallback_number="+525550000911")
    state = at(stage, attempts=2)
    transition = feed(state, Digits("#bad"), config)
    assert transition.state.stage is Stage.TRANSFERRED
    assert transition.effects == (TransferCall("+525550000911"),)
    assert keys(transition)[-2:] == [PromptKey.TOO_MANY_ATTEMPTS, PromptKey.TRANSFERRING]


def test_attempts_are_counted_per_stage():
    state = at(Stage.COLLECT_CLIENT_ID, attempts=2, client_id="1001")
    moved = feed(state, ClientFound("1001", "Hospital")).state
    assert (moved.stage, moved.attempts) == (Stage.COLLECT_JOB_NUMBER, 0)
    again = feed(moved, Silence()).state
    assert again.attempts == 1


def test_max_attempts_is_configurable():
    transition = feed(at(Stage.ASK_ACTION), Silence(), MachineConfig(max_attempts=1))
    assert transition.state.stage is Stage.GAVE_UP


# --- language ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "event", "language"),
    [
        (Stage.COLLECT_CLIENT_ID, Digits("*"), Language.ENGLISH),
        (Stage.COLLECT_JOB_NUMBER, Speech("English, please."), Language.ENGLISH),
        (Stage.CONFIRM_JOB, Speech("en inglés"), Language.ENGLISH),
        (Stage.ASK_ACTION, Digits("*"), Language.ENGLISH),
        (Stage.EXECUTE_ACTION, Speech("English"), Language.ENGLISH),
    ],
)
def test_a_key_or_a_word_switches_to_english_anywhere(stage, event, language):
    state = at(stage, attempts=1)
    transition = feed(state, event)
    assert transition.state.language is language
    assert transition.state.stage is stage
    assert transition.state.attempts == 1  # not a failed attempt
    assert keys(transition)[0] is PromptKey.LANGUAGE_SELECTED


def test_star_switches_back_and_spanish_is_asked_by_word():
    english = at(Stage.ASK_ACTION, language=Language.ENGLISH)
    assert feed(english, Digits("*")).state.language is Language.SPANISH
    assert feed(english, Speech("Español")).state.language is Language.SPANISH


def test_a_note_that_mentions_english_is_a_note():
    state = at(Stage.EXECUTE_ACTION, action_type=ActionType.NOTE)
    transition = feed(state, Speech("The manual is in English only"))
    assert transition.state.language is Language.SPANISH
    assert transition.effects == (AddJobNote("1001", "501", "The manual is in English only"),)


# --- results that do not fit ------------------------------------------------------------------------


def test_a_result_for_another_question_is_a_typed_error():
    with pytest.raises(UnexpectedResult, match="client '2002' found, but the call asked for '1001'"):
        feed(at(Stage.COLLECT_CLIENT_ID, client_id="1001"), ClientFound("2002", "Other"))
    with pytest.raises(UnexpectedResult, match="job 1001/502 found"):
        feed(at(Stage.COLLECT_JOB_NUMBER, job_number="501"), JobFound(replace(JOB, job_number="502")))
    with pytest.raises(UnexpectedResult, match="no action was under way"):
        feed(at(Stage.EXECUTE_ACTION), ActionDone(JOB))


def test_every_status_key_is_a_job_status_and_offers_follow_allowed_transitions():
    assert set(machine.STATUS_BY_KEY.values()) == set(JobStatus.values) - {JobStatus.PENDING}
    for status, allowed in ALLOWED_TRANSITIONS.items():
        job = replace(JOB, status=status, allowed_statuses=tuple(sorted(allowed)))
        transition = feed(at(Stage.ASK_ACTION, job=job), Digits("1"))
        if not allowed - {status}:
            assert keys(transition)[0] is PromptKey.STATUS_IS_FINAL
            continue
        offered = [
            line.arg("status") for line in transition.prompt.lines if line.key is PromptKey.STATUS_OPTION
        ]
        assert sorted(offered) == sorted(allowed - {status})  # never the status it already has
        assert status not in offered


def test_outcome_for_each_end_stage():
    assert [machine.outcome_for(stage) for stage in (Stage.GOODBYE, Stage.GAVE_UP, Stage.TRANSFERRED)] == [
        Outcome.COMPLETED, Outcome.GAVE_UP, Outcome.TRANSFERRED]  # fmt: skip
    assert machine.outcome_for(Stage.ASK_ACTION) is Outcome.ABANDONED


def test_record_makes_audit_data():
    assert machine.record(RescheduleJob("1001", "501", date(2026, 12, 1))) == {
        "kind": "reschedule_job", "client_id": "1001", "job_number": "501", "scheduled_for": "2026-12-01"}  # fmt: skip
    assert machine.record(Speech("hola", 0.5)) == {"kind": "speech", "text": "hola", "confidence": 0.5}
    assert machine.record((EndCall(Outcome.GAVE_UP),)) == [{"kind": "end_call", "outcome": "gave_up"}]


@pytest.mark.parametrize("module", [machine, numbers])
def test_the_machine_is_pure(module):
    """No Django, Redis, I/O or clock: it can only compute (and read spoken numbers, likewise pure)."""
    source = Path(module.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert {name.split(".")[0] for name in imported} - {"callops"} <= {
        "__future__",
        "dataclasses",
        "enum",
        "unicodedata",
        "collections",
        "datetime",
        "typing",
    }
    assert {name for name in imported if name.startswith("callops")} <= {"callops.ivr.numbers"}
    assert "datetime.now" not in source
    assert ".today()" not in source


def test_states_inputs_prompts_and_effects_are_frozen():
    transition = feed(at(Stage.COLLECT_CLIENT_ID), Digits("1001"))
    for value in (transition, transition.state, transition.effects[0], JOB, Digits("1")):
        with pytest.raises(AttributeError):
            value.call_sid = "x"  # type: ignore[misc]


def test_dates_are_judged_by_the_time_given():
    state = at(Stage.EXECUTE_ACTION, action_type=ActionType.RESCHEDULE)
    tomorrow = NOW + timedelta(days=1)
    transition = feed(state, Digits("20261123"), now=tomorrow)
    assert keys(transition)[0] is PromptKey.DATE_IN_PAST
