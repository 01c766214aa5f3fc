"""Run one RestoreRequest: pick the backup, verify every artifact's checksum, then restore each target."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO

from ..api.backup import Artifact, Backup
from ..api.policy import BackupPolicy
from ..api.restore import RestoreRequest, RestoreRequestStatus, RestoreTarget
from ..controller.selection import NoSuchBackup, select_backup
from ..engine.core import Engine, EngineError, new_job_id
from ..sources import RestoreContext, SourceError, source_for
from ..storage.base import Repository
from ..storage.codec import ChecksumMismatch, decompressed, read_chunks

log = logging.getLogger(__name__)


class RestoreError(RuntimeError):
    pass


def verified_chunks(stream: BinaryIO, artifact: Artifact, *, policy: str, backup_id: str) -> Iterator[bytes]:
    """Yield the artifact's bytes; raise at the end if they do not match the manifest's sha256."""
    digest = hashlib.sha256()
    with stream:
        for chunk in read_chunks(stream):
            digest.update(chunk)
            yield chunk
    if digest.hexdigest() != artifact.sha256:
        raise ChecksumMismatch(
            f"artifact {policy}/{backup_id}/{artifact.file} is corrupt: sha256 {digest.hexdigest()} "
            f"does not match the manifest's {artifact.sha256}"
        )


@dataclass(frozen=True)
class RestoreOutcome:
    status: RestoreRequestStatus

    @property
    def succeeded(self) -> bool:
        return self.status.phase == "Succeeded"


def _artifacts(request: RestoreRequest, backup: Backup) -> list[tuple[RestoreTarget, Artifact]]:
    pairs = []
    for index, destination in enumerate(request.spec.targets):
        artifact = backup.artifact(destination.from_)
        if artifact is None:
            have = ", ".join(a.target for a in backup.status.artifacts) or "none"
            raise RestoreError(f"spec.targets[{index}].from: backup {backup.id} of policy {backup.policy!r} has no "
                               f"target {destination.from_!r} (it has: {have})")
        pairs.append((destination, artifact))
    return pairs


def run_restore(
    request: RestoreRequest,
    policy: BackupPolicy,
    *,
    engine: Engine,
    repository: Repository,
    cancel: threading.Event | None = None,
) -> RestoreOutcome:
    started = datetime.now(UTC)
    clock = time.monotonic()
    backup_id = None
    ctx = RestoreContext(policy=policy.name, request=request.name, job_id=new_job_id(), engine=engine, cancel=cancel)

    def status(phase: str, message: str) -> RestoreRequestStatus:
        return RestoreRequestStatus(phase=phase, backup=backup_id, started_at=started, completed_at=datetime.now(UTC),
                                    duration_seconds=round(time.monotonic() - clock, 3), message=message)

    try:
        backup = select_backup(repository.backups(policy.name), request.spec.backup, policy=policy.name)
        backup_id = backup.id
        pairs = _artifacts(request, backup)
        for _, artifact in pairs:  # every checksum holds before anything is written
            for _ in verified_chunks(repository.open_artifact(policy.name, backup.id, artifact.file), artifact,
                                     policy=policy.name, backup_id=backup.id):
                pass
        for destination, artifact in pairs:
            log.info("restore %s: %s/%s target %s", request.name, policy.name, backup.id, artifact.target)
            raw = verified_chunks(repository.open_artifact(policy.name, backup.id, artifact.file), artifact,
                                  policy=policy.name, backup_id=backup.id)
            with contextlib.closing(raw):
                source_for(artifact.source).restore(artifact, decompressed(raw, artifact.compression), destination, ctx)
    except (NoSuchBackup, RestoreError, ChecksumMismatch, SourceError, EngineError, OSError, ValueError, EOFError) as exc:
        log.error("restore %s failed: %s", request.name, exc)
        return RestoreOutcome(status("Failed", str(exc)))
    message = f"restored {len(pairs)} target(s) from backup {backup_id}"
    if ctx.notes:
        message += "; " + "; ".join(ctx.notes)
    log.info("restore %s succeeded: %s", request.name, message)
    return RestoreOutcome(status("Succeeded", message))
