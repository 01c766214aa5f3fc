"""controller.jobs: what runs next, and when a temporary failure is tried again (pure functions)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dockvault.actions.locks import JobLocks, PolicyBusy
from dockvault.api.policy import BackupPolicy
from dockvault.api.restore import RestoreRequest
from dockvault.controller import jobs
from dockvault.controller.status import Attempt
from tests.unit.builders import utc


def policy(name: str = "app", **spec) -> BackupPolicy:
    return BackupPolicy.model_validate({
        "metadata": {"name": name},
        "spec": {"schedule": "0 3 * * *", "targets": [{"name": "media", "volume": {"name": "data"}}],
                 "storage": {"local": {"path": "/r"}}, **spec}})


def request(name: str, policy_name: str = "app") -> RestoreRequest:
    return RestoreRequest.model_validate({
        "metadata": {"name": name},
        "spec": {"policy": policy_name, "targets": [{"from": "media", "volume": {"name": "restored"}}]}})


def test_retry_delays_double_from_15_seconds_and_stop_at_15_minutes():
    assert [jobs.retry_delay(n).total_seconds() for n in range(1, 9)] == [15, 30, 60, 120, 240, 480, 900, 900]


def test_a_retry_never_runs_past_the_next_slot():
    nightly = policy()
    started = utc(2026, 11, 21, 3)
    assert jobs.retry_at(nightly, attempt=1, failed_at=started + timedelta(seconds=5), started_at=started) == \
        started + timedelta(seconds=20)
    late = utc(2026, 11, 22, 2, 50)  # the 03:00 slot comes before a 15-minute delay ends
    assert jobs.retry_at(nightly, attempt=9, failed_at=late, started_at=late) is None
    assert jobs.retry_at(policy(schedule=None), attempt=1, failed_at=started, started_at=started) is None
    assert jobs.retry_at(policy(suspend=True), attempt=1, failed_at=started, started_at=started) is None


def test_a_temporary_failure_is_due_again_at_its_retry_time_with_the_next_attempt_number():
    nightly = policy()
    started = utc(2026, 11, 21, 3)
    failed = Attempt("x", "Failed", started, started, error=jobs.TEMPORARY, attempt=2,
                     next_retry_at=started + timedelta(seconds=30))
    history = jobs.History(last_attempt=failed)
    assert jobs.backup_job(nightly, "app", history, started + timedelta(seconds=29)) is None
    job = jobs.backup_job(nightly, "app", history, started + timedelta(seconds=30))
    assert (job.kind, job.attempt, job.reason) == ("backup", 3, "retry of a temporary failure")
    permanent = jobs.History(last_attempt=Attempt("x", "Failed", started, started, error=jobs.PERMANENT))
    assert jobs.backup_job(nightly, "app", permanent, started + timedelta(hours=1)) is None
    next_slot = jobs.backup_job(nightly, "app", permanent, utc(2026, 11, 22, 3))
    assert (next_slot.attempt, next_slot.reason.startswith("scheduled")) == (1, True)


def test_restores_come_first_then_backups_then_drills():
    due_everything = policy("a", drill={"schedule": "0 5 * * 0"})
    never_ran = jobs.History(has_backup=True)
    plan = jobs.plan([("a", due_everything, never_ran), ("b", policy("b"), jobs.History())],
                     [("urgent", request("urgent", "b"), "b")], utc(2026, 11, 21, 12))
    assert [(j.kind, j.policy) for j in plan] == [("restore", "b"), ("backup", "a"), ("backup", "b"), ("drill", "a")]


def test_one_job_per_policy_across_threads_and_processes(tmp_path):
    first = JobLocks(tmp_path)
    lease = first.try_acquire("app", "backup app")
    assert lease is not None
    assert first.try_acquire("app", "drill app") is None  # same process
    other = JobLocks(tmp_path)  # another process's view: the same lock files
    assert other.try_acquire("app", "manual backup") is None
    with pytest.raises(PolicyBusy, match=r"policy app is busy: pid \d+ backup app holds its job lock"):
        other.acquire("app", "manual backup", timeout=0)
    assert other.try_acquire("other", "backup other") is not None
    lease.release()
    assert other.try_acquire("app", "manual backup") is not None


def test_a_full_state_disk_still_gives_the_lock_without_its_holder_note(tmp_path, monkeypatch):
    """The note of who holds the lock cannot be written on a full disk; the lock holds all the same and is released."""
    import errno
    import os

    from dockvault.actions import locks

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locks.os, "write", full)
    lease = JobLocks(tmp_path).try_acquire("app", "backup app")
    assert lease is not None
    other = JobLocks(tmp_path)
    with pytest.raises(PolicyBusy, match="another job holds its job lock"):
        other.acquire("app", "manual backup", timeout=0)
    lease.release()
    monkeypatch.setattr(locks.os, "write", os.write)
    assert other.try_acquire("app", "manual backup") is not None
