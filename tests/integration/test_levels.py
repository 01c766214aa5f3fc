"""Differential and incremental volume backups on the real engine: every point in time restores exactly.

Between levels the source changes in every way a volume can (files added, modified, deleted and renamed,
modes changed, a symlink retargeted, an empty directory removed, a directory renamed); each backup is then
restored into a new volume and compared path by path (content, mode, owner, mtime, link target) with what
the volume held when it was taken.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dockvault.actions.backup import run_backup
from dockvault.actions.drill import run_drill
from dockvault.actions.restore import run_restore
from dockvault.storage.local import LocalRepository
from tests.integration.test_volume_jobs import policy, restore_request
from tests.treecheck import populate_volume, snapshot_volume, volume_path

pytestmark = pytest.mark.docker


def change_once(root: Path) -> None:
    (root / "new-upload.jpg").write_bytes(os.urandom(200_000))
    (root / "text" / "d1" / "e1" / "note-1.txt").write_text("edited\n")
    os.remove(root / "text" / "d2" / "e2" / "note-2.txt")
    os.rename(root / "text" / "d3" / "e3" / "note-3.txt", root / "text" / "d3" / "e3" / "renamed.txt")
    os.chmod(root / "script.sh", 0o700)
    os.remove(root / "link-rel")
    os.symlink("bin/blob1.bin", root / "link-rel")
    os.rmdir(root / "empty-dir" / "nested-empty")
    os.chown(root / "empty-file", 1234, 5678)


def change_twice(root: Path) -> None:
    os.rename(root / "text" / "d4", root / "text" / "d4-moved")  # a directory renamed (GNU tar's R/T records)
    shutil.rmtree(root / "text" / "d5")
    (root / "fresh" / "deeper").mkdir(parents=True)
    (root / "fresh" / "deeper" / "a.txt").write_text("second day\n")
    os.remove(root / "new-upload.jpg")
    (root / "bin" / "blob2.bin").write_bytes(b"rewritten")


@pytest.mark.parametrize("mode", ["differential", "incremental", "incremental-remote"])
def test_every_point_in_time_restores_exactly(docker_client, engine, volumes, repo_dir, mode, monkeypatch,
                                              test_image):
    if mode.endswith("-remote"):  # as on a remote engine: the helpers compress and decompress, the chain included
        from dockvault.engine.core import Engine

        mode = mode.removesuffix("-remote")
        monkeypatch.setattr(Engine, "remote", property(lambda self: True))
        engine = Engine(docker_client, helper_image=test_image, transport="api")
    source = volumes("lvl")
    populate_volume(docker_client, source, megabytes=4)
    root = volume_path(docker_client, source)
    pol = policy("lvl", source, repo_dir, schedule="30 17 * * 0", **{mode: {"schedule": "45 17 * * *"}})
    repo = LocalRepository(repo_dir)
    states, records = [], []
    for step, change in enumerate([None, change_once, change_twice]):
        if change is not None:
            change(root)
        states.append(snapshot_volume(docker_client, source))
        outcome = run_backup(pol, engine=engine, repository=repo, level="full" if step == 0 else mode)
        assert outcome.succeeded, outcome.record.status.message
        records.append(outcome.record)

    full, first, second = records
    assert (full.level, full.base) == ("full", None)
    assert (first.level, first.base) == (mode, full.id)
    assert (second.level, second.base) == (mode, full.id if mode == "differential" else first.id)
    assert {a.role for a in full.status.artifacts} == {None, "snapshot"}  # the archive and tar's snapshot file
    assert first.artifact("data").raw_bytes < full.artifact("data").raw_bytes / 5  # the changes, not the volume

    for point, (record, expected) in enumerate(zip(records, states)):
        # into a new volume, and over a volume holding other data (which must be gone afterwards)
        fresh, used = volumes(f"at{point}"), volumes(f"over{point}")
        result = run_restore(restore_request("lvl", fresh, backup=record.id), pol, engine=engine, repository=repo)
        assert result.succeeded, result.status.message
        assert snapshot_volume(docker_client, fresh) == expected, f"backup {record.id} ({record.level})"
        docker_client.volumes.create(used)
        (volume_path(docker_client, used) / "stale-file").write_text("must not survive the restore\n")
        result = run_restore(restore_request("lvl", used, backup=record.id, overwrite=True), pol, engine=engine,
                             repository=repo)
        assert result.succeeded, result.status.message
        assert snapshot_volume(docker_client, used) == expected, f"backup {record.id} over existing data"

    drill = run_drill(pol, engine=engine, repository=repo)
    assert drill.succeeded, drill.drill.message
    assert "restored a chain of" in drill.drill.message


def test_a_lost_or_corrupt_snapshot_file_makes_the_next_run_a_full(docker_client, engine, volumes, repo_dir):
    source = volumes("snarloss")
    populate_volume(docker_client, source, megabytes=1)
    pol = policy("snar", source, repo_dir, differential={"schedule": "45 17 * * *"})
    repo = LocalRepository(repo_dir)
    full = run_backup(pol, engine=engine, repository=repo).record
    snar = repo_dir / "snar" / full.id / full.snapshot("data").file
    snar.write_bytes(snar.read_bytes()[:-3] + b"abc")  # corrupt: the manifest's sha256 no longer matches
    outcome = run_backup(pol, engine=engine, repository=repo, level="differential")
    assert outcome.succeeded, outcome.record.status.message
    assert (outcome.record.level, outcome.record.base) == ("full", None)
    assert "snapshot file of base backup" in outcome.record.status.message
    assert full.id in outcome.record.status.message and "full" in outcome.record.status.message

    # lost altogether: the manifest names a file that is gone
    newest = outcome.record
    os.remove(repo_dir / "snar" / newest.id / newest.snapshot("data").file)
    again = run_backup(pol, engine=engine, repository=repo, level="differential")
    assert again.succeeded and again.record.level == "full"
    assert newest.id in again.record.status.message


def test_a_differential_without_a_full_takes_a_full_and_says_so(docker_client, engine, volumes, repo_dir):
    source = volumes("nofull")
    populate_volume(docker_client, source, megabytes=1)
    pol = policy("nofull", source, repo_dir)  # no levels declared: plain fulls, no snapshot files
    repo = LocalRepository(repo_dir)
    plain = run_backup(pol, engine=engine, repository=repo).record
    assert plain.spec.level is None and plain.snapshot("data") is None
    outcome = run_backup(pol, engine=engine, repository=repo, level="differential")
    assert outcome.succeeded
    assert outcome.record.level == "full" and "no snapshot file" in outcome.record.status.message
    then = run_backup(pol, engine=engine, repository=repo, level="incremental")
    assert (then.record.level, then.record.base) == ("incremental", outcome.record.id)


def test_encrypted_chains_need_the_identity_to_build_on_a_base(docker_client, engine, volumes, repo_dir, tmp_path):
    """The snapshot file is encrypted like the archive: a differential reads it with identityFrom; a policy that
    only has the recipients (a backup host without the private key) takes fulls and says why."""
    import pyrage

    source, back = volumes("agelvl"), volumes("agelvl-back")
    populate_volume(docker_client, source, megabytes=1)
    identity = pyrage.x25519.Identity.generate()
    key = tmp_path / "key.txt"
    key.write_text(str(identity) + "\n")
    age = {"recipients": [str(identity.to_public())]}
    keyed = policy("agelvl", source, repo_dir, differential={"schedule": "45 17 * * *"},
                   encryption={"age": {**age, "identityFrom": {"file": str(key)}}})
    repo = LocalRepository(repo_dir)
    full = run_backup(keyed, engine=engine, repository=repo).record
    assert {a.file for a in full.status.artifacts} == {"data.tar.zst.age", "data.snar.zst.age"}
    stored = (repo_dir / "agelvl" / full.id / "data.snar.zst.age").read_bytes()
    assert stored.startswith(b"age-encryption.org/v1") and b"blob0" not in stored  # no file names in the clear
    (volume_path(docker_client, source) / "new.txt").write_text("after the full\n")
    diff = run_backup(keyed, engine=engine, repository=repo, level="differential").record
    assert (diff.level, diff.base) == ("differential", full.id)
    result = run_restore(restore_request("agelvl", back), keyed, engine=engine, repository=repo)
    assert result.succeeded, result.status.message
    assert snapshot_volume(docker_client, back) == snapshot_volume(docker_client, source)

    unkeyed = policy("agelvl", source, repo_dir, differential={"schedule": "45 17 * * *"}, encryption={"age": age})
    blind = run_backup(unkeyed, engine=engine, repository=repo, level="differential").record
    assert blind.level == "full" and "identityFrom" in blind.status.message


def test_a_differential_never_builds_on_another_hosts_full(docker_client, engine, volumes, repo_dir):
    """Two hosts, one repository and one policy name (migration, or a shared bucket): each chain stays its own."""
    source = volumes("hosts")
    populate_volume(docker_client, source, megabytes=1)
    repo = LocalRepository(repo_dir)
    host_a = policy("hosts", source, repo_dir, host="a", differential={"schedule": "45 17 * * *"})
    host_b = policy("hosts", source, repo_dir, host="b", differential={"schedule": "45 17 * * *"})
    full_a = run_backup(host_a, engine=engine, repository=repo).record
    diff_b = run_backup(host_b, engine=engine, repository=repo, level="differential").record
    assert diff_b.level == "full" and "no full backup yet" in diff_b.status.message
    diff_a = run_backup(host_a, engine=engine, repository=repo, level="differential").record
    assert (diff_a.level, diff_a.base) == ("differential", full_a.id)
