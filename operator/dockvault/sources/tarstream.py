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
MAX_META_BYTES = 1024 * 1024  # an extended header is held in memory whole: long names and xattrs fit many times


class UnsafeArchive(ValueError):
    """The archive holds a member that must not be extracted, or is not a complete tar stream."""


class Header:
    """The fields of one 512-byte tar header that the checks and indexes read (tarfile.TarInfo's names), parsed
    without tarfile: a few slices and int() calls, where TarInfo.frombuf costs ~50 us per member."""

    __slots__ = ("name", "mode", "uid", "gid", "size", "mtime", "type", "linkname")

    def __init__(self, name: str, mode: int, uid: int, gid: int, size: int, mtime: int, type: bytes,  # noqa: A002
                 linkname: str) -> None:
        self.name, self.mode, self.uid, self.gid = name, mode, uid, gid
        self.size, self.mtime, self.type, self.linkname = size, mtime, type, linkname


def _text(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode("utf-8", "surrogateescape")


def parse_header(block: bytes) -> Header:
    """A ustar / POSIX / GNU header, as tarfile.TarInfo.frombuf reads it; UnsafeArchive (the problem) when it is
    not one."""
    stored = block[148:156]
    try:
        checksum = _number(stored)
        fields = [_number(block[a:b]) for a, b in ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148))]
    except ValueError:
        raise UnsafeArchive("invalid header") from None  # (a number field is no number: tarfile's wording)
    unsigned = sum(block) - sum(stored) + 256
    if checksum != unsigned and checksum != unsigned - 256 * sum(b > 127 for b in block[:148] + block[156:]):
        raise UnsafeArchive("bad checksum")  # (the second form: signed bytes, as old tars)
    mode, uid, gid, size, mtime = fields
    kind = block[156:157] or tarfile.REGTYPE
    name = _text(block[0:100])
    if kind == tarfile.AREGTYPE and name.endswith("/"):
        kind = tarfile.DIRTYPE
    if kind == tarfile.DIRTYPE:
        name = name.rstrip("/")
    prefix = _text(block[345:500]) if block[257:263] == b"ustar\0" else ""
    if prefix and kind not in tarfile.GNU_TYPES:
        name = prefix + "/" + name
    return Header(name, mode, uid, gid, size, mtime, kind, _text(block[157:257]))


@dataclass(frozen=True)
class Member:
    info: Header
    name: str
    linkname: str
    size: int
    pax: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""


@dataclass(frozen=True)
class Data:
    raw: bytes | memoryview  # a view into a chunk when the member's data starts or ends inside it
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


class _Cursor:
    """The stream's chunks read in order: headers as exact byte strings, member data as pieces of the chunks
    themselves (a whole chunk as it came, or a view into it), so the data is never copied here."""

    __slots__ = ("_source", "_chunk", "_pos")

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._source = iter(chunks)
        self._chunk: bytes = b""
        self._pos = 0

    def take(self, n: int) -> bytes | None:
        """The next `n` bytes, or None when the stream ends before them."""
        chunk, pos = self._chunk, self._pos
        if pos + n <= len(chunk):
            self._pos = pos + n
            return bytes(chunk[pos:pos + n])
        parts = [chunk[pos:]]
        need = n - (len(chunk) - pos)
        while need > 0:
            chunk = next(self._source, None)
            if chunk is None:
                self._chunk, self._pos = b"", 0
                return None
            parts.append(chunk[:need])
            self._chunk, self._pos = chunk, min(need, len(chunk))
            need -= len(chunk)
        return b"".join(parts)

    def pieces(self, n: int, truncated: str) -> Iterator[bytes | memoryview]:
        """The next `n` bytes in pieces; UnsafeArchive(`truncated`) when the stream ends before them."""
        while n:
            chunk, pos = self._chunk, self._pos
            while pos == len(chunk):
                chunk = next(self._source, None)
                if chunk is None:
                    raise UnsafeArchive(truncated)
                self._chunk, pos = chunk, 0
            take = min(n, len(chunk) - pos)
            self._pos = pos + take
            n -= take
            yield chunk if take == len(chunk) else memoryview(chunk)[pos:pos + take]

    def drain(self) -> None:
        for _ in self._source:
            pass


def tar_events(chunks: Iterable[bytes]) -> Iterator[Event]:
    """The stream's events; after End the rest of `chunks` is drained, so upstream checksums see it all."""
    members = 0
    cursor = _Cursor(chunks)
    pending: dict[str, str] = {}
    head: list[bytes] = []  # metadata blocks held back until their member is complete
    while True:
        block = cursor.take(BLOCK)
        if block is None:
            raise UnsafeArchive("archive ends without an end-of-archive marker (truncated)")
        if block == _ZERO_BLOCK:
            yield End(b"".join(head) + block + _ZERO_BLOCK)  # tar reads no further
            cursor.drain()
            return
        try:
            info = parse_header(block)
        except UnsafeArchive as exc:
            raise UnsafeArchive(f"corrupt tar header after {members} members: {exc}") from None
        size = info.size
        padded = -(-size // BLOCK) * BLOCK
        if info.type in _META_TYPES:
            if size > MAX_META_BYTES:
                raise UnsafeArchive(f"extended header of {size} bytes after {members} members (at most "
                                    f"{MAX_META_BYTES} are read)")
            body = cursor.take(padded)
            if body is None:
                raise UnsafeArchive("archive ends inside a header")
            data = body[:size]
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
            head += (block, body)
            continue
        name = pending.get("path", info.name)
        if "size" in pending:
            size = int(pending["size"])
            padded = -(-size // BLOCK) * BLOCK
        has_data = info.type in DATA_TYPES
        yield Member(info, name, pending.get("linkpath", info.linkname), size if has_data else 0, dict(pending),
                     b"".join(head) + block if head else block)
        members += 1
        pending.clear()
        head.clear()
        if has_data:
            content = size
            for piece in cursor.pieces(padded, f"archive ends inside member {name!r} (truncated)"):
                payload = min(len(piece), content)
                yield Data(piece, payload)
                content -= payload


_ZERO_BLOCK = bytes(BLOCK)
_NO_DATA_TYPES = frozenset(b"123456")  # links, devices, directories, FIFOs: no data blocks follow the header


def _number(field: bytes) -> int:
    """A header number: octal text (NUL- or space-terminated), or GNU's base-256 for large values."""
    if field[0] & 0x80:
        return tarfile.nti(field)
    end = field.find(b"\0")
    return int((field if end < 0 else field[:end]).strip() or b"0", 8)


class EndMarker:
    """Walk a tar stream's headers while it passes through, to prove it complete: `seen` once the
    end-of-archive marker (two zero blocks) arrived at a header position.

    Only headers are parsed (magic, size, type; a pax `size` record overrides the size); data blocks are
    skipped without being looked at, so the walk costs microseconds per member, not a pass over the data.
    (The restore side checks every header in full: tarcheck.)
    """

    def __init__(self) -> None:
        self.seen = False
        self.members = 0
        self.problem = ""
        self._next = 0  # stream offset of the next header
        self._offset = 0  # stream offset just past the bytes seen so far
        self._head = bytearray()  # bytes from self._next on, while a header (and a pax body) is incomplete
        self._zeros = 0
        self._pax_size: int | None = None

    @property
    def length(self) -> int:
        """Bytes of the stream seen so far (all of it, once it ended)."""
        return self._offset

    def watch(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            start = self._offset
            self._offset += len(chunk)
            if not (self.seen or self.problem) and self._offset > self._next:
                self._head += memoryview(chunk)[max(0, self._next - start):]
                self._walk()
            yield chunk

    def _walk(self) -> None:
        while len(self._head) >= BLOCK:
            header = bytes(self._head[:BLOCK])
            if header == _ZERO_BLOCK:
                self._zeros += 1
                self._advance(BLOCK)
                if self._zeros == 2:
                    self.seen = True
                    self._head.clear()
                    return
                continue
            if self._zeros or header[257:262] != b"ustar":  # POSIX and GNU headers both carry the magic
                self.problem = f"no tar header where member {self.members + 1} should start"
                self._head.clear()
                return
            size, kind = _number(header[124:136]), header[156]
            padded = -(-size // BLOCK) * BLOCK
            if kind in b"xgLK":  # metadata for the next member
                if len(self._head) < BLOCK + padded:
                    return  # the body is still coming
                if kind == ord("x"):
                    records = _pax_records(bytes(self._head[BLOCK:BLOCK + size]))
                    self._pax_size = int(records["size"]) if "size" in records else None
                self._advance(BLOCK + padded)
                continue
            if self._pax_size is not None:
                size, self._pax_size = self._pax_size, None
                padded = -(-size // BLOCK) * BLOCK
            self.members += 1
            self._advance(BLOCK + (0 if kind in _NO_DATA_TYPES else padded))

    def _advance(self, length: int) -> None:
        self._next += length
        del self._head[:length]  # past the buffer's end: the rest is data this walk skips
