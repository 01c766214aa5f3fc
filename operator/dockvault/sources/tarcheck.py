"""Check a tar stream member by member while forwarding it, so a hostile member never reaches the extracting tar.

Refused: absolute paths, `..` components, hard links outside the root, symlinks whose relative target
climbs out of the root, members reached through a symlink of the same archive, and device nodes.
Absolute symlink targets are kept: they point into whatever container mounts the volume, as they did
in the original, and nothing is ever extracted through them. Listed-incremental directory listings
(GNU.dumpdir: what tar keeps, deletes and renames) must name plain entries and paths inside the root.
Names with a component over NAME_MAX (255 bytes) or over PATH_MAX in all cannot exist on Linux: refused.

FIFOs are kept: a volume may hold one (an application's named pipe), and extracting it only creates the
node inside the volume; tar never opens it, so it reaches nothing outside. Device nodes are refused: one
inside a volume would hand its containers the host's hardware.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterable, Iterator, Mapping

from .tarstream import DATA_TYPES, Member, UnsafeArchive, tar_events

_PLAIN_TYPES = {tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE} | DATA_TYPES
_REFUSED_TYPES = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device"}
NAME_MAX, PATH_MAX = 255, 4096  # Linux limits, in bytes


def _shown(name: str) -> str:
    return repr(name) if len(name) <= 200 else repr(name[:100]) + f"... ({len(name)} characters)"


def _clean(name: str) -> str:
    """The member path relative to the root, or an UnsafeArchive error."""
    if name.startswith("/"):
        raise UnsafeArchive(f"member {_shown(name)} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"member {_shown(name)} contains '..'")
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) >= PATH_MAX or any(len(p.encode("utf-8", "surrogateescape")) > NAME_MAX for p in parts):
        raise UnsafeArchive(f"member {_shown(name)} is longer than a Linux path can be ({NAME_MAX} bytes a "
                            f"component, {PATH_MAX - 1} in all)")
    return "/".join(parts)


class _Checker:
    def __init__(self) -> None:
        self.symlinks: set[str] = set()
        self.members = 0

    def _check_dumpdir(self, name: str, info: tarfile.TarInfo, dumpdir: str) -> None:
        """A listed-incremental directory's contents list: tar deletes what it does not name and renames
        directories from R to T records, so each name must stay inside the directory, each path inside the root."""
        if info.type != tarfile.DIRTYPE:
            raise UnsafeArchive(f"member {name!r} carries a directory listing (GNU.dumpdir) but is no directory")
        for record in filter(None, dumpdir.split("\0")):
            code, entry = record[0], record[1:]
            if code in "YND":
                if "/" in entry or entry in ("", ".", ".."):
                    raise UnsafeArchive(f"directory {name!r} lists the entry {entry!r}, which is not a plain name")
            elif code in "RTX":
                if entry:  # an empty X record is allowed: "no temporary name"
                    self._not_through_symlink(_clean(entry), f"directory {name!r} renames {entry!r}")
            else:
                raise UnsafeArchive(f"directory {name!r} has an unknown listing record {record[:20]!r}")

    def _not_through_symlink(self, path: str, what: str) -> None:
        parent = posixpath.dirname(path)
        while parent:
            if parent in self.symlinks:
                raise UnsafeArchive(f"{what} through the symlink {parent!r}")
            parent = posixpath.dirname(parent)

    def check(self, info: tarfile.TarInfo, name: str, linkname: str, pax: Mapping[str, str] | None = None) -> None:
        path = _clean(name)
        if pax and "GNU.dumpdir" in pax:
            self._check_dumpdir(name, info, pax["GNU.dumpdir"])
        if info.type in _REFUSED_TYPES:
            raise UnsafeArchive(f"member {name!r} is a {_REFUSED_TYPES[info.type]}")
        if info.type not in _PLAIN_TYPES:
            raise UnsafeArchive(f"member {name!r} has unsupported type {info.type!r}")
        self._not_through_symlink(path, f"member {name!r} would be written")
        if info.type == tarfile.LNKTYPE:
            try:
                target = _clean(linkname)
            except UnsafeArchive:
                raise UnsafeArchive(f"hard link {name!r} -> {linkname!r} points outside the volume") from None
            self._not_through_symlink(target, f"hard link {name!r} -> {linkname!r} would resolve")
        elif info.type == tarfile.SYMTYPE:
            if len(linkname.encode("utf-8", "surrogateescape")) >= PATH_MAX:
                raise UnsafeArchive(f"symlink {_shown(name)} has a target longer than {PATH_MAX - 1} bytes")
            self.symlinks.add(path)
            if not linkname.startswith("/"):
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), linkname))
                if resolved == ".." or resolved.startswith("../"):
                    raise UnsafeArchive(f"symlink {name!r} -> {linkname!r} points outside the volume")
        else:
            self.symlinks.discard(path)
        self.members += 1


def checked_tar(chunks: Iterable[bytes], checker: _Checker | None = None) -> Iterator[bytes]:
    """Forward a tar stream unchanged, raising UnsafeArchive before the first byte of a bad member.

    The archives of one chain (a full, then differentials or incrementals) share a `checker` (new_checker()), so
    a later archive cannot write through a symlink an earlier one left."""
    checker = checker or _Checker()
    for event in tar_events(chunks):
        if isinstance(event, Member):
            checker.check(event.info, event.name, event.linkname, event.pax)
        yield event.raw


def new_checker() -> _Checker:
    return _Checker()
