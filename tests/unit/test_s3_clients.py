"""The S3 backend's clients: made once per endpoint and keys, not once per repository_for() (no S3 server needed:
making a client connects nowhere)."""

from __future__ import annotations

from dockvault.api.policy import S3Storage
from dockvault.storage.s3 import S3Repository


def test_repositories_of_one_endpoint_and_keys_share_a_client(monkeypatch):
    """repository_for() is called many times a pass; each made a boto3 client (10 ms of CPU). Clients are reused
    for the same endpoint and keys as read now, and a changed key makes a new one."""
    from dockvault.storage import s3

    monkeypatch.setattr(s3, "_CLIENTS", {})
    monkeypatch.setenv("DV_UNIT_KEY", "AKONE")
    monkeypatch.setenv("DV_UNIT_SECRET", "secret-one")
    spec = S3Storage.model_validate({"bucket": "backups", "endpoint": "http://127.0.0.1:9", "credentials": {
        "accessKeyIdFrom": {"env": "DV_UNIT_KEY"}, "secretAccessKeyFrom": {"env": "DV_UNIT_SECRET"}}})
    first = S3Repository(spec).client
    assert S3Repository(spec.model_copy(update={"bucket": "other"})).client is first
    monkeypatch.setenv("DV_UNIT_SECRET", "secret-two")  # rotated
    rotated = S3Repository(spec).client
    assert rotated is not first
    assert rotated._request_signer._credentials.secret_key == "secret-two"
    assert S3Repository(spec.model_copy(update={"endpoint": "http://127.0.0.1:10"})).client is not rotated
    for n in range(s3.CLIENTS_KEPT + 5):  # bounded: a key rotated again and again does not pile up clients
        monkeypatch.setenv("DV_UNIT_SECRET", f"secret-{n}")
        S3Repository(spec).client
    assert len(s3._CLIENTS) == s3.CLIENTS_KEPT
