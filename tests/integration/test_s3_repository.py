"""The S3 repository against a real S3 server (SeaweedFS on 127.0.0.1, started by the `s3_server` fixture)."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta

import pytest
import zstandard

from dockvault.api import Backup, BackupPolicy, RestoreRequest
from dockvault.api.policy import S3Storage
from dockvault.storage import repository_for
from dockvault.storage import s3 as s3_module
from dockvault.storage.base import MANIFEST, StorageError, manifest_chunks
from dockvault.storage.s3 import FIRST_PART, INDEX, INDEX_LIMIT, MAX_PARTS, S3Repository, part_size

MIB = 1 << 20


def s3_policy(server, bucket: str, volume: str = "data-vol", **spec) -> BackupPolicy:
    return BackupPolicy.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "offsite"},
        "spec": {"targets": [{"name": "data", "volume": {"name": volume}}],
                 "storage": server.storage(bucket, prefix="host-a"), **spec}})


def record(policy: str, backup_id: str, artifacts: list[dict] | None = None) -> Backup:
    at = datetime(2026, 11, 20, 3, tzinfo=UTC)
    return Backup.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "Backup", "metadata": {"name": f"{policy}-{backup_id.lower()}"},
        "spec": {"policy": policy, "id": backup_id, "trigger": "schedule"},
        "status": {"phase": "Succeeded", "startedAt": at.isoformat(), "completedAt": (at + timedelta(seconds=1)).isoformat(),
                   "artifacts": artifacts or []}})


def keys(server, bucket: str, index: bool = False) -> list[str]:
    """Every key in `bucket`; the listing index (.index.json.zst, see the index tests) only when `index`."""
    return sorted(o["Key"] for page in server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
                  for o in page.get("Contents", []) if index or not o["Key"].endswith(f"/{INDEX}"))


def test_part_sizes_reach_5_tib_within_10000_parts():
    sizes = [part_size(n) for n in range(1, MAX_PARTS + 1)]
    assert sizes[0] == FIRST_PART >= 5 * MIB and max(sizes) <= 5 << 30  # S3's limits per part
    assert sum(sizes) >= 5 << 40
    assert sum(sizes[:999]) >= 7 << 30  # everything up to 7 GiB in 8 MiB parts: flat memory


def test_artifacts_stream_up_and_the_manifest_makes_the_backup(s3_server, s3_env):
    bucket = s3_server.bucket()
    repo = repository_for(s3_policy(s3_server, bucket))
    assert isinstance(repo, S3Repository) and repo.location == f"s3://{bucket}/host-a at {s3_server.endpoint}"
    data = os.urandom(3 * FIRST_PART + 12345)  # four parts of a multipart upload
    writer = repo.begin("offsite", "20261120T030000Z")
    with writer.artifact("data.tar.zst") as out:
        for start in range(0, len(data), MIB):
            out.write(data[start:start + MIB])
    with writer.artifact("small.sql") as out:
        out.write(b"select 1;\n")
    assert repo.backups("offsite") == []  # no manifest yet: not a backup
    writer.commit(record("offsite", "20261120T030000Z"))
    assert [b.id for b in repo.backups("offsite")] == ["20261120T030000Z"]
    assert keys(s3_server, bucket) == [f"host-a/offsite/20261120T030000Z/{n}"
                                       for n in ("data.tar.zst", "manifest.json", "small.sql")]
    with repo.open_artifact("offsite", "20261120T030000Z", "data.tar.zst") as stream:
        assert hashlib.sha256(stream.read()).digest() == hashlib.sha256(data).digest()
    assert repo.policies() == ["offsite"]

    repo.delete("offsite", "20261120T030000Z")
    assert repo.backups("offsite") == [] and keys(s3_server, bucket) == []


def test_a_failed_artifact_leaves_no_object_and_no_upload(s3_server, s3_env):
    bucket = s3_server.bucket()
    repo = repository_for(s3_policy(s3_server, bucket))
    writer = repo.begin("offsite", "20261120T030000Z")
    with pytest.raises(RuntimeError, match="the stream broke"):
        with writer.artifact("data.tar.zst") as out:
            out.write(os.urandom(2 * FIRST_PART + 1))
            raise RuntimeError("the stream broke")
    writer.abort()
    assert keys(s3_server, bucket) == []
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_start_up_cleaning_aborts_uploads_and_removes_folders_without_a_manifest(s3_server, s3_env):
    """What a killed dockvault leaves: an open multipart upload and artifacts without a manifest."""
    bucket = s3_server.bucket()
    client = s3_server.client()
    repo = repository_for(s3_policy(s3_server, bucket))
    done = repo.begin("offsite", "20261119T030000Z")
    with done.artifact("data.tar.zst") as out:
        out.write(b"complete")
    done.commit(record("offsite", "20261119T030000Z"))
    repo.begin("offsite", "20261120T030000Z")  # the killed run: its folder is marked unfinished
    killed = client.create_multipart_upload(Bucket=bucket, Key="host-a/offsite/20261120T030000Z/data.tar.zst")
    client.upload_part(Bucket=bucket, Key="host-a/offsite/20261120T030000Z/data.tar.zst", PartNumber=1,
                       UploadId=killed["UploadId"], Body=b"x" * FIRST_PART)
    client.put_object(Bucket=bucket, Key="host-a/offsite/20261120T030000Z/db.sql", Body=b"half")
    other = client.create_multipart_upload(Bucket=bucket, Key="host-a/another/20261120T030000Z/x")
    client.put_object(Bucket=bucket, Key="host-a/offsite/20261118T030000Z/data.tar.zst", Body=b"manifest lost")

    removed = repo.clean_temporaries("offsite")

    assert len(removed) == 2 and any("multipart" in r for r in removed)
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [other["UploadId"]]  # another policy's upload is not ours
    assert keys(s3_server, bucket) == ["host-a/offsite/20261118T030000Z/data.tar.zst",  # kept: no unfinished mark
                                       "host-a/offsite/20261119T030000Z/data.tar.zst",
                                       "host-a/offsite/20261119T030000Z/manifest.json"]


def test_listing_reads_each_manifest_once(s3_server, s3_env):
    """A second listing costs only ListObjectsV2 pages: manifests are immutable, cached by key and ETag."""
    bucket = s3_server.bucket()
    client = s3_server.client()
    ids = [f"202611{day:02d}T{hour:02d}0000Z" for day in range(1, 26) for hour in range(0, 24, 4)]
    for backup_id in ids:
        client.put_object(Bucket=bucket, Key=f"host-a/offsite/{backup_id}/manifest.json",
                          Body=record("offsite", backup_id).model_dump_json(by_alias=True).encode())
    repo = S3Repository(S3Storage.model_validate(s3_server.storage(bucket, prefix="host-a")["s3"]), client=client)
    calls: list[str] = []
    client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    assert [b.id for b in repo.backups("offsite")] == ids
    assert calls.count("GetObject") == len(ids) + 1  # and the index, not there yet
    calls.clear()
    assert [b.id for b in repo.backups("offsite")] == ids
    assert set(calls) == {"ListObjectsV2"}


@pytest.mark.parametrize("wrong", ["access", "secret"])
def test_wrong_credentials_are_a_clear_error_that_does_not_echo_them(s3_server, monkeypatch, wrong):
    bucket = s3_server.bucket()
    bad_key, bad_secret = "AKNOTAKEY0000", "not-the-secret-value-123"
    monkeypatch.setenv("DV_TEST_S3_KEY", bad_key if wrong == "access" else s3_server.access_key)
    monkeypatch.setenv("DV_TEST_S3_SECRET", bad_secret if wrong == "secret" else s3_server.secret_key)
    repo = repository_for(s3_policy(s3_server, bucket))
    with pytest.raises(StorageError) as caught:
        repo.backups("offsite")
    message = str(caught.value)
    assert "check storage.s3.credentials" in message and not caught.value.temporary
    for secret in (bad_key, bad_secret, s3_server.secret_key):
        assert secret not in message


def test_a_missing_bucket_and_an_unreachable_endpoint_name_their_cause(s3_server, s3_env):
    repo = repository_for(s3_policy(s3_server, "no-such-bucket-here"))
    with pytest.raises(StorageError, match="the bucket does not exist"):
        repo.backups("offsite")
    spec = s3_server.storage("bucket-1")["s3"] | {"endpoint": "http://127.0.0.1:9"}  # discard port: nobody listens
    down = S3Repository(S3Storage.model_validate(spec))
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint") as caught:
        down.backups("offsite")
    assert caught.value.temporary


def test_restore_outcomes_are_kept_beside_the_backups(s3_server, s3_env):
    from dockvault.api.restore import RestoreRequestStatus

    repo = repository_for(s3_policy(s3_server, s3_server.bucket()))
    assert repo.restore_outcome("bring-back", "abc") is None
    repo.save_restore("bring-back", "abc", RestoreRequestStatus(phase="Succeeded", backup="20261120T030000Z"))
    assert repo.restore_outcome("bring-back", "abc").backup == "20261120T030000Z"
    assert repo.policies() == []  # .restores is not a policy


def indexed_repository(server, bucket: str, count: int) -> tuple[S3Repository, list[str]]:
    """`count` backups of policy offsite written straight into the bucket, and a repository over them."""
    client = server.client()
    ids = [f"2026112{n // 10}T03{n % 10}000Z" for n in range(count)]
    for backup_id in ids:
        client.put_object(Bucket=bucket, Key=f"host-a/offsite/{backup_id}/{MANIFEST}",
                          Body=b"".join(manifest_chunks(record("offsite", backup_id))))
    return repository_for(s3_policy(server, bucket)), ids


def gets(repo: S3Repository) -> list[str]:
    """The keys `repo` GETs from now on."""
    seen: list[str] = []
    repo.client.meta.events.register("before-parameter-build.s3.GetObject", lambda params, **_: seen.append(params["Key"]))
    return seen


def fresh_process() -> None:
    s3_module._listings.clear()


def read_index(server, bucket: str) -> dict:
    body = server.client().get_object(Bucket=bucket, Key=f"host-a/offsite/{INDEX}")["Body"].read()
    return json.loads(zstandard.ZstdDecompressor().decompress(body))["manifests"]


def test_the_index_lists_a_fresh_process_with_one_get_and_a_warm_one_with_none(s3_server, s3_env):
    bucket = s3_server.bucket()
    repo, ids = indexed_repository(s3_server, bucket, 12)
    first = gets(repo)
    assert [b.id for b in repo.backups("offsite")] == ids
    assert sorted(first) == sorted([f"host-a/offsite/{INDEX}", *(f"host-a/offsite/{i}/{MANIFEST}" for i in ids)])
    assert sorted(read_index(s3_server, bucket)) == ids
    assert repo.policies() == ["offsite"] and sorted(repo.stored_files("offsite")) == ids  # the index is neither
    assert repo.clean_temporaries("offsite") == [] and f"host-a/offsite/{INDEX}" in keys(s3_server, bucket, index=True)

    fresh_process()
    cold = repository_for(s3_policy(s3_server, bucket))
    seen = gets(cold)
    assert cold.backups("offsite") == repo.backups("offsite")
    assert seen == [f"host-a/offsite/{INDEX}"]
    seen.clear()
    assert [b.id for b in cold.backups("offsite")] == ids and seen == []  # warm: the listing only


def test_a_replaced_manifest_is_read_again_and_a_deleted_backup_leaves_the_listing(s3_server, s3_env):
    bucket = s3_server.bucket()
    repo, ids = indexed_repository(s3_server, bucket, 5)
    repo.backups("offsite")
    changed = record("offsite", ids[1]).model_copy(update={"spec": record("offsite", ids[1]).spec.model_copy(
        update={"trigger": "manual"})})
    s3_server.client().put_object(Bucket=bucket, Key=f"host-a/offsite/{ids[1]}/{MANIFEST}",
                                  Body=b"".join(manifest_chunks(changed)))
    repo.delete("offsite", ids[3])

    for fresh in (False, True):  # the same process, and a fresh one
        if fresh:
            fresh_process()
        cold = repository_for(s3_policy(s3_server, bucket))
        seen = gets(cold)
        listed = cold.backups("offsite")
        assert [b.id for b in listed] == [i for i in ids if i != ids[3]]
        assert [b.spec.trigger for b in listed] == ["schedule", "manual", "schedule", "schedule"]
        # the replaced manifest is read again, once; then the rewritten index holds it
        assert seen == [f"host-a/offsite/{INDEX}"] + ([] if fresh else [f"host-a/offsite/{ids[1]}/{MANIFEST}"])
    index = read_index(s3_server, bucket)
    assert sorted(index) == [i for i in ids if i != ids[3]] and '"manual"' in index[ids[1]]["manifest"]

    for backup_id in ids:
        if backup_id != ids[3]:
            repo.delete("offsite", backup_id)
    assert repo.backups("offsite") == [] and keys(s3_server, bucket, index=True) == []  # the index goes too


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not json", "swapped", "wrong etag", "huge frame"])
def test_a_corrupt_index_is_ignored_and_rebuilt(s3_server, s3_env, damage, caplog):
    bucket = s3_server.bucket()
    repo, ids = indexed_repository(s3_server, bucket, 4)
    expected = repo.backups("offsite")
    key = f"host-a/offsite/{INDEX}"
    client = s3_server.client()
    good = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    entries = read_index(s3_server, bucket)
    compress = zstandard.ZstdCompressor().compress
    if damage == "swapped":  # each entry well-formed, with its ETag, but another backup's manifest
        entries[ids[0]]["manifest"], entries[ids[2]]["manifest"] = entries[ids[2]]["manifest"], entries[ids[0]]["manifest"]
    elif damage == "wrong etag":  # an entry whose manifest is not the one its ETag names
        entries[ids[1]]["manifest"] = entries[ids[1]]["manifest"].replace('"schedule"', '"manual"')
    body = {"garbage": os.urandom(500), "truncated": good[:len(good) // 2], "not json": compress(b"{'manifests': 1"),
            "swapped": compress(json.dumps({"manifests": entries}).encode()),
            "wrong etag": compress(json.dumps({"manifests": entries}).encode()),
            "huge frame": zstandard.ZstdCompressor().compress(b" " * (INDEX_LIMIT + 1))}[damage]
    client.put_object(Bucket=bucket, Key=key, Body=body)

    fresh_process()
    cold = repository_for(s3_policy(s3_server, bucket))
    assert cold.backups("offsite") == expected
    fresh_process()
    seen = gets(cold)
    assert cold.backups("offsite") == expected and seen == [key]  # rebuilt: one GET again
    assert sorted(read_index(s3_server, bucket)) == ids


@pytest.mark.docker
def test_volume_backup_to_s3_and_restore_from_it(s3_server, s3_env, docker_client, engine, volumes):
    """A real volume through the real engine into the bucket, destroyed, restored and compared."""
    from dockvault.actions.backup import run_backup
    from dockvault.actions.restore import run_restore
    from tests.treecheck import populate_volume, snapshot_volume

    source = volumes("s3-src")
    populate_volume(docker_client, source, megabytes=30)
    before = snapshot_volume(docker_client, source)
    bucket = s3_server.bucket()
    policy = s3_policy(s3_server, bucket, volume=source)
    outcome = run_backup(policy, engine=engine, repository=repository_for(policy))
    assert outcome.succeeded, outcome.record.status.message
    (artifact,) = outcome.record.status.artifacts
    body = s3_server.client().get_object(Bucket=bucket, Key=f"host-a/offsite/{outcome.record.id}/{artifact.file}")
    stored = body["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == artifact.sha256 and len(stored) == artifact.bytes

    docker_client.volumes.get(source).remove(force=True)
    request = RestoreRequest.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "RestoreRequest", "metadata": {"name": "from-s3"},
        "spec": {"policy": "offsite", "targets": [{"from": "data", "volume": {"name": source}}]}})
    result = run_restore(request, policy, engine=engine, repository=repository_for(policy))
    assert result.succeeded, result.status.message
    assert snapshot_volume(docker_client, source) == before
