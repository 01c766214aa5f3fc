"""What is known about a policy when Prometheus scrapes: the inputs of the metrics' gauges (metrics.py), derived from
its spec, its repository and what the front end remembers of its runs. Pure: the job runner keeps them up to date
without loading the Prometheus client, which only a process that serves metrics needs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..api.backup import Backup
from ..api.policy import BackupPolicy, CopyStatus, RepositoryCheck
from .status import Attempt, Measurement, parse_time


@dataclass(frozen=True)
class PolicyFacts:
    """What is known about one policy when Prometheus scrapes; None means "not known (yet)" and omits the series."""

    policy: str
    host: str
    targets: tuple[str, ...]
    rpo_target_seconds: float | None
    rto_target_seconds: float | None
    last_success_timestamp: float | None  # unix seconds: completion of the newest successful backup
    last_status: int | None  # 1 = last backup attempt succeeded, 0 = failed, None = never ran
    repository_backups: int  # complete backups kept in the repository
    target_sizes: Mapping[str, int]  # target -> stored bytes in the newest successful backup
    rto_seconds: float | None  # last measured restore/drill duration
    drill_last_success_timestamp: float | None  # unix seconds: completion of the last successful restore drill
    copy_last_success: Mapping[str, float | None] = dataclasses.field(default_factory=dict)  # copy -> unix seconds
    check_last_timestamp: float | None = None  # unix seconds: completion of the last scheduled repository check
    check_damaged_artifacts: int | None = None  # damaged artifacts and manifests the last check found


def facts_for(policy: BackupPolicy, backups: Sequence[Backup], *, last: Attempt | None, measured: Measurement | None,
              drilled_at: float | None, copies: Sequence[CopyStatus] = (),
              check: RepositoryCheck | None = None) -> PolicyFacts:
    """A policy's facts from its spec, its repository and what the front end remembers of its runs."""
    good = [b for b in backups if b.succeeded]
    newest = max(good, key=lambda b: b.status.completed_at, default=None)
    sizes: dict[str, int] = {}
    for artifact in newest.status.artifacts if newest else []:
        sizes[artifact.target] = sizes.get(artifact.target, 0) + artifact.bytes
    objectives = policy.spec.objectives
    return PolicyFacts(
        policy=policy.name,
        host=policy.spec.host,
        targets=tuple(t.name for t in policy.spec.targets),
        rpo_target_seconds=objectives.rpo.total_seconds() if objectives.rpo else None,
        rto_target_seconds=objectives.rto.total_seconds() if objectives.rto else None,
        last_success_timestamp=newest.status.completed_at.timestamp() if newest else None,
        last_status=None if last is None or last.phase == "Running" else int(last.phase == "Succeeded"),
        repository_backups=len(good),
        target_sizes=sizes,
        rto_seconds=measured.seconds if measured else None,
        drill_last_success_timestamp=drilled_at,
        copy_last_success={c.name: (t.timestamp() if (t := parse_time(c.last_success_at)) else None) for c in copies},
        check_last_timestamp=(t.timestamp() + check.duration_seconds) if check and (t := parse_time(check.started_at))
        else None,
        check_damaged_artifacts=check.damaged_artifacts if check else None,
    )
