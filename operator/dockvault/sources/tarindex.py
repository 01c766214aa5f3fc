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


def dumpdir_entries(member: Member) -> list[tuple[str, str]] | None:
    """A directory's GNU.dumpdir (listed-incremental archives): (code, name) records, None when it has none.

    Codes: Y (in this archive), N (unchanged, kept from before), D (a directory), R and T (a directory renamed
    from R to T, both paths from the archive root) and X (a temporary name used by such renames).
    """
    text = member.pax.get("GNU.dumpdir")
    if text is None:
        return None
    return [(record[0], record[1:]) for record in text.split("\0") if record]


def tree_index(chunks: Iterable[bytes]) -> TreeIndex:
    return chain_index([chunks])


def chain_index(archives: Iterable[Iterable[bytes]]) -> TreeIndex:
    """The tree that extracting `archives` in order gives (`tar --listed-incremental=/dev/null -x` each): a
    directory with a dumpdir first takes its renames, then loses every entry its dumpdir does not name."""
    index = TreeIndex()
    links: dict[str, str] = {}
    for chunks in archives:
        _apply(index, links, chunks)
    groups: dict[str, set[str]] = {}
    for path, target in links.items():
        if target in index.entries:
            index.entries[path] = index.entries[target]
        groups.setdefault(target, {target}).add(path)
    index.hardlinks = {frozenset(group) for group in groups.values()}
    return index


def _subtree(mapping: dict[str, object], path: str) -> list[str]:
    prefix = "" if path == "." else path + "/"
    return [p for p in mapping if p != "." and (p == path or p.startswith(prefix))]


def _apply(index: TreeIndex, links: dict[str, str], chunks: Iterable[bytes]) -> None:
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
        dumpdir = dumpdir_entries(event) if info.type == tarfile.DIRTYPE else None
        if dumpdir is not None:
            _take_dumpdir(index, links, path, dumpdir)
        for stale in _subtree(links, path) if info.type != tarfile.DIRTYPE else ():
            del links[stale]
        if info.type == tarfile.LNKTYPE:
            index.entries.pop(path, None)
            links[path] = _path(event.linkname)
            continue
        target = event.linkname if info.type == tarfile.SYMTYPE else ""
        index.entries[path] = (info.type.decode(), info.mode, info.uid, info.gid, event.size, _mtime_ns(event), target)
        if event.size or info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
            digest, current = hashlib.sha256(), path


def _take_dumpdir(index: TreeIndex, links: dict[str, str], path: str, dumpdir: list[tuple[str, str]]) -> None:
    renames = [(_path(a[1]), _path(b[1])) for a, b in zip(dumpdir, dumpdir[1:]) if a[0] == "R" and b[0] == "T"]
    for old, new in renames:
        for mapping in (index.entries, links):
            for moved in _subtree(mapping, old):
                mapping[new + moved[len(old):]] = mapping.pop(moved)  # type: ignore[index]
    named = {name for code, name in dumpdir if code in "YND"}
    prefix = "" if path == "." else path + "/"
    for mapping in (index.entries, links):
        for child in [p for p in mapping if p.startswith(prefix) and p != path and "/" not in p[len(prefix):]]:
            if child[len(prefix):] not in named:
                for gone in _subtree(mapping, child):
                    del mapping[gone]  # type: ignore[arg-type]
