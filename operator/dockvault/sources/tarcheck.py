"""Check a tar stream member by member while forwarding it, so a hostile member never reaches the extracting tar.

Refused: absolute paths, `..` components, hard links outside the root, symlinks whose relative target
climbs out of the root, members reached through a symlink of the same archive, and device nodes.
Absolute symlink targets are kept: they point into whatever container mounts the volume, as they did
in the original, and nothing is ever extracted through them.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterable, Iterator

BLOCK = 512
_DATA_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE}
_META_TYPES = {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
_PLAIN_TYPES = {tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE} | _DATA_TYPES
_REFUSED_TYPES = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device"}


class UnsafeArchive(ValueError):
    """The archive holds a member that must not be extracted."""


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _clean(name: str) -> str:
    """The member path relative to the root, or an UnsafeArchive error."""
    if name.startswith("/"):
        raise UnsafeArchive(f"member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"member {name!r} contains '..'")
    return "/".join(parts)


class _Checker:
    def __init__(self) -> None:
        self.symlinks: set[str] = set()
        self.members = 0

    def _not_through_symlink(self, path: str, what: str) -> None:
        parent = posixpath.dirname(path)
        while parent:
            if parent in self.symlinks:
                raise UnsafeArchive(f"{what} through the symlink {parent!r}")
            parent = posixpath.dirname(parent)

    def check(self, info: tarfile.TarInfo, name: str, linkname: str) -> None:
        path = _clean(name)
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
            self.symlinks.add(path)
            if not linkname.startswith("/"):
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), linkname))
                if resolved == ".." or resolved.startswith("../"):
                    raise UnsafeArchive(f"symlink {name!r} -> {linkname!r} points outside the volume")
        else:
            self.symlinks.discard(path)
        self.members += 1


def checked_tar(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Forward a tar stream unchanged, raising UnsafeArchive before the first byte of a bad member."""
    checker = _Checker()
    buffer = bytearray()
    source = iter(chunks)

    def fill(n: int) -> bool:
        while len(buffer) < n:
            chunk = next(source, None)
            if chunk is None:
                return False
            buffer.extend(chunk)
        return True

    pending: dict[str, str] = {}
    head = bytearray()  # metadata blocks held back until their member is checked
    while True:
        if not fill(BLOCK):
            raise UnsafeArchive("archive ends without an end-of-archive marker (truncated)")
        block = bytes(buffer[:BLOCK])
        if block == b"\0" * BLOCK:
            yield bytes(head) + block + b"\0" * BLOCK  # end of archive; tar reads no further
            for _ in source:
                pass  # drain, so a checksumming reader upstream sees the whole artifact
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise UnsafeArchive(f"corrupt tar header after {checker.members} members: {exc}") from None
        size = info.size
        padded = -(-size // BLOCK) * BLOCK
        if info.type in _META_TYPES:
            if not fill(BLOCK + padded):
                raise UnsafeArchive("archive ends inside a header")
            data = bytes(buffer[BLOCK:BLOCK + size])
            if info.type == tarfile.GNUTYPE_LONGNAME:
                pending["path"] = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif info.type == tarfile.GNUTYPE_LONGLINK:
                pending["linkpath"] = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            else:
                records = _pax_records(data)
                if info.type == tarfile.XGLTYPE and {"path", "linkpath"} & records.keys():
                    raise UnsafeArchive("global pax header sets a path")
                if any(key.startswith("GNU.sparse") for key in records):
                    raise UnsafeArchive("sparse members are not supported")
                pending.update(records)
                if "size" in records:
                    pending["size"] = records["size"]
            head += buffer[:BLOCK + padded]
            del buffer[:BLOCK + padded]
            continue
        name = pending.get("path", info.name)
        linkname = pending.get("linkpath", info.linkname)
        if "size" in pending:
            size = int(pending["size"])
            padded = -(-size // BLOCK) * BLOCK
        checker.check(info, name, linkname)
        pending.clear()
        has_data = info.type in _DATA_TYPES
        yield bytes(head) + block
        head.clear()
        del buffer[:BLOCK]
        remaining = padded if has_data else 0
        while remaining:
            if not buffer and not fill(1):
                raise UnsafeArchive(f"archive ends inside member {name!r} (truncated)")
            take = min(remaining, len(buffer))
            yield bytes(buffer[:take])
            del buffer[:take]
            remaining -= take
