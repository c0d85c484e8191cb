"""A stored state either decodes into one that can be stepped and written back, or is corrupt.

Values that decode but cannot be written back would wedge a call until its key
expires (every input fails the same way). Decoding checks every field's type and
range; whatever it accepts must survive one more step of the machine and the
encode of version + 1. Pure: schema and machine only, no Redis, a fixed clock.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callops.ivr import machine
from callops.ivr.machine import Digits, InputNotAccepted, MachineConfig, Silence, Speech, Stage
from callops.ivr.schema import (
    MAX_STORED_ATTEMPTS,
    MAX_STORED_VERSION,
    SCHEMA_VERSION,
    UndecodableState,
    decode,
    encode,
)

NOW = datetime(2026, 11, 23, 15, 30, tzinfo=UTC)
CONFIG = MachineConfig(max_attempts=3)
INPUTS = (Silence(), Digits("1"), Digits("0"), Digits("1001"), Speech("sí", 0.9), Speech("adiós"))

BASE = {
    "schema_version": SCHEMA_VERSION,
    "version": 5,
    "call_sid": "CA" + "0" * 32,
    "stage": "ask_action",
    "attempts": 1,
    "language": "es",
    "client_id": "1001",
    "client_name": "Hospital Santa Fe",
    "job_number": "501",
    "action_type": None,
    "action_value": "",
    "job": {
        "client_id": "1001",
        "job_number": "501",
        "title": "Replace rooftop compressor",
        "address": "Av. Reforma 120",
        "status": "scheduled",
        "allowed_statuses": ["in_progress", "on_hold"],
        "scheduled_for": "2026-11-26",
    },
    "last_updated": "2026-11-23T15:29:00+00:00",
}

# JSON values of every kind, with the edges that have hurt: huge and negative integers,
# integral floats, 2**53 and its neighbours, booleans (which Python calls integers).
edge_ints = st.sampled_from([0, 1, -1, 2, 3, 999, 1000, 1001, 2**31 - 2, 2**31 - 1, 2**31, 2**53 - 1, 2**53,
                             2**63 - 1, -(10**30), 10**30])  # fmt: skip
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    edge_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from([s.value for s in Stage]),
    st.sampled_from(["es", "en", "status", "note", "reschedule", "2026-11-26", "2026-11-23T15:29:00+00:00"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
JOB_FIELDS = ["job.status", "job.allowed_statuses", "job.scheduled_for", "job.client_id", "job.title"]
fields = st.sampled_from([*sorted(BASE), *JOB_FIELDS])


def with_value(document: dict, field: str, value: object) -> dict:
    changed = copy.deepcopy(document)
    if not field.startswith("job."):
        changed[field] = value
    elif isinstance(changed.get("job"), dict):
        changed["job"][field[4:]] = value
    return changed


def raw(document: dict) -> bytes:
    """As some other writer might have stored it: any JSON, integers of any size included."""
    return json.dumps(document).encode()


def written_back(stored: bytes) -> None:
    """Decode, then every input the stage takes, then encode the result as the next version."""
    try:
        decoded = decode(stored)
    except UndecodableState:
        return  # corrupt: the call starts afresh, as for any corrupt value
    encode(decoded.state, decoded.version + 1)
    for event in INPUTS:
        try:
            transition = machine.step(decoded.state, event, now=NOW, config=CONFIG)
        except InputNotAccepted:
            continue
        machine.record(transition.effects)
        encode(transition.state, decoded.version + 1)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.lists(st.tuples(fields, json_values), min_size=1, max_size=3),
    stage=st.sampled_from([s.value for s in Stage]),
)
def test_every_state_that_decodes_can_be_stepped_and_written_back(changes, stage):
    document = with_value(BASE, "stage", stage)
    for field, value in changes:
        document = with_value(document, field, value)
    written_back(raw(document))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", 2**53 - 1),  # reported: ValueError on write-back
        ("version", MAX_STORED_VERSION + 1),  # beyond what the audit's sequence column holds
        ("attempts", -(10**30)),  # reported: TypeError once a failed input adds one
        ("attempts", -1),
        ("attempts", MAX_STORED_ATTEMPTS + 1),
        ("attempts", 1.5),
        ("attempts", True),
        ("attempts", "2"),
    ],
)
def test_out_of_range_values_are_corrupt(field, value):
    with pytest.raises(UndecodableState, match=field):
        decode(raw(with_value(BASE, field, value)))


@pytest.mark.parametrize(
    ("field", "value"),
    [("version", MAX_STORED_VERSION), ("version", 0), ("attempts", 0), ("attempts", MAX_STORED_ATTEMPTS)],
)
def test_the_edges_of_the_ranges_decode(field, value):
    decoded = decode(raw(with_value(BASE, field, value)))
    assert SimpleNamespace(version=decoded.version, attempts=decoded.state.attempts).__dict__[field] == value
    written_back(raw(with_value(BASE, field, value)))
