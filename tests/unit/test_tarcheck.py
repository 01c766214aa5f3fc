"""The tar stream checker: good archives pass byte for byte in any chunking; a hostile member is refused before any of it is forwarded."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockvault.sources.tarcheck import UnsafeArchive, checked_tar
from dockvault.sources.tarstream import Data, tar_events

BLOCK = 512
END = b"\0" * 1024

Member = tuple[tarfile.TarInfo, bytes | None]


def reg(name: str, data: bytes = b"", **attrs) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def special(name: str, type: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = type
    info.linkname = linkname
    info.mode = 0o755 if type == tarfile.DIRTYPE else 0o644
    return info, None


def dir_(name: str) -> Member:
    return special(name, tarfile.DIRTYPE)


def sym(name: str, target: str) -> Member:
    return special(name, tarfile.SYMTYPE, target)


def hard(name: str, target: str) -> Member:
    return special(name, tarfile.LNKTYPE, target)


def fifo(name: str) -> Member:
    return special(name, tarfile.FIFOTYPE)


class Archive:
    """An archive written by Python's tarfile, with where each member's first header starts and where the members end."""

    def __init__(self, *members: Member, format: int = tarfile.PAX_FORMAT) -> None:
        buf = io.BytesIO()
        self.starts: list[int] = []
        with tarfile.open(fileobj=buf, mode="w", format=format) as tf:
            for info, data in members:
                self.starts.append(tf.offset)
                tf.addfile(info, io.BytesIO(data) if data is not None else None)
            self.end = tf.offset
        self.data = buf.getvalue()
        assert self.data[self.end:self.end + 1024] == END

    @property
    def forwarded(self) -> bytes:
        """What the checker should pass on: every member and the end-of-archive marker, not tar's record padding."""
        return self.data[:self.end + 1024]


def split(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """Cut `data` into chunks of the given sizes, cycling through them (0 gives an empty chunk)."""
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        yield data[pos:pos + size]
        pos += size
        i += 1
        if i > 100 * len(data) + 10:
            raise AssertionError("sizes never advance")


def run(chunks) -> tuple[bytes, UnsafeArchive | None]:
    """Everything the checker yielded, and the error that stopped it (if any)."""
    out = bytearray()
    try:
        for piece in checked_tar(chunks):
            out += piece
    except UnsafeArchive as exc:
        return bytes(out), exc
    return bytes(out), None


def refused(archive: Archive, bad_index: int, message: str, sizes: list[int] = [BLOCK * 1000]) -> None:
    """The checker raises `message` and has forwarded exactly the members before the bad one, none of its bytes."""
    out, error = run(split(archive.data, sizes))
    assert error is not None, "the archive was accepted"
    assert str(error) == message
    assert out == archive.data[:archive.starts[bad_index]]


# --- good archives pass unchanged --------------------------------------------------------------------------------------

LONG_DIR = "deep/" + "d" * 60 + "/" + "e" * 60
LONG_NAME = LONG_DIR + "/" + "f" * 90 + ".txt"
LONG_TARGET = "../" * 2 + LONG_DIR.split("/", 1)[1] + "/" + "f" * 90 + ".txt"


def rich_members() -> list[Member]:
    return [
        dir_("deep"),
        dir_("deep/" + "d" * 60),
        dir_(LONG_DIR),
        reg(LONG_NAME, b"long name\n" * 100),
        reg("empty"),
        reg("exact-block", b"x" * BLOCK),
        reg("one-more", b"y" * (BLOCK + 1)),
        reg("données/日本語 ✓.txt", "unicode ✓\n".encode()),
        hard("hardlink-to-empty", "empty"),
        hard("h" * 120, LONG_NAME),  # long name and long link name
        sym("rel", "empty"),
        sym("deep/up", ".."),  # points at the root: inside
        sym(LONG_DIR + "/link", LONG_TARGET),  # long, relative, stays inside
        sym("abs", "/etc/passwd"),  # absolute targets are kept as they were
        fifo("pipe"),
        reg("last", bytes(range(256)) * 9),
    ]


def test_rich_names_need_extended_headers_in_both_formats():
    gnu = Archive(*rich_members(), format=tarfile.GNU_FORMAT).data
    pax = Archive(*rich_members(), format=tarfile.PAX_FORMAT).data
    assert b"././@LongLink" in gnu
    assert b"path=" + LONG_NAME.encode() in pax


@pytest.mark.parametrize("format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_rich_archive_passes_byte_for_byte(format):
    archive = Archive(*rich_members(), format=format)
    out, error = run([archive.data])
    assert error is None
    assert out == archive.forwarded
    with tarfile.open(fileobj=io.BytesIO(out)) as tf:
        assert [m.name for m in tf.getmembers()] == [info.name for info, _ in rich_members()]


@settings(max_examples=200, deadline=None)
@given(format=st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]),
       sizes=st.lists(st.one_of(st.integers(0, 3), st.integers(1, 1500), st.just(BLOCK)), min_size=1, max_size=12)
       .filter(any))
def test_any_chunking_forwards_the_same_bytes(format, sizes):
    members = rich_members()
    if format == tarfile.USTAR_FORMAT:  # ustar has no long link names and no non-ASCII names
        members = [m for m in members if len(m[0].linkname) <= 100 and m[0].name.isascii() and len(m[0].name) <= 100]
    archive = Archive(*members, format=format)
    out, error = run(split(archive.data, sizes))
    assert error is None
    assert out == archive.forwarded


def test_member_data_is_forwarded_without_copies():
    """A chunk that holds only member data goes on as the very object it came as, and data that starts or ends
    inside a chunk as a view into it: the data of a restore (a GiB and more) is never copied here."""
    content = bytes(range(256)) * 64  # 16 KiB
    archive = Archive(reg("big", content), format=tarfile.PAX_FORMAT)
    start = archive.data.index(content)
    middle = archive.data[start + BLOCK:start + 3 * BLOCK]
    chunks = [archive.data[:start + BLOCK], middle, archive.data[start + 3 * BLOCK:]]
    data = [event.raw for event in tar_events(chunks) if isinstance(event, Data)]
    assert [type(piece) for piece in data] == [memoryview, bytes, memoryview]
    assert data[1] is middle
    assert b"".join(data) == archive.data[start:start + len(content)]  # 16 KiB: no padding
    assert b"".join(checked_tar(chunks)) == archive.forwarded


def test_ustar_prefix_field_is_part_of_the_name():
    name = "p" * 90 + "/" + "q" * 90  # 181 characters: ustar stores it as prefix + name
    archive = Archive(dir_("p" * 90), reg(name, b"data"), format=tarfile.USTAR_FORMAT)
    assert run([archive.data]) == (archive.forwarded, None)


def test_an_empty_archive_is_just_the_end_marker():
    archive = Archive()
    assert archive.end == 0
    assert run([archive.data]) == (END, None)


def test_pax_size_record_overrides_the_header_size():
    archive = Archive(reg("big", b"z" * 1000, pax_headers={"size": "1000"}), reg("after", b"ok"))
    data = bytearray(archive.data)
    header = archive.starts[0] + 2 * BLOCK  # pax header, its records, then the member's own header
    data[header + 124:header + 136] = b"00000000000\0"  # size field 0, as tar writes for members over 8 GiB
    data[header + 148:header + 156] = b" " * 8
    data[header + 148:header + 156] = b"%06o\0 " % sum(data[header:header + BLOCK])
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tf:
        assert [(m.name, m.size) for m in tf.getmembers()] == [("big", 1000), ("after", 2)]
    assert run(split(bytes(data), [700])) == (bytes(data[:archive.end + 1024]), None)


def test_the_rest_of_the_stream_is_read_but_not_forwarded():
    archive = Archive(reg("a", b"1"))
    hidden = Archive(reg("../../evil", b"2"))
    consumed = []

    def source():
        yield archive.data
        yield hidden.data
        consumed.append(True)

    assert run(source()) == (archive.forwarded, None)
    assert consumed == [True]  # drained, so a checksum computed upstream covers the whole artifact


# --- refused members -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
@pytest.mark.parametrize("name, message", [
    ("/etc/passwd", "member '/etc/passwd' has an absolute path"),
    ("../x", "member '../x' contains '..'"),
    ("a/../../b", "member 'a/../../b' contains '..'"),
    ("a/..", "member 'a/..' contains '..'"),
    ("ok/" + "n" * 120 + "/../../../evil", "member 'ok/" + "n" * 120 + "/../../../evil' contains '..'"),
])
def test_bad_member_paths(format, name, message):
    refused(Archive(reg("good", b"fine"), reg(name, b"evil"), format=format), 1, message)


def test_dotdot_in_the_ustar_prefix_field():
    name = "../" + "p" * 90 + "/" + "q" * 90
    archive = Archive(reg("good", b"fine"), reg(name, b"evil"), format=tarfile.USTAR_FORMAT)
    assert archive.data[archive.starts[1] + 345:archive.starts[1] + 348] == b"../"  # really in the prefix
    refused(archive, 1, f"member {name!r} contains '..'")


@pytest.mark.parametrize("name, target", [
    ("l", "../../x"),
    ("l", ".."),
    ("l", "a/../../x"),
    ("d/l", "../../x"),
    ("d/l", "../.."),
    ("l" * 120, "../" + "t" * 120),
])
def test_symlinks_escaping_the_root(name, target):
    archive = Archive(dir_("d"), sym(name, target))
    refused(archive, 1, f"symlink {name!r} -> {target!r} points outside the volume")


@pytest.mark.parametrize("target", ["../x", "/etc/passwd", "a/../../x"])
def test_hard_links_outside_the_root(target):
    archive = Archive(reg("x", b"1"), hard("h", target))
    refused(archive, 1, f"hard link 'h' -> {target!r} points outside the volume")


@pytest.mark.parametrize("link_target, member, message", [
    ("/etc", reg("l/passwd", b"root::0:0::/:/bin/sh\n"), "member 'l/passwd' would be written through the symlink 'l'"),
    ("/etc", reg("l/cron.d/job", b"* * * * * root sh\n"), "member 'l/cron.d/job' would be written through the symlink 'l'"),
    ("sub", reg("l/x", b"1"), "member 'l/x' would be written through the symlink 'l'"),  # even one that stays inside
    ("sub", dir_("l/newdir"), "member 'l/newdir' would be written through the symlink 'l'"),
    ("sub", sym("l/s", "x"), "member 'l/s' would be written through the symlink 'l'"),
    ("sub", hard("l/h", "sub/x"), "member 'l/h' would be written through the symlink 'l'"),
    ("/etc", reg("./l//passwd", b"1"), "member './l//passwd' would be written through the symlink 'l'"),
])
def test_members_written_through_an_archive_symlink(link_target, member, message):
    archive = Archive(dir_("sub"), reg("sub/x", b"0"), sym("l", link_target), member)
    refused(archive, 3, message)


def test_symlink_deeper_in_the_tree_shadows_its_subtree():
    archive = Archive(dir_("a"), sym("a/l", ".."), reg("a/l/b/c", b"1"))
    refused(archive, 2, "member 'a/l/b/c' would be written through the symlink 'a/l'")


def test_a_directory_replacing_a_symlink_ends_its_shadow():
    # GNU tar replaces the symlink with the directory (absolute or '..' targets are only placeholders until the end).
    archive = Archive(dir_("sub"), sym("l", "sub"), dir_("l"), reg("l/x", b"1"))
    assert run([archive.data]) == (archive.forwarded, None)


@pytest.mark.parametrize("type, what", [(tarfile.CHRTYPE, "character device"), (tarfile.BLKTYPE, "block device")])
def test_device_nodes(type, what):
    info, _ = special("dev/sda", type)
    info.devmajor, info.devminor = 8, 0
    refused(Archive(dir_("dev"), (info, None)), 1, f"member 'dev/sda' is a {what}")


def test_sparse_gnu_member_is_an_unsupported_type():
    archive = Archive(reg("good", b"1"), special("sparse", tarfile.GNUTYPE_SPARSE), format=tarfile.GNU_FORMAT)
    refused(archive, 1, "member 'sparse' has unsupported type b'S'")


def test_pax_sparse_records_are_refused():
    archive = Archive(reg("good", b"1"), reg("sparse", b"2", pax_headers={"GNU.sparse.major": "1"}))
    refused(archive, 1, "sparse members are not supported")


def test_global_pax_header_setting_a_path_is_refused():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"path": "../evil"}) as tf:
        info, data = reg("x", b"1")
        tf.addfile(info, io.BytesIO(data))
    out, error = run([buf.getvalue()])
    assert (out, str(error)) == (b"", "global pax header sets a path")


# --- broken archives ---------------------------------------------------------------------------------------------------


def test_no_end_of_archive_marker():
    archive = Archive(reg("a", b"1" * 600), reg("b", b"2"))
    out, error = run(split(archive.data[:archive.end], [100]))
    assert str(error) == "archive ends without an end-of-archive marker (truncated)"
    assert out == archive.data[:archive.end]


def test_cut_inside_a_header():
    archive = Archive(reg("a", b"1"), reg("b", b"2"))
    out, error = run([archive.data[:archive.starts[1] + 300]])
    assert str(error) == "archive ends without an end-of-archive marker (truncated)"
    assert out == archive.data[:archive.starts[1]]


def test_cut_inside_an_extended_header():
    archive = Archive(reg("a", b"1"), reg("n" * 200, b"2"))
    out, error = run([archive.data[:archive.starts[1] + BLOCK + 10]])
    assert str(error) == "archive ends inside a header"
    assert out == archive.data[:archive.starts[1]]


@pytest.mark.parametrize("sizes", [[10_000], [1], [511], [BLOCK]])
def test_cut_inside_a_member(sizes):
    archive = Archive(reg("a", b"1"), reg("big", b"x" * 3000))
    cut = archive.starts[1] + BLOCK + 2000
    out, error = run(split(archive.data[:cut], sizes))
    assert str(error) == "archive ends inside member 'big' (truncated)"
    assert out == archive.data[:cut]  # the data of a member that passed the check is forwarded as it comes


def test_corrupt_header_checksum():
    archive = Archive(reg("a", b"1"), reg("b", b"2"), reg("c", b"3"))
    data = bytearray(archive.data)
    data[archive.starts[1]] ^= 0x01  # 'b' -> 'c' in the name, checksum left as it was
    out, error = run([bytes(data)])
    assert str(error) == "corrupt tar header after 1 members: bad checksum"
    assert out == archive.data[:archive.starts[1]]


def test_garbage_is_not_a_header():
    out, error = run([b"this is not a tar archive".ljust(BLOCK * 4, b"!")])
    assert (out, str(error)) == (b"", "corrupt tar header after 0 members: invalid header")


def test_empty_stream():
    out, error = run([])
    assert (out, str(error)) == (b"", "archive ends without an end-of-archive marker (truncated)")


# --- nothing of a bad member leaks ---------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(format=st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
       sizes=st.lists(st.integers(1, 1200), min_size=1, max_size=8),
       bad=st.sampled_from([
           reg("SECRET/" + "s" * 110 + "/../../../escape", b"SECRET-DATA"),
           reg("/SECRET-abs-" + "s" * 110, b"SECRET-DATA"),
           sym("SECRET-link-" + "s" * 110, "../" * 3 + "SECRET-target"),
           hard("SECRET-hard-" + "s" * 110, "/etc/SECRET"),
           reg("l/SECRET", b"SECRET-DATA"),
       ]))
def test_no_byte_of_a_bad_member_is_forwarded(format, sizes, bad):
    archive = Archive(reg("good", b"good data " * 200), sym("l", "/etc"), bad, format=format)
    out, error = run(split(archive.data, sizes))
    assert error is not None
    assert b"SECRET" not in out
    assert out == archive.data[:archive.starts[2]]


# --- EndMarker: the backup side's proof that a tar stream is complete ----------------------------------------------

def _archive(members: list[tuple[str, bytes]], fmt: int, big_pax_size: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000.25
            if big_pax_size and fmt == tarfile.PAX_FORMAT:
                info.pax_headers = {"size": str(len(data))}  # as GNU tar writes it for files over 8 GiB
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "t" * 150
        tar.addfile(link)
    return buffer.getvalue()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


MEMBERS = st.lists(st.tuples(st.text("abc/é", min_size=1, max_size=120).filter(lambda n: n.strip("/")),
                             st.binary(max_size=3000)), max_size=8)


@settings(max_examples=150, deadline=None)
@given(MEMBERS, st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]), st.booleans(),
       st.lists(st.integers(min_value=0), max_size=12))
def test_end_marker_is_seen_in_a_complete_archive_however_it_is_split(members, fmt, big_pax, cuts):
    from dockvault.sources.tarstream import EndMarker

    data = _archive(members, fmt, big_pax)
    end = EndMarker()
    assert b"".join(end.watch(_split(data, cuts))) == data  # passed through unchanged
    assert end.seen and not end.problem and end.members == len(members) + 1


@settings(max_examples=150, deadline=None)
@given(MEMBERS, st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]), st.integers(min_value=0),
       st.lists(st.integers(min_value=0), max_size=6))
def test_end_marker_is_not_seen_in_a_truncated_archive(members, fmt, cut, cuts):
    from dockvault.sources.tarstream import EndMarker

    data = _archive(members, fmt)
    payload_end = len(data.rstrip(b"\0"))  # the last member's last byte: the marker comes after it
    truncated = data[:cut % (payload_end + 1024)]
    end = EndMarker()
    list(end.watch(_split(truncated, cuts)))
    assert not end.seen


def test_end_marker_names_a_stream_that_is_not_tar():
    from dockvault.sources.tarstream import EndMarker

    end = EndMarker()
    list(end.watch([b"this is not a tar archive" * 100]))
    assert not end.seen and end.problem == "no tar header where member 1 should start"
