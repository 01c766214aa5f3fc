"""A helper that compresses its volume stream (sources/volume.py: TAR_ZSTD, run on remote engines, and
_HelperZstd, which passes its output on and proves it). The script runs here with the host's sh, GNU tar and zstd,
the tools of the helper image; no Docker."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from dockvault.api.policy import CompressionSpec
from dockvault.sources.tarstream import EndMarker
from dockvault.sources.volume import TAR_ZSTD, _HelperZstd

pytestmark = pytest.mark.skipif(not (shutil.which("tar") and shutil.which("zstd")), reason="needs GNU tar and zstd")
ZSTD3 = CompressionSpec(algorithm="zstd", level=3)


def tree(root: Path) -> Path:
    root.mkdir()
    (root / "notes.txt").write_text("line\n" * 20_000)
    (root / "random.bin").write_bytes(os.urandom(300_000))
    (root / "sub").mkdir()
    (root / "sub" / "link").symlink_to("../notes.txt")
    return root


def tar_argv(root: Path) -> list[str]:
    return ["tar", "--create", "--file", "-", "--format=posix", "--directory", str(root), "."]


def run_script(*argv: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=path) if path is not None else None
    return subprocess.run(["/bin/sh", "-c", TAR_ZSTD, "sh", "-", "3", *argv], capture_output=True, env=env, timeout=60)


def members(raw: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as archive:
        return sorted(m.name for m in archive)


def chunked(data: bytes, size: int = 7_000) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_the_script_writes_tar_compressed_with_zstd_and_exits_as_tar(tmp_path):
    done = run_script(*tar_argv(tree(tmp_path / "src")))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"\x28\xb5\x2f\xfd")
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(done.stdout)
    assert members(raw) == [".", "./notes.txt", "./random.bin", "./sub", "./sub/link"]


@pytest.mark.parametrize(("argv", "code"), [(["false"], 1), (["tar", "--create", "--file", "-", "--directory",
                                                             "/nonexistent-dockvault", "."], 2)])
def test_the_script_exits_with_tars_code_not_zstds(argv, code):
    """1 is tar's "a file changed" (the archive is kept, with a warning); 2 its fatal error."""
    done = run_script(*argv)
    assert done.returncode == code
    if code == 2:
        assert b"nonexistent-dockvault" in done.stderr


def test_a_zstd_failure_after_a_good_tar_fails_the_script_and_says_so(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "zstd"
    fake.write_text("#!/bin/sh\ncat > /dev/null\nexit 5\n")
    fake.chmod(0o755)
    done = run_script(*tar_argv(tree(tmp_path / "src")), path=f"{bin_dir}:{os.environ['PATH']}")
    assert done.returncode == 2  # never 1, which would read as "a file changed" and publish
    assert b"zstd failed with exit code 5" in done.stderr


def test_a_helper_image_without_zstd_sends_the_plain_tar(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tar").symlink_to(shutil.which("tar"))
    done = run_script(*tar_argv(tree(tmp_path / "src")), path=str(bin_dir))
    assert done.returncode == 0, done.stderr
    assert members(done.stdout) == [".", "./notes.txt", "./random.bin", "./sub", "./sub/link"]  # not compressed


def raw_tar(tmp_path: Path) -> bytes:
    return subprocess.run(tar_argv(tree(tmp_path / "src")), capture_output=True, check=True).stdout


def test_a_compressed_stream_passes_unchanged_and_is_proven_complete(tmp_path):
    raw = raw_tar(tmp_path)
    wire = _HelperZstd(EndMarker(), ZSTD3)
    stream = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw)
    out = b"".join(wire.watch(chunked(stream)))
    assert out == stream
    assert wire.in_helper and not wire.problem
    assert wire.end.seen and wire.end.members == 5 and wire.end.length == len(raw)


def test_a_plain_tar_is_compressed_here(tmp_path):
    raw = raw_tar(tmp_path)
    wire = _HelperZstd(EndMarker(), ZSTD3)
    out = b"".join(wire.watch(chunked(raw)))
    assert not wire.in_helper and wire.end.seen and wire.end.length == len(raw)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(out) == raw


def test_a_truncated_stream_is_a_problem_even_after_the_end_marker(tmp_path):
    raw = raw_tar(tmp_path)
    stream = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw)
    wire = _HelperZstd(EndMarker(), ZSTD3)
    out = b"".join(wire.watch(chunked(stream[:-4])))  # only the frame's checksum is missing
    assert out == stream[:-4]
    assert wire.end.seen  # tar's stream looked complete ...
    assert "ends early" in wire.problem  # ... but the compressed one is not: not publishable


def test_a_corrupt_stream_is_a_problem_and_is_still_drained(tmp_path):
    raw = raw_tar(tmp_path)
    stream = bytearray(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw))
    stream[len(stream) // 2] ^= 0xFF
    wire = _HelperZstd(EndMarker(), ZSTD3)
    out = b"".join(wire.watch(chunked(bytes(stream))))
    assert out == bytes(stream)  # read to its end, so the helper can finish
    assert wire.problem


class FakeOpener:
    """An artifact's compressed stream in small chunks, as ArtifactOpener.compressed() gives it."""

    label = "p/20261126T000000Z/data.tar.zst"

    def __init__(self, stream: bytes, size: int = 1_000) -> None:
        self.chunks = chunked(stream, size)

    def compressed(self):
        return iter(self.chunks)


def archive(*members: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def restore_ctx():
    from dockvault.sources.base import RestoreContext

    return RestoreContext(policy="p", request="r", job_id="j", engine=None)  # type: ignore[arg-type]


def test_compressed_restore_chunks_pass_unchanged_once_checked():
    from dockvault.sources.tarcheck import new_checker
    from dockvault.sources.volume import _checked_compressed

    raw = archive(("a.txt", os.urandom(20_000)), ("b/c.txt", b"c" * 50_000))
    stream = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw)
    assert b"".join(_checked_compressed(FakeOpener(stream), new_checker(), restore_ctx())) == stream


def test_a_compressed_restore_never_passes_on_an_unsafe_header():
    """The helper decompresses what it gets: whatever dockvault passed on must hold no unchecked header."""
    from dockvault.sources.tarcheck import new_checker
    from dockvault.sources.tarstream import UnsafeArchive
    from dockvault.sources.volume import _checked_compressed

    raw = archive(("a.txt", os.urandom(30_000)), ("../../evil", b"owned"), ("z.txt", b"z"))
    stream = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw)
    passed = []
    with pytest.raises(UnsafeArchive):
        for chunk in _checked_compressed(FakeOpener(stream, 300), new_checker(), restore_ctx()):
            passed.append(chunk)
    assert passed  # the safe member went through
    seen = zstandard.ZstdDecompressor().decompressobj().decompress(b"".join(passed))
    assert b"../../evil" not in seen and b"owned" not in seen


def test_a_corrupt_compressed_artifact_is_reported_as_corrupt():
    from dockvault.sources.tarcheck import new_checker
    from dockvault.sources.volume import _checked_compressed
    from dockvault.storage.codec import ChecksumMismatch

    raw = archive(("a.txt", os.urandom(30_000)))
    stream = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw)
    with pytest.raises(ChecksumMismatch, match="p/20261126T000000Z/data.tar.zst is corrupt"):
        for _ in _checked_compressed(FakeOpener(stream[:-10]), new_checker(), restore_ctx()):
            pass
