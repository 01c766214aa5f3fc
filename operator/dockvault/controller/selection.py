"""Which backup a restore means: `latest`, an id, or the newest before a time."""

from __future__ import annotations

from collections.abc import Sequence

from ..api.backup import Backup
from ..api.restore import BackupBefore


class NoSuchBackup(LookupError):
    pass


def select_backup(backups: Sequence[Backup], selector: str | BackupBefore, *, policy: str) -> Backup:
    good = sorted((b for b in backups if b.succeeded), key=lambda b: (b.status.completed_at, b.id))
    if isinstance(selector, BackupBefore):
        earlier = [b for b in good if b.status.completed_at < selector.before]
        if not earlier:
            raise NoSuchBackup(f"policy {policy!r} has no successful backup completed before {selector.before.isoformat()}")
        return earlier[-1]
    if selector == "latest":
        if not good:
            raise NoSuchBackup(f"policy {policy!r} has no successful backup yet")
        return good[-1]
    for backup in good:
        if backup.id == selector:
            return backup
    raise NoSuchBackup(f"policy {policy!r} has no successful backup with id {selector!r}")
