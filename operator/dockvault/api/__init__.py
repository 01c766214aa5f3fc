"""The resource schemas (BackupPolicy, RestoreRequest, Backup) shared by every front end."""

from .backup import Artifact, Backup, BackupSpec, BackupStatus
from .common import (
    API_VERSION,
    GROUP,
    VERSION,
    Condition,
    ObjectMeta,
    format_duration,
    parse_duration,
)
from .loader import Loaded, LoadResult, ResourceError, load_file, load_paths, load_text
from .policy import (
    BackupPolicy,
    BackupPolicySpec,
    BackupTarget,
    CompressionSpec,
    RetentionSpec,
    VolumeSource,
)
from .restore import (
    BackupBefore,
    RestoreRequest,
    RestoreRequestSpec,
    RestoreRequestStatus,
    RestoreTarget,
)

__all__ = [
    "API_VERSION", "GROUP", "VERSION", "Artifact", "Backup", "BackupBefore", "BackupPolicy", "BackupPolicySpec",
    "BackupSpec", "BackupStatus", "BackupTarget", "CompressionSpec", "Condition", "LoadResult", "Loaded",
    "ObjectMeta", "ResourceError", "RestoreRequest", "RestoreRequestSpec", "RestoreRequestStatus", "RestoreTarget",
    "RetentionSpec", "VolumeSource", "format_duration", "load_file", "load_paths", "load_text", "parse_duration",
]
