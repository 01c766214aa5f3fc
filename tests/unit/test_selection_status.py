"""Which backup a restore picks, and a policy's status computed from its backups, its last attempt and the time."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from dockvault.api.restore import BackupBefore
from dockvault.controller.selection import NoSuchBackup, select_backup
from dockvault.controller.status import Attempt, Measurement, policy_status, ready_condition
from tests.unit.builders import backup, policy, utc

OK1 = backup(utc(2026, 11, 21, 3))  # completed 03:02
FAILED = backup(utc(2026, 11, 22, 3), phase="Failed")
OK2 = backup(utc(2026, 11, 23, 3))
RUNNING = backup(utc(2026, 11, 24, 3), phase="Running", completed=False)
ALL = [OK1, FAILED, OK2, RUNNING]


# --- select_backup ---------------------------------------------------------------------------------------------------


def test_latest_is_the_newest_successful_backup():
    assert select_backup(ALL, "latest", policy="myapp") is OK2


def test_selection_does_not_depend_on_input_order():
    shuffled = ALL[:]
    random.Random(4).shuffle(shuffled)
    assert shuffled != ALL
    assert select_backup(shuffled, "latest", policy="myapp") is OK2


def test_latest_among_backups_completed_at_the_same_time_is_the_highest_id():
    a = backup(utc(2026, 11, 21, 3), id="20261121T030000Z")
    b = backup(utc(2026, 11, 21, 3), id="20261121T030000Z-2")
    assert select_backup([b, a], "latest", policy="myapp") is b


def test_latest_without_a_successful_backup():
    with pytest.raises(NoSuchBackup) as raised:
        select_backup([FAILED, RUNNING], "latest", policy="myapp")
    assert str(raised.value) == "policy 'myapp' has no successful backup yet"


def test_by_id():
    assert select_backup(ALL, "20261121T030000Z", policy="myapp") is OK1


@pytest.mark.parametrize("id", ["20261122T030000Z", "20261124T030000Z", "20991231T000000Z"])
def test_by_id_of_a_failed_running_or_missing_backup(id):
    with pytest.raises(NoSuchBackup) as raised:
        select_backup(ALL, id, policy="myapp")
    assert str(raised.value) == f"policy 'myapp' has no successful backup with id '{id}'"


@pytest.mark.parametrize("before, expected", [
    (utc(2026, 11, 23, 3, 2), OK1),  # OK2 completed exactly then: not before
    (utc(2026, 11, 23, 3, 2, 1), OK2),
    (utc(2026, 11, 22, 12), OK1),  # the failed backup in between is skipped
    (utc(2030, 1, 1), OK2),
])
def test_newest_completed_before(before, expected):
    assert select_backup(ALL, BackupBefore(before=before), policy="myapp") is expected


def test_before_in_another_zone():
    before = BackupBefore.model_validate({"before": "2026-11-23T12:02:01+09:00"})  # 03:02:01Z
    assert before.before.utcoffset() == timedelta(hours=9)
    assert select_backup(ALL, before, policy="myapp") is OK2


def test_nothing_before():
    with pytest.raises(NoSuchBackup) as raised:
        select_backup(ALL, BackupBefore(before=utc(2026, 11, 21, 3, 1)), policy="myapp")
    assert str(raised.value) == "policy 'myapp' has no successful backup completed before 2026-11-21T03:01:00+00:00"


def test_error_names_the_policy():
    with pytest.raises(NoSuchBackup) as raised:
        select_backup([], "latest", policy="billing.prod")
    assert str(raised.value) == "policy 'billing.prod' has no successful backup yet"


# --- ready_condition ---------------------------------------------------------------------------------------------------


def attempt(of, phase: str | None = None, message: str | None = None, **changes) -> Attempt:
    st = of.status
    fields = dict(backup_id=of.id, phase=phase or st.phase, started_at=st.started_at, completed_at=st.completed_at,
                  bytes=st.bytes, message=message)
    return Attempt(**(fields | changes))


def condition(status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": "Ready", "status": status, "reason": reason, "message": message}


def test_no_backup_yet():
    assert ready_condition(None, None, suspended=False).to_dict() == condition(
        "Unknown", "NoBackupYet", "no backup has completed yet")


def test_success():
    assert ready_condition(attempt(OK2), OK2, suspended=False).to_dict() == condition(
        "True", "BackupSucceeded", "last successful backup 20261123T030000Z")


def test_success_while_suspended():
    assert ready_condition(attempt(OK2), OK2, suspended=True).to_dict() == condition(
        "True", "Suspended", "last successful backup 20261123T030000Z")


def test_failure_after_the_newest_success():
    failed = attempt(FAILED, message="volume 'mydata' does not exist on the Docker host",
                     started_at=OK2.status.started_at + timedelta(days=1))
    assert ready_condition(failed, OK2, suspended=False).to_dict() == condition(
        "False", "BackupFailed", "volume 'mydata' does not exist on the Docker host")


def test_failure_without_message_and_without_any_success():
    assert ready_condition(attempt(FAILED), None, suspended=False).to_dict() == condition(
        "False", "BackupFailed", "backup failed")


def test_failure_older_than_the_newest_success_is_history():
    assert ready_condition(attempt(FAILED), OK2, suspended=False).to_dict() == condition(
        "True", "BackupSucceeded", "last successful backup 20261123T030000Z")


def test_running():
    assert ready_condition(attempt(RUNNING), OK2, suspended=False).to_dict() == condition(
        "Unknown", "BackupRunning", "backup 20261124T030000Z running")


# --- policy_status -------------------------------------------------------------------------------------------------------

# Nightly at 03:00 Tokyo = 18:00Z the day before.
NIGHTLY = policy(schedule="0 3 * * *", timezone="Asia/Tokyo")
NIGHTLY = NIGHTLY.model_copy(update={"metadata": NIGHTLY.metadata.model_copy(update={"generation": 3})})


def ref(b, **extra) -> dict:
    st = b.status
    return {"id": b.id, "phase": st.phase, "startedAt": st.started_at.isoformat().replace("+00:00", "Z"),
            "completedAt": st.completed_at.isoformat().replace("+00:00", "Z"), "bytes": st.bytes, **extra}


def stamped(status: str, reason: str, message: str, *, kind: str = "Ready", since: str, generation: int = 3) -> dict:
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": since,
            "observedGeneration": generation}


def ready_only(status) -> list[dict]:
    """The Ready condition without its stamps, for tests about readiness alone."""
    return [{k: v for k, v in c.to_dict().items() if k in ("type", "status", "reason", "message")}
            for c in status.conditions if c.type == "Ready"]


def test_status_without_any_backup():
    now = utc(2026, 11, 21, 12)
    assert policy_status(NIGHTLY, [], None, now=now).to_dict() == {
        "observedGeneration": 3,
        "conditions": [
            stamped("Unknown", "NoBackupYet", "no backup has completed yet", since="2026-11-21T12:00:00Z"),
            stamped("False", "NoSuccessfulBackup", "no successful backup yet (RPO 1d)", kind="RPOMet",
                    since="2026-11-21T12:00:00Z"),
            stamped("Unknown", "NotMeasured", "no restore has been measured yet; run a restore drill", kind="RTOMet",
                    since="2026-11-21T12:00:00Z"),
        ],
        "nextBackupAt": "2026-11-21T12:00:00Z",  # a policy that never ran is due at once
        "backups": 0,
    }


def test_status_after_a_success():
    done = backup(utc(2026, 11, 20, 18), size=1234)
    status = policy_status(NIGHTLY, [done], attempt(done), now=utc(2026, 11, 21, 12))
    assert ready_only(status) == [condition("True", "BackupSucceeded", "last successful backup 20261120T180000Z")]
    assert {k: v for k, v in status.to_dict().items() if k != "conditions"} == {
        "observedGeneration": 3,
        "lastBackup": ref(done),
        "lastSuccessfulBackup": ref(done),
        "nextBackupAt": "2026-11-21T18:00:00Z",
        "backups": 1,
        "rpoAgeSeconds": 18 * 3600.0 - 120,  # from completion, two minutes after the start
    }
    assert ref(done)["startedAt"] == "2026-11-20T18:00:00Z"


def test_status_after_a_failure_that_follows_a_success():
    done = backup(utc(2026, 11, 20, 18), size=1234)
    failed = Attempt("20261121T180000Z", "Failed", utc(2026, 11, 21, 18), utc(2026, 11, 21, 18, 0, 5),
                     message="tar of volume 'mydata' failed with exit code 2: tar: ./x: Cannot open")
    status = policy_status(NIGHTLY, [done], failed, now=utc(2026, 11, 21, 18, 1))
    assert ready_only(status) == [
        condition("False", "BackupFailed", "tar of volume 'mydata' failed with exit code 2: tar: ./x: Cannot open")]
    assert {k: v for k, v in status.to_dict().items() if k != "conditions"} == {
        "observedGeneration": 3,
        "rpoAgeSeconds": 24 * 3600.0 + 60 - 120,
        "lastBackup": {"id": "20261121T180000Z", "phase": "Failed", "startedAt": "2026-11-21T18:00:00Z",
                       "completedAt": "2026-11-21T18:00:05Z",
                       "message": "tar of volume 'mydata' failed with exit code 2: tar: ./x: Cannot open"},
        "lastSuccessfulBackup": ref(done),
        "nextBackupAt": "2026-11-22T18:00:00Z",  # the failed attempt counts: no retry loop every tick
        "backups": 1,
    }


def test_backups_counts_only_successful_ones_and_the_repository_stands_in_for_lost_state():
    ok = [backup(utc(2026, 11, d, 18)) for d in (17, 18, 20)]
    failed = backup(utc(2026, 11, 19, 18), phase="Failed")
    status = policy_status(NIGHTLY, [ok[2], failed, ok[0], ok[1]], None, now=utc(2026, 11, 21, 12))
    assert status.backups == 3
    assert status.last_backup.to_dict() == ref(ok[2])
    assert status.last_successful_backup.to_dict() == ref(ok[2])
    assert status.next_backup_at == "2026-11-21T18:00:00Z"


def test_overdue_policy_shows_the_missed_slot():
    done = backup(utc(2026, 11, 18, 18))
    status = policy_status(NIGHTLY, [done], attempt(done), now=utc(2026, 11, 21, 12))
    assert status.next_backup_at == "2026-11-19T18:00:00Z"


def test_suspended_and_manual_policies_have_no_next_backup():
    done = backup(utc(2026, 11, 20, 18))
    suspended = policy(schedule="0 3 * * *", suspend=True)
    manual = policy(schedule=None)
    assert ready_only(policy_status(suspended, [done], attempt(done), now=utc(2026, 11, 21))) == [
        condition("True", "Suspended", "last successful backup 20261120T180000Z")]
    assert policy_status(suspended, [done], attempt(done), now=utc(2026, 11, 21)).next_backup_at is None
    assert policy_status(manual, [done], attempt(done), now=utc(2026, 11, 21)).next_backup_at is None
    assert policy_status(manual, [], None, now=utc(2026, 11, 21)).observed_generation is None


def test_a_stale_attempt_older_than_the_newest_backup_is_not_shown_as_last():
    old = backup(utc(2026, 11, 19, 18))
    newest = backup(utc(2026, 11, 20, 18))
    status = policy_status(NIGHTLY, [old, newest], attempt(old), now=utc(2026, 11, 21))
    assert status.last_backup.to_dict() == ref(newest)


# --- RPOMet / RTOMet and transitions -----------------------------------------------------------------------------------


def by_type(status) -> dict[str, dict]:
    return {c.type: c.to_dict() for c in status.conditions}


def test_rpo_met_until_the_newest_backup_is_older_than_the_objective():
    done = backup(utc(2026, 11, 20, 18))
    fresh = by_type(policy_status(NIGHTLY, [done], attempt(done), now=utc(2026, 11, 21, 18, 1)))["RPOMet"]
    assert (fresh["status"], fresh["reason"]) == ("True", "WithinRPO")
    assert fresh["message"] == "newest good backup 20261120T180000Z is 23h59m old (RPO 1d)"
    stale = by_type(policy_status(NIGHTLY, [done], attempt(done), now=utc(2026, 11, 21, 18, 2, 1)))["RPOMet"]
    assert (stale["status"], stale["reason"]) == ("False", "RPOBreached")


def test_rto_condition_follows_the_last_measurement():
    done = backup(utc(2026, 11, 20, 18))
    quick = Measurement(seconds=95.0, at=utc(2026, 11, 21), backup_id=done.id, source="drill")
    slow = Measurement(seconds=45 * 60.0, at=utc(2026, 11, 21), backup_id=done.id, source="restore")
    met = policy_status(NIGHTLY, [done], attempt(done), now=utc(2026, 11, 21, 1), measured=quick)
    assert by_type(met)["RTOMet"]["reason"] == "WithinRTO"
    assert by_type(met)["RTOMet"]["message"] == "last drill took 1m35s (RTO 30m)"
    assert met.measured_rto.to_dict() == {"seconds": 95.0, "at": "2026-11-21T00:00:00Z", "backup": done.id,
                                          "source": "drill"}
    breached = policy_status(NIGHTLY, [done], attempt(done), now=utc(2026, 11, 21, 1), measured=slow)
    assert (by_type(breached)["RTOMet"]["status"], by_type(breached)["RTOMet"]["reason"]) == ("False", "RTOBreached")


def test_objectives_unset_give_unknown_conditions():
    plain = policy(objectives=None)
    conditions = by_type(policy_status(plain, [], None, now=utc(2026, 11, 21)))
    assert (conditions["RPOMet"]["status"], conditions["RPOMet"]["reason"]) == ("Unknown", "NoObjective")
    assert (conditions["RTOMet"]["status"], conditions["RTOMet"]["reason"]) == ("Unknown", "NoObjective")


def test_last_transition_time_moves_only_when_the_status_changes():
    done = backup(utc(2026, 11, 20, 18))
    first = policy_status(NIGHTLY, [done], attempt(done), now=utc(2026, 11, 21, 1))
    later = policy_status(NIGHTLY, [done], attempt(done), now=utc(2026, 11, 21, 2), previous=first.conditions)
    assert by_type(later)["RPOMet"]["lastTransitionTime"] == "2026-11-21T01:00:00Z"  # still met: unchanged
    breached = policy_status(NIGHTLY, [done], attempt(done), now=utc(2026, 11, 22, 0), previous=later.conditions)
    assert by_type(breached)["RPOMet"]["lastTransitionTime"] == "2026-11-22T00:00:00Z"
    assert by_type(breached)["Ready"]["lastTransitionTime"] == "2026-11-22T00:00:00Z"  # no longer protected
    assert by_type(breached)["RTOMet"]["lastTransitionTime"] == "2026-11-21T01:00:00Z"
    assert all(c.observed_generation == 3 for c in breached.conditions)


def test_copies_synced_needs_every_copy_to_hold_the_newest_backup():
    from dockvault.api.policy import CopyStatus

    pol = policy(copies=[{"name": "offsite", "local": {"path": "/b"}}, {"name": "usb", "local": {"path": "/c"}}])
    newest = backup(utc(2026, 11, 21, 3))
    now = utc(2026, 11, 21, 4)

    def ready(*statuses: CopyStatus):
        status = policy_status(pol, [newest], None, now=now, copies=statuses)
        return {c.type: c for c in status.conditions}["CopiesSynced"]

    ok = CopyStatus(name="offsite", phase="Succeeded", at="2026-11-21T03:10:00Z", newest_backup=newest.id)
    assert (ready(ok).status, ready(ok).message) == ("False", "usb: not synced yet")
    behind = CopyStatus(name="usb", phase="Succeeded", at="2026-11-21T03:10:00Z", newest_backup="20261120T030000Z")
    assert (ready(ok, behind).reason, ready(ok, behind).status) == ("CopyBehind", "False")
    assert "usb: lacks the newest backup" in ready(ok, behind).message
    failed = behind.model_copy(update={"phase": "Failed", "message": "copy usb: disk full"})
    assert (ready(ok, failed).reason, ready(ok, failed).message) == ("CopyFailed", "copy usb: disk full")
    good = behind.model_copy(update={"newest_backup": newest.id})
    assert ready(ok, good).status == "True"
    assert "CopiesSynced" not in {c.type for c in policy_status(policy(), [newest], None, now=now).conditions}
