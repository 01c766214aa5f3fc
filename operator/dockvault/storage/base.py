"""The storage interface every backend implements: a repository of backups, each a folder of artifacts plus a manifest."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol

from ..api.backup import Backup
from ..api.restore import RestoreRequestStatus

MANIFEST = "manifest.json"
TEMP_SUFFIX = ".dvtmp"
# Written first into a new backup's folder and removed once its manifest is: a folder without a manifest is
# removed at start-up only when it carries this mark (a run that never finished). One without either lost its
# manifest: it is kept, listed as damaged, for a human to look at.
INCOMPLETE = ".incomplete"


class StorageError(RuntimeError):
    """The repository failed, phrased for the user; `temporary` when trying again later may well work."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class DeleteRefused(StorageError):
    """The repository keeps an object it was asked to delete (S3 Object Lock): kept, logged and counted."""


class BackupIdTaken(RuntimeError):
    """`begin` was given a backup id that already has a folder (a failed run of the same second left it)."""


class BackupWriter(Protocol):
    """One backup being written; nothing in it counts until `commit` publishes the manifest."""

    backup_id: str

    def artifact(self, name: str) -> AbstractContextManager[BinaryIO]:
        """A file published atomically under `name` when the block ends without error."""

    def commit(self, record: Backup) -> None: ...

    def abort(self) -> None: ...


class Repository(Protocol):
    location: str

    def begin(self, policy: str, backup_id: str) -> BackupWriter:
        """Start writing a new backup; BackupIdTaken when the id is in use."""

    def backups(self, policy: str) -> list[Backup]:
        """Complete backups (manifest present), oldest first."""

    def policies(self) -> list[str]: ...

    def open_artifact(self, policy: str, backup_id: str, name: str) -> BinaryIO: ...

    def stored_files(self, policy: str) -> dict[str, dict[str, int]]:
        """Every backup folder of `policy`, complete or not: backup id -> {file name: stored size in bytes}."""

    def listing(self, policy: str) -> tuple[list[Backup], dict[str, dict[str, int]]]:
        """`backups` and `stored_files` together, from one look where the repository can (one S3 walk)."""

    def exists(self, policy: str, backup_id: str) -> bool:
        """Does the backup's folder hold anything (complete or not)?"""

    def manifest_problem(self, policy: str, backup_id: str) -> str | None:
        """Why the folder's manifest is not a valid backup record (missing, unreadable, invalid); None if it is."""

    def delete(self, policy: str, backup_id: str) -> None: ...

    def clean_temporaries(self, policy: str) -> list[str]:
        """Remove what an interrupted backup of `policy` left; call only while holding the policy's job lock."""

    def save_restore(self, name: str, spec_hash: str, status: RestoreRequestStatus) -> None:
        """Remember that a RestoreRequest ran, next to the backups, so it never runs twice."""

    def restore_outcome(self, name: str, spec_hash: str) -> RestoreRequestStatus | None: ...


def misplaced(record: Backup, backup_id: str) -> str | None:
    """Why a valid manifest read from backup folder `backup_id` is not that folder's record (copied or swapped by
    hand: its checksums would be checked against another backup's artifacts), or None."""
    if record.id != backup_id:
        return f"the manifest is that of backup {record.id} (copied or swapped from another folder)"
    return None


def manifest_chunks(record: Backup) -> Iterator[bytes]:
    yield record.model_dump_json(by_alias=True, exclude_none=True, indent=2).encode() + b"\n"
