"""A repository in a local directory: <root>/<policy>/<backup-id>/<artifact>, manifest.json written last."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from ..api.backup import Backup
from ..api.policy import LocalStorage
from ..api.restore import RestoreRequestStatus
from .base import INCOMPLETE, MANIFEST, TEMP_SUFFIX, BackupIdTaken, StorageError, manifest_chunks, misplaced

log = logging.getLogger(__name__)

RESTORES_DIR = ".restores"  # dot-folders are never policies, so listing and cleaning pass them by


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


WRITE_BEHIND = 8 << 20  # bytes of an artifact between two starts of its writeback


class _WriteBehind:
    """An artifact's file whose pages go to disk while the stream is still being written.

    Left alone, the page cache holds the whole artifact dirty until the fsync before its rename, or until the sync
    that the helper container's exit makes Docker do (it unmounts an overlayfs): at the end of a 1 GiB backup, half
    a gigabyte written in one go, 0.25 s. Every WRITE_BEHIND bytes this starts the writeback of what was written
    since, so the disk works while zstd does; and it drops the pages of the step before, written by then, so a
    backup does not push the host's working set out of memory. POSIX_FADV_DONTNEED does both on Linux: it starts
    writing the range's dirty pages and drops its clean ones."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._written = 0
        self._started = 0  # writeback was started up to here
        self._dropped = 0  # and the pages before here were dropped, once written

    def write(self, data: bytes) -> int:
        written = self._out.write(data)
        self._written += len(data)
        if self._written - self._started >= WRITE_BEHIND:
            self._out.flush()
            with contextlib.suppress(OSError, AttributeError):  # no fadvise here (not Linux): the fsync does it all
                os.posix_fadvise(self._out.fileno(), self._dropped, self._written - self._dropped,
                                 os.POSIX_FADV_DONTNEED)
            self._dropped, self._started = self._started, self._written
        return written

    def flush(self) -> None:
        self._out.flush()

    def fileno(self) -> int:
        return self._out.fileno()


@contextlib.contextmanager
def atomic_file(path: Path, *, write_behind: bool = False) -> Iterator[BinaryIO]:
    """Write to a temporary name, fsync, then rename into place; on error the temporary is removed.
    `write_behind`: for artifacts, large and written once (see _WriteBehind)."""
    tmp = path.with_name(path.name + TEMP_SUFFIX)
    try:
        with open(tmp, "wb") as file:
            out: BinaryIO = _WriteBehind(file) if write_behind else file  # type: ignore[assignment]
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(f"the disk is full: cannot write {path} ({exc.strerror})") from exc
        raise


class LocalBackupWriter:
    def __init__(self, folder: Path, backup_id: str) -> None:
        self.folder = folder
        self.backup_id = backup_id

    def artifact(self, name: str) -> contextlib.AbstractContextManager[BinaryIO]:
        if "/" in name or name in (MANIFEST, "", ".", ".."):
            raise ValueError(f"invalid artifact name {name!r}")
        return atomic_file(self.folder / name, write_behind=True)

    def commit(self, record: Backup) -> None:
        with atomic_file(self.folder / MANIFEST) as out:
            for chunk in manifest_chunks(record):
                out.write(chunk)
        (self.folder / INCOMPLETE).unlink(missing_ok=True)
        _fsync_dir(self.folder)

    def abort(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class LocalRepository:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def _folder(self, policy: str, backup_id: str) -> Path:
        return self.root / policy / backup_id

    def begin(self, policy: str, backup_id: str) -> LocalBackupWriter:
        folder = self._folder(policy, backup_id)
        try:
            folder.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise BackupIdTaken(f"backup {policy}/{backup_id} already exists in {self.location}") from None
        with atomic_file(folder / INCOMPLETE):
            pass
        _fsync_dir(folder.parent)
        return LocalBackupWriter(folder, backup_id)

    def exists(self, policy: str, backup_id: str) -> bool:
        return self._folder(policy, backup_id).exists()

    def policies(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def backups(self, policy: str) -> list[Backup]:
        folder = self.root / policy
        if not folder.is_dir():
            return []
        found = []
        for entry in sorted(folder.iterdir()):
            manifest = entry / MANIFEST
            if not manifest.is_file():
                continue  # in progress, failed or half-deleted: not a backup
            try:
                record = Backup.model_validate(json.loads(manifest.read_text(encoding="utf-8")))
            except (OSError, ValueError, ValidationError) as exc:
                log.error("%s: unreadable manifest, ignored: %s", manifest, exc)
                continue
            if problem := misplaced(record, entry.name):
                log.error("%s: %s; ignored", manifest, problem)
                continue
            found.append(record)
        return found

    def listing(self, policy: str) -> tuple[list[Backup], dict[str, dict[str, int]]]:
        return self.backups(policy), self.stored_files(policy)

    def open_artifact(self, policy: str, backup_id: str, name: str) -> BinaryIO:
        return open(self._folder(policy, backup_id) / name, "rb")

    def stored_files(self, policy: str) -> dict[str, dict[str, int]]:
        folder = self.root / policy
        found: dict[str, dict[str, int]] = {}
        if not folder.is_dir():
            return found
        with os.scandir(folder) as backups:
            for entry in backups:
                if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                    with os.scandir(entry.path) as files:
                        sizes = {f.name: f.stat().st_size for f in files if f.is_file()}
                    if INCOMPLETE not in sizes or MANIFEST in sizes:  # not a backup still being written
                        found[entry.name] = sizes
        return dict(sorted(found.items()))

    def manifest_problem(self, policy: str, backup_id: str) -> str | None:
        manifest = self._folder(policy, backup_id) / MANIFEST
        if not manifest.is_file():
            return "no manifest (an interrupted backup, or its manifest was lost)"
        try:
            record = Backup.model_validate(json.loads(manifest.read_text(encoding="utf-8")))
        except (OSError, ValueError, ValidationError) as exc:
            return f"unreadable manifest: {' '.join(str(exc).split())[:300]}"
        return misplaced(record, backup_id)

    def delete(self, policy: str, backup_id: str) -> None:
        """Mark the folder unfinished and remove the manifest first, so a deletion cut short never leaves a backup
        that looks complete, and the next start-up finishes it."""
        folder = self._folder(policy, backup_id)
        with atomic_file(folder / INCOMPLETE):
            pass
        (folder / MANIFEST).unlink(missing_ok=True)
        _fsync_dir(folder)
        shutil.rmtree(folder)

    def _restore_file(self, name: str, spec_hash: str) -> Path:
        return self.root / RESTORES_DIR / f"{name}.{spec_hash}.json"

    def save_restore(self, name: str, spec_hash: str, status: RestoreRequestStatus) -> None:
        path = self._restore_file(name, spec_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as out:
            out.write(status.model_dump_json(by_alias=True, exclude_none=True).encode())

    def restore_outcome(self, name: str, spec_hash: str) -> RestoreRequestStatus | None:
        path = self._restore_file(name, spec_hash)
        if not path.is_file():
            return None
        return RestoreRequestStatus.model_validate_json(path.read_text(encoding="utf-8"))

    def clean_temporaries(self, policy: str) -> list[str]:
        """Remove temporaries and unfinished backups (marked INCOMPLETE, no manifest) of `policy`; call only when
        none of its jobs runs. A folder that lost its manifest is kept (listed as damaged)."""
        removed = []
        folder = self.root / policy
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            if entry.name.endswith(TEMP_SUFFIX):
                entry.unlink(missing_ok=True) if entry.is_file() else shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
            elif entry.is_dir() and not (entry / MANIFEST).exists():
                if (entry / INCOMPLETE).exists():
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(str(entry))
                else:
                    log.warning("%s has no manifest and is no unfinished backup: kept (see dockvault check)", entry)
            elif entry.is_dir():
                for tmp in [*entry.glob("*" + TEMP_SUFFIX), *entry.glob(INCOMPLETE)]:
                    tmp.unlink(missing_ok=True)
                    removed.append(str(tmp))
        return removed


def open_repository(spec: LocalStorage) -> LocalRepository:
    return LocalRepository(spec.path)
