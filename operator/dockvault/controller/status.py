"""A policy's status as a pure function of its spec, its backups, its last attempt and the time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..api.backup import Backup
from ..api.common import Condition, format_duration
from ..api.policy import (BackupPolicy, BackupPolicyStatus, BackupRef, CopySpec, CopyStatus, Drill, MeasuredRto,
                          RepositoryCheck)
from .schedule import backup_due


@dataclass(frozen=True)
class Attempt:
    """One backup run as the state store remembers it, failed runs included."""

    backup_id: str
    phase: str
    started_at: datetime
    completed_at: datetime | None = None
    bytes: int | None = None
    message: str | None = None
    trigger: str = "schedule"
    error: str | None = None  # for a Failed run: "temporary", "permanent" or "unexpected" (see controller.jobs)
    attempt: int = 1  # 1 for a first try; n for the (n-1)th retry of a temporary failure
    next_retry_at: datetime | None = None  # when a temporary failure is tried again; None: at the next slot
    level: str = "full"  # full, differential or incremental

    def ref(self) -> BackupRef:
        return BackupRef(id=self.backup_id, phase=self.phase, started_at=iso(self.started_at),
                         completed_at=iso(self.completed_at), bytes=self.bytes, message=self.message,
                         error=self.error, attempt=self.attempt if self.attempt > 1 or self.next_retry_at else None,
                         next_retry_at=iso(self.next_retry_at), level=None if self.level == "full" else self.level)


def iso(value: datetime | None) -> str | None:
    """A UTC time as status fields show it: ISO 8601 with Z."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def parse_time(value: Any) -> datetime | None:
    """The inverse of `iso`, lenient: None for an empty or unreadable value; a naive time is taken as UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _ref(backup: Backup) -> BackupRef:
    st = backup.status
    return BackupRef(id=backup.id, phase=st.phase, started_at=iso(st.started_at), completed_at=iso(st.completed_at),
                     bytes=st.bytes)


def last_attempt_time(backups: Sequence[Backup], last: Attempt | None) -> datetime | None:
    """When the newest run started, from the state store or, when that was lost, the repository."""
    times = [b.status.started_at for b in backups if b.status]
    if last is not None:
        times.append(last.started_at)
    return max(times, default=None)


def ready_condition(last: Attempt | None, newest: Backup | None, *, suspended: bool) -> Condition:
    """Did the last backup succeed? (`protected` below adds the RPO to make the user-facing Ready.)"""
    if last is not None and last.phase == "Failed" and (newest is None or newest.status.started_at < last.started_at):
        if last.next_retry_at is not None:
            return Condition(type="Ready", status="False", reason="BackupRetrying",
                             message=f"attempt {last.attempt} failed: {last.message or 'temporary failure'}; "
                                     f"retry at {iso(last.next_retry_at)}")
        return Condition(type="Ready", status="False", reason="BackupFailed", message=last.message or "backup failed")
    if last is not None and last.phase == "Running":
        return Condition(type="Ready", status="Unknown", reason="BackupRunning", message=f"backup {last.backup_id} running")
    if newest is not None:
        reason = "Suspended" if suspended else "BackupSucceeded"
        return Condition(type="Ready", status="True", reason=reason, message=f"last successful backup {newest.id}")
    return Condition(type="Ready", status="Unknown", reason="NoBackupYet", message="no backup has completed yet")


@dataclass(frozen=True)
class Measurement:
    """One measured restore (a RestoreRequest or a restore drill): the RTO actually achieved."""

    seconds: float
    at: datetime
    backup_id: str | None
    source: str  # "restore" or "drill"


def _human(seconds: float) -> str:
    return format_duration(timedelta(seconds=max(1, round(seconds))))


def rpo_condition(objective: timedelta | None, newest: Backup | None, *, now: datetime) -> Condition:
    if objective is None:
        return Condition(type="RPOMet", status="Unknown", reason="NoObjective", message="spec.objectives.rpo is not set")
    if newest is None:
        return Condition(type="RPOMet", status="False", reason="NoSuccessfulBackup",
                         message=f"no successful backup yet (RPO {_human(objective.total_seconds())})")
    age = (now - newest.status.completed_at).total_seconds()
    met = age <= objective.total_seconds()
    return Condition(type="RPOMet", status="True" if met else "False", reason="WithinRPO" if met else "RPOBreached",
                     message=f"newest good backup {newest.id} is {_human(age)} old (RPO {_human(objective.total_seconds())})")


def rto_condition(objective: timedelta | None, measured: Measurement | None) -> Condition:
    if objective is None:
        return Condition(type="RTOMet", status="Unknown", reason="NoObjective", message="spec.objectives.rto is not set")
    if measured is None:
        return Condition(type="RTOMet", status="Unknown", reason="NotMeasured",
                         message="no restore has been measured yet; run a restore drill")
    met = measured.seconds <= objective.total_seconds()
    return Condition(type="RTOMet", status="True" if met else "False", reason="WithinRTO" if met else "RTOBreached",
                     message=f"last {measured.source} took {_human(measured.seconds)} (RTO {_human(objective.total_seconds())})")


def copies_condition(copies: Sequence[CopySpec], statuses: Sequence[CopyStatus], newest: Backup | None) -> Condition:
    """CopiesSynced: every copy's last sync succeeded and it holds the newest good backup of the primary."""
    known = {s.name: s for s in statuses}
    problems = []
    for copy in copies:
        status = known.get(copy.name)
        if status is None:
            problems.append(f"{copy.name}: not synced yet")
        elif status.phase != "Succeeded":
            problems.append(status.message or f"copy {copy.name} failed")
        elif newest is not None and status.newest_backup != newest.id:
            problems.append(f"{copy.name}: lacks the newest backup {newest.id} (has {status.newest_backup or 'none'})")
    if problems:
        failed = any(known.get(c.name) is not None and known[c.name].phase == "Failed" for c in copies)
        return Condition(type="CopiesSynced", status="False", reason="CopyFailed" if failed else "CopyBehind",
                         message="; ".join(problems))
    return Condition(type="CopiesSynced", status="True", reason="CopiesSynced",
                     message=f"{len(copies)} cop{'y' if len(copies) == 1 else 'ies'} hold the newest backup"
                             + (f" {newest.id}" if newest else ""))


def protected(ready: Condition, rpo: Condition) -> Condition:
    """Ready means "protected", in both modes: the last backup succeeded AND the newest good one is within the RPO.

    A succeeded-but-stale policy shows RPOMet's reason and message on Ready, so `kubectl get`, Argo CD and
    `dockvault get policies` all say why the data is not protected.
    """
    if ready.status == "True" and rpo.status == "False":
        return Condition(type="Ready", status="False", reason=rpo.reason, message=rpo.message)
    return ready


def with_transitions(conditions: Sequence[Condition], previous: Sequence[Condition], *, now: datetime,
                     generation: int | None) -> list[Condition]:
    """Stamp observedGeneration, and keep lastTransitionTime unless the status itself changed."""
    before = {c.type: c for c in previous}
    stamped = []
    for condition in conditions:
        old = before.get(condition.type)
        since = old.last_transition_time if old is not None and old.status == condition.status else iso(now.replace(microsecond=0))
        stamped.append(condition.model_copy(update={"last_transition_time": since, "observed_generation": generation}))
    return stamped


def unlisted_status(policy: BackupPolicy, error: str, last: Attempt | None, *, now: datetime,
                    previous: Sequence[Condition] = ()) -> BackupPolicyStatus:
    """The status of a policy whose repository cannot be listed now (unreachable, credentials refused): Ready=False
    with the cause, the other conditions as they were, and the last attempt. Never a stale status, never an error
    that hides every other policy's."""
    ready = Condition(type="Ready", status="False", reason="RepositoryUnavailable",
                      message=f"cannot list the repository: {error}")
    generation = policy.metadata.generation
    return BackupPolicyStatus(
        observed_generation=generation,
        conditions=[*with_transitions([ready], previous, now=now, generation=generation),
                    *(c for c in previous if c.type != "Ready")],
        last_backup=last.ref() if last is not None else None,
    )


def policy_status(
    policy: BackupPolicy,
    backups: Sequence[Backup],
    last: Attempt | None,
    *,
    now: datetime,
    measured: Measurement | None = None,
    drill: Drill | None = None,
    good_drill: Drill | None = None,
    previous: Sequence[Condition] = (),
    copies: Sequence[CopyStatus] = (),
    check: RepositoryCheck | None = None,
) -> BackupPolicyStatus:
    good = sorted((b for b in backups if b.succeeded), key=lambda b: b.status.started_at)
    newest = good[-1] if good else None
    due = backup_due(policy.spec, last_attempt=last_attempt_time(good, last), now=now,
                     retry_at=last.next_retry_at if last is not None else None)
    last_ref = last.ref() if last is not None and (newest is None or last.started_at >= newest.status.started_at) else None
    objectives = policy.spec.objectives
    rpo = rpo_condition(objectives.rpo, newest, now=now)
    conditions = [protected(ready_condition(last, newest, suspended=policy.spec.suspend), rpo), rpo,
                  rto_condition(objectives.rto, measured)]
    if policy.spec.copies:
        conditions.append(copies_condition(policy.spec.copies, copies, newest))
    return BackupPolicyStatus(
        observed_generation=policy.metadata.generation,
        conditions=with_transitions(conditions, previous, now=now, generation=policy.metadata.generation),
        rpo_age_seconds=round((now - newest.status.completed_at).total_seconds(), 3) if newest else None,
        measured_rto=MeasuredRto(seconds=measured.seconds, at=iso(measured.at), backup=measured.backup_id,
                                 source=measured.source) if measured else None,
        last_drill=drill,
        last_successful_drill=good_drill,
        last_check=check,
        copies=list(copies) or None,
        last_verification=drill.legacy() if drill else None,
        last_successful_verification=good_drill.legacy() if good_drill else None,
        last_backup=last_ref or (_ref(newest) if newest else None),
        last_successful_backup=_ref(newest) if newest else None,
        next_backup_at=iso(due.next_at),
        backups=len(good),
    )
