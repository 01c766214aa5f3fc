"""Object Lock refusals, with botocore's Stubber standing in for S3: the SeaweedFS used by the other tests
does not refuse deletes under Object Lock (a delete without a version id only adds a delete marker, on AWS too),
so the refusal an S3 server sends (DeleteObjects answering AccessDenied per key) is stubbed here."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from dockvault.api.policy import S3Storage
from dockvault.storage.base import DeleteRefused, StorageError
from dockvault.storage.s3 import S3Repository

MANIFEST_KEY = "host-a/p/20261120T030000Z/manifest.json"


def stubbed() -> tuple[S3Repository, Stubber]:
    client = boto3.session.Session().client("s3", region_name="us-east-1", aws_access_key_id="AKTEST",
                                            aws_secret_access_key="secret-test")
    repo = S3Repository(S3Storage(bucket="backups", prefix="host-a"), client=client)
    return repo, Stubber(client)


@pytest.mark.parametrize(("code", "refused"), [("AccessDenied", True), ("InternalError", False)])
def test_a_delete_the_server_refuses_is_a_named_error(code, refused):
    repo, stub = stubbed()
    marker = MANIFEST_KEY.replace("manifest.json", ".incomplete")  # written first: a delete cut short is finished later
    stub.add_response("put_object", {}, {"Bucket": "backups", "Key": marker, "Body": b""})
    stub.add_response("delete_objects", {"Errors": [{"Key": MANIFEST_KEY, "Code": code, "Message": "no"}]},
                      {"Bucket": "backups", "Delete": {"Objects": [{"Key": MANIFEST_KEY}], "Quiet": True}})
    with stub, pytest.raises(StorageError) as caught:
        repo.delete("p", "20261120T030000Z")
    assert isinstance(caught.value, DeleteRefused) is refused
    assert "S3 refused to delete 1 object(s)" in str(caught.value)


def test_retention_keeps_a_backup_whose_delete_is_refused_and_goes_on(caplog):
    from dockvault.actions.backup import apply_retention
    from tests.unit.builders import backup, policy, utc

    class Locked:
        location = "s3://backups/host-a"

        def __init__(self):
            self.kept = [backup(utc(2026, 11, 18 + d, 3)) for d in range(3)]
            self.deleted = []

        def backups(self, _policy):
            return self.kept

        def delete(self, _policy, backup_id):
            if backup_id == self.kept[0].id:
                raise DeleteRefused("S3 refused to delete 1 object(s) (AccessDenied): Object Lock")
            self.deleted.append(backup_id)

    repo = Locked()
    plan, deleted = apply_retention(policy(retention={"keepLast": 1}), repo)
    assert set(plan.delete) == {repo.kept[0].id, repo.kept[1].id}
    assert deleted == repo.deleted == [repo.kept[1].id]  # the refused one is kept, the other one goes
    assert "kept: S3 refused" in caplog.text
