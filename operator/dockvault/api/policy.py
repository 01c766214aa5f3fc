"""BackupPolicy: what to back up, when, where to, and how long to keep it."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from .common import (
    Condition,
    ContainerName,
    Cron,
    DatabaseName,
    Duration,
    Envelope,
    OneOf,
    PasswordFrom,
    SecretFrom,
    Schema,
    TargetName,
    Timezone,
    VolumeName,
)
from .notify import NotifySpec


class VolumeSource(Schema):
    """A Docker volume archived with tar by a short-lived helper container."""

    name: VolumeName
    quiesce: Literal["none", "pause", "stop"] = Field(
        "none", description="pause or stop the running containers that use the volume while it is archived"
    )


class DatabaseSource(Schema):
    """A database server in a running container, dumped with its own client tools through `docker exec`."""

    container: ContainerName
    databases: list[DatabaseName] | None = Field(None, min_length=1, description="default: every user database")
    user: str | None = Field(None, min_length=1, description="default: from the container's environment")
    password_from: PasswordFrom | None = Field(None, description="default: from the container's environment")


class PostgresSource(DatabaseSource):
    pass


class MysqlSource(DatabaseSource):
    pass


SOURCE_KINDS = ("volume", "postgres", "mysql")


class BackupTarget(OneOf):
    one_of = SOURCE_KINDS
    one_of_what = "a target"

    name: TargetName
    volume: VolumeSource | None = None
    postgres: PostgresSource | None = None
    mysql: MysqlSource | None = None

    @property
    def source_kind(self) -> str:
        return self.chosen


class LocalStorage(Schema):
    path: str = Field(min_length=1, description="directory on the operator's host that holds the repository")


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_PART = re.compile(r"[A-Za-z0-9!_.*'()-]+")


def _check_bucket(value: str) -> str:
    if not _BUCKET.fullmatch(value) or ".." in value:
        raise ValueError(f"{value!r} is not a valid bucket name (3-63 lower-case letters, digits, dots, hyphens)")
    return value


def _check_prefix(value: str) -> str:
    parts = value.strip("/").split("/") if value.strip("/") else []
    for part in parts:
        if part in (".", "..") or not _PREFIX_PART.fullmatch(part):
            raise ValueError(f"prefix {value!r}: each part must be letters, digits or !_.*'()- (not . or ..)")
    return "/".join(parts)


def _check_endpoint(value: str) -> str:
    scheme, _, rest = value.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ValueError(f"endpoint {value!r} must be an http:// or https:// URL")
    return value.rstrip("/")


PRIMARY = "primary"  # the name of spec.storage where a repository is named (RestoreRequest spec.source)


class S3Credentials(Schema):
    """Keys read at run time (never written into the resource); without this block boto3's default chain."""

    access_key_id_from: SecretFrom
    secret_access_key_from: SecretFrom
    session_token_from: SecretFrom | None = Field(None, description="for temporary credentials")


class S3Storage(Schema):
    """A bucket of AWS S3 or an S3-compatible server: <prefix>/<policy>/<backup-id>/<artifact>."""

    bucket: Annotated[str, AfterValidator(_check_bucket)]
    prefix: Annotated[str, AfterValidator(_check_prefix)] = Field("", description="optional key prefix")
    endpoint: Annotated[str, AfterValidator(_check_endpoint)] | None = Field(
        None, description="for S3-compatible servers, e.g. http://127.0.0.1:8333 (path-style addressing)")
    region: str | None = Field(None, min_length=1, max_length=64)
    credentials: S3Credentials | None = Field(
        None, description="default: boto3's chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, instance role, ...)")


class StorageSpec(OneOf):
    one_of = ("local", "s3")  # the backends: storage/__init__.py BACKENDS
    one_of_what = "storage"

    local: LocalStorage | None = None
    s3: S3Storage | None = None

    @property
    def backend(self) -> str:
        return self.chosen


_LEVELS = {"zstd": (1, 22, 3), "gzip": (1, 9, 6)}


class CompressionSpec(Schema):
    algorithm: Literal["zstd", "gzip", "none"] = "zstd"
    level: int | None = None

    @model_validator(mode="after")
    def _level_in_range(self) -> CompressionSpec:
        if self.level is None:
            return self
        if self.algorithm == "none":
            raise ValueError("level is not allowed when algorithm is none")
        low, high, _ = _LEVELS[self.algorithm]
        if not low <= self.level <= high:
            raise ValueError(f"level for {self.algorithm} must be between {low} and {high}")
        return self

    @property
    def effective_level(self) -> int | None:
        if self.algorithm == "none":
            return None
        return self.level if self.level is not None else _LEVELS[self.algorithm][2]


NonNegative = Field(None, ge=0)


class RetentionSpec(Schema):
    """restic-style keep rules; with no rule set, nothing is ever deleted."""

    keep_last: int | None = NonNegative
    keep_hourly: int | None = NonNegative
    keep_daily: int | None = NonNegative
    keep_weekly: int | None = NonNegative
    keep_monthly: int | None = NonNegative
    keep_yearly: int | None = NonNegative
    keep_within: Duration | None = None

    @property
    def is_empty(self) -> bool:
        return all(value is None for value in self.__dict__.values())


class Objectives(Schema):
    rpo: Duration | None = Field(None, description="the newest good backup must be younger than this")
    rto: Duration | None = Field(None, description="a restore must finish within this")


class CopySpec(StorageSpec):
    """3-2-1: a further repository that receives each successful backup (streamed, verified, manifest last)."""

    one_of_what = "a copy"

    name: TargetName = Field(description="names the copy in status, metrics and RestoreRequest spec.source")
    retention: RetentionSpec | None = Field(None, description="default: the policy's retention")


_AGE_RECIPIENT = re.compile(r"age1[02-9ac-hj-np-z]{58}")


def _check_recipient(value: str) -> str:
    if not _AGE_RECIPIENT.fullmatch(value):
        raise ValueError(f"{value!r} is not an age recipient (a public key age1... of 62 characters)")
    return value


class AgeEncryption(Schema):
    """Artifacts are encrypted to these public keys after compression, before they leave dockvault."""

    recipients: list[Annotated[str, AfterValidator(_check_recipient)]] = Field(min_length=1)
    identity_from: SecretFrom | None = Field(
        None, description="private key (age-keygen output) for restores and drills: env | file | secretKeyRef")


class EncryptionSpec(Schema):
    age: AgeEncryption


_EXPECT = re.compile(r"^\s*(==|=|!=|>=|<=|>|<)\s*(-?[0-9]+(\.[0-9]+)?)\s*$")


def expectation(text: str) -> tuple[str, float]:
    """Parse an expectation such as '>0' or '= 42' into (operator, number)."""
    match = _EXPECT.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an expectation; use e.g. '>0', '>=10', '=42' or '!=0'")
    op = "==" if match.group(1) == "=" else match.group(1)
    return op, float(match.group(2))


class DrillCheck(Schema):
    """A query run against the restored database of a drill; its single value must meet `expect`."""

    sql: str = Field(min_length=1, description="query returning one value, e.g. SELECT count(*) FROM users")
    expect: str = Field(description="comparison for that value: >0, >=10, =42, !=0, <5")
    target: TargetName | None = Field(None, description="database target to check; default: every database target")
    database: DatabaseName | None = Field(None, description="which restored database; default: each one")

    @model_validator(mode="after")
    def _valid_expectation(self) -> DrillCheck:
        expectation(self.expect)
        return self


class DrillSpec(Schema):
    """Restore drills: restore the newest good backup into throwaway resources, check it, measure the RTO."""

    schedule: Cron | None = Field(None, description="cron schedule for drills; without one only `dockvault drill`")
    checks: list[DrillCheck] = Field(default_factory=list)


class CheckSpec(Schema):
    """Scheduled repository checks (`dockvault check`) of the primary and every copy; damage shows in the
    metric dockvault_check_damaged_artifacts and fires DockvaultRepositoryDamaged."""

    schedule: Cron = Field(description="cron schedule of checks, in the policy's time zone")
    read_data: bool = Field(False, description="also read the artifacts back and compare their sha256 (else sizes only)")
    subset: float | None = Field(None, ge=0, le=100, description="with readData: read a random percentage of the "
                                                                 "artifacts (greater than 0), a fresh sample each run "
                                                                 "(default: all)")

    @model_validator(mode="after")
    def _subset_reads(self) -> CheckSpec:
        if self.subset is not None and not self.read_data:
            raise ValueError("subset needs readData: true")
        if self.subset == 0:  # a CRD minimum is inclusive: the model refuses the bound itself
            raise ValueError("subset must be greater than 0")
        return self


Level = Literal["full", "differential", "incremental"]


class LevelSpec(Schema):
    """A schedule of partial volume backups between the full ones (spec.schedule): GNU tar's listed-incremental."""

    schedule: Cron = Field(description="cron schedule of these backups, in the policy's time zone")


class BackupPolicySpec(Schema):
    host: str = Field("local", min_length=1, description="the Docker host (operator instance) that runs this policy")
    schedule: Cron | None = Field(None, description="cron schedule (full backups); without one the policy runs only "
                                                    "on demand")
    differential: LevelSpec | None = Field(None, description="volume backups of the changes since the last full "
                                                             "(dumps are always full); at most one of differential "
                                                             "and incremental")
    incremental: LevelSpec | None = Field(None, description="volume backups of the changes since the previous backup "
                                                            "of any level (dumps are always full)")
    timezone: Timezone = "UTC"
    objectives: Objectives = Field(default_factory=Objectives)
    targets: list[BackupTarget] = Field(min_length=1)
    storage: StorageSpec
    compression: CompressionSpec = Field(default_factory=CompressionSpec)
    retention: RetentionSpec = Field(default_factory=RetentionSpec)
    copies: list[CopySpec] = Field(default_factory=list, description="3-2-1: where each backup is also copied")
    encryption: EncryptionSpec | None = None
    notify: NotifySpec | None = Field(None, description="mail and webhooks on failure (and on success when asked)")
    drill: DrillSpec | None = None
    verify: DrillSpec | None = Field(None, description="deprecated alias of drill (read as drill; give only one)")
    check: CheckSpec | None = None
    suspend: bool = False

    @model_validator(mode="before")
    @classmethod
    def _verify_is_drill(cls, data: object) -> object:
        """spec.verify, the old name of spec.drill, keeps working (api.loader.DEPRECATED_FIELDS)."""
        if isinstance(data, dict) and data.get("verify") is not None:
            if data.get("drill") is not None:
                raise ValueError("give drill only: verify is its deprecated alias")
            data = {**data, "drill": data["verify"]}
            del data["verify"]
        return data

    @model_validator(mode="after")
    def _unique_target_names(self) -> BackupPolicySpec:
        if self.differential is not None and self.incremental is not None:
            raise ValueError("give at most one of differential and incremental")
        seen: set[str] = set()
        for target in self.targets:
            if target.name in seen:
                raise ValueError(f"target name {target.name!r} is used twice")
            seen.add(target.name)
        names = [copy.name for copy in self.copies]
        for name in names:
            if names.count(name) > 1 or name == PRIMARY:
                raise ValueError(f"copies: the name {name!r} is used twice" if name != PRIMARY else
                                 f"copies: {PRIMARY!r} names the policy's storage; choose another name")
        for index, check in enumerate(self.drill.checks if self.drill else []):
            if check.target is not None and check.target not in seen:
                raise ValueError(f"drill.checks[{index}].target: no target named {check.target!r}")
        return self

    @property
    def partial(self) -> tuple[Level, LevelSpec] | None:
        """The schedule of differential or incremental backups, if any, with its level."""
        if self.differential is not None:
            return "differential", self.differential
        if self.incremental is not None:
            return "incremental", self.incremental
        return None

    @property
    def volume_targets(self) -> list[str]:
        return [t.name for t in self.targets if t.volume is not None]

    def target(self, name: str) -> BackupTarget | None:
        return next((t for t in self.targets if t.name == name), None)


class BackupRef(Schema):
    id: str
    phase: str
    started_at: str | None = None
    completed_at: str | None = None
    bytes: int | None = None
    message: str | None = None
    error: str | None = Field(None, description="of a failed run: temporary (retried), permanent or unexpected")
    attempt: int | None = Field(None, description="which try this was, when temporary failures were retried")
    next_retry_at: str | None = Field(None, description="when a temporary failure is tried again")
    level: Level | None = Field(None, description="full, differential or incremental (absent: full)")


class MeasuredRto(Schema):
    seconds: float
    at: str
    backup: str | None = None
    source: str = Field(description="restore (a RestoreRequest) or drill (spec.drill)")


class Drill(Schema):
    """One restore drill's outcome."""

    backup: str | None = None
    phase: str = Field(description="Succeeded or Failed")
    started_at: str | None = None
    duration_seconds: float | None = None
    message: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _result_is_phase(cls, data: object) -> object:
        """Records written by dockvault 0.1 (SQLite state, resource status) call the phase `result`."""
        if isinstance(data, dict) and "result" in data and "phase" not in data:
            data = {**data, "phase": data["result"]}
            del data["result"]
        return data

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded"

    def legacy(self) -> dict[str, Any]:
        """The deprecated lastVerification shape: `result` for `phase`."""
        body = self.to_dict()
        return {"result" if k == "phase" else k: v for k, v in body.items()}


class RepositoryCheck(Schema):
    """One check's outcome over the primary and every copy: Failed when anything is damaged or unreadable."""

    phase: Literal["Succeeded", "Failed"]
    started_at: str
    duration_seconds: float
    backups: int = Field(description="backups looked at, in all repositories")
    damaged_backups: int = 0
    damaged_artifacts: int = Field(0, description="damaged artifacts and manifests, in all repositories")
    read_data: bool = False
    message: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded"


class CopyStatus(Schema):
    """The last sync of one copy (3-2-1) and what the copy holds."""

    name: str
    phase: Literal["Succeeded", "Failed"]
    at: str = Field(description="when the last sync ended")
    message: str | None = None
    backups: int | None = Field(None, description="complete backups the copy holds")
    newest_backup: str | None = Field(None, description="id of the newest backup the copy holds")
    newest_completed_at: str | None = Field(None, description="when that backup completed (the copy's RPO)")
    last_success_at: str | None = Field(None, description="when a sync of this copy last succeeded")


class QuiescedContainer(Schema):
    """A container a running job paused or stopped (Kubernetes mode's quiesce journal): resumed at start-up."""

    container_id: str
    name: str
    mode: Literal["pause", "stop"]
    at: str


class BackupPolicyStatus(Schema):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    last_backup: BackupRef | None = None
    last_successful_backup: BackupRef | None = None
    next_backup_at: str | None = None
    backups: int | None = None
    rpo_age_seconds: float | None = None
    measured_rto: MeasuredRto | None = None
    last_drill: Drill | None = None
    last_successful_drill: Drill | None = None
    last_check: RepositoryCheck | None = Field(None, description="the last scheduled repository check (spec.check)")
    last_verification: dict[str, Any] | None = Field(
        None, description="deprecated: lastDrill with `result` for `phase` (written until v1beta1)",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    copies: list[CopyStatus] | None = Field(None, description="3-2-1: the last sync of each copy")
    last_successful_verification: dict[str, Any] | None = Field(
        None, description="deprecated: lastSuccessfulDrill with `result` for `phase` (written until v1beta1)",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    quiesced: list[QuiescedContainer] | None = Field(
        None, description="Kubernetes mode: containers a job halted and has not yet resumed (a journal)")


class BackupPolicy(Envelope[BackupPolicySpec, BackupPolicyStatus]):
    kind: Literal["BackupPolicy"] = "BackupPolicy"
