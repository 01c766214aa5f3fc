"""Small builders for unit tests: resources made through the real models, as YAML or manifest.json would give them."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from dockvault.api import API_VERSION, Backup, BackupPolicy, RestoreRequest


def utc(*args: int) -> datetime:
    """An aware UTC time: utc(2026, 11, 21, 3) is 2026-11-21T03:00:00Z."""
    return datetime(*args, tzinfo=UTC)


def backup_id(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def backup(
    started: datetime,
    *,
    policy: str = "myapp",
    phase: str = "Succeeded",
    id: str | None = None,
    duration: timedelta = timedelta(minutes=2),
    completed: bool = True,
    size: int = 0,
    artifacts: list[dict[str, Any]] | None = None,
) -> Backup:
    """A Backup record built through the real model; its id is the start time unless given."""
    id = id or backup_id(started)
    status: dict[str, Any] = {"phase": phase, "startedAt": started.isoformat(), "bytes": size, "artifacts": artifacts or []}
    if completed:
        status["completedAt"] = (started + duration).isoformat()
    return Backup.model_validate({
        "apiVersion": API_VERSION,
        "kind": "Backup",
        "metadata": {"name": f"{policy}-{id.lower()}"},
        "spec": {"policy": policy, "id": id},
        "status": status,
    })


def artifact(target: str = "media", *, file: str | None = None, size: int = 10, raw: int = 20) -> dict[str, Any]:
    return {
        "target": target, "source": "volume", "file": file or f"{target}.tar.zst", "bytes": size, "rawBytes": raw,
        "sha256": "0" * 64, "compression": "zstd", "level": 3,
        "startedAt": "2026-11-21T03:00:00Z", "completedAt": "2026-11-21T03:01:00Z",
    }


# The DESIGN's example, reduced to the sources this version implements (volumes).
POLICY_DOC: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": "BackupPolicy",
    "metadata": {"name": "myapp"},
    "spec": {
        "host": "local",
        "schedule": "0 3 * * *",
        "timezone": "Asia/Tokyo",
        "objectives": {"rpo": "24h", "rto": "30m"},
        "targets": [
            {"name": "media", "volume": {"name": "mydata", "quiesce": "stop"}},
            {"name": "uploads", "volume": {"name": "myapp_uploads.v2"}},
        ],
        "storage": {"local": {"path": "/var/backups/dockvault"}},
        "compression": {"algorithm": "zstd", "level": 3},
        "retention": {"keepLast": 3, "keepDaily": 7, "keepWeekly": 4, "keepMonthly": 6},
        "suspend": False,
    },
}

RESTORE_DOC: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": "RestoreRequest",
    "metadata": {"name": "restore-myapp-1"},
    "spec": {
        "policy": "myapp",
        "backup": "latest",
        "targets": [{"from": "media", "volume": {"name": "mydata-restored", "overwrite": False}}],
    },
}


def _with_spec(base: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """`base` with top-level spec fields replaced (a value of None removes the field)."""
    doc = copy.deepcopy(base)
    for key, value in spec.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return doc


def policy_doc(**spec: Any) -> dict[str, Any]:
    return _with_spec(POLICY_DOC, spec)


def restore_doc(**spec: Any) -> dict[str, Any]:
    return _with_spec(RESTORE_DOC, spec)


def policy(**spec: Any) -> BackupPolicy:
    return BackupPolicy.model_validate(policy_doc(**spec))


def restore_request(**spec: Any) -> RestoreRequest:
    return RestoreRequest.model_validate(restore_doc(**spec))
