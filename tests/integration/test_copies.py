"""3-2-1 copies against the real engine and a real S3 server (SeaweedFS): copied, verified, caught up after an
outage, pruned per destination, and used by restores when the primary cannot serve."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockvault.actions.backup import run_backup
from dockvault.actions.copy import sync_copies
from dockvault.actions.restore import run_restore
from dockvault.api import BackupPolicy, RestoreRequest
from dockvault.controller.status import copies_condition
from dockvault.storage import repository_for
from tests.treecheck import populate_volume, snapshot_volume

pytestmark = pytest.mark.docker


def copied_policy(server, bucket: str, volume: str, primary: Path, usb: Path, **offsite) -> BackupPolicy:
    return BackupPolicy.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "three"},
        "spec": {"targets": [{"name": "data", "volume": {"name": volume}}],
                 "storage": {"local": {"path": str(primary)}},
                 "copies": [{"name": "offsite", **server.storage(bucket), **offsite},
                            {"name": "usb", "local": {"path": str(usb)}, "retention": {"keepLast": 1}}]}})


def restore_request(volume: str, **spec) -> RestoreRequest:
    return RestoreRequest.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "RestoreRequest", "metadata": {"name": "back"},
        "spec": {"policy": "three", "targets": [{"from": "data", "volume": {"name": volume}}], **spec}})


def backup_ids(repository, policy="three") -> list[str]:
    return [b.id for b in repository.backups(policy)]


def test_copies_catch_up_after_an_outage_and_serve_restores(s3_server, s3_env, docker_client, engine, volumes,
                                                            tmp_path):
    source = volumes("copy-src")
    populate_volume(docker_client, source, megabytes=3)
    before = snapshot_volume(docker_client, source)
    primary_dir, usb_dir = tmp_path / "primary", tmp_path / "usb"
    policy = copied_policy(s3_server, s3_server.bucket(), source, primary_dir, usb_dir)
    primary = repository_for(policy)
    offsite, usb = (repository_for(c) for c in policy.spec.copies)

    first = run_backup(policy, engine=engine, repository=primary)
    assert first.succeeded, first.record.status.message
    outcomes = sync_copies(policy, primary)
    assert [o.status.phase for o in outcomes] == ["Succeeded", "Succeeded"]
    assert backup_ids(offsite) == backup_ids(usb) == [first.record.id]
    assert offsite.backups("three")[0] == first.record  # the same manifest, written last there too

    # S3 is away: the backup still succeeds, the offsite copy fails and says so; the local copy goes on
    s3_server.stop()
    try:
        second = run_backup(policy, engine=engine, repository=primary)
        assert second.succeeded
        failed, fine = sync_copies(policy, primary, previous=[o.status for o in outcomes])
    finally:
        s3_server.start()
    assert failed.status.phase == "Failed" and "copy offsite: " in failed.status.message
    assert failed.status.newest_backup == first.record.id  # what it held at its last good sync
    assert fine.succeeded and backup_ids(usb) == [second.record.id]  # keepLast: 1 on this destination
    condition = copies_condition(policy.spec.copies, [failed.status, fine.status], primary.backups("three")[-1])
    assert (condition.status, condition.reason) == ("False", "CopyFailed")

    # the next sync catches up
    third = run_backup(policy, engine=engine, repository=primary)
    caught_up = sync_copies(policy, primary, previous=[failed.status, fine.status])
    assert all(o.succeeded for o in caught_up)
    assert backup_ids(offsite) == [first.record.id, second.record.id, third.record.id]
    assert caught_up[0].copied == [third.record.id, second.record.id]  # newest first
    condition = copies_condition(policy.spec.copies, [o.status for o in caught_up], primary.backups("three")[-1])
    assert condition.status == "True"

    # the primary's artifact is corrupt: the restore falls back to the first copy that verifies
    (artifact,) = third.record.status.artifacts
    stored = primary_dir / "three" / third.record.id / artifact.file
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    restored = volumes("copy-dst")
    result = run_restore(restore_request(restored), policy, engine=engine, repository=primary)
    assert result.succeeded, result.status.message
    assert result.status.source == "offsite" and "of copy offsite" in result.status.message
    assert snapshot_volume(docker_client, restored) == before

    # spec.source names the repository; the primary alone now refuses before touching anything
    only_primary = run_restore(restore_request(volumes("copy-none"), source="primary"), policy, engine=engine,
                               repository=primary)
    assert only_primary.status.phase == "Failed" and "is corrupt" in only_primary.status.message
    from_usb = run_restore(restore_request(volumes("copy-usb"), source="usb"), policy, engine=engine,
                           repository=primary)
    assert from_usb.succeeded and from_usb.status.source == "usb"
    unknown = run_restore(restore_request(volumes("copy-x"), source="tape"), policy, engine=engine, repository=primary)
    assert "spec.source: policy 'three' has no repository 'tape' (it has: primary, offsite, usb)" in unknown.status.message
