"""Staff read the audit in the admin; operators run the ingester as a command (and a real process)."""

from __future__ import annotations

import signal
import sys
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from sipcore.audit import GROUP, stream_name
from sipcore.models import SipTransaction, TransactionSnapshotRecord
from tests.sipcore.audit.support import invite_server_versions, non_invite_client_versions, xadd
from tests.support.processes import ManagedProcess, child_environment, wait_for


@pytest.fixture
def ingested(r):
    xadd(r, 2, invite_server_versions(), owner="node-a")
    xadd(r, 9, non_invite_client_versions(), owner="node-b")
    out = StringIO()
    call_command("ingest_sip_audit", "--once", "--shard", "2", "--shard", "9", stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_the_command_drains_the_shards_once_and_reports(ingested, r):
    assert (
        "shard 2: 7 entries read (0 claimed), 7 versions recorded, 0 already there, 0 dead-lettered"
        in ingested
    )
    assert "shard 9: 5 entries read" in ingested
    assert "done: 12 entries read" in ingested
    assert TransactionSnapshotRecord.objects.count() == 12
    assert r.xlen(stream_name(2)) == r.xlen(stream_name(9)) == 0


@pytest.mark.django_db
def test_the_command_refuses_a_shard_that_does_not_exist():
    with pytest.raises(CommandError, match=r"shards are 0\.\.15"):
        call_command("ingest_sip_audit", "--once", "--shard", "16")


@pytest.mark.django_db
def test_admin_lists_filters_searches_and_shows_the_timeline_read_only(ingested, admin_client):
    invite = SipTransaction.objects.get(kind="invite_server")
    page = admin_client.get(
        "/admin/sipcore/siptransaction/", {"state": "Terminated", "kind": "invite_server"}
    )
    assert page.status_code == 200
    assert b"audit-1@atlanta.example.com" in page.content
    assert b"audit-2@atlanta.example.com" not in page.content  # the OPTIONS is another kind
    page = admin_client.get("/admin/sipcore/siptransaction/", {"owner__id__exact": "node-b"})
    assert b"audit-2@atlanta.example.com" in page.content
    assert b"audit-1@atlanta.example.com" not in page.content
    page = admin_client.get("/admin/sipcore/siptransaction/", {"q": "audit-2@atlanta.example.com"})
    assert b"audit-2@atlanta.example.com" in page.content
    assert b"audit-1@atlanta.example.com" not in page.content
    page = admin_client.get("/admin/sipcore/siptransaction/", {"q": invite.key})
    assert b"audit-1@atlanta.example.com" in page.content
    page = admin_client.get("/admin/sipcore/siptransaction/", {"outcome": "completed"})
    assert page.status_code == 200

    detail = admin_client.get(f"/admin/sipcore/siptransaction/{invite.pk}/change/").content.decode()
    assert "INVITE sip:bob@biloxi.example.com SIP/2.0" in detail  # the request, once
    assert "SIP/2.0 486 Busy Here" in detail  # the timeline
    assert "SIP/2.0 180 Ringing" in detail
    for version in range(7):
        assert f">v{version}</a>" in detail
    assert 'name="_save"' not in detail  # nothing to save: read-only

    record = TransactionSnapshotRecord.objects.get(transaction=invite, version=3)
    page = admin_client.get(f"/admin/sipcore/transactionsnapshotrecord/{record.pk}/change/").content.decode()
    assert "SIP/2.0 486 Busy Here" in page
    assert "G at 1.000 (every 0.5 s)" in page
    page = admin_client.get(
        "/admin/sipcore/transactionsnapshotrecord/", {"q": invite.call_id, "state": "Completed"}
    )
    assert page.content.decode().count(">v") == 0  # the list links to the transaction, not versions
    assert page.status_code == 200
    assert admin_client.get("/admin/sipcore/sipnode/").status_code == 200

    assert admin_client.get("/admin/sipcore/siptransaction/add/").status_code == 403
    assert (
        admin_client.post(f"/admin/sipcore/siptransaction/{invite.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert (
        admin_client.post(f"/admin/sipcore/transactionsnapshotrecord/{record.pk}/delete/").status_code == 403
    )
    assert SipTransaction.objects.filter(pk=invite.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_the_ingester_runs_as_a_process_and_stops_cleanly_on_sigterm(r, tmp_path):
    env = child_environment(REDIS_URL=settings.REDIS_URL)
    process = ManagedProcess(
        "ingest-sip-audit",
        [sys.executable, "manage.py", "ingest_sip_audit", "--shard", "4", "--idle-sleep", "0.05",
         "--consumer", "proc"],
        env,
        tmp_path,
    )  # fmt: skip
    try:
        xadd(r, 4, invite_server_versions())
        wait_for(lambda: TransactionSnapshotRecord.objects.count() == 7, timeout=30, what=process.output)
        xadd(r, 4, non_invite_client_versions())
        wait_for(lambda: TransactionSnapshotRecord.objects.count() == 12, timeout=30, what=process.output)
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(15) == 0
        assert "done: 12 entries read" in process.output()
        assert r.xinfo_groups(stream_name(4))[0]["name"] == GROUP.encode()
        assert r.xlen(stream_name(4)) == 0
    finally:
        process.stop()
