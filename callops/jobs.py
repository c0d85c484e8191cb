"""Changing a job: one function for the phone line, the admin and the API.

Every change goes through :func:`change_job`: the same rules for every caller
(``ALLOWED_TRANSITIONS``; a completed or cancelled job is not rescheduled) and
an append-only ``JobChange`` row, written in the same database transaction as
the change, saying who made it, when, and each field from what to what. The
database holds the truth for both, so there is no second store to disagree
with: the change and its record commit together or not at all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from callops.models import ALLOWED_TRANSITIONS, CallSession, Job, JobChange, JobStatus

CLOSED = frozenset({JobStatus.COMPLETED, JobStatus.CANCELLED})
# The fields a change may touch, in the order history lists them.
CHANGEABLE = ("status", "scheduled_for", "title", "address", "description", "client", "number")


class JobChangeRefused(ValueError):
    """A change the rules do not allow; ``field`` names the field it is about."""

    field = "__all__"


class StatusNotAllowed(JobChangeRefused):
    field = "status"


class JobClosed(JobChangeRefused):
    field = "scheduled_for"


@dataclass(frozen=True)
class ChangedBy:
    """Who changes a job: a staff user, a phone call, an API client."""

    source: str  # a JobChange.Source
    actor: str  # user name, CallSid, API client
    call_sid: str = ""
    caller: str = ""  # the caller's number, masked

    @classmethod
    def staff(cls, user: Any) -> ChangedBy:
        return cls(JobChange.Source.ADMIN, user.get_username()[:150])

    @classmethod
    def phone(cls, call_sid: str) -> ChangedBy:
        """The call, by CallSid, and its caller's number masked as in the logs."""
        from callops.ivr.service import mask_number

        number = CallSession.objects.filter(call_sid=call_sid).values_list("from_number", flat=True).first()
        return cls(JobChange.Source.PHONE, call_sid[:150], call_sid[:64], mask_number(number or "")[:32])


def status_label(status: str) -> str:
    try:
        return str(JobStatus(status).label)
    except ValueError:
        return status


def allowed_statuses(status: str) -> list[str]:
    """The statuses a job in ``status`` may move to, in the order of ``JobStatus``."""
    allowed = ALLOWED_TRANSITIONS.get(status, frozenset())
    return [value for value in JobStatus.values if value in allowed]


def describe_allowed(status: str) -> str:
    """'A job In progress can move only to On hold, Completed or Cancelled.'"""
    allowed = [status_label(value) for value in allowed_statuses(status)]
    if not allowed:
        return f"A job {status_label(status)} is closed: its status cannot change."
    listed = allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} or {allowed[-1]}"
    return f"A job {status_label(status)} can move only to {listed}."


def check_change(job: Job, changes: Mapping[str, Any]) -> None:
    """Raise ``JobChangeRefused`` if ``changes`` (field -> new value) breaks a rule for ``job``
    as stored. A status named in ``changes`` must be an allowed move, even if it is the same."""
    unknown = set(changes) - set(CHANGEABLE)
    if unknown:
        raise JobChangeRefused(f"not a field a job change may touch: {', '.join(sorted(unknown))}")
    if "status" in changes and changes["status"] not in ALLOWED_TRANSITIONS.get(job.status, frozenset()):
        raise StatusNotAllowed(
            f"{describe_allowed(job.status)} {status_label(changes['status'])} is not one of them."
        )
    if "scheduled_for" in changes and changes["scheduled_for"] != job.scheduled_for and job.status in CLOSED:
        raise JobClosed(f"A job {status_label(job.status)} cannot be rescheduled.")


def change_job(
    job: Job, changes: Mapping[str, Any], *, by: ChangedBy, now: dt.datetime | None = None
) -> JobChange | None:
    """Apply ``changes`` to ``job`` and record them, in one transaction.

    ``job`` must be the row as stored, locked by the caller's transaction
    (``select_for_update``) so that the rules are checked against what is
    committed. Returns the ``JobChange`` row, or None when nothing differed.
    """
    check_change(job, changes)
    diffs: dict[str, dict[str, Any]] = {}
    for name, value in changes.items():
        old = getattr(job, name)
        if old != value:
            diffs[name] = {"from": _recorded(old), "to": _recorded(value)}
            setattr(job, name, value)
    if not diffs:
        return None
    ordered = {name: diffs[name] for name in CHANGEABLE if name in diffs}
    with transaction.atomic(savepoint=False):
        job.save(update_fields=[*ordered, "updated_at"])
        return JobChange.objects.create(
            job=job,
            source=by.source,
            actor=by.actor,
            call_sid=by.call_sid,
            caller=by.caller,
            changes=ordered,
            recorded_at=now or timezone.now(),
        )


def set_status(job: Job, status: str, *, by: ChangedBy, now: dt.datetime | None = None) -> JobChange | None:
    return change_job(job, {"status": status}, by=by, now=now)


def reschedule(job: Job, when: dt.date, *, by: ChangedBy, now: dt.datetime | None = None) -> JobChange | None:
    """A new date; a pending or on-hold job with a date is scheduled, one in progress stays so."""
    if job.status in CLOSED:
        raise JobClosed(f"A job {status_label(job.status)} cannot be rescheduled.")
    changes: dict[str, Any] = {"scheduled_for": when}
    if job.status != JobStatus.SCHEDULED and JobStatus.SCHEDULED in ALLOWED_TRANSITIONS[job.status]:
        changes["status"] = JobStatus.SCHEDULED
    return change_job(job, changes, by=by, now=now)


def _recorded(value: Any) -> Any:
    """A field value as JSON: dates as ISO text, related rows by their label."""
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, models.Model):
        return str(value)
    return value


# --- a job's history, for people -------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a job's history: when, who, and what happened, in plain words."""

    when: dt.datetime
    who: str
    lines: tuple[str, ...]
    call_sid: str = ""


def job_history(job: Job) -> list[HistoryEntry]:
    """Everything that happened to ``job``, newest first: field changes from any source
    (``JobChange``), notes, and what staff did in the admin that those do not already say
    (creating the job, editing or deleting notes)."""
    from callops.ivr.service import mask_number

    entries = [
        HistoryEntry(change.recorded_at, _who(change.source, change.actor, change.caller),
                     tuple(_describe(name, diff) for name, diff in change.changes.items()), change.call_sid)
        for change in JobChange.objects.filter(job=job)
    ]  # fmt: skip
    notes = list(job.notes.all())
    callers = dict(
        CallSession.objects.filter(
            call_sid__in={note.call_sid for note in notes if note.call_sid}
        ).values_list("call_sid", "from_number")
    )
    for note in notes:
        caller = mask_number(callers.get(note.call_sid, ""))
        actor = note.call_sid if note.source == note.Source.IVR else ""
        who = _who(_NOTE_SOURCES.get(note.source, note.source), actor, caller)
        entries.append(HistoryEntry(note.created_at, who, (f"Added a note: “{note.text}”",), note.call_sid))
    entries += _staff_log(job)
    return sorted(entries, key=lambda entry: entry.when, reverse=True)


_NOTE_SOURCES = {"ivr": JobChange.Source.PHONE, "admin": JobChange.Source.ADMIN, "api": JobChange.Source.API}


def _who(source: str, actor: str, caller: str = "") -> str:
    if source == JobChange.Source.PHONE:
        return f"Phone call {actor}" + (f" from {caller}" if caller else "")
    if source == JobChange.Source.ADMIN:
        return f"Staff {actor}" if actor else "Staff (admin)"
    return f"API client {actor}" if actor else "API"


def _describe(name: str, diff: Mapping[str, Any]) -> str:
    old, new = diff.get("from"), diff.get("to")
    if name == "status":
        return f"Status changed from {status_label(old)} to {status_label(new)}."
    if name == "scheduled_for":
        if old is None:
            return f"Scheduled for {_day(new)}."
        if new is None:
            return f"Date removed (was {_day(old)})."
        return f"Rescheduled from {_day(old)} to {_day(new)}."
    label = str(Job._meta.get_field(name).verbose_name).capitalize()
    return f"{label} changed from “{old}” to “{new}”."


def _day(iso: str) -> str:
    day = dt.date.fromisoformat(iso)
    return f"{day:%a} {day.day} {day:%b %Y}"


def _staff_log(job: Job) -> list[HistoryEntry]:
    """The admin's own log for this job, minus what JobChange rows and notes already show."""
    import json

    from django.contrib.admin.models import ADDITION, LogEntry
    from django.contrib.contenttypes.models import ContentType

    note_name = str(job.notes.model._meta.verbose_name)
    entries = []
    for entry in LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(Job), object_id=str(job.pk)
    ).select_related("user"):
        who = _who(JobChange.Source.ADMIN, entry.user.get_username())
        if entry.action_flag == ADDITION:
            entries.append(HistoryEntry(entry.action_time, who, ("Created the job.",)))
            continue
        try:
            parts = json.loads(entry.change_message or "[]")
        except ValueError:
            parts = None
        if not isinstance(parts, list):
            entries.append(HistoryEntry(entry.action_time, who, (entry.change_message,)))
            continue
        kept = [
            part
            for part in parts
            if isinstance(part, dict)
            and not ("changed" in part and "name" not in part["changed"])  # the job's fields: JobChange
            and not ("added" in part and part["added"].get("name") == note_name)  # notes: listed themselves
        ]
        if kept:
            text = LogEntry(change_message=json.dumps(kept)).get_change_message()
            entries.append(HistoryEntry(entry.action_time, who, (text,)))
    return entries
