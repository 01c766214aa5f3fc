"""When a policy's next backup is due, and at which level: cron in the policy's time zone, missed runs
collapsed into one.

spec.schedule times the full backups; spec.differential or spec.incremental the partial ones in between. When
slots of both kinds passed since the last attempt, the full one wins: it covers everything a partial would.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from ..api.policy import BackupPolicySpec


def next_run(schedule: str, timezone: str, after: datetime) -> datetime:
    """The first cron slot strictly after `after`, as an aware UTC time.

    A schedule with a fixed hour runs once when clocks go back, as cron does: the repeated wall-clock
    slot is skipped. Hourly and interval schedules keep their real intervals.
    """
    local = after.astimezone(ZoneInfo(timezone))
    slots = croniter(schedule, local)
    slot = slots.get_next(datetime)
    fixed_hour = schedule.split()[1].isdigit()
    if fixed_hour and slot.replace(tzinfo=None, second=0, microsecond=0) == local.replace(tzinfo=None, second=0, microsecond=0):
        slot = slots.get_next(datetime)
    return slot.astimezone(UTC)


@dataclass(frozen=True)
class Due:
    due: bool
    reason: str
    next_at: datetime | None  # the slot this decision is about; None when the policy never runs by itself
    level: str = "full"  # of the scheduled run (a retry takes the failed attempt's level: see controller.jobs)


def next_slot(spec: BackupPolicySpec, after: datetime) -> tuple[datetime, str] | None:
    """The first slot of any level strictly after `after`, and its level (full wins a tie); None: manual only."""
    slots = [(next_run(spec.schedule, spec.timezone, after), 0, "full")] if spec.schedule else []
    if spec.partial is not None:
        level, partial = spec.partial
        slots.append((next_run(partial.schedule, spec.timezone, after), 1, level))
    if not slots:
        return None
    at, _, level = min(slots)
    return at, level


def backup_due(spec: BackupPolicySpec, *, last_attempt: datetime | None, now: datetime,
               retry_at: datetime | None = None) -> Due:
    """Is a scheduled backup due at `now`, given when the last one (of any outcome and level) started?

    A policy that never ran is due at once (a full): until its first backup, its data has no protection at all.
    After downtime, every slot missed since the last attempt collapses into one run now, a full one when a full
    slot was among them. A temporary failure is tried again at `retry_at` (see controller.jobs.retry_at), which
    always lies before the next slot.
    """
    if spec.suspend:
        return Due(False, "suspended", None)
    if spec.schedule is None and spec.partial is None:
        return Due(False, "no schedule (manual only)", None)
    if last_attempt is None:
        return Due(True, "no backup yet", now)
    upcoming = next_slot(spec, last_attempt)
    assert upcoming is not None
    slot, level = upcoming
    if slot <= now:
        if spec.schedule is not None and level != "full" and next_run(spec.schedule, spec.timezone, last_attempt) <= now:
            slot, level = next_run(spec.schedule, spec.timezone, last_attempt), "full"
        following = next_slot(spec, slot)
        missed = "" if following is None or following[0] > now else " (missed slots collapsed into one run)"
        what = "" if level == "full" else f"{level} "
        return Due(True, f"{what}scheduled for {slot.isoformat()}{missed}", slot, level)
    if retry_at is not None and retry_at < slot:
        return Due(retry_at <= now, "retry of a temporary failure" if retry_at <= now else "waiting to retry", retry_at)
    return Due(False, "waiting", slot, level)


def drill_due(spec: BackupPolicySpec, *, last_drill: datetime | None, has_backup: bool, now: datetime) -> Due:
    """Is a restore drill due? Like backups, a first drill runs at once, but only once there is a backup to drill."""
    return _after_backups("drill", spec.drill.schedule if spec.drill else None, spec, last_drill, has_backup, now)


def check_due(spec: BackupPolicySpec, *, last_check: datetime | None, has_backup: bool, now: datetime) -> Due:
    """Is a repository check due? Scheduled like drills: the first at once, once there is a backup to check."""
    return _after_backups("check", spec.check.schedule if spec.check else None, spec, last_check, has_backup, now)


def _after_backups(what: str, schedule: str | None, spec: BackupPolicySpec, last: datetime | None, has_backup: bool,
                   now: datetime) -> Due:
    if schedule is None:
        return Due(False, f"no {what} schedule", None)
    if spec.suspend:
        return Due(False, "suspended", None)
    if not has_backup:
        return Due(False, f"no successful backup to {what} yet", None)
    if last is None:
        return Due(True, f"no {what} yet", now)
    slot = next_run(schedule, spec.timezone, last)
    return Due(slot <= now, "scheduled" if slot <= now else "waiting", slot)
