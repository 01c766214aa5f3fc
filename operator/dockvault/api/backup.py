"""Backup: the record of one run; serialised as the repository's manifest.json."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, Field

from .common import BackupId, Envelope, ResourceName, Schema, TargetName
from .policy import Level


class Artifact(Schema):
    target: TargetName
    source: Literal["volume", "postgres", "mysql"]
    file: str = Field(description="file name inside the backup's folder")
    bytes: int = Field(ge=0, description="size of the stored file")
    raw_bytes: int = Field(ge=0, description="size of the uncompressed stream")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    compression: Literal["zstd", "gzip", "none"]
    level: int | None = None
    encryption: Literal["age"] | None = Field(None, description="age: encrypted after compression (the sha256 is of "
                                                                  "the stored, encrypted bytes)")
    recipients: list[str] | None = Field(None, description="the age public keys it is encrypted to (no secret)")
    started_at: AwareDatetime
    completed_at: AwareDatetime
    details: dict[str, str] = Field(default_factory=dict, description="source facts: volume, helper image, tool versions")
    tables: dict[str, int] | None = Field(None, description="rows per table in the dump's snapshot, for restore drills")
    role: Literal["snapshot"] | None = Field(None, description="snapshot: GNU tar's listed-incremental snapshot file "
                                                                "of the target's archive (absent: the data itself)")


class BackupSpec(Schema):
    policy: ResourceName
    id: BackupId
    host: str = "local"
    trigger: Literal["schedule", "manual", "startup"] = "schedule"
    level: Level | None = Field(None, description="full, differential or incremental (absent: full, as in 0.1)")
    base: BackupId | None = Field(None, description="the backup this one builds on (differential and incremental)")


BackupPhase = Literal["Running", "Succeeded", "Failed"]


class BackupStatus(Schema):
    phase: BackupPhase
    started_at: AwareDatetime
    completed_at: AwareDatetime | None = None
    duration_seconds: float | None = None
    bytes: int = 0
    artifacts: list[Artifact] = Field(default_factory=list)
    message: str | None = None
    dockvault_version: str | None = None


class Backup(Envelope[BackupSpec, BackupStatus]):
    kind: Literal["Backup"] = "Backup"

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def policy(self) -> str:
        return self.spec.policy

    @property
    def succeeded(self) -> bool:
        return self.status is not None and self.status.phase == "Succeeded"

    @property
    def completed_at(self) -> datetime | None:
        return self.status.completed_at if self.status else None

    @property
    def level(self) -> str:
        return self.spec.level or "full"

    @property
    def base(self) -> str | None:
        return self.spec.base

    def artifact(self, target: str) -> Artifact | None:
        return next(iter(self.artifacts(target)), None)

    def artifacts(self, target: str) -> list[Artifact]:
        """The target's data (its snapshot file, of a chained volume backup, aside)."""
        return [a for a in self.stored(target) if a.role is None]

    def stored(self, target: str) -> list[Artifact]:
        """Every file of the target, the snapshot included."""
        if self.status is None:
            return []
        return [a for a in self.status.artifacts if a.target == target]

    def snapshot(self, target: str) -> Artifact | None:
        return next((a for a in self.stored(target) if a.role == "snapshot"), None)
