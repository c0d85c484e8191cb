"""The call state as stored in Redis: versioned JSON, migrated on read.

One JSON object per call (orjson), with two counters that mean different things:

* ``schema_version``: the shape of the document (see ``MIGRATIONS``);
* ``version``: how many times this call's state was written. The store's
  compare-and-set refuses a write whose expected ``version`` is no longer the
  stored one, so two webhooks for one call cannot lose each other's update.

Dates are ISO-8601 strings (``last_updated`` with its UTC offset). Pure: no
Redis, no Django; the store in :mod:`callops.ivr.store` does the I/O.

Schema history:

* v1: no ``language`` (every call was Spanish); the action field was ``action``.
* v2: ``language`` added; still ``action``.
* v3: ``action`` renamed ``action_type``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson

from callops.ivr.machine import ActionType, CallState, JobSummary, Language, Stage

SCHEMA_VERSION = 3
MAX_JOB_TEXT = 80  # a job's title and address, as read back on a call

# The guard a compare-and-set expects; see CAS_SCRIPT in callops.ivr.store, which
# computes the same value from what Redis holds.
ABSENT = "absent"
CORRUPT = "corrupt"
MAX_VERSION = 2**53  # integers Lua (doubles) and JSON agree on exactly
# A state's ``version`` is also its audit row's sequence number (a PostgreSQL integer),
# and the next write stores version + 1: a version above this can never be written back.
MAX_STORED_VERSION = 2**31 - 2
# Failed attempts at one stage: the machine ends the call after a handful; anything far
# beyond that was not written by it (and must still encode as JSON after one more).
MAX_STORED_ATTEMPTS = 1000
# The stages that read a job back or act on it: a state there without one cannot go on.
STAGES_WITH_A_JOB = frozenset({Stage.CONFIRM_JOB, Stage.ASK_ACTION, Stage.EXECUTE_ACTION})


class UndecodableState(ValueError):
    """A stored value that is not a call state of any known schema; the message says why."""


@dataclass(frozen=True)
class Decoded:
    state: CallState
    version: int
    read_schema_version: int  # before migration on read

    @property
    def migrated(self) -> bool:
        return self.read_schema_version != SCHEMA_VERSION


# --- migrations, one function per step -------------------------------------------------------


def _v1_to_v2(document: dict[str, Any]) -> dict[str, Any]:
    """v1 predates English: every call then was Spanish."""
    return {**document, "language": Language.SPANISH.value, "schema_version": 2}


def _v2_to_v3(document: dict[str, Any]) -> dict[str, Any]:
    """v2 named the action field ``action``."""
    migrated = {key: value for key, value in document.items() if key != "action"}
    migrated["action_type"] = document.get("action")
    migrated["schema_version"] = 3
    return migrated


MIGRATIONS: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2, 2: _v2_to_v3}


def migrate(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` brought up to SCHEMA_VERSION, one step at a time."""
    schema = document.get("schema_version")
    while schema != SCHEMA_VERSION:
        step = MIGRATIONS.get(schema) if isinstance(schema, int) else None
        if step is None:
            raise UndecodableState(
                f"unknown schema_version {schema!r} (this code reads 1 to {SCHEMA_VERSION})"
            )
        document = step(document)
        schema = document["schema_version"]
    return document


# --- encoding ------------------------------------------------------------------------------


def compact_text(text: str, limit: int = MAX_JOB_TEXT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def job_to_dict(job: JobSummary) -> dict[str, Any]:
    return {
        "client_id": job.client_id,
        "job_number": job.job_number,
        "title": job.title,
        "address": job.address,
        "status": job.status,
        "allowed_statuses": list(job.allowed_statuses),
        "scheduled_for": job.scheduled_for.isoformat() if job.scheduled_for else None,
    }


def job_from_dict(data: Mapping[str, Any]) -> JobSummary:
    scheduled = data.get("scheduled_for")
    return JobSummary(
        client_id=str(data["client_id"]),
        job_number=str(data["job_number"]),
        title=str(data.get("title", "")),
        address=str(data.get("address", "")),
        status=str(data["status"]),
        allowed_statuses=tuple(str(status) for status in data.get("allowed_statuses", ())),
        scheduled_for=date.fromisoformat(scheduled) if scheduled else None,
    )


def state_to_dict(state: CallState, version: int) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "version": version,
        "call_sid": state.call_sid,
        "stage": state.stage.value,
        "attempts": state.attempts,
        "language": state.language.value,
        "client_id": state.client_id,
        "client_name": state.client_name,
        "job_number": state.job_number,
        "action_type": state.action_type.value if state.action_type else None,
        "action_value": state.action_value,
        "job": job_to_dict(state.job) if state.job else None,
        "last_updated": state.last_updated.isoformat(),
    }


def _attempts_of(document: Mapping[str, Any]) -> int:
    attempts = document.get("attempts", 0)
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        raise UndecodableState(f"attempts is not an integer: {attempts!r}")
    if not 0 <= attempts <= MAX_STORED_ATTEMPTS:
        raise UndecodableState(f"attempts {attempts} is out of range 0..{MAX_STORED_ATTEMPTS}")
    return attempts


def state_from_dict(document: Mapping[str, Any]) -> CallState:
    """The state in ``document`` (current schema). Every value is checked for type and range:
    a state that decodes can be stepped and written back (one more attempt, version + 1)."""
    last_updated = datetime.fromisoformat(document["last_updated"])
    if last_updated.tzinfo is None:
        raise UndecodableState("last_updated has no UTC offset")
    action = document.get("action_type")
    job = document.get("job")
    stage = Stage(document["stage"])
    if stage in STAGES_WITH_A_JOB and not job:
        raise UndecodableState(f"stage {stage.value} without a job")
    return CallState(
        call_sid=str(document["call_sid"]),
        stage=stage,
        attempts=_attempts_of(document),
        language=Language(document["language"]),
        last_updated=last_updated,
        client_id=str(document.get("client_id") or ""),
        client_name=str(document.get("client_name") or ""),
        job_number=str(document.get("job_number") or ""),
        action_type=ActionType(action) if action else None,
        action_value=str(document.get("action_value") or ""),
        job=job_from_dict(job) if job else None,
    )


def encode(state: CallState, version: int) -> bytes:
    if not 0 < version < MAX_VERSION:
        raise ValueError(f"version {version} is out of range 1..{MAX_VERSION - 1}")
    return orjson.dumps(state_to_dict(state, version))


def _version_of(document: object) -> int | None:
    if not isinstance(document, dict):
        return None
    version = document.get("version")
    # As Lua sees it: any JSON number with an integral value (5.0 too); true is no number.
    if isinstance(version, float) and version.is_integer():
        version = int(version)
    if isinstance(version, int) and not isinstance(version, bool) and 0 <= version < MAX_VERSION:
        return version
    return None


def guard_of(raw: bytes | None) -> str:
    """What a compare-and-set must expect to replace ``raw``: ABSENT, CORRUPT or the version.

    Mirrors the Lua in CAS_SCRIPT: a value is CORRUPT when it is not a JSON
    object with an integer ``version``, whatever else is wrong with it.
    """
    if raw is None:
        return ABSENT
    try:
        version = _version_of(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return CORRUPT
    return CORRUPT if version is None else str(version)


def decode(raw: bytes) -> Decoded:
    """The state in ``raw``, migrated to SCHEMA_VERSION; UndecodableState saying why not."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UndecodableState(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise UndecodableState(f"not a JSON object but {type(document).__name__}")
    version = _version_of(document)
    if version is None:
        raise UndecodableState(f"no valid version counter: {document.get('version')!r}")
    if version > MAX_STORED_VERSION:
        # Still a number the compare-and-set understands (guard_of), but never writable.
        raise UndecodableState(f"version {version} is out of range 0..{MAX_STORED_VERSION}")
    read_schema = document.get("schema_version")
    if not isinstance(read_schema, int) or isinstance(read_schema, bool):
        raise UndecodableState(f"no valid schema_version: {read_schema!r}")
    try:
        state = state_from_dict(migrate(document))
    except UndecodableState:
        raise
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise UndecodableState(f"schema v{read_schema}: {type(exc).__name__}: {exc}") from exc
    return Decoded(state=state, version=version, read_schema_version=read_schema)
