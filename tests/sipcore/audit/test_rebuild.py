"""Every recorded version rebuilds, from the database alone, the snapshot that was stored."""

from __future__ import annotations

import pytest

from sipcore.audit import VersionNotRecorded, ingest_batch, rebuild_snapshot
from sipcore.models import TransactionSnapshotRecord
from sipcore.sip import Timings, TransactionState, TransportInfo, restore_transaction
from tests.sipcore.audit.support import invite_server_versions, non_invite_client_versions, xadd

pytestmark = pytest.mark.django_db
SHARD = 5

SCENARIOS = {
    "invite_server": invite_server_versions,
    "invite_server_timeout": lambda: invite_server_versions(branch="z9hG4bKnoack", ack=False),
    "non_invite_client": non_invite_client_versions,
    "non_invite_client_fast_timers": lambda: non_invite_client_versions(
        branch="z9hG4bKfast", timings=Timings(t1=0.05, t2=0.5, t4=0.5)
    ),
}


def ingest(r, versions):
    xadd(r, SHARD, versions)
    assert ingest_batch(r, SHARD, "c1") == len(versions)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_version_rebuilds_the_original_and_restores(r, scenario):
    versions = SCENARIOS[scenario]()
    ingest(r, versions)
    key = versions[0].snapshot.key
    for version in versions:
        original = version.snapshot
        rebuilt = rebuild_snapshot(key, original.version)
        assert rebuilt == original
        assert rebuilt.to_json() == original.to_json()
        tx = restore_transaction(rebuilt)
        assert (tx.state.value, tx.version) == (original.state, original.version)
        assert tx.next_deadline() == original.next_deadline()
        assert tx.snapshot() == original
        if tx.state is not TransactionState.TERMINATED and tx.next_deadline() is not None:
            tx.handle_timer(tx.next_deadline())  # carries on: fires what is due, once


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_gaps_and_late_versions_still_rebuild_every_version(r, scenario):
    """Versions skipped (a lazily written re-arm) or ingested out of order never make a
    later rebuild pick the wrong response."""
    versions = SCENARIOS[scenario]()
    key = versions[0].snapshot.key
    ingest(r, versions[::2])
    for version in versions[::2]:
        assert rebuild_snapshot(key, version.snapshot.version) == version.snapshot
    ingest(r, versions[1::2])
    for version in versions:
        assert rebuild_snapshot(key, version.snapshot.version) == version.snapshot


def test_a_restore_elsewhere_takes_the_new_transport(r):
    versions = invite_server_versions()
    ingest(r, versions)
    rebuilt = rebuild_snapshot(versions[3].snapshot.key, 3)
    elsewhere = TransportInfo("UDP", False, ("192.0.2.9", 5060), ("192.0.2.2", 5062))
    tx = restore_transaction(rebuilt, elsewhere)
    assert tx.transport == elsewhere
    tx.handle_timer(tx.next_deadline())  # Timer G: the 486 again, to the same peer
    (out,) = tx.drain_outgoing()
    assert out.message.status_code == 486


def test_the_request_is_stored_once_and_responses_only_when_they_change(r):
    versions = invite_server_versions()
    ingest(r, versions)
    records = TransactionSnapshotRecord.objects.filter(transaction__key=versions[0].snapshot.key)
    assert records.count() == 7
    assert records.filter(response__isnull=False).count() == 3
    assert not hasattr(TransactionSnapshotRecord, "request")


def test_a_version_not_recorded_is_a_lookup_error(r):
    versions = invite_server_versions()
    ingest(r, versions[:2])
    with pytest.raises(VersionNotRecorded, match="no recorded version 5"):
        rebuild_snapshot(versions[0].snapshot.key, 5)
    with pytest.raises(VersionNotRecorded):
        rebuild_snapshot("s|nope", 0)
