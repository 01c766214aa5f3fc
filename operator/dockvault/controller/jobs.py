"""What job runs next, and when a failed one is tried again: pure functions of (resources, history, now).

Both front ends hand the job runner (actions/runner.py) the same facts and get the same answers, so a
policy behaves alike in standalone and Kubernetes mode.

Priorities: restores first (someone is waiting, maybe in a disaster), then backups, then restore drills, then
repository checks.
A backup that failed for a temporary reason (engine unreachable or 5xx, container not running, a timeout)
is retried with exponential backoff, the first retry within 30 s, the delay capped at 15 minutes, and never
past the policy's next scheduled slot: that slot is a fresh start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from ..api.policy import BackupPolicy
from ..api.restore import RestoreRequest
from .schedule import backup_due, check_due, drill_due, next_slot
from .status import Attempt

JobKind = Literal["restore", "backup", "drill", "check"]
PRIORITY: dict[str, int] = {"restore": 0, "backup": 1, "drill": 2, "check": 3}

# Failure classes of a finished job (Attempt.error):
TEMPORARY = "temporary"  # retried with backoff
PERMANENT = "permanent"  # no retry until the spec changes or the next slot
UNEXPECTED = "unexpected"  # a bug or an unforeseen error: recorded Failed, not retried before the next slot

FIRST_RETRY = timedelta(seconds=15)
MAX_RETRY_DELAY = timedelta(minutes=15)


@dataclass(frozen=True)
class Job:
    kind: JobKind
    policy: str  # the policy's key: its name, or namespace/name in Kubernetes mode
    reason: str
    request: str | None = None  # the RestoreRequest's key, for restores
    attempt: int = 1
    level: str = "full"  # of a backup: full, differential or incremental (volume targets; dumps are always full)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.request or self.policy}"

    @property
    def sort_key(self) -> tuple[int, str, str]:
        return PRIORITY[self.kind], self.policy, self.request or ""


@dataclass(frozen=True)
class History:
    """What the state remembers of one policy, as far as planning needs it."""

    last_attempt: Attempt | None = None
    newest_backup_started: datetime | None = None  # from the repository, when the state was lost
    last_drill: datetime | None = None
    has_backup: bool = False
    last_check: datetime | None = None


def retry_delay(attempt: int) -> timedelta:
    """Delay after failed try number `attempt` (1, 2, ...): 15 s, 30 s, 1 min, ... capped at 15 min."""
    return min(FIRST_RETRY * (2 ** max(0, attempt - 1)), MAX_RETRY_DELAY)


def retry_at(policy: BackupPolicy, *, attempt: int, failed_at: datetime, started_at: datetime) -> datetime | None:
    """When a temporary failure of try `attempt` is tried again; None when the next slot comes first.

    A policy without a schedule (manual only) or a suspended one is not retried by itself.
    """
    spec = policy.spec
    upcoming = next_slot(spec, started_at)
    if upcoming is None or spec.suspend:
        return None
    at = failed_at + retry_delay(attempt)
    return at if at < upcoming[0] else None


def backup_job(policy: BackupPolicy, key: str, history: History, now: datetime) -> Job | None:
    last = history.last_attempt
    times = [t for t in (history.newest_backup_started, last.started_at if last else None) if t is not None]
    pending_retry = last.next_retry_at if last is not None and last.phase == "Failed" else None
    due = backup_due(policy.spec, last_attempt=max(times, default=None), now=now, retry_at=pending_retry)
    if not due.due:
        return None
    if pending_retry is not None and due.next_at == pending_retry and last is not None:  # the same level again
        return Job("backup", key, due.reason, attempt=last.attempt + 1, level=last.level)
    return Job("backup", key, due.reason, level=due.level)


def drill_job(policy: BackupPolicy, key: str, history: History, now: datetime) -> Job | None:
    due = drill_due(policy.spec, last_drill=history.last_drill, has_backup=history.has_backup, now=now)
    return Job("drill", key, due.reason) if due.due else None


def check_job(policy: BackupPolicy, key: str, history: History, now: datetime) -> Job | None:
    due = check_due(policy.spec, last_check=history.last_check, has_backup=history.has_backup, now=now)
    return Job("check", key, due.reason) if due.due else None


def plan(
    policies: Sequence[tuple[str, BackupPolicy, History]],
    restores: Sequence[tuple[str, RestoreRequest, str]],
    now: datetime,
) -> list[Job]:
    """Every job due at `now`, highest priority first.

    `policies` are (key, policy, history); `restores` are (key, request, policy key) of requests that have not
    run yet for their current spec and whose policy is known (this host's or, for a migration, another's).
    """
    jobs = [Job("restore", policy_key, "requested", request=key) for key, _request, policy_key in restores]
    for key, policy, history in policies:
        jobs += [job for job in (backup_job(policy, key, history, now), drill_job(policy, key, history, now),
                                 check_job(policy, key, history, now)) if job]
    return sorted(jobs, key=lambda job: job.sort_key)
