"""Building blocks shared by every resource: camelCase schema base, names, durations, cron."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "dockvault.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class Schema(BaseModel):
    """Strict camelCase model: unknown fields are errors, Python names stay snake_case."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _spoken(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


class OneOf(Schema):
    """A block that takes exactly one of the fields in `one_of`: a target's source, a storage backend, where a
    secret is read from. Subclasses declare the fields, the name users know the block by and a hint."""

    one_of: ClassVar[tuple[str, ...]]
    one_of_what: ClassVar[str]
    one_of_hint: ClassVar[str] = ""

    @model_validator(mode="after")
    def _exactly_one(self) -> OneOf:
        given = [name for name in self.one_of if getattr(self, name) is not None]
        if len(given) != 1:
            alias = {name: type(self).model_fields[name].alias or name for name in self.one_of}
            message = f"{self.one_of_what} needs exactly one of {_spoken(list(alias.values()))}"
            if given:
                message += f", not {' and '.join(alias[name] for name in given)}"
            raise ValueError(message + (f" ({self.one_of_hint})" if self.one_of_hint else ""))
        return self

    @property
    def chosen(self) -> str:
        """The field that is set (Python name)."""
        return next(name for name in self.one_of if getattr(self, name) is not None)


_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*"
_DOCKER_NAME = r"[a-zA-Z0-9][a-zA-Z0-9_.-]+"


def _matcher(pattern: str, what: str, max_len: int):
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if len(value) > max_len:
            raise ValueError(f"{what} must be at most {max_len} characters")
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid {what} (must match {pattern})")
        return value

    return check


def _name_type(pattern: str, what: str, max_len: int):
    return Annotated[
        str,
        AfterValidator(_matcher(pattern, what, max_len)),
        WithJsonSchema({"type": "string", "pattern": f"^{pattern}$", "maxLength": max_len}),
    ]


ResourceName = _name_type(_DNS1123_SUBDOMAIN, "resource name (DNS-1123 subdomain)", 253)
TargetName = _name_type(_DNS1123_LABEL, "target name (DNS-1123 label)", 63)
VolumeName = _name_type(_DOCKER_NAME, "Docker volume name", 255)
ContainerName = _name_type(_DOCKER_NAME, "Docker container name", 255)

def _check_database_name(value: str) -> str:
    if not value or "\0" in value or len(value.encode()) > 63:
        raise ValueError("a database name must be 1 to 63 bytes without NUL characters")
    return value


# Any characters a server accepts, quotes and spaces included: names never pass through a shell or SQL text.
DatabaseName = Annotated[str, AfterValidator(_check_database_name),
                         WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 63})]

BACKUP_ID_PATTERN = r"[0-9]{8}T[0-9]{6}Z(-[0-9]+)?"
BackupId = _name_type(BACKUP_ID_PATTERN, "backup id (e.g. 20261121T030000Z)", 32)

_DURATION_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
DURATION_PATTERN = r"^([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$"


def parse_duration(value: Any) -> timedelta:
    """Parse `1w2d3h4m5s` style durations (each part optional, in that order)."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("duration must be a string such as '24h', '30m' or '7d'")
    match = _DURATION_RE.fullmatch(value.strip())
    if not value.strip() or not match or not any(match.groups()):
        raise ValueError(f"{value!r} is not a duration; use e.g. '24h', '30m', '7d' or '1h30m'")
    seconds = sum(int(n) * mult for n, mult in zip(match.groups(), _DURATION_UNITS.values()) if n)
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be greater than zero")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    parts = []
    for unit, mult in _DURATION_UNITS.items():
        n, seconds = divmod(seconds, mult)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "description": "duration such as 24h, 30m, 7d"}),
]


def _check_cron(value: str) -> str:
    if not croniter.is_valid(value):
        raise ValueError(f"{value!r} is not a valid cron expression (5 fields: minute hour day month weekday)")
    if len(value.split()) != 5:
        raise ValueError(f"{value!r} must have 5 fields: minute hour day-of-month month day-of-week")
    return value


Cron = Annotated[str, AfterValidator(_check_cron), WithJsonSchema({"type": "string", "description": "5-field cron"})]


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder of zones ("Asia"), read from tzdata
        raise ValueError(f"{value!r} is not a known IANA time zone (e.g. UTC, Asia/Tokyo)") from None
    return value


Timezone = Annotated[str, AfterValidator(_check_timezone), WithJsonSchema({"type": "string"})]


class SecretKeyRef(Schema):
    """One key of a Kubernetes Secret in the resource's own namespace (Kubernetes mode only)."""

    name: ResourceName = Field(description="name of the Secret, in the namespace of the resource")
    key: str = Field(min_length=1, description="key in the Secret's data")


class SecretFrom(OneOf):
    """Where a secret comes from: never from the resource itself."""

    one_of = ("env", "file", "secret_key_ref")
    one_of_what = "a secret source"

    env: str | None = Field(None, min_length=1, description="environment variable of the dockvault process")
    file: str | None = Field(None, min_length=1, description="file readable by dockvault (e.g. a mounted secret)")
    secret_key_ref: SecretKeyRef | None = Field(
        None, description="key of a Secret in the resource's namespace (Kubernetes mode only: dockvault kube)")


class PasswordFrom(SecretFrom):
    """Where a database password comes from: never from the resource itself."""

    one_of_what = "passwordFrom"


class ObjectMeta(BaseModel):
    """Kubernetes object metadata; fields the API server adds are accepted and kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: ResourceName
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None


class Condition(Schema):
    type: str
    status: str
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


SpecT = TypeVar("SpecT", bound=Schema)
StatusT = TypeVar("StatusT", bound=Schema)


class Envelope(Schema, Generic[SpecT, StatusT]):
    """What every dockvault resource is: apiVersion, kind, metadata, spec and an optional status."""

    api_version: Literal["dockvault.io/v1alpha1"] = API_VERSION
    kind: str
    metadata: ObjectMeta
    spec: SpecT
    status: StatusT | None = None

    @property
    def name(self) -> str:
        return self.metadata.name
