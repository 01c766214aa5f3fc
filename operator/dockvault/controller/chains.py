"""Backup chains: a differential or incremental backup builds on a base, back to a full one.

Pure functions of the repository's listing, shared by the backup (which level, on which base), the
restore and the drill (which archives, in which order) and retention (which bases a kept backup needs).

A volume target of a chained backup stores its archive and GNU tar's snapshot file (`role: snapshot`):
the next differential or incremental run starts from that snapshot. Dump targets are always full.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..api.backup import Backup

FULL, DIFFERENTIAL, INCREMENTAL = "full", "differential", "incremental"


class BrokenChain(ValueError):
    """A backup's chain misses a link (deleted, failed or never copied here)."""


def chain_of(backup: Backup, by_id: Mapping[str, Backup]) -> list[Backup]:
    """The backups to restore, in order, to get `backup` back: its full first, `backup` itself last."""
    links = [backup]
    while links[-1].base is not None:
        base_id = links[-1].base
        base = by_id.get(base_id)
        if base is None or not base.succeeded:
            why = "is missing" if base is None else f"did not succeed ({base.status.phase if base.status else '?'})"
            raise BrokenChain(f"backup {backup.id} builds on backup {base_id}, which {why}: the chain is broken, "
                              "restore an older complete backup instead")
        if any(link.id == base.id for link in links):
            raise BrokenChain(f"backup {backup.id}: its chain loops at backup {base.id}")
        links.append(base)
    return links[::-1]


@dataclass(frozen=True)
class LevelPlan:
    level: str
    base: Backup | None  # None for a full
    note: str = ""  # why the level differs from the one asked for


def _usable(backup: Backup, volumes: Iterable[str], by_id: Mapping[str, Backup]) -> str:
    """Why `backup` cannot be a base ("" when it can): every volume target needs its snapshot file."""
    missing = [name for name in volumes if backup.snapshot(name) is None]
    if missing:
        return f"backup {backup.id} has no snapshot file for volume target(s) {', '.join(missing)}"
    try:
        chain_of(backup, by_id)
    except BrokenChain as exc:
        return str(exc)
    return ""


def plan_level(requested: str, backups: Iterable[Backup], volumes: list[str]) -> LevelPlan:
    """The level a run asked for at `requested` takes, and its base.

    differential: on the newest successful full backup; incremental: on the newest successful backup of
    any level. Without a usable base the run is a full, and `note` says why.
    """
    if requested == FULL:
        return LevelPlan(FULL, None)
    good = sorted((b for b in backups if b.succeeded), key=lambda b: (b.status.started_at, b.id), reverse=True)
    by_id = {b.id: b for b in good}
    candidates = [b for b in good if b.level == FULL] if requested == DIFFERENTIAL else good
    if not candidates:
        return LevelPlan(FULL, None, f"no full backup yet: a {requested} run takes a full one")
    base = candidates[0]
    why = _usable(base, volumes, by_id)
    if why:
        return LevelPlan(FULL, None, f"{why}: this {requested} run takes a full backup")
    return LevelPlan(requested, base)


def bases_needed(kept: Iterable[str], by_id: Mapping[str, Backup]) -> dict[str, str]:
    """Every backup that a backup in `kept` builds on, directly or not: base id -> the newest kept id needing it."""
    needed: dict[str, str] = {}
    for backup_id in kept:
        backup = by_id.get(backup_id)
        while backup is not None and backup.base is not None:
            needed.setdefault(backup.base, backup_id)
            backup = by_id.get(backup.base)
    return needed
