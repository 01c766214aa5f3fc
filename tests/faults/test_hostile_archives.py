"""Hostile archives: every one is refused before a byte of its bad member reaches the extracting tar, in
bounded memory, whatever the stream's size; and through a real restore nothing is written to the volume.

The streams are generated lazily, so a "2 GiB" header or a million members cost time, not memory.
DOCKVAULT_FAULT_SCALE=full runs the million members (about 30 s); the default runs 100,000.
"""

from __future__ import annotations

import io
import os
import tarfile
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from dockvault.sources.tarcheck import NAME_MAX, PATH_MAX, UnsafeArchive, checked_tar
from dockvault.sources.tarstream import MAX_META_BYTES

BLOCK = 512
END = b"\0" * 1024
FULL = os.environ.get("DOCKVAULT_FAULT_SCALE") == "full"
MEMORY_BOUND = 16 * 2**20  # peak bytes allocated while checking any stream here


def header(name: str, *, type: bytes = tarfile.REGTYPE, size: int = 0, linkname: str = "",
           pax: dict[str, str] | None = None) -> bytes:
    """A member's header blocks (with a pax header when `pax` or a long name needs one); no data."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = type, size, linkname
    info.pax_headers = pax or {}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def member(name: str, data: bytes = b"", **kw) -> bytes:
    return header(name, size=len(data), **kw) + data + b"\0" * (-len(data) % BLOCK)


# Good members first (with symlinks a later member may try to pass through), so the tests can tell that
# exactly these were forwarded and nothing of the bad member.
GOOD = (member("ok.txt", b"fine") + header("dir", type=tarfile.DIRTYPE) + header("etc", type=tarfile.SYMTYPE, linkname="/etc")
        + header("lnk", type=tarfile.SYMTYPE, linkname="/"))


def lazy_pax(size: int) -> Iterator[bytes]:
    """A pax extended header that declares `size` bytes of records, streamed in 1 MiB chunks of filler."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, size
    yield info.tobuf(tarfile.USTAR_FORMAT)
    chunk = b"x" * 2**20
    for _ in range(-(-size // len(chunk))):
        yield chunk
    yield member("after-the-header", b"x") + END


def lazy_longname(size: int) -> Iterator[bytes]:
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, size
    yield info.tobuf(tarfile.GNU_FORMAT)
    chunk = b"a" * 2**20
    for _ in range(-(-size // len(chunk))):
        yield chunk
    yield member("x") + END


# name -> (stream factory, words the refusal must contain); each stream starts with GOOD.
HOSTILE: dict[str, tuple[Callable[[], Iterator[bytes]], str]] = {
    "absolute path": (lambda: iter([GOOD, member("/etc/cron.d/x", b"evil"), END]), "absolute path"),
    "dot-dot": (lambda: iter([GOOD, member("a/../../x", b"evil"), END]), "contains '..'"),
    "dot-dot in a pax path": (lambda: iter([GOOD, member("x", b"e", pax={"path": "../x"}), END]), "contains '..'"),
    "symlink escape": (lambda: iter([GOOD, header("up", type=tarfile.SYMTYPE, linkname="../../x"), END]),
                       "points outside the volume"),
    "write through a symlink": (lambda: iter([GOOD, member("etc/passwd", b"root::0:0"), END]),
                                "through the symlink"),
    "hard-link escape": (lambda: iter([GOOD, header("h", type=tarfile.LNKTYPE, linkname="../../etc/shadow"), END]),
                         "points outside the volume"),
    "hard link through a symlink": (lambda: iter([GOOD, header("h", type=tarfile.LNKTYPE, linkname="lnk/etc/shadow"),
                                                  END]), "would resolve"),
    "character device": (lambda: iter([GOOD, header("mem", type=tarfile.CHRTYPE), END]), "character device"),
    "block device": (lambda: iter([GOOD, header("sda", type=tarfile.BLKTYPE), END]), "block device"),
    "4 KiB name": (lambda: iter([GOOD, member("n" * 4096, b"x"), END]), "longer than a Linux path"),
    "component over NAME_MAX": (lambda: iter([GOOD, member("d/" + "c" * (NAME_MAX + 1), b"x"), END]),
                                "longer than a Linux path"),
    "path of PATH_MAX": (lambda: iter([GOOD, member("/".join(["d" * 200] * 21), b"x"), END]),
                         "longer than a Linux path"),
    "4 KiB symlink target": (lambda: iter([GOOD, header("s", type=tarfile.SYMTYPE, linkname="t" * PATH_MAX), END]),
                             "target longer than"),
    "2 GiB pax header": (lambda: iter([GOOD, *lazy_pax(2 * 2**30)]), "extended header of"),
    "pax header just over the limit": (lambda: iter([GOOD, *lazy_pax(MAX_META_BYTES + 1)]), "extended header of"),
    "1 GiB GNU long name": (lambda: iter([GOOD, *lazy_longname(2**30)]), "extended header of"),
    "global pax header setting a path": (lambda: iter([GOOD, _global_pax_path(), member("x", b"x"), END]),
                                         "global pax header"),
    "sparse member": (lambda: iter([GOOD, member("s", b"x", pax={"GNU.sparse.major": "1"}), END]), "sparse"),
    "unknown member type": (lambda: iter([GOOD, header("v", type=b"V"), END]), "unsupported type"),
    "garbage after good members": (lambda: iter([GOOD, b"\x7fELF" + b"\x01" * 508 + b"\0" * 512, END]),
                                   "corrupt tar header"),
}


def _global_pax_path() -> bytes:
    info = tarfile.TarInfo("pax_global_header")
    info.type = tarfile.XGLTYPE
    body = tarfile.TarInfo._create_pax_generic_header({"path": "/etc/x"}, tarfile.XGLTYPE, "utf-8")
    return body if body else info.tobuf(tarfile.USTAR_FORMAT)


def check(stream: Iterator[bytes]) -> tuple[bytes, BaseException | None, int]:
    """What checked_tar forwarded before it stopped, the exception it stopped with, and peak memory."""
    forwarded = bytearray()
    tracemalloc.start()
    error = None
    try:
        for chunk in checked_tar(stream):
            forwarded += chunk
            if len(forwarded) > 4 * 2**20:  # more than any archive here holds: a hostile one must stop well before
                del forwarded[:]
                forwarded += b"(more than 4 MiB forwarded)"
    except UnsafeArchive as exc:
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return bytes(forwarded), error, peak


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_archive_is_refused_before_its_bad_member(name):
    factory, words = HOSTILE[name]
    forwarded, error, peak = check(factory())
    assert error is not None, f"{name}: accepted"
    assert words in str(error), str(error)
    assert len(str(error)) < 400, "the refusal repeats the hostile name whole"
    assert forwarded == GOOD, f"{name}: forwarded {len(forwarded)} bytes, not exactly the good members"
    assert peak < MEMORY_BOUND, f"{name}: {peak / 2**20:.1f} MiB at peak"


def test_the_limits_let_real_names_through():
    """The longest names Linux allows pass: a NAME_MAX component, a path just under PATH_MAX, a long symlink."""
    long_path = "/".join(["d" * 200] * 20)[:PATH_MAX - 1]
    stream = [member("c" * NAME_MAX, b"x"), member(long_path, b"x"),
              header("s", type=tarfile.SYMTYPE, linkname="/" + "t" * (PATH_MAX - 2)),
              member("x", b"y", pax={"comment": "z" * (MAX_META_BYTES - 100)}), END]
    forwarded, error, _ = check(iter(stream))
    assert error is None and forwarded == b"".join(stream)


def test_fifos_are_restored_devices_are_not():
    """The decision documented in tarcheck: a FIFO is a node inside the volume that tar never opens."""
    fifo = [header("app/control.pipe", type=tarfile.FIFOTYPE), END]
    forwarded, error, _ = check(iter(fifo))
    assert error is None and forwarded == b"".join(fifo)
    for path in ("../pipe", "/run/pipe"):
        _, error, _ = check(iter([header(path, type=tarfile.FIFOTYPE), END]))
        assert error is not None
    _, error, _ = check(iter([header("l", type=tarfile.SYMTYPE, linkname="/run"), header("l/p", type=tarfile.FIFOTYPE),
                              END]))
    assert error is not None and "through the symlink" in str(error)


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_many_tiny_members_in_bounded_memory():
    """Resident memory sampled while the members pass (tracemalloc would slow this tenfold): it stays flat."""
    count = 1_000_000 if FULL else 100_000
    batch = member("d/tiny", b"x") * 250
    samples: list[int] = []

    def stream() -> Iterator[bytes]:
        yield header("d", type=tarfile.DIRTYPE)
        for index in range(count // 250):
            if index % 40 == 0:
                samples.append(_rss())
            yield batch
        yield END

    total = sum(len(chunk) for chunk in checked_tar(stream()))
    assert total == BLOCK + count // 250 * len(batch) + len(END)
    growth = max(samples) - samples[1]
    assert growth < MEMORY_BOUND, f"resident memory grew {growth / 2**20:.1f} MiB over {count} members"


def test_many_symlinks_then_an_escape():
    """A long run of harmless symlinks does not hide an escape at the end."""
    links = b"".join(header(f"l{i}", type=tarfile.SYMTYPE, linkname=f"t{i}") for i in range(2_000))
    forwarded, error, _ = check(iter([links, header("l7/x", type=tarfile.REGTYPE), END]))
    assert error is not None and "through the symlink 'l7'" in str(error) and forwarded == links


@pytest.mark.docker
@pytest.mark.parametrize("case", ["4 KiB name", "2 MiB pax header"])
def test_restore_of_a_hostile_archive_writes_nothing(docker_client, engine, volumes, repo_dir, case):
    """End to end through the real restore into a Docker volume: the good member before the hostile one is
    never written either, and an existing volume is left exactly as it was."""
    from dockvault.actions.restore import run_restore
    from dockvault.storage.local import LocalRepository
    from tests.integration.test_volume_jobs import _crafted_backup, _member, policy, restore_request
    from tests.treecheck import populate_volume, snapshot_volume

    bad = _member("n" * 4096, b"evil") if case == "4 KiB name" else _member("x", b"evil")
    if case == "2 MiB pax header":
        bad[0].pax_headers = {"comment": "c" * (2 * 2**20)}
    _crafted_backup(repo_dir, [_member("ok.txt", b"written first?"), bad])
    pol = policy("evil", volumes("unused"), repo_dir)
    fresh, existing = volumes("hostile-new"), volumes("hostile-old")
    repo = LocalRepository(repo_dir)
    result = run_restore(restore_request("evil", fresh), pol, engine=engine, repository=repo)
    assert result.status.phase == "Failed", result.status.message
    assert ("longer than a Linux path" if case == "4 KiB name" else "extended header of") in result.status.message
    assert fresh not in [v.name for v in docker_client.volumes.list()]

    populate_volume(docker_client, existing, megabytes=1)
    before = snapshot_volume(docker_client, existing)
    result = run_restore(restore_request("evil", existing, overwrite=True), pol, engine=engine, repository=repo)
    assert result.status.phase == "Failed"
    assert snapshot_volume(docker_client, existing) == before
