"""Data sources: one module per kind of data, each with `kind`, `backup` and `restore`."""

from __future__ import annotations

from . import mysql, postgres, volume
from .base import BackupContext, RestoreContext, RestoreRefused, Source, SourceError

SOURCES: dict[str, Source] = {module.kind: module for module in (volume, postgres, mysql)}


def source_for(kind: str) -> Source:
    return SOURCES[kind]


def staged(kind: str) -> bool:
    """Does a restore of this kind write into a staging area first (see Source)? Its artifacts are then checked
    as they stream, not in a pass before."""
    return getattr(SOURCES[kind], "staged", False)


__all__ = ["SOURCES", "BackupContext", "RestoreContext", "RestoreRefused", "Source", "SourceError", "source_for", "staged"]
