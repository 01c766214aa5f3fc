"""Data sources: one module per kind of data, each with `kind`, `backup` and `restore`."""

from __future__ import annotations

import importlib
from typing import cast

from .base import BackupContext, RestoreContext, RestoreRefused, Source, SourceError

# The kinds, each the name of its module here. A module is imported when a job first needs it: a volume backup
# never loads the database clients' code, and a one-shot command starts sooner.
SOURCES = ("volume", "postgres", "mysql")


def source_for(kind: str) -> Source:
    if kind not in SOURCES:
        raise KeyError(kind)
    return cast(Source, importlib.import_module(f"{__name__}.{kind}"))


def staged(kind: str) -> bool:
    """Does a restore of this kind write into a staging area first (see Source)? Its artifacts are then checked
    as they stream, not in a pass before."""
    return getattr(source_for(kind), "staged", False)


__all__ = ["SOURCES", "BackupContext", "RestoreContext", "RestoreRefused", "Source", "SourceError", "source_for", "staged"]
