"""What a tar stream holds, path by path: type, mode, owner, size, mtime, content hash or link target.

A drill compares the index of the backed-up archive (pinned by the manifest's sha256, recorded at backup
time) with the index of the restored volume archived again: equal indexes mean the restore reproduced
every path, byte and attribute.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field

from .tarstream import Data, End, Member, tar_events

Entry = tuple[str, int, int, int, int, int, str]  # type, mode, uid, gid, size, mtime ns, sha256 or link target


def _path(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts) or "."


def _mtime_ns(member: Member) -> int:
    text = member.pax.get("mtime")
    if text is None:
        return int(member.info.mtime) * 1_000_000_000
    whole, _, fraction = text.partition(".")
    return int(whole) * 1_000_000_000 + int((fraction + "000000000")[:9])


@dataclass
class TreeIndex:
    entries: dict[str, Entry] = field(default_factory=dict)
    hardlinks: set[frozenset[str]] = field(default_factory=set)

    def differences(self, other: TreeIndex, *, limit: int = 5) -> list[str]:
        """What `other` (the restored tree) gets wrong compared with this index, first `limit` items."""
        found = []
        for path in sorted(self.entries.keys() | other.entries.keys()):
            mine, theirs = self.entries.get(path), other.entries.get(path)
            if mine != theirs:
                if theirs is None:
                    found.append(f"{path}: missing")
                elif mine is None:
                    found.append(f"{path}: not in the backup")
                else:
                    fields = ("type", "mode", "uid", "gid", "size", "mtime", "content")
                    changed = [name for name, a, b in zip(fields, mine, theirs) if a != b]
                    found.append(f"{path}: {', '.join(changed)} differ")
        if self.hardlinks != other.hardlinks:
            found.append("hard links differ")
        return found[:limit] + ([f"... and {len(found) - limit} more"] if len(found) > limit else [])


def tree_index(chunks: Iterable[bytes]) -> TreeIndex:
    index = TreeIndex()
    links: dict[str, str] = {}
    digest, current = None, None
    for event in tar_events(chunks):
        if isinstance(event, Data):
            if digest is not None:
                digest.update(event.raw[:event.payload])
            continue
        if digest is not None and current is not None:
            kind, mode, uid, gid, size, mtime, _ = index.entries[current]
            index.entries[current] = (kind, mode, uid, gid, size, mtime, digest.hexdigest())
            digest = current = None
        if isinstance(event, End):
            break
        info, path = event.info, _path(event.name)
        if info.type == tarfile.LNKTYPE:
            links[path] = _path(event.linkname)
            continue
        target = event.linkname if info.type == tarfile.SYMTYPE else ""
        index.entries[path] = (info.type.decode(), info.mode, info.uid, info.gid, event.size, _mtime_ns(event), target)
        if event.size or info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
            digest, current = hashlib.sha256(), path
    groups: dict[str, set[str]] = {}
    for path, target in links.items():
        index.entries[path] = index.entries[target]
        groups.setdefault(target, {target}).add(path)
    index.hardlinks = {frozenset(group) for group in groups.values()}
    return index
