"""Storage backends, one module each behind `base.Repository`; this registry is the one place that lists them.

A new backend is one module with an `open_repository(spec)` function plus its block in `api.policy.StorageSpec`
(docs/extending.md).
"""

from __future__ import annotations

import importlib

from ..api.policy import BackupPolicy, StorageSpec
from .base import BackupIdTaken, DeleteRefused, Repository, StorageError

# The backends, each the name of its module here, imported when a repository first needs it (a local repository
# never loads the S3 code, and a one-shot command starts sooner).
BACKENDS = ("local", "s3")


def repository_for(storage: StorageSpec | BackupPolicy) -> Repository:
    """The repository a policy (or a storage block) names."""
    spec = storage.spec.storage if isinstance(storage, BackupPolicy) else storage
    if spec.backend not in BACKENDS:
        raise KeyError(spec.backend)
    return importlib.import_module(f"{__name__}.{spec.backend}").open_repository(getattr(spec, spec.backend))


__all__ = ["BACKENDS", "BackupIdTaken", "DeleteRefused", "Repository", "StorageError", "repository_for"]
