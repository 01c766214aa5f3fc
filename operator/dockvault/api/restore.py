"""RestoreRequest: bring one backup of a policy's targets back, once."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BeforeValidator,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from .common import (
    BACKUP_ID_PATTERN,
    Condition,
    ContainerName,
    DatabaseName,
    Envelope,
    OneOf,
    PasswordFrom,
    ResourceName,
    Schema,
    TargetName,
    VolumeName,
)


class BackupBefore(Schema):
    before: AwareDatetime = Field(description="the newest backup completed before this time")


_BACKUP_ID_RE = re.compile(BACKUP_ID_PATTERN)
_SELECTOR_HELP = "use 'latest', a backup id such as 20261121T030000Z, or {before: 2026-11-20T00:00:00Z}"


def _parse_selector(value: Any) -> Any:
    if isinstance(value, BackupBefore):
        return value
    if isinstance(value, str):
        if value == "latest" or _BACKUP_ID_RE.fullmatch(value):
            return value
        raise ValueError(f"{value!r} is not a backup selector; {_SELECTOR_HELP}")
    if isinstance(value, dict):
        try:
            return BackupBefore.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{where}: {first['msg']}") from None
    raise ValueError(f"unsupported backup selector; {_SELECTOR_HELP}")


BackupSelector = Annotated[
    str | BackupBefore,
    BeforeValidator(_parse_selector),
    WithJsonSchema(
        {"x-kubernetes-preserve-unknown-fields": True, "description": "'latest', a backup id, or {before: TIME}"}
    ),
]


class VolumeRestore(Schema):
    name: VolumeName = Field(description="volume to restore into; created when missing")
    overwrite: bool = Field(False, description="allow replacing the contents of an existing volume")


class DatabaseRestore(Schema):
    container: ContainerName = Field(description="running database container to restore into (same or another)")
    database: DatabaseName = Field(description="database to restore into; created when missing")
    from_database: DatabaseName | None = Field(None, description="which dumped database, when the target dumped several")
    overwrite: bool = Field(False, description="allow restoring into an existing database")
    tables: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1, description="restore only these tables, with their indexes, constraints, triggers, "
                                        "comments and grants (PostgreSQL: also sequences, policies, views and "
                                        "materialized views; name or schema.name)")
    user: str | None = Field(None, min_length=1)
    password_from: PasswordFrom | None = None


class PostgresRestore(DatabaseRestore):
    globals_: bool = Field(False, alias="globals", description="restore roles (pg_dumpall --globals-only) first")


class MysqlRestore(DatabaseRestore):
    pass


DESTINATION_KINDS = ("volume", "postgres", "mysql")


class RestoreTarget(OneOf):
    one_of = DESTINATION_KINDS
    one_of_what = "a restore target"

    from_: TargetName = Field(alias="from", description="the policy's target to restore")
    volume: VolumeRestore | None = None
    postgres: PostgresRestore | None = None
    mysql: MysqlRestore | None = None

    @property
    def kind(self) -> str:
        return self.chosen


class RestoreRequestSpec(Schema):
    policy: ResourceName
    backup: BackupSelector = "latest"
    targets: list[RestoreTarget] = Field(min_length=1)
    source: TargetName | None = Field(
        None, description="primary or a copy's name; default: the primary, then each copy when it lacks the backup "
                          "or an artifact fails its checksum")
    host: str | None = Field(None, min_length=1, description="which host's dockvault performs the restore (migration: "
                                                            "another host's backups into this one's engine); "
                                                            "default: the policy's host")

    @model_validator(mode="after")
    def _unique_sources(self) -> RestoreRequestSpec:
        froms = [t.from_ for t in self.targets]
        for name in froms:
            if froms.count(name) > 1:
                raise ValueError(f"target {name!r} is restored twice")
        return self


RestorePhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class RestoreRequestStatus(Schema):
    phase: RestorePhase = "Pending"
    backup: str | None = None
    source: str | None = Field(None, description="the repository that served it: primary or a copy's name")
    started_at: AwareDatetime | None = None
    completed_at: AwareDatetime | None = None
    duration_seconds: float | None = None
    message: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


class RestoreRequest(Envelope[RestoreRequestSpec, RestoreRequestStatus]):
    kind: Literal["RestoreRequest"] = "RestoreRequest"

    @property
    def spec_hash(self) -> str:
        """Identity of the request's intent: the same name with a changed spec runs again."""
        canonical = json.dumps(self.spec.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
