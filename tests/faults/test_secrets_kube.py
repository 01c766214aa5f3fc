"""The secrets scan in Kubernetes mode: every secret comes from a Secret (secretKeyRef), and what the operator
writes to the API (events, status, Backup resources: every request body KMock received, and every object it
holds but the Secrets), its log and its metrics must contain none of them, for successes and failures alike.

KMock stands in for the Kubernetes API server (none can run here); the operator, S3 (SeaweedFS), PostgreSQL,
MariaDB and the Docker engine are real."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets

import pyrage
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from dockvault.credentials import install_log_masking
from tests.integration.test_kube_kmock import (BACKUPS, NS, POLICIES, RESTORES, STOP_TIMEOUT, VersionedEmulator, api,
                                               condition, current, declare_resources, eventually, events, url,
                                               write_kubeconfig)
from tests.treecheck import populate_volume, snapshot_volume

kmock = pytest.importorskip("kmock")
pytestmark = pytest.mark.docker

SECRET = "dv-keys"


def ref(key: str) -> dict:
    return {"secretKeyRef": {"name": SECRET, "key": key}}


def test_no_secret_in_events_status_resources_logs_or_metrics(
        pg_server, maria_server, pg_database, maria_database, s3_server, docker_client, volumes, tmp_path,
        test_image, monkeypatch, caplog):
    from dockvault.frontends import kube

    pg_db, maria_db = pg_database("ksec"), maria_database("ksec")
    pg_server.psql("CREATE TABLE users AS SELECT g AS id FROM generate_series(1, 500) g", pg_db)
    source, restored = volumes("ksec-src"), volumes("ksec-dst")
    populate_volume(docker_client, source, megabytes=2)
    identity = pyrage.x25519.Identity.generate()
    wrong_password = "wrong-" + secrets.token_urlsafe(18)
    wrong_s3_key = "wrongs3-" + secrets.token_urlsafe(24)
    values = {"S3 access key": s3_server.access_key, "S3 secret key": s3_server.secret_key,
              "age identity": str(identity), "postgres password": pg_server.password,
              "a wrong database password": wrong_password, "a wrong S3 secret key": wrong_s3_key}
    keys = {"s3-id": s3_server.access_key, "s3-secret": s3_server.secret_key, "age": str(identity) + "\n",
            "pg": pg_server.password, "maria-wrong": wrong_password, "s3-wrong": wrong_s3_key}
    bucket = s3_server.bucket("ksec")

    def storage(prefix: str, secret_key: str) -> dict:
        return {"s3": {"bucket": bucket, "prefix": prefix, "endpoint": s3_server.endpoint,
                       "credentials": {"accessKeyIdFrom": ref("s3-id"), "secretAccessKeyFrom": ref(secret_key)}}}

    good = {"apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "ksec", "namespace": NS},
            "spec": {"host": "local", "schedule": "0 3 * * *", "storage": storage("good", "s3-secret"),
                     "encryption": {"age": {"recipients": [str(identity.to_public())], "identityFrom": ref("age")}},
                     "targets": [{"name": "pg", "postgres": {"container": pg_server.name, "databases": [pg_db],
                                                             "user": "postgres", "passwordFrom": ref("pg")}},
                                 {"name": "data", "volume": {"name": source}}]}}
    wrong_db = {"apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy",
                "metadata": {"name": "ksec-db", "namespace": NS},
                "spec": {"host": "local", "schedule": "0 3 * * *", "storage": storage("db", "s3-secret"),
                         "targets": [{"name": "maria", "mysql": {"container": maria_server.name, "databases": [maria_db],
                                                                 "user": "root", "passwordFrom": ref("maria-wrong")}}]}}
    wrong_s3 = {"apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy",
                "metadata": {"name": "ksec-s3", "namespace": NS},
                "spec": {"host": "local", "schedule": "0 3 * * *", "storage": storage("s3", "s3-wrong"),
                         "targets": [{"name": "data", "volume": {"name": source}}]}}
    restore = {"apiVersion": "dockvault.io/v1alpha1", "kind": "RestoreRequest",
               "metadata": {"name": "ksec-restore", "namespace": NS},
               "spec": {"policy": "ksec", "backup": "latest", "targets": [{"from": "data", "volume": {"name": restored}}]}}
    texts: dict[str, str] = {}
    registry = CollectorRegistry()

    async def scenario() -> None:
        async with VersionedEmulator() as km, kmock.Server(km) as server:
            declare_resources(km)
            km.seen = []
            km.objects["v1/secrets", NS, SECRET] = {
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": SECRET, "namespace": NS, "resourceVersion": "5"},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()}}
            write_kubeconfig(tmp_path / "kubeconfig", str(server.url))
            monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
            stop, ready = asyncio.Event(), asyncio.Event()
            operator = asyncio.create_task(kube.operator(
                host="local", namespaces=None, helper_image=test_image, peering=False,
                stop_flag=stop, ready_flag=ready, interval=1.0, registry=registry))
            try:
                await asyncio.wait_for(ready.wait(), 30)
                for doc in (good, wrong_db, wrong_s3):
                    await api(km, "POST", url(kube.POLICIES), doc)
                policy = await eventually("the first backup of ksec", lambda: (
                    (b := current(km, POLICIES, "ksec")) and condition(b, "Ready").get("status") == "True" and b),
                    timeout=180)
                assert policy["status"]["lastBackup"]["phase"] == "Succeeded"
                for name in ("ksec-db", "ksec-s3"):
                    failed = await eventually(f"the failed backup of {name}", lambda name=name: (
                        (b := current(km, POLICIES, name)) and (b.get("status") or {}).get("lastBackup", {}).get(
                            "phase") == "Failed" and b), timeout=180)
                    texts[f"{name} failure"] = failed["status"]["lastBackup"].get("message", "")
                await api(km, "POST", url(kube.RESTORES), restore)
                done = await eventually("the restore's terminal phase", lambda: (
                    (b := current(km, RESTORES, "ksec-restore")) and b.get("status", {}).get("phase") in kube.TERMINAL
                    and b), timeout=180)
                assert done["status"]["phase"] == "Succeeded", done["status"]
                await eventually("the failure events", lambda: sum(
                    e.get("type") == "Warning" for e in events(km)) >= 2)
            finally:
                stop.set()
                await asyncio.wait_for(operator, STOP_TIMEOUT)
            for (resource, namespace, name), obj in list(km.objects.items()):
                if resource.plural != "secrets":
                    texts[f"object {resource.plural}/{name}"] = json.dumps(obj.raw)
            for n, request in enumerate(km.seen):
                if "secrets" not in str(request.url):
                    texts[f"request {n} {request.method} {request.url}"] = json.dumps(request.data, default=str)
            texts["events"] = json.dumps(events(km))
            assert any(e.get("reason") == "BackupSucceeded" for e in events(km))
            assert [b for (r, _n, _name), b in km.objects.items() if r.plural == BACKUPS.rsplit("/", 1)[1]]

    with caplog.at_level(logging.DEBUG):
        install_log_masking()  # as `dockvault kube` does on its log handlers (here: caplog's)
        asyncio.run(scenario())
    assert snapshot_volume(docker_client, restored) == snapshot_volume(docker_client, source)
    texts["log"] = caplog.text
    texts["metrics"] = generate_latest(registry).decode()
    # the failures happened and say why, without the values
    assert "ksec-db failure" in texts and texts["ksec-db failure"] and texts["ksec-s3 failure"]
    assert any("Warning" in text for where, text in texts.items() if where == "events")
    assert len([w for w in texts if w.startswith("request")]) > 20
    hits = [f"{what} in {where}" for what, value in values.items() for where, text in texts.items() if value in text]
    assert hits == []
