"""Run one RestoreRequest: pick the backup, verify every artifact's checksum, then restore each target."""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from ..api.backup import Artifact, Backup
from ..api.policy import PRIMARY, BackupPolicy
from ..api.restore import RestoreRequest, RestoreRequestStatus, RestoreTarget
from ..controller.chains import BrokenChain, chain_of
from ..controller.selection import NoSuchBackup, select_backup
from ..credentials import SecretError, mask, read_secret
from ..engine.core import Engine, EngineError, new_job_id
from ..sources import RestoreContext, SourceError, source_for
from ..storage import repository_for
from ..storage.base import Repository, StorageError
from ..storage.codec import ChecksumMismatch, decompressed, read_chunks
from ..storage.crypt import NO_IDENTITY, DecryptionFailed, decrypted, parse_identities

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


def identities_for(policy: BackupPolicy, artifacts: Iterable[Artifact]) -> list[str]:
    """The age identities that decrypt `artifacts` (none when none is encrypted); read before anything is
    created, so a restore without its key fails with the cause and touches nothing."""
    if not any(a.encryption for a in artifacts):
        return []
    age = policy.spec.encryption.age if policy.spec.encryption else None
    if age is None or age.identity_from is None:
        raise DecryptionFailed(NO_IDENTITY)
    try:
        return parse_identities(read_secret(age.identity_from, "spec.encryption.age.identityFrom"))
    except ValueError as exc:
        raise DecryptionFailed(f"spec.encryption.age.identityFrom: {exc}") from None


@dataclass(frozen=True)
class BackupReader:
    """Opens a backup's artifacts as verified, decrypted, decompressed streams; `verify_all` checks every
    checksum before any write."""

    repository: Repository
    policy: str
    backup: Backup
    identities: list[str] = field(default_factory=list)

    def verified(self, artifact: Artifact, backup_id: str | None = None) -> Iterator[bytes]:
        """The artifact's stored bytes, of this backup or of `backup_id` (a link of its chain)."""
        backup_id = backup_id or self.backup.id
        return verified_chunks(self.repository.open_artifact(self.policy, backup_id, artifact.file), artifact,
                               policy=self.policy, backup_id=backup_id)

    def plain(self, artifact: Artifact, backup_id: str | None = None) -> Iterator[bytes]:
        chunks = self.verified(artifact, backup_id)
        return decrypted(chunks, self.identities) if artifact.encryption == "age" else chunks

    def opener(self, artifact: Artifact, backup_id: str | None = None):
        return functools.partial(lambda a: decompressed(self.plain(a, backup_id), a.compression), artifact)

    def verify_all(self, artifacts: Iterable[Artifact | Link]) -> None:
        for item in artifacts:
            artifact, backup_id = (item, None) if isinstance(item, Artifact) else item
            for _ in self.verified(artifact, backup_id):
                pass


@dataclass(frozen=True)
class RestoreOutcome:
    status: RestoreRequestStatus

    @property
    def succeeded(self) -> bool:
        return self.status.phase == "Succeeded"


Link = tuple[Artifact, str]  # an artifact and the id of the backup that holds it (a link of a chain)


def chain_artifacts(backup: Backup, target: str, backups: Iterable[Backup]) -> list[Link]:
    """The artifacts that restore `target` of `backup`: of a chained volume backup, the archive of every link
    from the full on; otherwise the backup's own. BrokenChain when a link is missing."""
    own = backup.artifacts(target)
    if backup.base is None or not own or own[0].source != "volume":
        return [(a, backup.id) for a in own]
    return [(a, link.id) for link in chain_of(backup, {b.id: b for b in backups}) for a in link.artifacts(target)]


def _plan(request: RestoreRequest, backup: Backup, backups: list[Backup]) -> list[tuple[RestoreTarget, list[Link]]]:
    """Each destination with the artifacts it needs; a destination of the wrong kind is refused up front."""
    plan = []
    for index, destination in enumerate(request.spec.targets):
        artifacts = backup.artifacts(destination.from_)
        if not artifacts:
            have = ", ".join(sorted({a.target for a in backup.status.artifacts})) or "none"
            raise RestoreError(f"spec.targets[{index}].from: backup {backup.id} of policy {backup.policy!r} has no "
                               f"target {destination.from_!r} (it has: {have})")
        if artifacts[0].source != destination.kind:
            raise RestoreError(f"spec.targets[{index}]: target {destination.from_!r} holds {artifacts[0].source} "
                               f"data and restores into {artifacts[0].source}, not {destination.kind}")
        try:
            links = chain_artifacts(backup, destination.from_, backups)
        except BrokenChain as exc:
            raise BrokenChain(f"spec.targets[{index}]: {exc}") from None
        wanted = source_for(destination.kind).artifacts_for([a for a, _ in links], destination)
        plan.append((destination, [link for link in links if any(link[0] is a for a in wanted)]))
    return plan


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

    source = None
    try:
        source, backup, plan, reader = _pick_source(request, policy, repository)
        backup_id = backup.id
        for destination, artifacts in plan:
            log.info("restore %s: %s/%s target %s", request.name, policy.name, backup.id, destination.from_)
            streams = [(a, reader.opener(a, backup_id)) for a, backup_id in artifacts]
            try:
                source_for(destination.kind).restore(destination, streams, ctx)
            except SourceError as exc:
                raise SourceError(f"target {destination.from_}: {exc}") from exc
    except (NoSuchBackup, RestoreError, ChecksumMismatch, DecryptionFailed, SecretError, SourceError, EngineError,
            StorageError, OSError, ValueError, EOFError) as exc:
        log.error("restore %s failed: %s", request.name, exc)
        return RestoreOutcome(status("Failed", mask(str(exc))).model_copy(update={"source": source}))
    message = f"restored {len(plan)} target(s) from backup {backup_id}" + (f" of copy {source}" if source != PRIMARY
                                                                            else "")
    if ctx.notes:
        message += "; " + "; ".join(ctx.notes)
    log.info("restore %s succeeded: %s", request.name, message)
    return RestoreOutcome(status("Succeeded", message).model_copy(update={"source": source}))


Plan = list[tuple[RestoreTarget, list[Link]]]


def sources_of(policy: BackupPolicy, repository: Repository, wanted: str | None) -> list[tuple[str, Repository]]:
    """The repositories a restore may read, in order: `wanted` alone, or the primary and then each copy."""
    everything = [(PRIMARY, repository), *((c.name, repository_for(c)) for c in policy.spec.copies)]
    if wanted is None:
        return everything
    chosen = [(name, repo) for name, repo in everything if name == wanted]
    if not chosen:
        names = ", ".join(name for name, _ in everything)
        raise RestoreError(f"spec.source: policy {policy.name!r} has no repository {wanted!r} (it has: {names})")
    return chosen


def _pick_source(request: RestoreRequest, policy: BackupPolicy,
                 repository: Repository) -> tuple[str, Backup, Plan, BackupReader]:
    """The first source that holds the backup with every checksum intact (checked before any write)."""
    problems: list[str] = []
    candidates = sources_of(policy, repository, request.spec.source)
    for name, repo in candidates:
        try:
            backups = repo.backups(policy.name)
            backup = select_backup(backups, request.spec.backup, policy=policy.name)
            plan = _plan(request, backup, backups)
            links = [link for _, ll in plan for link in ll]
            reader = BackupReader(repo, policy.name, backup, identities_for(policy, [a for a, _ in links]))
            reader.verify_all(links)
            return name, backup, plan, reader
        except (NoSuchBackup, BrokenChain, ChecksumMismatch, StorageError, OSError, EOFError) as exc:
            if len(candidates) == 1:
                raise
            problems.append(f"{name}: {exc}")
            log.warning("restore %s: %s cannot serve it, trying the next source: %s", request.name, name, exc)
    raise RestoreError("no repository can serve this restore: " + "; ".join(problems))
