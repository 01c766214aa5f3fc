"""age encryption end to end: a real volume through the real engine into S3 (SeaweedFS), encrypted before it
leaves dockvault; the objects hold no plaintext; restored by dockvault and by hand with the `age` CLI."""

from __future__ import annotations

import shutil
import subprocess

import pyrage
import pytest

from dockvault.actions.backup import run_backup
from dockvault.actions.drill import run_drill
from dockvault.actions.restore import run_restore
from dockvault.api import BackupPolicy, RestoreRequest
from dockvault.storage import repository_for
from tests.treecheck import populate_volume, snapshot_volume, volume_path

pytestmark = pytest.mark.docker

MARKER = b"dockvault-plaintext-marker-" * 8


@pytest.fixture
def age_key(tmp_path):
    identity = pyrage.x25519.Identity.generate()
    key = tmp_path / "key.txt"
    key.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
    key.chmod(0o600)
    return str(identity.to_public()), key


def encrypted_policy(server, bucket: str, volume: str, recipient: str, key=None) -> BackupPolicy:
    age = {"recipients": [recipient], **({"identityFrom": {"file": str(key)}} if key else {})}
    return BackupPolicy.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "secret"},
        "spec": {"targets": [{"name": "data", "volume": {"name": volume}}], "storage": server.storage(bucket),
                 "encryption": {"age": age}, "drill": {}}})


def restore_request(volume: str) -> RestoreRequest:
    return RestoreRequest.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "RestoreRequest", "metadata": {"name": "back"},
        "spec": {"policy": "secret", "targets": [{"from": "data", "volume": {"name": volume}}]}})


def test_encrypted_backup_restores_with_the_key_and_by_hand(s3_server, s3_env, docker_client, engine, volumes,
                                                           age_key, tmp_path):
    recipient, key = age_key
    source, restored = volumes("enc-src"), volumes("enc-dst")
    populate_volume(docker_client, source, megabytes=5)
    (volume_path(docker_client, source) / "marker.txt").write_bytes(MARKER * 100)
    before = snapshot_volume(docker_client, source)
    bucket = s3_server.bucket()
    policy = encrypted_policy(s3_server, bucket, source, recipient, key)

    outcome = run_backup(policy, engine=engine, repository=repository_for(policy))
    assert outcome.succeeded, outcome.record.status.message
    (artifact,) = outcome.record.status.artifacts
    assert artifact.file == "data.tar.zst.age" and artifact.encryption == "age" and artifact.recipients == [recipient]
    client = s3_server.client()
    for item in client.list_objects_v2(Bucket=bucket)["Contents"]:
        body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        assert MARKER[:32] not in body and str(key.read_text().splitlines()[1]).encode() not in body
    stored = client.get_object(Bucket=bucket, Key=f"secret/{outcome.record.id}/{artifact.file}")["Body"].read()
    assert stored.startswith(b"age-encryption.org/v1\n")

    # by hand, as the README shows: age -d -i key.txt < data.tar.zst.age | zstd -d | tar -x
    if shutil.which("age") and shutil.which("zstd"):
        (tmp_path / "data.tar.zst.age").write_bytes(stored)
        out = tmp_path / "by-hand"
        out.mkdir()
        subprocess.run(f"age -d -i {key} < data.tar.zst.age | zstd -d | tar -x -C {out}", shell=True, check=True,
                       cwd=tmp_path)
        assert (out / "marker.txt").read_bytes() == MARKER * 100

    result = run_restore(restore_request(restored), policy, engine=engine, repository=repository_for(policy))
    assert result.succeeded, result.status.message
    assert snapshot_volume(docker_client, restored) == before
    drill = run_drill(policy, engine=engine, repository=repository_for(policy))
    assert drill.succeeded, drill.drill.message


def test_a_restore_without_the_identity_fails_clearly_and_creates_nothing(s3_server, s3_env, docker_client, engine,
                                                                         volumes, age_key):
    recipient, key = age_key
    source, restored = volumes("enc-nokey"), volumes("enc-nokey-dst")
    populate_volume(docker_client, source, megabytes=1)
    bucket = s3_server.bucket()
    with_key = encrypted_policy(s3_server, bucket, source, recipient, key)
    assert run_backup(with_key, engine=engine, repository=repository_for(with_key)).succeeded
    without = encrypted_policy(s3_server, bucket, source, recipient)

    result = run_restore(restore_request(restored), without, engine=engine, repository=repository_for(without))
    assert result.status.phase == "Failed"
    assert "encrypted with age; give the identity (spec.encryption.age.identityFrom)" in result.status.message
    assert restored not in [v.name for v in docker_client.volumes.list()]
    drill = run_drill(without, engine=engine, repository=repository_for(without))
    assert not drill.succeeded and "give the identity" in drill.drill.message

    other = pyrage.x25519.Identity.generate()
    key.write_text(f"{other}\n")  # the wrong key
    result = run_restore(restore_request(restored), with_key, engine=engine, repository=repository_for(with_key))
    assert result.status.phase == "Failed" and "no matching identity" in result.status.message
    assert str(other) not in result.status.message
    assert restored not in [v.name for v in docker_client.volumes.list()]
