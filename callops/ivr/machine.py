"""The IVR call-state machine: pure data in, pure data out.

A field technician's call moves through these stages::

    COLLECT_CLIENT_ID -> COLLECT_JOB_NUMBER -> CONFIRM_JOB -> ASK_ACTION <-> EXECUTE_ACTION
                                                                  |
                                                  GOODBYE / GAVE_UP / TRANSFERRED (end)

Nothing here touches Django, Redis, the network or a clock: every step takes
the time it happens at (``now``), and everything the caller must hear and the
service must do comes back as frozen dataclasses. The service performs the
side effects (database look-ups and updates) and feeds their results back in
as more inputs, within the same webhook request.

``step()`` dispatches on ONE table, ``(stage, input kind) -> handler``. An input
a stage does not accept raises :class:`InputNotAccepted`, naming both.

Failed attempts are counted per stage (a stage change resets the count); the
``max_attempts``-th failure ends the call politely or, when a fallback number
is configured, transfers the caller there.
"""

from __future__ import annotations

import dataclasses
import enum
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any, ClassVar

from callops.ivr.numbers import digits_from_words

# --- stages, languages, actions ------------------------------------------------------


class Stage(enum.StrEnum):
    COLLECT_CLIENT_ID = "collect_client_id"
    COLLECT_JOB_NUMBER = "collect_job_number"
    CONFIRM_JOB = "confirm_job"
    ASK_ACTION = "ask_action"
    EXECUTE_ACTION = "execute_action"
    # End states: the call is over once the caller has heard the last prompt.
    GOODBYE = "goodbye"  # the caller finished
    GAVE_UP = "gave_up"  # too many failed attempts; ended politely
    TRANSFERRED = "transferred"  # too many failed attempts; sent to the fallback number


END_STAGES = frozenset({Stage.GOODBYE, Stage.GAVE_UP, Stage.TRANSFERRED})


class Language(enum.StrEnum):
    SPANISH = "es"
    ENGLISH = "en"


class ActionType(enum.StrEnum):
    STATUS = "status"
    NOTE = "note"
    RESCHEDULE = "reschedule"


class Outcome(enum.StrEnum):
    """How a call ended, from the stage it was in when it ended."""

    COMPLETED = "completed"
    GAVE_UP = "gave_up"
    TRANSFERRED = "transferred"
    ABANDONED = "abandoned"  # hung up (or went silent until the state expired) mid-way


def outcome_for(stage: Stage) -> Outcome:
    return {
        Stage.GOODBYE: Outcome.COMPLETED,
        Stage.GAVE_UP: Outcome.GAVE_UP,
        Stage.TRANSFERRED: Outcome.TRANSFERRED,
    }.get(stage, Outcome.ABANDONED)


# Job statuses as stored by callops.models.JobStatus (this module cannot import
# Django; a test keeps the two in step). The key a caller presses for each is
# fixed, so a technician can learn it; only the allowed ones are offered.
STATUS_BY_KEY: Mapping[str, str] = {
    "1": "completed",
    "2": "in_progress",
    "3": "on_hold",
    "4": "scheduled",
    "5": "cancelled",
}
KEY_BY_STATUS: Mapping[str, str] = {status: key for key, status in STATUS_BY_KEY.items()}

MAX_NUMBER_DIGITS = 12  # Client.code and Job.number are at most 12 digits
MAX_NOTE_CHARS = 2000
RESCHEDULE_HORIZON = timedelta(days=366)

# --- data --------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSummary:
    """The few job fields a call needs: compacted before they enter the call state."""

    client_id: str
    job_number: str
    title: str
    address: str
    status: str
    allowed_statuses: tuple[str, ...]  # where the status may move next
    scheduled_for: date | None


@dataclass(frozen=True)
class CallState:
    call_sid: str
    stage: Stage
    attempts: int  # failed attempts at this stage
    language: Language
    last_updated: datetime
    client_id: str = ""
    client_name: str = ""
    job_number: str = ""
    action_type: ActionType | None = None
    action_value: str = ""  # the status, note text or ISO date being applied
    job: JobSummary | None = None


@dataclass(frozen=True)
class MachineConfig:
    max_attempts: int = 3
    fallback_number: str = ""  # empty: too many failures end the call instead


# --- inputs ------------------------------------------------------------------------


class InputKind(enum.StrEnum):
    DIGITS = "digits"
    SPEECH = "speech"
    SILENCE = "silence"
    RESUME = "resume"  # the voice webhook again for a call already under way
    CLIENT_FOUND = "client_found"
    CLIENT_NOT_FOUND = "client_not_found"
    JOB_FOUND = "job_found"
    JOB_NOT_FOUND = "job_not_found"
    ACTION_DONE = "action_done"
    ACTION_REJECTED = "action_rejected"


@dataclass(frozen=True)
class Digits:
    """DTMF keys (Twilio's ``Digits``), without the finishing ``#``."""

    digits: str
    kind: ClassVar[InputKind] = InputKind.DIGITS


@dataclass(frozen=True)
class Speech:
    """What the caller said (Twilio's ``SpeechResult``)."""

    text: str
    confidence: float | None = None
    kind: ClassVar[InputKind] = InputKind.SPEECH


@dataclass(frozen=True)
class Silence:
    """A gather that ended with neither keys nor speech (``actionOnEmptyResult``)."""

    kind: ClassVar[InputKind] = InputKind.SILENCE


@dataclass(frozen=True)
class Resume:
    kind: ClassVar[InputKind] = InputKind.RESUME


@dataclass(frozen=True)
class ClientFound:
    client_id: str
    name: str
    kind: ClassVar[InputKind] = InputKind.CLIENT_FOUND


@dataclass(frozen=True)
class ClientNotFound:
    client_id: str
    kind: ClassVar[InputKind] = InputKind.CLIENT_NOT_FOUND


@dataclass(frozen=True)
class JobFound:
    job: JobSummary
    kind: ClassVar[InputKind] = InputKind.JOB_FOUND


@dataclass(frozen=True)
class JobNotFound:
    client_id: str
    job_number: str
    kind: ClassVar[InputKind] = InputKind.JOB_NOT_FOUND


@dataclass(frozen=True)
class ActionDone:
    job: JobSummary
    kind: ClassVar[InputKind] = InputKind.ACTION_DONE


class RejectReason(enum.StrEnum):
    JOB_GONE = "job_gone"  # deleted, or moved to another client, since it was read back
    STATUS_NOT_ALLOWED = "status_not_allowed"  # someone else changed the status meanwhile
    JOB_CLOSED = "job_closed"  # completed or cancelled jobs cannot be rescheduled


@dataclass(frozen=True)
class ActionRejected:
    reason: RejectReason
    job: JobSummary | None = None  # the job as it is now, when it still exists
    kind: ClassVar[InputKind] = InputKind.ACTION_REJECTED


Input = (
    Digits
    | Speech
    | Silence
    | Resume
    | ClientFound
    | ClientNotFound
    | JobFound
    | JobNotFound
    | ActionDone
    | ActionRejected
)

# --- side effects (the service carries them out) --------------------------------------


@dataclass(frozen=True)
class LookUpClient:
    client_id: str
    kind: ClassVar[str] = "look_up_client"


@dataclass(frozen=True)
class LookUpJob:
    client_id: str
    job_number: str
    kind: ClassVar[str] = "look_up_job"


@dataclass(frozen=True)
class SetJobStatus:
    client_id: str
    job_number: str
    status: str
    kind: ClassVar[str] = "set_job_status"


@dataclass(frozen=True)
class AddJobNote:
    client_id: str
    job_number: str
    text: str
    kind: ClassVar[str] = "add_job_note"


@dataclass(frozen=True)
class RescheduleJob:
    client_id: str
    job_number: str
    scheduled_for: date
    kind: ClassVar[str] = "reschedule_job"


@dataclass(frozen=True)
class EndCall:
    outcome: Outcome
    kind: ClassVar[str] = "end_call"


@dataclass(frozen=True)
class TransferCall:
    number: str
    kind: ClassVar[str] = "transfer_call"


Effect = LookUpClient | LookUpJob | SetJobStatus | AddJobNote | RescheduleJob | EndCall | TransferCall
# Effects whose result the service must feed back before anything is said.
AWAITS_RESULT = (LookUpClient, LookUpJob, SetJobStatus, AddJobNote, RescheduleJob)

# --- what to say ---------------------------------------------------------------------


class PromptKey(enum.StrEnum):
    """One sentence of the catalogue in :mod:`callops.ivr.prompts` (Spanish and English)."""

    WELCOME = "welcome"
    SESSION_RESTARTED = "session_restarted"
    STATE_LOST = "state_lost"
    ASK_CLIENT_ID = "ask_client_id"
    LANGUAGE_HINT = "language_hint"
    LANGUAGE_SELECTED = "language_selected"
    CLIENT_GREETING = "client_greeting"
    ASK_JOB_NUMBER = "ask_job_number"
    CLIENT_NOT_FOUND = "client_not_found"
    JOB_NOT_FOUND = "job_not_found"
    READ_JOB = "read_job"
    READ_JOB_UNSCHEDULED = "read_job_unscheduled"
    CONFIRM_JOB = "confirm_job"
    ASK_ACTION = "ask_action"
    ANYTHING_ELSE = "anything_else"
    ASK_STATUS = "ask_status"
    STATUS_OPTION = "status_option"
    STATUS_IS_FINAL = "status_is_final"
    STATUS_NOT_OFFERED = "status_not_offered"
    ASK_NOTE = "ask_note"
    SAY_YOUR_NOTE = "say_your_note"
    ASK_DATE = "ask_date"
    INVALID_DATE = "invalid_date"
    DATE_IN_PAST = "date_in_past"
    DATE_TOO_FAR = "date_too_far"
    GO_BACK_HINT = "go_back_hint"
    STATUS_DONE = "status_done"
    NOTE_DONE = "note_done"
    RESCHEDULE_DONE = "reschedule_done"
    REJECTED_JOB_GONE = "rejected_job_gone"
    REJECTED_STATUS_NOT_ALLOWED = "rejected_status_not_allowed"
    REJECTED_JOB_CLOSED = "rejected_job_closed"
    NOT_UNDERSTOOD = "not_understood"
    NO_INPUT = "no_input"
    NUMBER_TOO_LONG = "number_too_long"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    TRANSFERRING = "transferring"
    GOODBYE = "goodbye"


class Listen(enum.StrEnum):
    """What the gather after a prompt expects; the TwiML tunes timeouts and hints to it."""

    NUMBER = "number"  # an id keyed and ended with #, or said
    CHOICE = "choice"  # one key or a word
    NOTE = "note"  # free speech
    DATE = "date"  # eight digits


@dataclass(frozen=True)
class Line:
    key: PromptKey
    args: tuple[tuple[str, str], ...] = ()
    language: Language | None = None  # None: the call's language

    def arg(self, name: str) -> str:
        return dict(self.args)[name]


@dataclass(frozen=True)
class Prompt:
    lines: tuple[Line, ...]
    listen: Listen | None  # None: nothing more is gathered; the call ends after these lines


@dataclass(frozen=True)
class Transition:
    state: CallState
    prompt: Prompt | None  # None while an effect's result is still to be fed back
    effects: tuple[Effect, ...] = ()


# --- errors ----------------------------------------------------------------------------


class MachineError(ValueError):
    """The caller of the machine (the service) fed it something it cannot use."""


class InputNotAccepted(MachineError):
    def __init__(self, stage: Stage, kind: InputKind):
        super().__init__(f"stage {stage.value!r} does not accept input {kind.value!r}")
        self.stage = stage
        self.kind = kind


class UnexpectedResult(MachineError):
    """A look-up or action result that does not answer what the state is waiting for."""


# --- reading what the caller keyed or said ----------------------------------------------


def _vocabulary(text: str) -> frozenset[str]:
    """Words as ``words()`` leaves them: lower case, no accents."""
    return frozenset(text.split())


YES_WORDS = _vocabulary(
    "si yes correcto correct confirmo confirmar confirm claro yeah yep afirmativo ok okay vale"
)
NO_WORDS = _vocabulary("no incorrecto incorrect otro other nope wrong equivocado")
ACTION_WORDS: Mapping[ActionType, frozenset[str]] = {
    ActionType.STATUS: _vocabulary("estado estatus status state"),
    ActionType.NOTE: _vocabulary("nota note comentario comment"),
    ActionType.RESCHEDULE: _vocabulary("reprogramar reagendar reprograma reschedule fecha date"),
}
# "no" too: the menu after an action asks "anything else?"
GOODBYE_WORDS = _vocabulary("adios terminar termina salir colgar nada goodbye bye exit nothing hang no")
BACK_WORDS = _vocabulary("volver regresar atras back menu")
STATUS_WORDS: Mapping[str, frozenset[str]] = {
    "completed": _vocabulary(
        "completado completada completo terminado terminada listo completed complete done finished"
    ),
    "in_progress": _vocabulary("progreso proceso curso progress"),
    "on_hold": _vocabulary("espera pausa pausado detenido hold paused waiting"),
    "scheduled": _vocabulary("programado programada agendado scheduled"),
    "cancelled": _vocabulary("cancelado cancelada cancelled canceled"),
}
LANGUAGE_WORDS: Mapping[str, Language] = {
    "english": Language.ENGLISH,
    "ingles": Language.ENGLISH,
    "espanol": Language.SPANISH,
    "spanish": Language.SPANISH,
}
# Words that do not change what an utterance asks for ("in English, please").
FILLER_WORDS = _vocabulary("en in por favor please el la de the a quiero i want mi my numero number es is")
LANGUAGE_KEY = "*"  # switches between Spanish and English at any stage that listens


def words(text: str) -> tuple[str, ...]:
    """Lower-case words without accents or punctuation: "¡Sí, inglés!" -> ("si", "ingles")."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return tuple("".join(ch if ch.isalnum() else " " for ch in plain).split())


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # not "²" or "٣": Unicode digits no keypad has


def spoken_number(tokens: tuple[str, ...]) -> str:
    """Digits from speech: "uno cero cero uno", "dos mil uno", "1001." or "10 01" -> "1001"/"2001".

    Reading stops once the number is longer than any id (callops.ivr.numbers has the rules).
    """
    return digits_from_words(tokens, limit=MAX_NUMBER_DIGITS)


@dataclass(frozen=True)
class Utterance:
    """A caller input, keyed or spoken, in the forms the stages interpret."""

    keys: str | None  # DTMF as keyed, or None for speech
    tokens: tuple[str, ...]  # normalized words (empty for DTMF)
    text: str  # speech as recognized (empty for DTMF)

    @classmethod
    def of(cls, event: Digits | Speech) -> Utterance:
        if isinstance(event, Digits):
            return cls(event.digits.strip(), (), "")
        return cls(None, words(event.text), event.text.strip())

    @property
    def number(self) -> str:
        if self.keys is not None:
            return self.keys if _is_digits(self.keys) else ""
        return spoken_number(self.tokens)

    def matches(self, vocabulary: frozenset[str]) -> bool:
        return any(token in vocabulary for token in self.tokens)

    def language_request(self, current: Language) -> Language | None:
        if self.keys == LANGUAGE_KEY:
            return Language.ENGLISH if current is Language.SPANISH else Language.SPANISH
        meaningful = [token for token in self.tokens if token not in FILLER_WORDS]
        if len(meaningful) == 1 and meaningful[0] in LANGUAGE_WORDS:
            return LANGUAGE_WORDS[meaningful[0]]
        return None


def _yes_or_no(utterance: Utterance) -> bool | None:
    by_key = {"1": True, "2": False}
    if utterance.keys is not None:
        return by_key.get(utterance.keys)
    yes, no = utterance.matches(YES_WORDS), utterance.matches(NO_WORDS)
    if yes != no:
        return yes
    return None if yes else by_key.get(spoken_number(utterance.tokens))


def _chosen_action(utterance: Utterance) -> ActionType | Stage | None:
    """ASK_ACTION's menu: an action, or Stage.GOODBYE to end the call."""
    by_key: Mapping[str, ActionType | Stage] = {
        "1": ActionType.STATUS,
        "2": ActionType.NOTE,
        "3": ActionType.RESCHEDULE,
        "0": Stage.GOODBYE,
    }
    if utterance.keys is not None:
        return by_key.get(utterance.keys)
    chosen: set[ActionType | Stage] = {
        action for action, vocabulary in ACTION_WORDS.items() if utterance.matches(vocabulary)
    }
    if utterance.matches(GOODBYE_WORDS):
        chosen.add(Stage.GOODBYE)
    if chosen:
        return chosen.pop() if len(chosen) == 1 else None
    return by_key.get(spoken_number(utterance.tokens))  # "opción dos"


def _chosen_status(utterance: Utterance) -> str | None:
    if utterance.keys is not None:
        return STATUS_BY_KEY.get(utterance.keys)
    chosen = {status for status, vocabulary in STATUS_WORDS.items() if utterance.matches(vocabulary)}
    if chosen:
        return chosen.pop() if len(chosen) == 1 else None
    return STATUS_BY_KEY.get(spoken_number(utterance.tokens))


def _wants_back(utterance: Utterance) -> bool:
    """0, or an utterance that is nothing but "back" ("volver a revisar" stays a note)."""
    if utterance.keys is not None:
        return utterance.keys == "0"
    meaningful = [token for token in utterance.tokens if token not in FILLER_WORDS]
    return bool(meaningful) and all(token in BACK_WORDS for token in meaningful)


def parse_keyed_date(digits: str) -> date | None:
    """``YYYYMMDD`` -> date, or None when it is not a calendar date."""
    if len(digits) != 8 or not _is_digits(digits):
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


# --- prompts for each stage -----------------------------------------------------------------


def spaced(digits: str) -> str:
    """Digits apart ("1001" -> "1 0 0 1"), so text-to-speech says each, not "one thousand one"."""
    return " ".join(digits)


def _job_lines(job: JobSummary) -> tuple[Line, ...]:
    args = (
        ("job_number", spaced(job.job_number)),
        ("title", job.title),
        ("address", job.address),
        ("status", job.status),
    )
    if job.scheduled_for is None:
        return (Line(PromptKey.READ_JOB_UNSCHEDULED, args),)
    return (Line(PromptKey.READ_JOB, (*args, ("date", job.scheduled_for.isoformat()))),)


def status_changes(job: JobSummary) -> tuple[str, ...]:
    """Where the job's status may move: the allowed transitions, minus where it already is
    (choosing that would change nothing, so it is neither offered nor accepted)."""
    return tuple(status for status in job.allowed_statuses if status != job.status)


def _status_options(job: JobSummary) -> tuple[Line, ...]:
    offered = sorted(status_changes(job), key=lambda status: KEY_BY_STATUS.get(status, "9"))
    return tuple(
        Line(PromptKey.STATUS_OPTION, (("status", status), ("key", KEY_BY_STATUS[status])))
        for status in offered
        if status in KEY_BY_STATUS
    )


def stage_prompt(state: CallState) -> Prompt:
    """What the caller hears to (re)start the current stage."""
    other = Language.ENGLISH if state.language is Language.SPANISH else Language.SPANISH
    match state.stage:
        case Stage.COLLECT_CLIENT_ID:
            return Prompt(
                (Line(PromptKey.ASK_CLIENT_ID), Line(PromptKey.LANGUAGE_HINT, (), other)), Listen.NUMBER
            )
        case Stage.COLLECT_JOB_NUMBER:
            return Prompt((Line(PromptKey.ASK_JOB_NUMBER),), Listen.NUMBER)
        case Stage.CONFIRM_JOB:
            assert state.job is not None, "CONFIRM_JOB without a job"
            return Prompt((*_job_lines(state.job), Line(PromptKey.CONFIRM_JOB)), Listen.CHOICE)
        case Stage.ASK_ACTION:
            return Prompt((Line(PromptKey.ASK_ACTION),), Listen.CHOICE)
        case Stage.EXECUTE_ACTION:
            return _action_prompt(state)
        case _:
            return Prompt((), None)


def _action_prompt(state: CallState) -> Prompt:
    back = Line(PromptKey.GO_BACK_HINT)
    match state.action_type:
        case ActionType.STATUS:
            assert state.job is not None, "a status action without a job"
            return Prompt((Line(PromptKey.ASK_STATUS), *_status_options(state.job), back), Listen.CHOICE)
        case ActionType.NOTE:
            return Prompt((Line(PromptKey.ASK_NOTE), back), Listen.NOTE)
        case _:
            return Prompt((Line(PromptKey.ASK_DATE), back), Listen.DATE)


# --- transitions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    now: datetime
    config: MachineConfig


def _move(state: CallState, ctx: Context, stage: Stage, **changes: Any) -> CallState:
    """``state`` at ``stage``; a new stage starts with no failed attempts."""
    attempts = state.attempts if stage is state.stage else 0
    return replace(state, stage=stage, attempts=attempts, last_updated=ctx.now, **changes)


def _say(state: CallState, *lead: Line) -> Transition:
    """Stay listening at ``state``'s stage, after ``lead`` lines."""
    prompt = stage_prompt(state)
    return Transition(state, Prompt((*lead, *prompt.lines), prompt.listen))


def _fail(state: CallState, ctx: Context, reason: Line) -> Transition:
    """One more failed attempt at this stage; the last one ends or transfers the call."""
    attempts = state.attempts + 1
    if attempts < ctx.config.max_attempts:
        return _say(replace(state, attempts=attempts, last_updated=ctx.now), reason)
    exhausted = replace(state, attempts=attempts, last_updated=ctx.now)
    if ctx.config.fallback_number:
        ended = replace(exhausted, stage=Stage.TRANSFERRED)
        lines = (reason, Line(PromptKey.TOO_MANY_ATTEMPTS), Line(PromptKey.TRANSFERRING))
        return Transition(ended, Prompt(lines, None), (TransferCall(ctx.config.fallback_number),))
    ended = replace(exhausted, stage=Stage.GAVE_UP)
    lines = (reason, Line(PromptKey.TOO_MANY_ATTEMPTS), Line(PromptKey.GOODBYE))
    return Transition(ended, Prompt(lines, None), (EndCall(Outcome.GAVE_UP),))


def _await(state: CallState, effect: Effect) -> Transition:
    return Transition(state, None, (effect,))


Handler = Callable[[CallState, Any, Context], Transition]
UtteranceHandler = Callable[[CallState, Utterance, Context], Transition]


def _caller_input(interpret: UtteranceHandler) -> Handler:
    """Keys or speech: first a language switch (any listening stage), then the stage's reading."""

    def handle(state: CallState, event: Digits | Speech, ctx: Context) -> Transition:
        utterance = Utterance.of(event)
        if not utterance.keys and not utterance.tokens:
            return _fail(state, ctx, Line(PromptKey.NO_INPUT))
        language = utterance.language_request(state.language)
        if language is not None:
            switched = replace(state, language=language, last_updated=ctx.now)
            return _say(switched, Line(PromptKey.LANGUAGE_SELECTED))
        return interpret(state, utterance, ctx)

    return handle


def _on_silence(state: CallState, event: Silence, ctx: Context) -> Transition:
    return _fail(state, ctx, Line(PromptKey.NO_INPUT))


def _on_resume(state: CallState, event: Resume, ctx: Context) -> Transition:
    return _say(replace(state, last_updated=ctx.now))


def _read_number(state: CallState, utterance: Utterance, ctx: Context) -> str | Transition:
    number = utterance.number
    if not number:
        return _fail(state, ctx, Line(PromptKey.NOT_UNDERSTOOD))
    if len(number) > MAX_NUMBER_DIGITS:
        return _fail(state, ctx, Line(PromptKey.NUMBER_TOO_LONG))
    return number


# COLLECT_CLIENT_ID


def _client_id_given(state: CallState, utterance: Utterance, ctx: Context) -> Transition:
    number = _read_number(state, utterance, ctx)
    if isinstance(number, Transition):
        return number
    return _await(replace(state, client_id=number, last_updated=ctx.now), LookUpClient(number))


def _client_found(state: CallState, event: ClientFound, ctx: Context) -> Transition:
    if event.client_id != state.client_id:
        raise UnexpectedResult(
            f"client {event.client_id!r} found, but the call asked for {state.client_id!r}"
        )
    moved = _move(state, ctx, Stage.COLLECT_JOB_NUMBER, client_name=event.name)
    return _say(moved, Line(PromptKey.CLIENT_GREETING, (("name", event.name),)))


def _client_not_found(state: CallState, event: ClientNotFound, ctx: Context) -> Transition:
    reason = Line(PromptKey.CLIENT_NOT_FOUND, (("client_id", spaced(event.client_id)),))
    return _fail(replace(state, client_id=""), ctx, reason)


# COLLECT_JOB_NUMBER


def _job_number_given(state: CallState, utterance: Utterance, ctx: Context) -> Transition:
    number = _read_number(state, utterance, ctx)
    if isinstance(number, Transition):
        return number
    return _await(replace(state, job_number=number, last_updated=ctx.now), LookUpJob(state.client_id, number))


def _job_found(state: CallState, event: JobFound, ctx: Context) -> Transition:
    job = event.job
    if (job.client_id, job.job_number) != (state.client_id, state.job_number):
        raise UnexpectedResult(
            f"job {job.client_id}/{job.job_number} found, but the call asked for "
            f"{state.client_id}/{state.job_number}"
        )
    return _say(_move(state, ctx, Stage.CONFIRM_JOB, job=job))


def _job_not_found(state: CallState, event: JobNotFound, ctx: Context) -> Transition:
    reason = Line(
        PromptKey.JOB_NOT_FOUND,
        (("job_number", spaced(event.job_number)), ("client_id", spaced(event.client_id))),
    )
    return _fail(replace(state, job_number=""), ctx, reason)


# CONFIRM_JOB


def _confirmation_given(state: CallState, utterance: Utterance, ctx: Context) -> Transition:
    answer = _yes_or_no(utterance)
    if answer is None:
        return _fail(state, ctx, Line(PromptKey.NOT_UNDERSTOOD))
    if answer:
        return _say(_move(state, ctx, Stage.ASK_ACTION))
    return _say(_move(state, ctx, Stage.COLLECT_JOB_NUMBER, job_number="", job=None))


# ASK_ACTION


def _action_chosen(state: CallState, utterance: Utterance, ctx: Context) -> Transition:
    choice = _chosen_action(utterance)
    if choice is None:
        return _fail(state, ctx, Line(PromptKey.NOT_UNDERSTOOD))
    if choice is Stage.GOODBYE:
        ended = _move(state, ctx, Stage.GOODBYE)
        return Transition(ended, Prompt((Line(PromptKey.GOODBYE),), None), (EndCall(Outcome.COMPLETED),))
    assert isinstance(choice, ActionType)
    assert state.job is not None, "ASK_ACTION without a job"
    if choice is ActionType.STATUS and not status_changes(state.job):
        return _fail(state, ctx, Line(PromptKey.STATUS_IS_FINAL, (("status", state.job.status),)))
    return _say(_move(state, ctx, Stage.EXECUTE_ACTION, action_type=choice, action_value=""))


# EXECUTE_ACTION


def _action_value_given(state: CallState, utterance: Utterance, ctx: Context) -> Transition:
    assert state.job is not None, "EXECUTE_ACTION without a job"
    if _wants_back(utterance):
        return _say(_move(state, ctx, Stage.ASK_ACTION, action_type=None, action_value=""))
    client_id, job_number = state.job.client_id, state.job.job_number
    match state.action_type:
        case ActionType.STATUS:
            status = _chosen_status(utterance)
            if status is None:
                return _fail(state, ctx, Line(PromptKey.NOT_UNDERSTOOD))
            if status not in status_changes(state.job):
                return _fail(state, ctx, Line(PromptKey.STATUS_NOT_OFFERED, (("status", status),)))
            effect: Effect = SetJobStatus(client_id, job_number, status)
            value = status
        case ActionType.NOTE:
            if utterance.keys is not None:
                return _fail(state, ctx, Line(PromptKey.SAY_YOUR_NOTE))
            value = utterance.text[:MAX_NOTE_CHARS]
            effect = AddJobNote(client_id, job_number, value)
        case _:
            when = parse_keyed_date(utterance.number)
            if when is None:
                return _fail(state, ctx, Line(PromptKey.INVALID_DATE))
            today = ctx.now.date()
            if when < today:
                return _fail(state, ctx, Line(PromptKey.DATE_IN_PAST, (("date", when.isoformat()),)))
            if when > today + RESCHEDULE_HORIZON:
                return _fail(state, ctx, Line(PromptKey.DATE_TOO_FAR, (("date", when.isoformat()),)))
            value = when.isoformat()
            effect = RescheduleJob(client_id, job_number, when)
    return _await(replace(state, action_value=value, last_updated=ctx.now), effect)


def _action_done(state: CallState, event: ActionDone, ctx: Context) -> Transition:
    if not state.action_value or state.action_type is None:
        raise UnexpectedResult("an action result, but no action was under way")
    job = event.job
    match state.action_type:
        case ActionType.STATUS:
            done = Line(
                PromptKey.STATUS_DONE, (("job_number", spaced(job.job_number)), ("status", job.status))
            )
        case ActionType.NOTE:
            done = Line(PromptKey.NOTE_DONE, (("job_number", spaced(job.job_number)),))
        case _:
            when = job.scheduled_for.isoformat() if job.scheduled_for else state.action_value
            done = Line(PromptKey.RESCHEDULE_DONE, (("job_number", spaced(job.job_number)), ("date", when)))
    moved = _move(state, ctx, Stage.ASK_ACTION, job=job, action_type=None, action_value="")
    return _say(moved, done, Line(PromptKey.ANYTHING_ELSE))


REJECTION_LINES: Mapping[RejectReason, PromptKey] = {
    RejectReason.JOB_GONE: PromptKey.REJECTED_JOB_GONE,
    RejectReason.STATUS_NOT_ALLOWED: PromptKey.REJECTED_STATUS_NOT_ALLOWED,
    RejectReason.JOB_CLOSED: PromptKey.REJECTED_JOB_CLOSED,
}


def _action_rejected(state: CallState, event: ActionRejected, ctx: Context) -> Transition:
    """Not the caller's failure (the job changed under the call): say why, and step back."""
    if not state.action_value:
        raise UnexpectedResult("an action result, but no action was under way")
    job = event.job or state.job
    reason = Line(REJECTION_LINES[event.reason], (("status", job.status if job else ""),))
    if event.reason is RejectReason.JOB_GONE:
        gone = _move(state, ctx, Stage.COLLECT_JOB_NUMBER, job_number="", job=None, action_type=None,
                     action_value="")  # fmt: skip
        return _say(gone, reason)
    back = _move(state, ctx, Stage.ASK_ACTION, job=job, action_type=None, action_value="")
    return _say(back, reason)


# --- the table ------------------------------------------------------------------------------

_LISTENING: Mapping[Stage, UtteranceHandler] = {
    Stage.COLLECT_CLIENT_ID: _client_id_given,
    Stage.COLLECT_JOB_NUMBER: _job_number_given,
    Stage.CONFIRM_JOB: _confirmation_given,
    Stage.ASK_ACTION: _action_chosen,
    Stage.EXECUTE_ACTION: _action_value_given,
}

TABLE: Mapping[tuple[Stage, InputKind], Handler] = {
    **{(stage, InputKind.DIGITS): _caller_input(read) for stage, read in _LISTENING.items()},
    **{(stage, InputKind.SPEECH): _caller_input(read) for stage, read in _LISTENING.items()},
    **{(stage, InputKind.SILENCE): _on_silence for stage in _LISTENING},
    **{(stage, InputKind.RESUME): _on_resume for stage in _LISTENING},
    (Stage.COLLECT_CLIENT_ID, InputKind.CLIENT_FOUND): _client_found,
    (Stage.COLLECT_CLIENT_ID, InputKind.CLIENT_NOT_FOUND): _client_not_found,
    (Stage.COLLECT_JOB_NUMBER, InputKind.JOB_FOUND): _job_found,
    (Stage.COLLECT_JOB_NUMBER, InputKind.JOB_NOT_FOUND): _job_not_found,
    (Stage.EXECUTE_ACTION, InputKind.ACTION_DONE): _action_done,
    (Stage.EXECUTE_ACTION, InputKind.ACTION_REJECTED): _action_rejected,
}


def step(state: CallState, event: Input, *, now: datetime, config: MachineConfig) -> Transition:
    """Feed one input to the call; raises InputNotAccepted if its stage takes no such input."""
    handler = TABLE.get((state.stage, event.kind))
    if handler is None:
        raise InputNotAccepted(state.stage, event.kind)
    return handler(state, event, Context(now, config))


class StartReason(enum.StrEnum):
    NEW_CALL = "new_call"
    STATE_EXPIRED = "state_expired"  # the call's state expired or Redis lost it mid-call
    STATE_CORRUPT = "state_corrupt"  # the stored state could not be read


def start_call(
    call_sid: str,
    *,
    now: datetime,
    language: Language = Language.SPANISH,
    reason: StartReason = StartReason.NEW_CALL,
) -> Transition:
    """A call's first state and greeting (or a fresh start when its state was lost)."""
    state = CallState(
        call_sid=call_sid, stage=Stage.COLLECT_CLIENT_ID, attempts=0, language=language, last_updated=now
    )
    lead = {
        StartReason.NEW_CALL: PromptKey.WELCOME,
        StartReason.STATE_EXPIRED: PromptKey.SESSION_RESTARTED,
        StartReason.STATE_CORRUPT: PromptKey.STATE_LOST,
    }[reason]
    return _say(state, Line(lead))


def record(value: object) -> object:
    """An input, effect or job as plain JSON-ready data (for the audit trail)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data: dict[str, object] = {}
        kind = getattr(value, "kind", None)
        if kind is not None:
            data["kind"] = str(kind)
        for field in dataclasses.fields(value):
            data[field.name] = record(getattr(value, field.name))
        return data
    if isinstance(value, date):  # datetime is a date too
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [record(item) for item in value]
    return value
