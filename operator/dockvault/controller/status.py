"""A policy's status as a pure function of its spec, its backups, its last attempt and the time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ..api.backup import Backup
from ..api.common import Condition
from ..api.policy import BackupPolicy, BackupPolicyStatus, BackupRef
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

    def ref(self) -> BackupRef:
        return BackupRef(id=self.backup_id, phase=self.phase, started_at=_iso(self.started_at),
                         completed_at=_iso(self.completed_at), bytes=self.bytes, message=self.message)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _ref(backup: Backup) -> BackupRef:
    st = backup.status
    return BackupRef(id=backup.id, phase=st.phase, started_at=_iso(st.started_at), completed_at=_iso(st.completed_at),
                     bytes=st.bytes)


def last_attempt_time(backups: Sequence[Backup], last: Attempt | None) -> datetime | None:
    """When the newest run started, from the state store or, when that was lost, the repository."""
    times = [b.status.started_at for b in backups if b.status]
    if last is not None:
        times.append(last.started_at)
    return max(times, default=None)


def ready_condition(last: Attempt | None, newest: Backup | None, *, suspended: bool) -> Condition:
    if last is not None and last.phase == "Failed" and (newest is None or newest.status.started_at < last.started_at):
        return Condition(type="Ready", status="False", reason="BackupFailed", message=last.message or "backup failed")
    if last is not None and last.phase == "Running":
        return Condition(type="Ready", status="Unknown", reason="BackupRunning", message=f"backup {last.backup_id} running")
    if newest is not None:
        reason = "Suspended" if suspended else "BackupSucceeded"
        return Condition(type="Ready", status="True", reason=reason, message=f"last successful backup {newest.id}")
    return Condition(type="Ready", status="Unknown", reason="NoBackupYet", message="no backup has completed yet")


def policy_status(policy: BackupPolicy, backups: Sequence[Backup], last: Attempt | None, *, now: datetime) -> BackupPolicyStatus:
    good = sorted((b for b in backups if b.succeeded), key=lambda b: b.status.started_at)
    newest = good[-1] if good else None
    due = backup_due(policy.spec, last_attempt=last_attempt_time(good, last), now=now)
    last_ref = last.ref() if last is not None and (newest is None or last.started_at >= newest.status.started_at) else None
    return BackupPolicyStatus(
        observed_generation=policy.metadata.generation,
        conditions=[ready_condition(last, newest, suspended=policy.spec.suspend)],
        last_backup=last_ref or (_ref(newest) if newest else None),
        last_successful_backup=_ref(newest) if newest else None,
        next_backup_at=_iso(due.next_at),
        backups=len(good),
    )
