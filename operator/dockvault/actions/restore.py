"""Run one RestoreRequest: pick the backup and its source, then restore each target, every artifact checked by
its checksum (while it streams into a staging area, or whole before any write)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

import zstandard

from ..api.backup import Artifact, Backup
from ..api.policy import PRIMARY, BackupPolicy
from ..api.restore import RestoreRequest, RestoreRequestStatus, RestoreTarget
from ..controller.chains import BrokenChain, chain_of
from ..controller.selection import NoSuchBackup, select_backup
from ..credentials import SecretError, mask, read_secret
from ..engine.core import Engine, EngineError, new_job_id
from ..sources import RestoreContext, SourceError, source_for, staged
from ..sources.tarstream import UnsafeArchive
from ..storage import repository_for
from ..storage.ahead import read_ahead
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
        return read_ahead(verified_chunks(self.repository.open_artifact(self.policy, backup_id, artifact.file),
                                          artifact, policy=self.policy, backup_id=backup_id), name="artifact-read")

    def plain(self, artifact: Artifact, backup_id: str | None = None) -> Iterator[bytes]:
        chunks = self.verified(artifact, backup_id)
        return decrypted(chunks, self.identities) if artifact.encryption == "age" else chunks

    def opener(self, artifact: Artifact, backup_id: str | None = None) -> ArtifactOpener:
        return ArtifactOpener(self, artifact, backup_id)

    def _decompressed(self, chunks: Iterator[bytes], artifact: Artifact, backup_id: str | None) -> Iterator[bytes]:
        """The artifact's plain stream. Corrupt compressed data fails before the checksum at the end would: it is
        reported as the corruption it is."""
        try:
            yield from decompressed(chunks, artifact.compression)
        except (zstandard.ZstdError, zlib.error, EOFError) as exc:
            raise ChecksumMismatch(f"artifact {self.policy}/{backup_id or self.backup.id}/{artifact.file} is corrupt: "
                                   f"{exc}") from None

    def verify_all(self, artifacts: Iterable[Artifact | Link]) -> None:
        for item in artifacts:
            artifact, backup_id = (item, None) if isinstance(item, Artifact) else item
            for _ in self.verified(artifact, backup_id):
                pass


@dataclass(frozen=True)
class ArtifactOpener:
    """Opens one artifact of a backup. Called: its plain stream, as three overlapping stages (reading and hashing,
    decompressing, each on a thread of its own, and whatever the caller does with it). `compressed()`: its bytes
    verified and decrypted but still compressed, for a helper that decompresses them itself."""

    reader: BackupReader
    artifact: Artifact
    backup_id: str | None = None

    @property
    def label(self) -> str:
        return f"{self.reader.policy}/{self.backup_id or self.reader.backup.id}/{self.artifact.file}"

    def __call__(self) -> Iterator[bytes]:
        # The artifact is opened here, on the caller's thread (which holds the job's context: a Secret reader).
        reader, artifact, backup_id = self.reader, self.artifact, self.backup_id
        return read_ahead(reader._decompressed(reader.plain(artifact, backup_id), artifact, backup_id),
                          name="decompress")

    def compressed(self) -> Iterator[bytes]:
        return self.reader.plain(self.artifact, self.backup_id)


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
    """Restore every target of `request`, each from the first source (the primary, then each copy) that serves it.

    A target whose source extracts into a staging area (volumes) is checked while it streams: a checksum that
    does not match aborts the extraction before anything is swapped in, and the next source is tried. The
    artifacts of other targets (databases) are checksummed whole before they are written.
    """
    started = datetime.now(UTC)
    clock = time.monotonic()
    backup_id = None
    ctx = RestoreContext(policy=policy.name, request=request.name, job_id=new_job_id(), engine=engine, cancel=cancel)

    def status(phase: str, message: str) -> RestoreRequestStatus:
        return RestoreRequestStatus(phase=phase, backup=backup_id, started_at=started, completed_at=datetime.now(UTC),
                                    duration_seconds=round(time.monotonic() - clock, 3), message=message,
                                    source=",".join(dict.fromkeys(served)) or None)

    served: list[str] = []
    try:
        candidates = sources_of(policy, repository, request.spec.source)
        problems: list[str] = []
        done: set[int] = set()
        for number, (name, repo) in enumerate(candidates, 1):
            last = number == len(candidates)
            try:
                backup, plan, reader = _open_source(request, policy, repo, backup_id, ctx.notes)
            except (NoSuchBackup, BrokenChain, ChecksumMismatch, StorageError, OSError, EOFError) as exc:
                if last and not problems:
                    raise
                problems.append(f"{name}: {exc}")
                log.warning("restore %s: %s cannot serve it: %s", request.name, name, exc)
                continue
            backup_id = backup.id  # a later source serves the rest of the targets from the same backup
            try:
                for index, (destination, links) in enumerate(plan):
                    if index not in done:
                        _restore_target(request, policy, backup, destination, links, reader, ctx)
                        done.add(index)
                        served.append(name)
                break
            except _SourceFailed as failed:
                if last:
                    raise failed.cause from None
                problems.append(f"{name}: {failed.cause}")
                log.warning("restore %s: %s cannot serve it, trying the next source: %s", request.name, name,
                            failed.cause)
        else:
            raise RestoreError("no repository can serve this restore: " + "; ".join(problems))
    except (NoSuchBackup, RestoreError, ChecksumMismatch, DecryptionFailed, SecretError, SourceError, EngineError,
            StorageError, OSError, ValueError, EOFError) as exc:
        log.error("restore %s failed: %s", request.name, exc)
        return RestoreOutcome(status("Failed", mask(str(exc))))
    copies = [name for name in dict.fromkeys(served) if name != PRIMARY]
    message = f"restored {len(done)} target(s) from backup {backup_id}" + (f" of copy {', '.join(copies)}" if copies
                                                                            else "")
    if ctx.notes:
        message += "; " + "; ".join(ctx.notes)
    log.info("restore %s succeeded: %s", request.name, message)
    return RestoreOutcome(status("Succeeded", message))


class _SourceFailed(Exception):
    """A staged target's stream failed its checks before anything was swapped in: the next source may serve it."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _restore_target(request: RestoreRequest, policy: BackupPolicy, backup: Backup, destination: RestoreTarget,
                    links: list[Link], reader: BackupReader, ctx: RestoreContext) -> None:
    log.info("restore %s: %s/%s target %s", request.name, policy.name, backup.id, destination.from_)
    source = source_for(destination.kind)
    streams = [(a, reader.opener(a, link)) for a, link in links]
    try:
        source.restore(destination, streams, ctx)
    except (ChecksumMismatch, StorageError, EOFError, UnsafeArchive) as exc:  # a corrupt stream may read as hostile
        if staged(destination.kind):
            raise _SourceFailed(exc) from exc
        raise
    except SourceError as exc:
        raise SourceError(f"target {destination.from_}: {exc}") from exc


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


def _open_source(request: RestoreRequest, policy: BackupPolicy, repository: Repository,
                 backup_id: str | None, notes: list[str]) -> tuple[Backup, Plan, BackupReader]:
    """The backup (`backup_id` once an earlier source chose it) and its plan in one source. Artifacts of targets
    restored without a staging area are checksummed whole here, before any write; the others as they stream."""
    wanted = backup_id or request.spec.backup
    # The folders' file lists only for `latest` (to name a newer damaged folder): locally they cost a scan of all.
    backups, stored = repository.listing(policy.name) if wanted == "latest" else (repository.backups(policy.name), {})
    try:
        backup = select_backup(backups, wanted, policy=policy.name)
    except NoSuchBackup:  # say so when the backup is there but its manifest is damaged, not that it is missing
        if isinstance(wanted, str) and wanted != "latest" and repository.exists(policy.name, wanted):
            problem = repository.manifest_problem(policy.name, wanted)
            if problem:
                raise NoSuchBackup(f"backup {wanted} of policy {policy.name!r} is damaged: {problem}") from None
        raise
    if wanted == "latest":  # a newer backup whose manifest is damaged is passed over, and the status says so
        listed = {b.id for b in backups}
        newer = sorted(i for i in stored if i not in listed and i > backup.id)
        if newer:
            notes.append(f"newer backup folder(s) {', '.join(newer)} have no valid manifest and were passed over "
                         f"(dockvault check {policy.name} says why)")
            log.warning("restore %s: %s", request.name, notes[-1])
    plan = _plan(request, backup, backups)
    links = [link for _, ll in plan for link in ll]
    reader = BackupReader(repository, policy.name, backup, identities_for(policy, [a for a, _ in links]))
    reader.verify_all([link for destination, ll in plan if not staged(destination.kind) for link in ll])
    return backup, plan, reader
