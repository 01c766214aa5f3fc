"""`dockvault check`: prove a repository's backups restorable without restoring them, like restic and borg check.

Without --read-data every backup folder is compared with its manifest: the manifest readable and about that
folder, every artifact present with the size recorded. With it, the artifacts are also read back and their
sha256 compared, all of them or a random N% (a fresh sample each run, so scheduled checks cover everything in
time; the seed is reported so a sample can be read again). Planning is pure; reading is the only I/O.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..api.backup import Artifact, Backup
from ..api.policy import BackupPolicy, RepositoryCheck
from ..storage.base import Repository, StorageError
from ..storage.codec import ChecksumMismatch

log = logging.getLogger(__name__)

MANIFEST_DAMAGE = "(manifest)"  # the artifact column of damage to the backup record itself


@dataclass(frozen=True)
class Damage:
    backup_id: str
    artifact: str  # file name, or MANIFEST_DAMAGE
    problem: str


@dataclass(frozen=True)
class CheckPlan:
    damage: list[Damage]
    to_read: list[tuple[Backup, Artifact]]  # artifacts whose bytes are to be re-hashed
    backups: int  # backup folders looked at
    artifacts: int  # artifacts recorded in readable manifests


def plan_check(backups: Iterable[Backup], stored: Mapping[str, Mapping[str, int]],
               manifest_problems: Mapping[str, str], *, read_data: bool, subset: float | None = None,
               seed: int = 0) -> CheckPlan:
    """What is damaged from sizes alone, and which artifacts to read back.

    `stored` is every backup folder with its files' sizes; `manifest_problems` says why the folders without a
    valid backup record lack one; `subset` is a percentage of the intact artifacts to read (None: all).
    """
    damage: list[Damage] = []
    intact: list[tuple[Backup, Artifact]] = []
    recorded = {b.id: b for b in backups}
    for backup_id in sorted(set(stored) | set(recorded)):
        backup = recorded.get(backup_id)
        if backup is None:
            problem = manifest_problems.get(backup_id, "no valid manifest")
            damage.append(Damage(backup_id, MANIFEST_DAMAGE, problem))
            continue
        files = stored.get(backup_id, {})
        for artifact in backup.status.artifacts if backup.status else []:
            size = files.get(artifact.file)
            if size is None:
                damage.append(Damage(backup_id, artifact.file, "missing"))
            elif size != artifact.bytes:
                damage.append(Damage(backup_id, artifact.file, f"{size} bytes stored, {artifact.bytes} recorded "
                                                               f"(truncated, replaced or swapped)"))
            else:
                intact.append((backup, artifact))
    artifacts = sum(len(b.status.artifacts) for b in recorded.values() if b.status)
    if not read_data:
        return CheckPlan(damage, [], len(set(stored) | set(recorded)), artifacts)
    chosen = intact
    if subset is not None and intact:
        count = min(len(intact), max(1, math.ceil(len(intact) * subset / 100)))
        chosen = sorted(random.Random(seed).sample(intact, count), key=lambda pair: (pair[0].id, pair[1].file))
    return CheckPlan(damage, chosen, len(set(stored) | set(recorded)), artifacts)


@dataclass(frozen=True)
class CheckReport:
    policy: str
    repository: str  # primary or the copy's name
    location: str
    backups: int
    artifacts: int
    read: int  # artifacts re-hashed
    bytes_read: int
    seconds: float
    read_data: bool
    subset: float | None
    seed: int
    damage: list[Damage] = field(default_factory=list)
    error: str | None = None  # the repository could not be checked at all (unreachable, access denied)

    @property
    def ok(self) -> bool:
        return not self.damage and self.error is None

    @property
    def damaged_backups(self) -> list[str]:
        return sorted({d.backup_id for d in self.damage})


def _hash(repository: Repository, policy: str, backup: Backup, artifact: Artifact,
          cancel: threading.Event | None) -> tuple[int, str | None]:
    """Bytes read and the problem found, if any."""
    from .restore import verified_chunks
    read = 0
    try:
        for chunk in verified_chunks(repository.open_artifact(policy, backup.id, artifact.file), artifact,
                                     policy=policy, backup_id=backup.id):
            read += len(chunk)
            if cancel is not None and cancel.is_set():
                return read, None
    except ChecksumMismatch:
        return read, "sha256 does not match the manifest (corrupt)"
    except (StorageError, OSError) as exc:
        return read, f"cannot be read: {exc}"
    return read, None


def check_repository(policy: str, repository: Repository, *, name: str = "primary", read_data: bool = False,
                     subset: float | None = None, seed: int | None = None, cancel: threading.Event | None = None,
                     backups: list[Backup] | None = None,
                     stored: dict[str, dict[str, int]] | None = None) -> CheckReport:
    """Check one repository's backups of `policy` (`backups` and `stored`: its listing and stored files, when the
    caller has just read them); never raises for what it finds."""
    clock = time.monotonic()
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    try:
        if backups is None and stored is None:
            backups, stored = repository.listing(policy)
        backups = repository.backups(policy) if backups is None else backups
        stored = repository.stored_files(policy) if stored is None else stored
        recorded = {b.id for b in backups}
        problems = {bid: repository.manifest_problem(policy, bid) or "no valid manifest"
                    for bid in stored if bid not in recorded}
    except (StorageError, OSError) as exc:
        return CheckReport(policy, name, repository.location, 0, 0, 0, 0, round(time.monotonic() - clock, 3),
                           read_data, subset, seed, error=str(exc))
    plan = plan_check(backups, stored, problems, read_data=read_data, subset=subset, seed=seed)
    damage = list(plan.damage)
    bytes_read = 0
    for backup, artifact in plan.to_read:
        if cancel is not None and cancel.is_set():
            break
        read, problem = _hash(repository, policy, backup, artifact, cancel)
        bytes_read += read
        if problem:
            damage.append(Damage(backup.id, artifact.file, problem))
    report = CheckReport(policy, name, repository.location, plan.backups, plan.artifacts, len(plan.to_read),
                         bytes_read, round(time.monotonic() - clock, 3), read_data, subset, seed,
                         sorted(damage, key=lambda d: (d.backup_id, d.artifact)))
    (log.info if report.ok else log.error)(
        "check of %s in %s (%s): %d backups, %d artifacts, %d read, %d damaged", policy, name, repository.location,
        report.backups, report.artifacts, report.read, len(report.damage))
    return report


def check_policy(policy: BackupPolicy, repository: Repository, *, read_data: bool = False,
                 subset: float | None = None, seed: int | None = None,
                 cancel: threading.Event | None = None) -> list[CheckReport]:
    """The primary repository and then every copy."""
    from .restore import sources_of
    return [check_repository(policy.name, repo, name=name, read_data=read_data, subset=subset, seed=seed,
                             cancel=cancel)
            for name, repo in sources_of(policy, repository, None)]


def summarize(reports: list[CheckReport], *, started_at: str) -> RepositoryCheck:
    """One check's outcome over all its repositories, as status and metrics keep it."""
    damaged = [f"{r.repository}: {', '.join(r.damaged_backups)}" for r in reports if r.damage]
    errors = [f"{r.repository}: {r.error}" for r in reports if r.error]
    artifacts = sum(len(r.damage) for r in reports)
    message = "; ".join([*(f"damaged backups in {d}" for d in damaged), *errors]) or \
        f"{sum(r.backups for r in reports)} backups in {len(reports)} repositories intact"
    return RepositoryCheck(phase="Succeeded" if all(r.ok for r in reports) else "Failed", started_at=started_at,
                           duration_seconds=round(sum(r.seconds for r in reports), 3),
                           backups=sum(r.backups for r in reports),
                           damaged_backups=sum(len(r.damaged_backups) for r in reports), damaged_artifacts=artifacts,
                           read_data=any(r.read_data for r in reports), message=message)
