"""callops.jobs: one way to change a job, the same rules for everyone, recorded with the change."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from callops import jobs
from callops.models import ALLOWED_TRANSITIONS, CallSession, Client, Job, JobChange, JobNote, JobStatus

pytestmark = pytest.mark.django_db

STAFF = jobs.ChangedBy(JobChange.Source.ADMIN, "alice")
WHEN = timezone.make_aware(dt.datetime(2026, 11, 20, 9, 30))


@pytest.fixture
def job():
    client = Client.objects.create(code="3003", name="Jobs test")
    return Job.objects.create(client=client, number="77", title="Pump", status=JobStatus.IN_PROGRESS)


def stored(job: Job) -> Job:
    return Job.objects.get(pk=job.pk)


def test_a_change_and_its_record_are_written_together(job):
    change = jobs.set_status(job, JobStatus.ON_HOLD, by=STAFF, now=WHEN)
    assert stored(job).status == JobStatus.ON_HOLD
    row = JobChange.objects.get(job=job)
    assert row == change
    assert (row.source, row.actor, row.recorded_at) == ("admin", "alice", WHEN)
    assert row.changes == {"status": {"from": "in_progress", "to": "on_hold"}}


@pytest.mark.parametrize(
    ("current", "wanted"),
    [(current, wanted) for current in JobStatus.values for wanted in JobStatus.values],
)
def test_every_status_move_follows_allowed_transitions(job, current, wanted):
    Job.objects.filter(pk=job.pk).update(status=current)
    job = stored(job)
    if wanted in ALLOWED_TRANSITIONS[current]:
        jobs.set_status(job, wanted, by=STAFF)
        assert stored(job).status == wanted
    else:
        with pytest.raises(jobs.StatusNotAllowed) as refused:
            jobs.set_status(job, wanted, by=STAFF)
        assert stored(job).status == current
        assert not JobChange.objects.exists()
        # The message names every status that is allowed.
        for allowed in ALLOWED_TRANSITIONS[current]:
            assert str(JobStatus(allowed).label) in str(refused.value)


def test_the_refusal_says_where_the_job_may_go(job):
    with pytest.raises(jobs.StatusNotAllowed, match=r"^A job In progress can move only to On hold, Completed or "
                       r"Cancelled\. Pending is not one of them\.$"):  # fmt: skip
        jobs.set_status(job, JobStatus.PENDING, by=STAFF)
    assert (
        jobs.describe_allowed(JobStatus.COMPLETED) == "A job Completed is closed: its status cannot change."
    )


def test_reschedule_schedules_a_pending_job_and_records_both_fields(job):
    Job.objects.filter(pk=job.pk).update(status=JobStatus.PENDING)
    job = stored(job)
    day = dt.date(2026, 12, 1)
    jobs.reschedule(job, day, by=STAFF, now=WHEN)
    job = stored(job)
    assert (job.status, job.scheduled_for) == (JobStatus.SCHEDULED, day)
    assert JobChange.objects.get().changes == {
        "status": {"from": "pending", "to": "scheduled"},
        "scheduled_for": {"from": None, "to": "2026-12-01"},
    }


def test_reschedule_keeps_a_job_in_progress_in_progress(job):
    jobs.reschedule(job, dt.date(2026, 12, 1), by=STAFF)
    assert stored(job).status == JobStatus.IN_PROGRESS
    assert set(JobChange.objects.get().changes) == {"scheduled_for"}


@pytest.mark.parametrize("closed", [JobStatus.COMPLETED, JobStatus.CANCELLED])
def test_a_closed_job_is_not_rescheduled(job, closed):
    Job.objects.filter(pk=job.pk).update(status=closed)
    with pytest.raises(jobs.JobClosed, match="cannot be rescheduled"):
        jobs.reschedule(stored(job), dt.date(2026, 12, 1), by=STAFF)
    with pytest.raises(jobs.JobClosed):
        jobs.change_job(stored(job), {"scheduled_for": dt.date(2026, 12, 1)}, by=STAFF)
    assert stored(job).scheduled_for is None
    assert not JobChange.objects.exists()


def test_nothing_differs_nothing_recorded(job):
    assert jobs.change_job(job, {"title": "Pump"}, by=STAFF) is None
    assert not JobChange.objects.exists()


def test_fields_outside_the_job_are_refused(job):
    with pytest.raises(jobs.JobChangeRefused, match="created_at"):
        jobs.change_job(job, {"created_at": WHEN}, by=STAFF)


def test_when_the_record_fails_the_change_is_rolled_back(job):
    """One transaction: a fault writing the JobChange row (a trigger of the test's own
    refusing it, in the real database) leaves the job as it was."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION test_refuse_change() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected fault'; END $$"
            )
            cursor.execute(
                "CREATE TRIGGER test_refuse_change BEFORE INSERT ON callops_jobchange "
                "FOR EACH ROW EXECUTE FUNCTION test_refuse_change()"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER test_refuse_change BEFORE INSERT ON callops_jobchange "
                "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
            )
    with pytest.raises(DatabaseError, match="injected fault"), transaction.atomic():
        jobs.set_status(job, JobStatus.ON_HOLD, by=STAFF)
    assert stored(job).status == JobStatus.IN_PROGRESS
    assert not JobChange.objects.exists()


def test_a_phone_change_names_the_call_and_masks_the_caller(job):
    CallSession.objects.create(call_sid="CAphone1", from_number="+525550009876")
    by = jobs.ChangedBy.phone("CAphone1")
    assert by == jobs.ChangedBy("phone", "CAphone1", "CAphone1", "+52******9876")
    jobs.set_status(job, JobStatus.COMPLETED, by=by)
    row = JobChange.objects.get()
    assert (row.source, row.call_sid, row.caller) == ("phone", "CAphone1", "+52******9876")


def test_history_reads_in_plain_words_newest_first(job, django_user_model):
    CallSession.objects.create(call_sid="CAphone2", from_number="+525550001234")
    jobs.set_status(job, JobStatus.ON_HOLD, by=jobs.ChangedBy.phone("CAphone2"), now=WHEN)
    JobNote.objects.create(job=job, text="Valve ordered", source=JobNote.Source.IVR, call_sid="CAphone2")
    jobs.reschedule(stored(job), dt.date(2026, 12, 3), by=STAFF)  # now: after the note
    history = jobs.job_history(stored(job))
    assert [entry.lines for entry in history] == [
        ("Status changed from On hold to Scheduled.", "Scheduled for Thu 3 Dec 2026."),
        ("Added a note: “Valve ordered”",),
        ("Status changed from In progress to On hold.",),
    ]
    assert history[0].who == "Staff alice"
    assert history[2].who == "Phone call CAphone2 from +52******1234"
    assert history[2].call_sid == "CAphone2"


def test_no_status_moves_to_itself():
    """A move to the status a job already has is no change: no menu offers it, no rule allows it."""
    from callops.models import ALLOWED_TRANSITIONS

    assert [status for status, targets in ALLOWED_TRANSITIONS.items() if status in targets] == []
