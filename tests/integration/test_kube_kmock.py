"""Kubernetes mode end to end: the real kopf operator, in-process, against KMock with the real Docker engine.

There is no Kubernetes API server on the test machine: KMock (kopf's mock API server, PyPI `kmock`) stands in
for it, serving discovery, list/watch, create, merge-patch and delete from memory. Its 0.8 emulator neither sets
resourceVersion/generation/uid nor garbage-collects, so `VersionedEmulator` stamps them; everything else (the
operator, its handlers, the backups and restores through the private dockerd) is the real thing.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from prometheus_client import CollectorRegistry

kmock = pytest.importorskip("kmock")
pytest.importorskip("kopf")
pytest.importorskip("kubernetes")

from dockvault.api.common import API_VERSION, GROUP, VERSION
from dockvault.frontends import kube
from kmock._internal import enums

from tests.treecheck import populate_volume, snapshot_volume

pytestmark = pytest.mark.docker

NS = "ns1"
STOP_TIMEOUT = 30  # seconds the operator gets to stop after the flag is set
POLICIES = f"{GROUP}/{VERSION}/{kube.POLICIES}"
RESTORES = f"{GROUP}/{VERSION}/{kube.RESTORES}"
BACKUPS = f"{GROUP}/{VERSION}/{kube.BACKUPS}"


class VersionedEmulator(kmock.KubernetesEmulator):
    """KMock's emulator plus what kopf and kubectl rely on: uid, resourceVersion bumped on every write,
    generation bumped on spec changes, creationTimestamp, and 422 for a failed JSON-patch test."""

    _versions = itertools.count(1000)

    async def _handle(self, request):
        if isinstance(getattr(self, "seen", None), list):
            self.seen.append(request)
        data = request.data
        if request.resource is not None and request.action == enums.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):  # kopf's events
                meta["name"] = f"{meta['generateName']}{next(self._versions):x}"
            meta.setdefault("uid", f"uid-{next(self._versions)}")
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            meta["generation"] = 1
            meta["resourceVersion"] = str(next(self._versions))
        elif request.resource is not None and request.action == enums.action.UPDATE and request.name:
            version = str(next(self._versions))
            key = (request.resource, request.namespace, request.name)
            obj = dict(self.objects.items()).get(key)
            generation = obj.raw.get("metadata", {}).get("generation", 1) if obj is not None and not obj.deleted else 1
            if isinstance(data, dict):
                meta = data.setdefault("metadata", {}) if isinstance(data.get("metadata", {}), dict) else {}
                meta["resourceVersion"] = version
                if "spec" in data and request.subresource != "status":
                    meta["generation"] = generation + 1
            elif isinstance(data, list):
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:  # a real API server answers 422, and kopf re-reads on it
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None


def declare_resources(km) -> None:
    km.resources.load_bundled()  # v1/namespaces, v1/events and the rest of a stock cluster
    for plural, kind in ((kube.POLICIES, "BackupPolicy"), (kube.RESTORES, "RestoreRequest"), (kube.BACKUPS, "Backup")):
        km.resources[f"{GROUP}/{VERSION}/{plural}"] = kmock.ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=True, subresources={"status"},
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"})
    km.objects["v1/namespaces", None, NS] = {"metadata": {"name": NS, "uid": "ns-uid", "resourceVersion": "1"}}


def write_kubeconfig(path: Path, url: str) -> None:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n"
        f"clusters: [{{name: kmock, cluster: {{server: '{url}'}}}}]\n"
        "contexts: [{name: kmock, context: {cluster: kmock, user: kmock}}]\n"
        "users: [{name: kmock, user: {token: dummy}}]\n"
    )


def policy_doc(name: str, volume: str, repo: Path) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": "BackupPolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "host": "local",
            "schedule": "0 3 * * *",
            "objectives": {"rpo": "24h", "rto": "30m"},
            "targets": [{"name": "media", "volume": {"name": volume}}],
            "storage": {"local": {"path": str(repo)}},
            "retention": {"keepLast": 3},
        },
    }


def restore_doc(name: str, policy: str, volume: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": "RestoreRequest",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"policy": policy, "backup": "latest", "targets": [{"from": "media", "volume": {"name": volume}}]},
    }


def url(plural: str, name: str | None = None, sub: str | None = None) -> str:
    return "/".join(p for p in (f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{plural}", name, sub) if p)


async def api(km, method: str, path: str, body: Any = None, content_type: str = "application/json") -> dict:
    headers = {"Content-Type": content_type}
    resp = await km.request(method, path, json=body, headers=headers) if body is not None else await km.request(method, path)
    data = await resp.json()
    assert resp.status < 300, f"{method} {path}: {resp.status} {data}"
    return data


async def eventually(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.3)


def current(km, resource: str, name: str) -> dict | None:
    obj = dict(km.objects.items()).get((kmock.resource(resource), NS, name))
    return None if obj is None or obj.deleted else obj.raw


def condition(body: dict | None, kind: str) -> dict:
    for c in ((body or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return c
    return {}


def test_policy_backup_restore_edit_delete(docker_client, test_image, volumes, repo_dir, tmp_path, monkeypatch):
    source, restored = volumes("kube-src"), volumes("kube-dst")
    populate_volume(docker_client, source, megabytes=2)
    expected = snapshot_volume(docker_client, source)

    async def scenario() -> None:
        async with VersionedEmulator() as km, kmock.Server(km) as server:
            declare_resources(km)
            write_kubeconfig(tmp_path / "kubeconfig", str(server.url))
            monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
            stop, ready = asyncio.Event(), asyncio.Event()
            registry = CollectorRegistry()
            operator = asyncio.create_task(kube.operator(
                host="local", namespaces=None, helper_image=test_image, peering=False,
                stop_flag=stop, ready_flag=ready, interval=1.0, registry=registry))
            try:
                await asyncio.wait_for(ready.wait(), 30)

                # Apply a policy: the first backup runs at once, status and a Backup resource appear.
                await api(km, "POST", url(kube.POLICIES), policy_doc("media", source, repo_dir))
                policy = await eventually("the policy's first backup", lambda: (
                    (b := current(km, POLICIES, "media")) and condition(b, "Ready").get("status") == "True" and b))
                status = policy["status"]
                assert status["observedGeneration"] == 1
                assert condition(policy, "RPOMet")["status"] == "True"
                assert condition(policy, "RTOMet")["reason"] == "NotMeasured"
                assert status["lastBackup"]["phase"] == "Succeeded" and status["backups"] == 1
                assert "kopf" not in status or isinstance(status["kopf"], dict)
                backup_id = status["lastSuccessfulBackup"]["id"]
                record = await eventually("the Backup resource", lambda: current(
                    km, BACKUPS, kube.backup_resource_name("media", backup_id)))
                assert record["spec"]["policy"] == "media" and record["status"]["phase"] == "Succeeded"
                assert record["metadata"]["ownerReferences"][0]["uid"] == policy["metadata"]["uid"]
                assert (repo_dir / "media" / backup_id / "manifest.json").is_file()
                # ... and the exporter knows it: the chart's RPO alerts work in Kubernetes mode too.
                labels = {"policy": "media", "host": "local"}
                await eventually("the policy's metrics", lambda: registry.get_sample_value(
                    "dockvault_repository_backups", labels) == 1)
                assert registry.get_sample_value("dockvault_backup_attempts_total", labels) >= 1
                assert 0 <= registry.get_sample_value("dockvault_rpo_age_seconds", labels) < 600
                await eventually("a BackupSucceeded event", lambda: any(
                    e.get("reason") == "BackupSucceeded" and e["involvedObject"]["name"] == "media" for e in events(km)))

                # Apply a RestoreRequest: the volume comes back byte for byte, once.
                await api(km, "POST", url(kube.RESTORES), restore_doc("bring-back", "media", restored))
                done = await eventually("the restore's terminal phase", lambda: (
                    (b := current(km, RESTORES, "bring-back")) and b.get("status", {}).get("phase") in kube.TERMINAL and b))
                rst = done["status"]
                assert rst["phase"] == "Succeeded", rst
                assert rst["backup"] == backup_id and rst["durationSeconds"] >= 0 and rst["specHash"]
                assert rst["startedAt"] and rst["completedAt"]
                assert snapshot_volume(docker_client, restored) == expected
                await eventually("a RestoreSucceeded event", lambda: any(
                    e.get("reason") == "RestoreSucceeded" and e["involvedObject"]["name"] == "bring-back" for e in events(km)))
                phases = [v["status"]["phase"] for v in km.objects[RESTORES, NS, "bring-back"].history
                          if v is not None and "status" in v and "phase" in v["status"]]
                assert "Running" in phases

                # Edit the policy: observedGeneration follows the new generation; no second restore runs.
                edit = {"spec": {"retention": {"keepLast": 5}}}
                await api(km, "PATCH", url(kube.POLICIES, "media"), edit, "application/merge-patch+json")
                edited = await eventually("observedGeneration 2", lambda: (
                    (b := current(km, POLICIES, "media")) and b["status"].get("observedGeneration") == 2 and b))
                assert edited["metadata"]["generation"] == 2
                assert condition(edited, "Ready")["observedGeneration"] == 2
                assert current(km, RESTORES, "bring-back")["status"]["completedAt"] == rst["completedAt"]

                # Delete: handlers finish, the object goes away, the repository keeps the backup.
                await api(km, "DELETE", url(kube.RESTORES, "bring-back"))
                await api(km, "DELETE", url(kube.POLICIES, "media"))
                await eventually("the policy to be gone", lambda: current(km, POLICIES, "media") is None, timeout=30)
                assert (repo_dir / "media" / backup_id / "manifest.json").is_file()
            finally:
                stop.set()
                await asyncio.wait_for(operator, STOP_TIMEOUT)
            assert not [e for e in km.errors if not isinstance(e, kmock.KubernetesError)], km.errors

    asyncio.run(scenario())


def test_invalid_policy_and_foreign_host(docker_client, test_image, repo_dir, tmp_path, monkeypatch):
    """An invalid spec gets Ready=False/InvalidSpec with the field path; another host's policy is not touched."""

    async def scenario() -> None:
        async with VersionedEmulator() as km, kmock.Server(km) as server:
            declare_resources(km)
            write_kubeconfig(tmp_path / "kubeconfig", str(server.url))
            monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
            stop, ready = asyncio.Event(), asyncio.Event()
            operator = asyncio.create_task(kube.operator(
                host="local", namespaces=None, helper_image=test_image, peering=False,
                stop_flag=stop, ready_flag=ready, interval=1.0))
            try:
                await asyncio.wait_for(ready.wait(), 30)
                bad = policy_doc("bad", "some-volume", repo_dir)
                bad["spec"]["targets"][0]["volume"]["name"] = "not a volume!"
                await api(km, "POST", url(kube.POLICIES), bad)
                foreign = policy_doc("elsewhere", "some-volume", repo_dir)
                foreign["spec"]["host"] = "db1"
                await api(km, "POST", url(kube.POLICIES), foreign)
                body = await eventually("InvalidSpec", lambda: (
                    (b := current(km, POLICIES, "bad")) and condition(b, "Ready").get("reason") == "InvalidSpec" and b))
                assert condition(body, "Ready")["status"] == "False"
                assert "spec.targets[0].volume.name" in condition(body, "Ready")["message"]
                await asyncio.sleep(3)
                assert "status" not in current(km, POLICIES, "elsewhere")
                assert not (repo_dir / "elsewhere").exists()
            finally:
                stop.set()
                await asyncio.wait_for(operator, STOP_TIMEOUT)

    asyncio.run(scenario())


def events(km) -> list[dict]:
    out = []
    for (resource, _ns, _name), obj in list(km.objects.items()):
        if resource.plural == "events" and not obj.deleted:
            out.append(obj.raw)
    return out


def test_secret_key_ref_reader_reads_the_namespaced_secret(tmp_path, monkeypatch):
    """passwordFrom.secretKeyRef: the reader kube.py installs GETs /api/v1/namespaces/NS/secrets/NAME and decodes the key;
    a missing Secret or key is an error naming both, never a value."""
    import base64

    from dockvault.credentials import SecretError

    async def scenario() -> None:
        async with VersionedEmulator() as km, kmock.Server(km) as server:
            declare_resources(km)
            km.seen = []
            km.objects["v1/secrets", NS, "pg-credentials"] = {
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "pg-credentials", "namespace": NS, "resourceVersion": "5"},
                "data": {"password": base64.b64encode(b"kmock-s3cret\n").decode(),
                         "user": base64.b64encode(b"admin").decode()}}
            write_kubeconfig(tmp_path / "kubeconfig", str(server.url))
            monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
            reader = kube.KubeApi().secret_reader(NS)
            assert await asyncio.to_thread(reader, "pg-credentials", "password") == "kmock-s3cret"
            assert (f"/api/v1/namespaces/{NS}/secrets/pg-credentials", "pg-credentials") in [
                (str(getattr(r.url, "path", r.url)).split("?")[0].removeprefix(str(server.url).rstrip("/")), r.name)
                for r in km.seen if str(r.method).upper().endswith("GET")]
            with pytest.raises(SecretError) as missing_key:
                await asyncio.to_thread(reader, "pg-credentials", "root-password")
            assert str(missing_key.value) == (f"passwordFrom.secretKeyRef: Secret {NS}/pg-credentials has no key "
                                              "'root-password'")
            with pytest.raises(SecretError) as missing:
                await asyncio.to_thread(reader, "nope", "password")
            assert f"Secret {NS}/nope does not exist" in str(missing.value)
            for exc in (missing_key.value, missing.value):
                assert "kmock-s3cret" not in str(exc) and "YWRtaW4" not in str(exc)

    asyncio.run(scenario())
