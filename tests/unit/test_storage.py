"""Local repository and codec: atomic publish, manifest last and first to go, listing only complete backups, and streams that round-trip."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from dockvault.api.policy import CompressionSpec
from dockvault.storage import local
from dockvault.storage.codec import CompressingWriter, decompressed, read_chunks
from dockvault.storage.base import BackupIdTaken
from dockvault.storage.local import LocalRepository
from tests.unit.builders import artifact, backup, utc

ID1, ID2, ID3 = "20261121T030000Z", "20261122T030000Z", "20261123T030000Z"


def record(id: str, **kwargs):
    started = utc(int(id[:4]), int(id[4:6]), int(id[6:8]), int(id[9:11]), int(id[11:13]), int(id[13:15]))
    return backup(started, id=id, artifacts=[artifact("media")], **kwargs)


def complete(repo: LocalRepository, id: str, policy: str = "myapp", content: bytes = b"archive") -> None:
    writer = repo.begin(policy, id)
    with writer.artifact("media.tar.zst") as out:
        out.write(content)
    writer.commit(record(id, policy=policy))


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- publishing --------------------------------------------------------------------------------------------------------


def test_artifact_is_written_under_a_temporary_name_then_renamed(tmp_path):
    repo = LocalRepository(tmp_path)
    writer = repo.begin("myapp", ID1)
    folder = tmp_path / "myapp" / ID1

    with writer.artifact("media.tar.zst") as out:
        out.write(b"part one ")
        out.write(b"part two")
        assert tree(folder) == [".incomplete", "media.tar.zst.dvtmp"]

    assert tree(folder) == [".incomplete", "media.tar.zst"]  # unfinished until the manifest is written
    assert (folder / "media.tar.zst").read_bytes() == b"part one part two"


def test_an_artifact_goes_to_disk_behind_its_stream_and_leaves_the_page_cache(tmp_path, monkeypatch):
    """Every WRITE_BEHIND bytes: writeback starts for what was written since, and the step before is dropped."""
    step = local.WRITE_BEHIND
    advice = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, how: (
        advice.append((offset, length, how)), real(fd, offset, length, how))[1])
    data = os.urandom(1 << 20) * (3 * step // (1 << 20)) + b"tail"
    with LocalRepository(tmp_path).begin("myapp", ID1).artifact("v.tar") as out:
        for start in range(0, len(data), 1 << 20):
            out.write(data[start:start + (1 << 20)])
    assert advice == [(0, step, os.POSIX_FADV_DONTNEED), (0, 2 * step, os.POSIX_FADV_DONTNEED),
                      (step, 2 * step, os.POSIX_FADV_DONTNEED)]
    assert (tmp_path / "myapp" / ID1 / "v.tar").read_bytes() == data


def test_artifact_block_that_raises_leaves_nothing(tmp_path):
    repo = LocalRepository(tmp_path)
    writer = repo.begin("myapp", ID1)

    with pytest.raises(RuntimeError, match="^source failed$"):
        with writer.artifact("media.tar.zst") as out:
            out.write(b"half")
            raise RuntimeError("source failed")

    assert tree(tmp_path / "myapp" / ID1) == [".incomplete"]


@pytest.mark.parametrize("name", ["a/b", "../x", "manifest.json", "", ".", ".."])
def test_invalid_artifact_names(tmp_path, name):
    writer = LocalRepository(tmp_path).begin("myapp", ID1)
    with pytest.raises(ValueError) as raised:
        writer.artifact(name)
    assert str(raised.value) == f"invalid artifact name {name!r}"


def test_a_backup_counts_only_once_its_manifest_is_written(tmp_path):
    repo = LocalRepository(tmp_path)
    writer = repo.begin("myapp", ID1)
    with writer.artifact("media.tar.zst") as out:
        out.write(b"archive")
    assert repo.backups("myapp") == []

    writer.commit(record(ID1))

    assert [b.id for b in repo.backups("myapp")] == [ID1]
    manifest = tmp_path / "myapp" / ID1 / "manifest.json"
    assert json.loads(manifest.read_text()) == record(ID1).to_dict()
    assert tree(tmp_path / "myapp" / ID1) == ["manifest.json", "media.tar.zst"]


def test_a_manifest_that_fails_halfway_is_not_published(tmp_path, monkeypatch):
    repo = LocalRepository(tmp_path)
    writer = repo.begin("myapp", ID1)

    def broken(_record):
        yield b'{"apiVersion": '
        raise OSError("disk full")

    monkeypatch.setattr(local, "manifest_chunks", broken)
    with pytest.raises(OSError, match="^disk full$"):
        writer.commit(record(ID1))
    assert tree(tmp_path / "myapp" / ID1) == [".incomplete"]
    assert repo.backups("myapp") == []


def test_begin_refuses_an_existing_folder(tmp_path):
    repo = LocalRepository(tmp_path)
    repo.begin("myapp", ID1)  # even an unfinished one
    with pytest.raises(BackupIdTaken, match=f"backup myapp/{ID1} already exists in "):
        repo.begin("myapp", ID1)


def test_abort_removes_the_folder(tmp_path):
    repo = LocalRepository(tmp_path)
    writer = repo.begin("myapp", ID1)
    with writer.artifact("media.tar.zst") as out:
        out.write(b"x")
    writer.abort()
    assert tree(tmp_path) == ["myapp"]


def test_open_artifact_reads_what_was_written(tmp_path):
    repo = LocalRepository(tmp_path)
    complete(repo, ID1, content=b"\x00binary\xff")
    with repo.open_artifact("myapp", ID1, "media.tar.zst") as stream:
        assert stream.read() == b"\x00binary\xff"


# --- listing -----------------------------------------------------------------------------------------------------------


def test_backups_lists_complete_ones_oldest_first(tmp_path):
    repo = LocalRepository(tmp_path)
    for id in (ID3, ID1, ID2):  # written out of order
        complete(repo, id)
    repo.begin("myapp", "20261124T030000Z")  # in progress: no manifest
    complete(repo, "20261120T030000Z", policy="other")

    assert [b.id for b in repo.backups("myapp")] == [ID1, ID2, ID3]
    assert [b.id for b in repo.backups("other")] == ["20261120T030000Z"]
    assert repo.backups("missing") == []
    assert repo.backups("myapp")[0] == record(ID1)


def test_unreadable_manifests_are_logged_and_ignored(tmp_path, caplog):
    repo = LocalRepository(tmp_path)
    complete(repo, ID1)
    (tmp_path / "myapp" / ID2).mkdir()
    (tmp_path / "myapp" / ID2 / "manifest.json").write_text("{not json")
    (tmp_path / "myapp" / ID3).mkdir()
    (tmp_path / "myapp" / ID3 / "manifest.json").write_text('{"kind": "Backup"}')

    with caplog.at_level(logging.ERROR, logger="dockvault.storage.local"):
        assert [b.id for b in repo.backups("myapp")] == [ID1]

    logged = [(r.levelname, r.getMessage().split(": unreadable manifest, ignored: ")[0]) for r in caplog.records]
    assert logged == [("ERROR", str(tmp_path / "myapp" / ID2 / "manifest.json")),
                      ("ERROR", str(tmp_path / "myapp" / ID3 / "manifest.json"))]
    assert "Expecting property name" in caplog.records[0].getMessage()


def test_policies_are_folders_sorted_without_hidden_ones(tmp_path):
    repo = LocalRepository(tmp_path)
    for policy in ("zeta", "alpha", ".trash"):
        (tmp_path / policy).mkdir()
    (tmp_path / "README").write_text("not a policy")
    assert repo.policies() == ["alpha", "zeta"]
    assert LocalRepository(tmp_path / "missing").policies() == []


# --- deleting and cleaning ---------------------------------------------------------------------------------------------


def test_delete_removes_the_backup(tmp_path):
    repo = LocalRepository(tmp_path)
    complete(repo, ID1)
    complete(repo, ID2)
    repo.delete("myapp", ID1)
    assert [b.id for b in repo.backups("myapp")] == [ID2]
    assert tree(tmp_path / "myapp") == [ID2, f"{ID2}/manifest.json", f"{ID2}/media.tar.zst"]


def test_delete_cut_short_never_leaves_a_complete_looking_backup(tmp_path, monkeypatch):
    repo = LocalRepository(tmp_path)
    complete(repo, ID1)

    def rmtree_fails(path, *args, **kwargs):
        raise OSError(f"cannot remove {path}")

    monkeypatch.setattr(local.shutil, "rmtree", rmtree_fails)
    with pytest.raises(OSError, match="^cannot remove "):
        repo.delete("myapp", ID1)

    assert repo.backups("myapp") == []
    assert tree(tmp_path / "myapp") == [ID1, f"{ID1}/.incomplete", f"{ID1}/media.tar.zst"]
    monkeypatch.undo()
    assert repo.clean_temporaries("myapp") == [str(tmp_path / "myapp" / ID1)]
    assert tree(tmp_path / "myapp") == []


def test_a_folder_that_lost_its_manifest_is_kept_and_one_left_unfinished_removed(tmp_path):
    repo = LocalRepository(tmp_path)
    complete(repo, ID1)
    complete(repo, ID2)
    (tmp_path / "myapp" / ID1 / "manifest.json").unlink()  # lost: by hand, a bad disk, a bad sync
    repo.begin("myapp", ID3)  # a run killed before its manifest
    assert repo.clean_temporaries("myapp") == [str(tmp_path / "myapp" / ID3)]
    assert tree(tmp_path / "myapp" / ID1) == ["media.tar.zst"]  # its data is still there, for `dockvault check`
    assert [b.id for b in repo.backups("myapp")] == [ID2]


def test_clean_temporaries(tmp_path):
    repo = LocalRepository(tmp_path)
    complete(repo, ID1)
    (tmp_path / "myapp" / ID1 / "extra.tar.zst.dvtmp").write_bytes(b"left by a crash")
    unfinished = repo.begin("myapp", ID2)
    with unfinished.artifact("media.tar.zst") as out:
        out.write(b"never committed")
    (tmp_path / "myapp" / f"{ID3}.dvtmp").write_bytes(b"stray")
    complete(repo, ID1, policy="other")
    (tmp_path / "other" / f"{ID3}.dvtmp").write_bytes(b"another policy's: its own job may be writing it")

    removed = repo.clean_temporaries("myapp")

    assert removed == [str(tmp_path / "myapp" / ID1 / "extra.tar.zst.dvtmp"), str(tmp_path / "myapp" / ID2),
                       str(tmp_path / "myapp" / f"{ID3}.dvtmp")]
    assert tree(tmp_path) == sorted([
        "myapp", f"myapp/{ID1}", f"myapp/{ID1}/manifest.json", f"myapp/{ID1}/media.tar.zst",
        "other", f"other/{ID1}", f"other/{ID1}/manifest.json", f"other/{ID1}/media.tar.zst", f"other/{ID3}.dvtmp",
    ])
    assert repo.clean_temporaries("myapp") == []


# --- codec -------------------------------------------------------------------------------------------------------------

DATA = os.urandom(70_000) + b"compressible " * 40_000 + os.urandom(3_000)


def compress(data: bytes, spec: CompressionSpec, chunk: int = 65_536) -> tuple[bytes, CompressingWriter]:
    out = io.BytesIO()
    writer = CompressingWriter(out, spec)
    for i in range(0, len(data), chunk):
        writer.write(data[i:i + chunk])
    writer.close()
    return out.getvalue(), writer


ALGORITHMS = [CompressionSpec(algorithm="zstd"), CompressionSpec(algorithm="zstd", level=19),
              CompressionSpec(algorithm="gzip"), CompressionSpec(algorithm="gzip", level=1), CompressionSpec(algorithm="none")]


@pytest.mark.parametrize("spec", ALGORITHMS, ids=lambda s: f"{s.algorithm}-{s.effective_level}")
@pytest.mark.parametrize("read_size", [1, 4096, 1 << 20])
def test_compressing_writer_round_trips(spec, read_size):
    data = DATA if read_size > 1 else DATA[:20_000]
    stored, writer = compress(data, spec)

    assert writer.raw_bytes == len(data)
    assert writer.bytes == len(stored)
    assert writer.sha256 == hashlib.sha256(stored).hexdigest()
    assert b"".join(decompressed(read_chunks(io.BytesIO(stored), read_size), spec.algorithm)) == data


def test_stored_bytes_restore_with_standard_tools():
    zst, _ = compress(DATA, CompressionSpec(algorithm="zstd"))
    gz, _ = compress(DATA, CompressionSpec(algorithm="gzip"))
    raw, _ = compress(DATA, CompressionSpec(algorithm="none"))
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(zst)).read() == DATA
    assert gzip.decompress(gz) == DATA
    assert raw == DATA
    assert len(zst) < len(DATA) and len(gz) < len(DATA)


@pytest.mark.parametrize("level, xfl", [(1, 4), (6, 0), (9, 2)])
def test_gzip_uses_the_configured_level(level, xfl):
    stored, _ = compress(b"x" * 1000, CompressionSpec(algorithm="gzip", level=level))
    assert stored[8] == xfl  # gzip's XFL byte: 4 fastest, 2 best, 0 otherwise


@pytest.mark.parametrize("algorithm", ["zstd", "gzip", "none"])
def test_empty_input_round_trips(algorithm):
    stored, writer = compress(b"", CompressionSpec(algorithm=algorithm))
    assert writer.raw_bytes == 0
    assert writer.bytes == len(stored)
    assert (len(stored) > 0) is (algorithm != "none")
    assert b"".join(decompressed([stored], algorithm)) == b""


def test_several_zstd_frames_decompress_as_one_stream():
    first, _ = compress(b"first frame|", CompressionSpec(algorithm="zstd"))
    second, _ = compress(b"second frame", CompressionSpec(algorithm="zstd"))
    assert b"".join(decompressed(read_chunks(io.BytesIO(first + second), 7), "zstd")) == b"first frame|second frame"


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=5000), chunk=st.integers(1, 700), algorithm=st.sampled_from(["zstd", "gzip", "none"]))
def test_round_trip_any_data_any_chunking(data, chunk, algorithm):
    stored, writer = compress(data, CompressionSpec(algorithm=algorithm), chunk=chunk)
    assert writer.sha256 == hashlib.sha256(stored).hexdigest()
    assert b"".join(decompressed(read_chunks(io.BytesIO(stored), chunk), algorithm)) == data


CUTS = {"half": lambda n: n // 2, "last-byte": lambda n: n - 1, "10-bytes": lambda n: 10, "empty": lambda n: 0}


@pytest.mark.parametrize("cut", CUTS.values(), ids=CUTS.keys())
def test_truncated_gzip_is_an_error(cut):
    stored, _ = compress(DATA, CompressionSpec(algorithm="gzip"))
    end = cut(len(stored))
    with pytest.raises(EOFError, match=r"^compressed stream ends early \(truncated gzip data\)$"):
        b"".join(decompressed(read_chunks(io.BytesIO(stored[:end]), 4096), "gzip"))


@pytest.mark.parametrize("cut", CUTS.values(), ids=CUTS.keys())
def test_truncated_zstd_is_an_error(cut):
    stored, _ = compress(DATA, CompressionSpec(algorithm="zstd"))
    end = cut(len(stored))
    with pytest.raises((EOFError, zstandard.ZstdError)):
        b"".join(decompressed(read_chunks(io.BytesIO(stored[:end]), 4096), "zstd"))


def test_corrupt_zstd_is_an_error():
    stored, _ = compress(DATA, CompressionSpec(algorithm="zstd"))
    with pytest.raises(zstandard.ZstdError, match="Unknown frame descriptor"):
        b"".join(decompressed([stored, b"garbage after the frame"], "zstd"))


def test_restore_outcomes_survive_listing_and_cleaning(tmp_path):
    from dockvault.api import RestoreRequestStatus

    repo = LocalRepository(tmp_path)
    status = RestoreRequestStatus(phase="Succeeded", backup="20261121T030000Z", message="restored")
    assert repo.restore_outcome("bring-back", "abc123") is None
    repo.save_restore("bring-back", "abc123", status)
    repo.clean_temporaries("bring-back")
    assert repo.policies() == []
    assert repo.restore_outcome("bring-back", "abc123") == status
    assert repo.restore_outcome("bring-back", "other") is None
