"""Restore drills: restore the newest good backup into throwaway resources, prove it complete, time it.

The wall time from start to checked data is the measured RTO. Scratch volumes and servers carry the
`dockvault.io/drill` label and are removed after every drill, and at start-up after a crash.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from ..api.policy import BackupPolicy, Drill
from ..controller.selection import NoSuchBackup, select_backup
from ..controller.status import iso
from ..credentials import SecretError, mask
from ..engine.core import Engine, EngineError, new_job_id
from ..sources import RestoreContext, SourceError, source_for, staged
from ..storage.base import Repository, StorageError
from ..storage.codec import ChecksumMismatch
from ..storage.crypt import DecryptionFailed
from ..controller.chains import BrokenChain
from .restore import BackupReader, chain_artifacts, identities_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrillOutcome:
    drill: Drill
    started_at: datetime
    seconds: float

    @property
    def succeeded(self) -> bool:
        return self.drill.succeeded


def run_drill(policy: BackupPolicy, *, engine: Engine, repository: Repository,
              cancel: threading.Event | None = None) -> DrillOutcome:
    started = datetime.now(UTC)
    clock = time.monotonic()
    backup_id = None
    ctx = RestoreContext(policy=policy.name, request="drill", job_id=new_job_id(), engine=engine, cancel=cancel)
    checks = policy.spec.drill.checks if policy.spec.drill else []
    try:
        backups = repository.backups(policy.name)
        backup = select_backup(backups, "latest", policy=policy.name)
        backup_id = backup.id
        links = {target.name: chain_artifacts(backup, target.name, backups) for target in policy.spec.targets}
        everything = [link for target_links in links.values() for link in target_links]
        reader = BackupReader(repository, policy.name, backup, identities_for(policy, [a for a, _ in everything]))
        # artifacts of staged sources (volumes) are checked as they stream into the scratch volume; the others first
        reader.verify_all([link for target in policy.spec.targets if not staged(target.source_kind)
                           for link in links[target.name]])
        for target in policy.spec.targets:
            if not links[target.name]:
                raise SourceError(f"backup {backup.id} has no artifact for target {target.name} (added since?)")
            streams = [(a, reader.opener(a, link)) for a, link in links[target.name]]
            try:
                source_for(target.source_kind).drill(target, streams, ctx, checks)
            except SourceError as exc:
                raise SourceError(f"target {target.name}: {exc}") from exc
        phase, message = "Succeeded", "; ".join(ctx.notes)
    except (NoSuchBackup, BrokenChain, ChecksumMismatch, DecryptionFailed, SecretError, SourceError, EngineError, StorageError,
            OSError, ValueError, EOFError) as exc:
        phase, message = "Failed", mask(str(exc))
    seconds = round(time.monotonic() - clock, 3)
    (log.info if phase == "Succeeded" else log.error)("drill %s of backup %s %s in %.1fs: %s", policy.name, backup_id,
                                                      phase.lower(), seconds, message)
    drill = Drill(backup=backup_id, phase=phase, started_at=iso(started), duration_seconds=seconds, message=message)
    return DrillOutcome(drill, started, seconds)
