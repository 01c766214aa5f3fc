"""Run one backup of a policy: every target into the repository, the manifest last, then retention."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .. import __version__
from ..api.backup import Artifact, Backup, BackupSpec, BackupStatus
from ..api.common import ObjectMeta
from ..api.policy import BackupPolicy
from ..controller.chains import FULL, LevelPlan, plan_level
from ..controller.retention import RetentionPlan, plan_retention
from ..credentials import SecretError, mask
from ..controller.jobs import PERMANENT, TEMPORARY
from ..engine.core import Engine, EngineError, is_temporary, new_job_id
from ..engine.quiesce import Journal
from ..sources import BackupContext, SourceError, source_for
from ..sources.base import Increment, Progress
from ..storage.base import BackupIdTaken, DeleteRefused, Repository, StorageError
from ..storage.codec import ChecksumMismatch
from ..storage.crypt import DecryptionFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupOutcome:
    record: Backup
    retention: RetentionPlan | None = None
    deleted: list[str] = field(default_factory=list)
    error: str | None = None  # of a failed backup: controller.jobs.TEMPORARY or PERMANENT
    refused: list[str] = field(default_factory=list)  # retention wanted them gone; the repository keeps them

    @property
    def succeeded(self) -> bool:
        return self.record.succeeded


def new_backup_id(now: datetime, taken: set[str]) -> str:
    base = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate, n = base, 0
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _record(policy: BackupPolicy, backup_id: str, trigger: str, status: BackupStatus,
            chained: LevelPlan | None) -> Backup:
    """The manifest; `chained` (level and base) of a run with snapshot files, None for a plain full."""
    return Backup(
        metadata=ObjectMeta(name=f"{policy.name}-{backup_id.lower()}"),
        spec=BackupSpec(policy=policy.name, id=backup_id, host=policy.spec.host, trigger=trigger,
                        level=chained.level if chained else None,
                        base=chained.base.id if chained and chained.base else None),
        status=status,
    )


def plan_increment(policy: BackupPolicy, backups: list[Backup], requested: str, repository: Repository,
                   spool: contextlib.ExitStack) -> tuple[LevelPlan, Increment | None]:
    """The run's level and base, with the base's snapshot files read, checked and spooled. A policy that
    declares no differential or incremental schedule takes plain fulls unless a level is asked for; dumps are
    always full. A base whose snapshot file is lost, corrupt or unreadable makes the run a full, with a note."""
    volumes = policy.spec.volume_targets
    if requested == FULL and policy.spec.partial is None:
        return LevelPlan(FULL, None), None
    if not volumes:
        note = "" if requested == FULL else f"a {requested} run of dump targets takes full dumps (a dump has no levels)"
        return LevelPlan(FULL, None, note), None
    plan = plan_level(requested, backups, volumes)
    if plan.base is None:
        return plan, Increment(FULL)
    from .restore import BackupReader, identities_for  # only a chained run reads a base: full runs start without it
    try:
        wanted = {name: artifact for name in volumes if (artifact := plan.base.snapshot(name))}  # plan_level: all
        reader = BackupReader(repository, policy.name, plan.base, identities_for(policy, wanted.values()))
        reader.verify_all(wanted.values())  # small files: checked whole before they are decompressed
        snapshots = {}
        for name, artifact in wanted.items():
            held = spool.enter_context(tempfile.SpooledTemporaryFile(8 << 20))
            for chunk in reader.opener(artifact)():
                held.write(chunk)
            snapshots[name] = (held.tell(), held)
            held.seek(0)
    except (ChecksumMismatch, DecryptionFailed, SecretError, StorageError, OSError, ValueError, EOFError) as exc:
        note = (f"the snapshot file of base backup {plan.base.id} cannot be used ({mask(str(exc))}): "
                f"this {requested} run takes a full backup")
        log.warning("backup %s: %s", policy.name, note)
        return LevelPlan(FULL, None, note), Increment(FULL)
    return plan, Increment(plan.level, snapshots)


def run_backup(
    policy: BackupPolicy,
    *,
    engine: Engine,
    repository: Repository,
    trigger: str = "schedule",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    journal: Journal | None = None,
    level: str = FULL,
) -> BackupOutcome:
    """Back up every target; any failure fails the whole backup, publishes no manifest and skips retention.

    `level` (full, differential, incremental) applies to volume targets; see plan_increment."""
    with contextlib.ExitStack() as spool:
        return _run_backup(policy, engine, repository, trigger, progress, cancel, journal, level, spool)


def _run_backup(policy: BackupPolicy, engine: Engine, repository: Repository, trigger: str, progress: Progress | None,
                cancel: threading.Event | None, journal: Journal | None, requested: str,
                spool: contextlib.ExitStack) -> BackupOutcome:
    started = datetime.now(UTC)
    clock = time.monotonic()
    level, increment = LevelPlan(requested, None), None

    def failed(backup_id: str, message: str, error: str) -> BackupOutcome:
        log.error("backup %s/%s failed (%s): %s", policy.name, backup_id, error, message)
        status = BackupStatus(phase="Failed", started_at=started, completed_at=datetime.now(UTC),
                              duration_seconds=round(time.monotonic() - clock, 3), message=message,
                              dockvault_version=__version__)
        return BackupOutcome(_record(policy, backup_id, trigger, status, level if increment else None), error=error)

    backup_id = new_backup_id(started, set())
    try:
        backups = repository.backups(policy.name)
        mine = [b for b in backups if b.spec.host == policy.spec.host]  # never build on another host's backup
        level, increment = plan_increment(policy, mine, requested, repository, spool)
        taken = {b.id for b in backups}
        backup_id = new_backup_id(started, taken)
        while True:
            try:
                writer = repository.begin(policy.name, backup_id)
                break
            except BackupIdTaken:  # a failed run of the same second left its folder behind
                taken.add(backup_id)
                backup_id = new_backup_id(started, taken)
    except StorageError as exc:
        return failed(backup_id, mask(f"repository {repository.location}: {exc}"),
                      TEMPORARY if exc.temporary else PERMANENT)
    ctx = BackupContext(policy=policy.name, backup_id=backup_id, job_id=new_job_id(), engine=engine,
                        writer=writer, compression=policy.spec.compression, progress=progress, cancel=cancel, journal=journal,
                        record_tables=policy.spec.drill is not None, increment=increment,
                        recipients=policy.spec.encryption.age.recipients if policy.spec.encryption else None)
    artifacts: list[Artifact] = []
    log.info("backup %s/%s started (%s, %s%s)", policy.name, backup_id, trigger, level.level,
             f" on {level.base.id}" if level.base else "")
    where = ""
    try:
        for target in policy.spec.targets:
            where = f"target {target.name}: "
            artifacts += source_for(target.source_kind).backup(target, ctx)
        where = "manifest: "
        status = BackupStatus(phase="Succeeded", started_at=started, completed_at=datetime.now(UTC),
                              duration_seconds=round(time.monotonic() - clock, 3), bytes=sum(a.bytes for a in artifacts),
                              artifacts=artifacts, dockvault_version=__version__, message=level.note or None)
        record = _record(policy, backup_id, trigger, status, level if increment else None)
        writer.commit(record)
    except (SourceError, EngineError, StorageError, OSError, ValueError) as exc:
        writer.abort()
        return failed(backup_id, mask(f"{where}{exc}"), TEMPORARY if is_temporary(exc) else PERMANENT)
    except BaseException:
        writer.abort()
        raise
    log.info("backup %s/%s succeeded: %d bytes in %.1fs", policy.name, backup_id, status.bytes, status.duration_seconds)
    plan, deleted = apply_retention(policy, repository)
    return BackupOutcome(record, plan, deleted, refused=[b for b in plan.delete if b not in deleted])


def apply_retention(policy: BackupPolicy, repository: Repository) -> tuple[RetentionPlan, list[str]]:
    """Delete what the plan says; call only right after a successful backup of `policy`."""
    # Another host's policy of the same name may share the repository: its backups are not ours to prune.
    mine = [b for b in repository.backups(policy.name) if b.spec.host == policy.spec.host]
    plan = plan_retention(mine, policy.spec.retention, now=datetime.now(UTC), tz=policy.spec.timezone)
    deleted = []
    for backup_id in plan.delete:
        try:
            repository.delete(policy.name, backup_id)
        except DeleteRefused as exc:  # kept (and counted by the caller as planned but not deleted)
            log.warning("retention %s: backup %s kept: %s", policy.name, backup_id, exc)
            continue
        deleted.append(backup_id)
        log.info("retention %s: deleted backup %s", policy.name, backup_id)
    return plan, deleted
