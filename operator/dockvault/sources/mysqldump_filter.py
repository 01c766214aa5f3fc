"""The sections of a mysqldump script, and a streaming filter that keeps only some tables' sections.

mysqldump opens every section with a comment it always writes the same way: "-- Table structure for table
`t`" (DROP TABLE, then CREATE TABLE with the table's keys, indexes, foreign keys and checks), "-- Dumping data
for table `t`" (its rows, then its triggers), and for a view "-- Temporary table structure for view `v`" and
"-- Final view structure for view `v`"; events and routines have sections of their own. The prologue before
the first section sets the session up (character set, time zone, FOREIGN_KEY_CHECKS=0) and is always kept.
Pure functions over a stream of bytes; memory stays bounded, since only a line that may open a section is
ever held back.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator

_HEADER = re.compile(rb"-- (?:Table structure for table|Dumping data for table|Temporary (?:table|view) structure "
                     rb"for view|Final view structure for view) (`(?:[^`]|``)+`)\r?\n?")
_UNNAMED = re.compile(rb"-- Dumping (?:events|routines) for database ")
_LONGEST_HEADER = 1024  # a "--" line longer than this is a comment, never a section's header
PROLOGUE = None
UNNAMED = b""


def quoted(name: str) -> bytes:
    """`name` as mysqldump writes it in a section header."""
    return b"`" + name.replace("`", "``").encode("utf-8") + b"`"


def _unquoted(section: bytes) -> str:
    return section[1:-1].replace(b"``", b"`").decode("utf-8", "replace")


def _section(line: bytes, current: bytes | None) -> bytes | None:
    if header := _HEADER.fullmatch(line):
        return header[1]
    return UNNAMED if _UNNAMED.match(line) else current


def sections(chunks: Iterable[bytes]) -> Iterator[tuple[bytes | None, bytes]]:
    """The script as pieces tagged with their section: a table's or view's quoted name, PROLOGUE before the
    first section, UNNAMED for events and routines. Joined, the pieces are the script unchanged."""
    section: bytes | None = PROLOGUE
    held = b""
    mid_line = False  # the held bytes continue a line that does not start with "--"
    for chunk in chunks:
        buf = held + chunk if held else chunk
        pos = 0
        while pos < len(buf):
            if not mid_line and (buf.startswith(b"--", pos) or b"--".startswith(buf[pos:])):
                end = buf.find(b"\n", pos)
                if end < 0 and len(buf) - pos <= _LONGEST_HEADER:
                    break  # maybe a header: wait for the rest of the line
                if end < 0:
                    yield section, buf[pos:]
                    pos, mid_line = len(buf), True
                    break
                section = _section(buf[pos:end + 1], section)
                yield section, buf[pos:end + 1]
                pos = end + 1
                continue
            following = buf.find(b"\n--", pos)
            if following >= 0:
                yield section, buf[pos:following + 1]
                pos, mid_line = following + 1, False
                continue
            last = buf.rfind(b"\n", pos)
            if last >= 0 and buf[last + 1:] in (b"", b"-"):  # the next line may still start with "--"
                yield section, buf[pos:last + 1]
                pos, mid_line = last + 1, False
            else:
                yield section, buf[pos:]
                pos, mid_line = len(buf), True
            break
        held = buf[pos:]
    if held:
        yield _section(held, section), held


def select_tables(chunks: Iterable[bytes], names: Collection[str]) -> Iterator[bytes]:
    """The prologue and the sections of the tables and views named (structure, rows and triggers)."""
    wanted = {quoted(n) for n in names}
    for section, piece in sections(chunks):
        if section is PROLOGUE or section in wanted:
            yield piece


def tables_in(chunks: Iterable[bytes], *, until: Collection[str] = ()) -> set[str]:
    """Names of the tables and views the script has sections for; reading stops once all of `until` are seen."""
    seen: set[bytes] = set()
    waiting = {quoted(n) for n in until}
    for section, _ in sections(chunks):
        if section:
            seen.add(section)
            if waiting and waiting <= seen:
                break
    return {_unquoted(s) for s in seen}
