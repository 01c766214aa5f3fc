"""Storage backends, one module each behind `base.Repository`; this registry is the one place that lists them.

A new backend is one module with an `open_repository(spec)` function plus its block in `api.policy.StorageSpec`
(docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..api.policy import BackupPolicy, StorageSpec
from . import local, s3
from .base import BackupIdTaken, DeleteRefused, Repository, StorageError

BACKENDS: dict[str, Callable[[Any], Repository]] = {
    "local": local.open_repository,
    "s3": s3.open_repository,
}


def repository_for(storage: StorageSpec | BackupPolicy) -> Repository:
    """The repository a policy (or a storage block) names."""
    spec = storage.spec.storage if isinstance(storage, BackupPolicy) else storage
    return BACKENDS[spec.backend](getattr(spec, spec.backend))


__all__ = ["BACKENDS", "BackupIdTaken", "DeleteRefused", "Repository", "StorageError", "repository_for"]
