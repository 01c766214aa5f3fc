"""Retention planner: which backups a policy's keep rules keep, and why, as data the CLI and controller act on.

The rules follow restic `forget` (internal/restic/snapshot_policy.go, restic >= 0.14) so that users can
reuse what they know, with deliberate differences that all err towards keeping data:

- keepWithin counts back from `now`, not from the newest backup. Retention runs right after a successful
  backup, so the two agree in practice, and "the last 30 days" is what a user reads.
- The newest successful backup is always kept, whatever the rules say (even when every count is 0).
- A rule set to 0 counts as set: `keepDaily: 0` alone keeps only the newest backup, whereas restic treats
  an all-zero policy as empty. Only a policy with no rule at all deletes nothing.
- Calendar buckets are computed in the policy's time zone, not in each snapshot's recorded offset.
- Backups that completed after `now` (clock skew) take part in the rules as restic's do and are always kept.
- Backups that did not succeed never take part: they are neither counted by a rule nor deleted.
- Chains: every backup is a restore point and counts as one in the rules, whatever its level. A backup
  that a kept differential or incremental backup builds on is kept too ("base of ID"), whatever the rules
  say, so retention never breaks a chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from ..api.backup import Backup
from ..api.common import format_duration
from ..api.policy import RetentionSpec
from .chains import bases_needed


@dataclass(frozen=True)
class Decision:
    """What retention does with one backup and why. Backups that did not succeed are `ignored`: they carry
    keep=True so that no caller deletes them by reading `keep` alone, yet never count as kept."""

    backup_id: str
    keep: bool
    reasons: tuple[str, ...]
    ignored: bool = False


@dataclass(frozen=True)
class RetentionPlan:
    """Decisions for all backups of one policy, newest first."""

    decisions: tuple[Decision, ...]

    @property
    def keep(self) -> list[str]:
        return [d.backup_id for d in self.decisions if d.keep and not d.ignored]

    @property
    def delete(self) -> list[str]:
        return [d.backup_id for d in self.decisions if not d.keep]

    @property
    def ignored(self) -> list[str]:
        return [d.backup_id for d in self.decisions if d.ignored]


_BUCKETS: tuple[tuple[str, Callable[[datetime], str]], ...] = (
    ("hourly", lambda t: f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:00"),
    ("daily", lambda t: f"{t.year:04d}-{t.month:02d}-{t.day:02d}"),
    ("weekly", lambda t: "{0:04d}-W{1:02d}".format(*t.isocalendar())),
    ("monthly", lambda t: f"{t.year:04d}-{t.month:02d}"),
    ("yearly", lambda t: f"{t.year:04d}"),
)
_NO_TIME = datetime.max.replace(tzinfo=timezone.utc)  # sorts a backup without status first, like a running one


def _time(backup: Backup) -> datetime:
    if backup.status is None:
        return _NO_TIME
    return backup.status.completed_at or backup.status.started_at


def plan_retention(
    backups: Sequence[Backup], rules: RetentionSpec, *, now: datetime, tz: ZoneInfo | str = "UTC"
) -> RetentionPlan:
    """Decide for every backup whether `rules` keep it; pure, so a dry run shows exactly what a real run does."""
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    ordered = sorted(backups, key=lambda b: (_time(b), b.id), reverse=True)
    taking_part = [b for b in ordered if b.succeeded]
    reasons = iter(_keep_reasons([_time(b) for b in taking_part], rules, now=now, zone=zone))

    decisions = []
    for backup in ordered:
        if not backup.succeeded:
            phase = backup.status.phase if backup.status else "without status"
            decisions.append(Decision(backup.id, True, (f"not counted: backup {phase}",), ignored=True))
            continue
        kept_by = tuple(next(reasons))
        decisions.append(Decision(backup.id, bool(kept_by), kept_by or ("matched no keep rule",)))
    needed = bases_needed([d.backup_id for d in decisions if d.keep and not d.ignored], {b.id: b for b in ordered})
    return RetentionPlan(tuple(_as_base(d, needed[d.backup_id]) if d.backup_id in needed else d for d in decisions))


def _as_base(decision: Decision, dependent: str) -> Decision:
    """Kept because `dependent`, a kept backup, builds on it (the rules' verdict stays visible when it kept it too)."""
    reasons = decision.reasons if decision.keep else ()
    return Decision(decision.backup_id, True, (*reasons, f"base of {dependent}"), decision.ignored)


def _keep_reasons(times: list[datetime], rules: RetentionSpec, *, now: datetime, zone: ZoneInfo) -> list[list[str]]:
    """Reasons to keep each of `times` (succeeded backups, newest first); an empty list means delete."""
    reasons = [["no retention rule set"] if rules.is_empty else [] for _ in times]

    for i in range(min(rules.keep_last or 0, len(times))):
        reasons[i].append(f"last {rules.keep_last}")

    for name, bucket_of in _BUCKETS:
        left = getattr(rules, f"keep_{name}") or 0
        last_kept = None
        for i, time in enumerate(times):
            if left == 0:
                break
            bucket = bucket_of(time.astimezone(zone))
            if bucket != last_kept:
                reasons[i].append(f"{name} {bucket}")
            elif i == len(times) - 1:
                # restic >= 0.14: a rule with counts left also keeps the oldest backup, to keep the longest history.
                reasons[i].append(f"oldest in {name} bucket {bucket}")
            else:
                continue
            last_kept, left = bucket, left - 1

    if rules.keep_within is not None:
        for i, time in enumerate(times):
            if now - rules.keep_within < time <= now:
                reasons[i].append(f"within {format_duration(rules.keep_within)}")

    for i, time in enumerate(times):
        if time > now:
            reasons[i].append("completed after now (clock skew?), never deleted")
    if times:
        reasons[0].append("newest successful backup")
    return reasons
