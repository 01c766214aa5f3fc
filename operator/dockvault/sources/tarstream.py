"""Parse a tar stream into events without buffering it: each member's header, its data, the end marker.

Every event carries the exact bytes it was parsed from, so a consumer can forward the stream unchanged
(checked_tar) or look at it (a drill's tree index). Long names (GNU and pax) are resolved onto the member.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

BLOCK = 512
DATA_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE}
_META_TYPES = {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}


class UnsafeArchive(ValueError):
    """The archive holds a member that must not be extracted, or is not a complete tar stream."""


@dataclass(frozen=True)
class Member:
    info: tarfile.TarInfo
    name: str
    linkname: str
    size: int
    pax: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""


@dataclass(frozen=True)
class Data:
    raw: bytes
    payload: int  # how many leading bytes of `raw` are file content; the rest is block padding


@dataclass(frozen=True)
class End:
    raw: bytes


Event = Member | Data | End


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


def tar_events(chunks: Iterable[bytes]) -> Iterator[Event]:
    """The stream's events; after End the rest of `chunks` is drained, so upstream checksums see it all."""
    members = 0
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
    head = bytearray()  # metadata blocks held back until their member is complete
    while True:
        if not fill(BLOCK):
            raise UnsafeArchive("archive ends without an end-of-archive marker (truncated)")
        block = bytes(buffer[:BLOCK])
        if block == b"\0" * BLOCK:
            yield End(bytes(head) + block + b"\0" * BLOCK)  # tar reads no further
            for _ in source:
                pass
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise UnsafeArchive(f"corrupt tar header after {members} members: {exc}") from None
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
            head += buffer[:BLOCK + padded]
            del buffer[:BLOCK + padded]
            continue
        name = pending.get("path", info.name)
        if "size" in pending:
            size = int(pending["size"])
            padded = -(-size // BLOCK) * BLOCK
        has_data = info.type in DATA_TYPES
        yield Member(info, name, pending.get("linkpath", info.linkname), size if has_data else 0, dict(pending),
                     bytes(head) + block)
        members += 1
        pending.clear()
        head.clear()
        del buffer[:BLOCK]
        remaining, content = (padded, size) if has_data else (0, 0)
        while remaining:
            if not buffer and not fill(1):
                raise UnsafeArchive(f"archive ends inside member {name!r} (truncated)")
            take = min(remaining, len(buffer))
            yield Data(bytes(buffer[:take]), min(take, content))
            content -= min(take, content)
            del buffer[:take]
            remaining -= take
