"""3-2-1 copies: each good backup of the primary repository also goes to every `spec.copies` destination.

A backup is copied artifact by artifact, streamed and checked against the manifest's sha256 on the way,
then read back from the destination and checked again; only then is its manifest written there, last, as
in the primary. Backups the destination lacks are copied on every sync (catch-up), newest first, but only
those the destination's retention would keep. Retention then runs per destination, with the same rules
that never delete the newest good backup.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..api.backup import Backup
from ..api.policy import BackupPolicy, CopySpec, CopyStatus
from ..controller.chains import chain_of
from ..controller.retention import plan_retention
from ..controller.status import iso
from ..credentials import SecretError, mask
from ..sources.base import check_cancel
from ..storage import repository_for
from ..storage.base import BackupIdTaken, DeleteRefused, Repository, StorageError
from ..storage.codec import ChecksumMismatch
from .restore import verified_chunks

log = logging.getLogger(__name__)


@dataclass
class CopyOutcome:
    status: CopyStatus
    copied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    error: StorageError | Exception | None = None

    @property
    def succeeded(self) -> bool:
        return self.status.phase == "Succeeded"


def copy_backup(source: Repository, destination: Repository, backup: Backup,
                cancel: threading.Event | None = None) -> None:
    """Copy one backup; its manifest is written only after every artifact was read back and matched."""
    policy = backup.policy
    try:
        writer = destination.begin(policy, backup.id)
    except BackupIdTaken:  # a sync cut short left a folder without manifest: start that backup over
        destination.clean_temporaries(policy)
        writer = destination.begin(policy, backup.id)
    try:
        for artifact in backup.status.artifacts:
            with writer.artifact(artifact.file) as out:
                for chunk in verified_chunks(source.open_artifact(policy, backup.id, artifact.file), artifact,
                                             policy=policy, backup_id=backup.id):
                    check_cancel(cancel)
                    out.write(chunk)
        for artifact in backup.status.artifacts:  # read back: what the destination stores is what it serves
            for _ in verified_chunks(destination.open_artifact(policy, backup.id, artifact.file), artifact,
                                     policy=policy, backup_id=f"{backup.id} (copy)"):
                check_cancel(cancel)
        writer.commit(backup)
    except BaseException:
        writer.abort()
        raise


def sync_copy(policy: BackupPolicy, primary: Repository, copy: CopySpec, *, now: datetime | None = None,
              cancel: threading.Event | None = None, previous: CopyStatus | None = None) -> CopyOutcome:
    """Bring one destination up to date with the primary, then apply its retention."""
    started = now or datetime.now(UTC)
    outcome = CopyOutcome(CopyStatus(name=copy.name, phase="Succeeded", at=iso(started)))
    retention = copy.retention or policy.spec.retention
    held: list[Backup] = []
    try:
        destination = repository_for(copy)
        have = {b.id: b for b in destination.backups(policy.name) if b.succeeded}
        good = [b for b in primary.backups(policy.name) if b.succeeded]
        wanted = plan_retention([*have.values(), *(b for b in good if b.id not in have)], retention, now=started,
                                tz=policy.spec.timezone).keep
        by_id = {b.id: b for b in good}
        for newest in sorted(good, key=lambda b: b.status.started_at, reverse=True):  # newest first
            if newest.id in have or newest.id not in wanted:
                continue
            for backup in chain_of(newest, by_id):  # a chain's links before it, so the copy never holds a broken one
                if backup.id in have:
                    continue
                copy_backup(primary, destination, backup, cancel)
                have[backup.id] = backup
                outcome.copied.append(backup.id)
                log.info("copy %s: backup %s/%s copied", copy.name, policy.name, backup.id)
        mine = [b for b in destination.backups(policy.name) if b.spec.host == policy.spec.host]  # not another host's
        plan = plan_retention(mine, retention, now=started, tz=policy.spec.timezone)
        for backup_id in plan.delete:
            try:
                destination.delete(policy.name, backup_id)
            except DeleteRefused as exc:
                log.warning("copy %s: retention keeps %s/%s: %s", copy.name, policy.name, backup_id, exc)
                continue
            outcome.deleted.append(backup_id)
        held = [b for b in destination.backups(policy.name) if b.succeeded]
    except (StorageError, ChecksumMismatch, SecretError, OSError, ValueError, EOFError) as exc:
        outcome.error = exc
        message = mask(f"copy {copy.name}: {exc}")
        log.error("%s", message)
        outcome.status = outcome.status.model_copy(update={"phase": "Failed", "message": message})
    if outcome.succeeded:
        newest = max(held, key=lambda b: b.status.started_at, default=None)
        update = {"backups": len(held), "newest_backup": newest.id if newest else None,
                  "newest_completed_at": iso(newest.status.completed_at) if newest else None,
                  "last_success_at": iso(started),
                  "message": f"copied {len(outcome.copied)}, deleted {len(outcome.deleted)}"}
    else:  # what the copy held at its last good sync still stands
        kept = ("backups", "newest_backup", "newest_completed_at", "last_success_at")
        update = {k: getattr(previous, k) for k in kept} if previous else {}
    outcome.status = outcome.status.model_copy(update={"at": iso(datetime.now(UTC)), **update})
    return outcome


def sync_copies(policy: BackupPolicy, primary: Repository, *, previous: Sequence[CopyStatus] = (),
                cancel: threading.Event | None = None) -> list[CopyOutcome]:
    """Every copy of the policy, one after the other; one failing destination does not stop the others."""
    before = {status.name: status for status in previous}
    return [sync_copy(policy, primary, copy, cancel=cancel, previous=before.get(copy.name))
            for copy in policy.spec.copies]
