"""Volume backup, restore and retention against the real engine, through the actions layer."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest
import zstandard

from dockvault.actions.backup import run_backup
from dockvault.actions.restore import run_restore
from dockvault.api import BackupPolicy, RestoreRequest
from dockvault.controller.retention import plan_retention
from dockvault.engine.core import LABEL_JOB
from dockvault.storage.local import LocalRepository
from tests.treecheck import APP_LOOP, populate_volume, snapshot_volume, volume_path

pytestmark = pytest.mark.docker


def policy(name: str, volume: str, repo: Path, **spec) -> BackupPolicy:
    body = {"targets": [{"name": "data", "volume": {"name": volume, **spec.pop("volume_extra", {})}}],
            "storage": {"local": {"path": str(repo)}}, **spec}
    return BackupPolicy.model_validate({"apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy",
                                        "metadata": {"name": name}, "spec": body})


def restore_request(policy_name: str, volume: str, *, overwrite: bool = False, backup="latest") -> RestoreRequest:
    return RestoreRequest.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "RestoreRequest", "metadata": {"name": "r"},
        "spec": {"policy": policy_name, "backup": backup,
                 "targets": [{"from": "data", "volume": {"name": volume, "overwrite": overwrite}}]}})


def write_file(client, volume: str, rel: str, data: bytes) -> None:
    path = volume_path(client, volume) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.mark.parametrize("algorithm", ["zstd", "gzip", "none"])
def test_roundtrip_for_every_compression(docker_client, engine, volumes, repo_dir, algorithm):
    source, target = volumes("src"), volumes("dst")
    populate_volume(docker_client, source, megabytes=3)
    pol = policy("comp", source, repo_dir, compression={"algorithm": algorithm})
    outcome = run_backup(pol, engine=engine, repository=LocalRepository(repo_dir))
    assert outcome.succeeded, outcome.record.status.message
    (artifact,) = outcome.record.status.artifacts
    stored = (repo_dir / "comp" / outcome.record.id / artifact.file).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == artifact.sha256 and len(stored) == artifact.bytes
    result = run_restore(restore_request("comp", target), pol, engine=engine, repository=LocalRepository(repo_dir))
    assert result.succeeded, result.status.message
    assert snapshot_volume(docker_client, target) == snapshot_volume(docker_client, source)


def test_retention_deletes_exactly_what_the_plan_says(docker_client, engine, volumes, repo_dir):
    source = volumes("ret")
    populate_volume(docker_client, source, megabytes=1)
    pol = policy("ret", source, repo_dir, retention={"keepLast": 2})
    repo = LocalRepository(repo_dir)
    for run in range(4):
        write_file(docker_client, source, "counter", str(run).encode())
        before = repo.backups("ret")
        outcome = run_backup(pol, engine=engine, repository=repo)
        assert outcome.succeeded
        expected = plan_retention([*before, outcome.record], pol.spec.retention, now=outcome.record.status.completed_at)
        assert outcome.deleted == expected.delete
        assert [b.id for b in repo.backups("ret")] == sorted(expected.keep)
    assert len(repo.backups("ret")) == 2
    assert sorted(p.name for p in (repo_dir / "ret").iterdir()) == [b.id for b in repo.backups("ret")]


def test_failed_backup_never_runs_retention(docker_client, engine, volumes, repo_dir):
    source = volumes("keep")
    populate_volume(docker_client, source, megabytes=1)
    repo = LocalRepository(repo_dir)
    good = policy("keep", source, repo_dir, retention={"keepLast": 1})
    first = run_backup(good, engine=engine, repository=repo)
    broken = policy("keep", volumes("gone"), repo_dir, retention={"keepLast": 1})
    failed = run_backup(broken, engine=engine, repository=repo)
    assert not failed.succeeded and failed.retention is None and failed.deleted == []
    assert [b.id for b in repo.backups("keep")] == [first.record.id]


@pytest.mark.parametrize("remote", [False, True], ids=["local", "helper-decompresses"])
def test_flipped_byte_fails_before_the_target_is_created_or_changed(docker_client, engine, volumes, repo_dir, remote,
                                                                     monkeypatch, test_image):
    if remote:  # the api transport as on a remote engine: the helper gets the zstd artifact and decompresses it
        from dockvault.engine.core import Engine

        monkeypatch.setattr(Engine, "remote", property(lambda self: True))
        engine = Engine(docker_client, helper_image=test_image, transport="api")
    source, fresh, existing = volumes("flip"), volumes("flip-new"), volumes("flip-old")
    populate_volume(docker_client, source, megabytes=2)
    repo = LocalRepository(repo_dir)
    pol = policy("flip", source, repo_dir)
    outcome = run_backup(pol, engine=engine, repository=repo)
    path = repo_dir / "flip" / outcome.record.id / "data.tar.zst"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    result = run_restore(restore_request("flip", fresh), pol, engine=engine, repository=repo)
    # zstd's frame checksum (the helper's zstd writes one) may find the flip before the artifact's sha256 does
    assert result.status.phase == "Failed" and "corrupt" in result.status.message
    assert remote or "sha256" in result.status.message
    assert fresh not in [v.name for v in docker_client.volumes.list()]

    populate_volume(docker_client, existing, megabytes=1, seed=99)
    before = snapshot_volume(docker_client, existing)
    result = run_restore(restore_request("flip", existing, overwrite=True), pol, engine=engine, repository=repo)
    assert result.status.phase == "Failed"
    assert snapshot_volume(docker_client, existing) == before


def test_existing_volume_needs_overwrite_and_overwrite_replaces_everything(docker_client, engine, volumes, repo_dir):
    source, existing = volumes("ow"), volumes("ow-dst")
    populate_volume(docker_client, source, megabytes=2)
    repo = LocalRepository(repo_dir)
    pol = policy("ow", source, repo_dir)
    assert run_backup(pol, engine=engine, repository=repo).succeeded
    populate_volume(docker_client, existing, megabytes=1, seed=5)
    write_file(docker_client, existing, "only-in-target.txt", b"must disappear on overwrite")
    before = snapshot_volume(docker_client, existing)

    refused = run_restore(restore_request("ow", existing), pol, engine=engine, repository=repo)
    assert refused.status.phase == "Failed"
    assert f"volume '{existing}' already exists; set overwrite: true" in refused.status.message
    assert snapshot_volume(docker_client, existing) == before

    replaced = run_restore(restore_request("ow", existing, overwrite=True), pol, engine=engine, repository=repo)
    assert replaced.succeeded, replaced.status.message
    assert snapshot_volume(docker_client, existing) == snapshot_volume(docker_client, source)


def _crafted_backup(repo_dir: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    stored = zstandard.ZstdCompressor().compress(raw.getvalue())
    folder = repo_dir / "evil" / "20260101T000000Z"
    folder.mkdir(parents=True)
    (folder / "data.tar.zst").write_bytes(stored)
    manifest = {
        "apiVersion": "dockvault.io/v1alpha1", "kind": "Backup", "metadata": {"name": "evil-20260101t000000z"},
        "spec": {"policy": "evil", "id": "20260101T000000Z"},
        "status": {"phase": "Succeeded", "startedAt": "2026-01-01T00:00:00Z", "completedAt": "2026-01-01T00:00:01Z",
                   "artifacts": [{"target": "data", "source": "volume", "file": "data.tar.zst", "bytes": len(stored),
                                  "rawBytes": len(raw.getvalue()), "sha256": hashlib.sha256(stored).hexdigest(),
                                  "compression": "zstd", "startedAt": "2026-01-01T00:00:00Z",
                                  "completedAt": "2026-01-01T00:00:01Z"}]}}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _member(name: str, data: bytes | None = None, *, kind=tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data or b"")
    return info, data


@pytest.mark.parametrize("members, message", [
    ([_member("ok.txt", b"fine"), _member("../escaped.txt", b"evil")], "contains '..'"),
    ([_member("/etc/cron.d/evil", b"evil")], "absolute path"),
    ([_member("up", kind=tarfile.SYMTYPE, link="../../.."), _member("x", b"x")], "points outside the volume"),
    ([_member("etc", kind=tarfile.SYMTYPE, link="/etc"), _member("etc/passwd", b"root::0:0")], "through the symlink"),
    ([_member("dev", kind=tarfile.CHRTYPE)], "character device"),
])
def test_crafted_archive_is_refused_and_nothing_is_left(docker_client, engine, volumes, repo_dir, members, message):
    _crafted_backup(repo_dir, members)
    pol = policy("evil", volumes("unused"), repo_dir)
    fresh, existing = volumes("evil-new"), volumes("evil-old")
    result = run_restore(restore_request("evil", fresh), pol, engine=engine, repository=LocalRepository(repo_dir))
    assert result.status.phase == "Failed" and message in result.status.message
    assert fresh not in [v.name for v in docker_client.volumes.list()]

    populate_volume(docker_client, existing, megabytes=1)
    before = snapshot_volume(docker_client, existing)
    result = run_restore(restore_request("evil", existing, overwrite=True), pol, engine=engine,
                         repository=LocalRepository(repo_dir))
    assert result.status.phase == "Failed" and message in result.status.message
    assert snapshot_volume(docker_client, existing) == before  # staging folder gone too


def _users(docker_client, image: str, volume: str, containers: list, names: list[str]) -> list:
    made = []
    for name in names:
        c = docker_client.containers.run(image, ["sh", "-c", APP_LOOP], name=name, detach=True, network_mode="none",
                                         volumes={volume: {"bind": "/data", "mode": "rw"}})
        containers.append(c)
        made.append(c)
    return made


@pytest.mark.parametrize("mode", ["stop", "pause"])
def test_quiesce_resumes_exactly_the_running_containers(docker_client, engine, volumes, repo_dir, containers,
                                                         test_image, unique, mode):
    source = volumes("q")
    populate_volume(docker_client, source, megabytes=1)
    app1, app2, idle = _users(docker_client, test_image, source, containers, [unique("app1"), unique("app2"), unique("idle")])
    idle.stop(timeout=0)
    seen: list[dict[str, str]] = []

    def observe(_n: int) -> None:
        if not seen:
            seen.append({c.name: docker_client.containers.get(c.id).status for c in (app1, app2, idle)})

    pol = policy("q", source, repo_dir, volume_extra={"quiesce": mode})
    outcome = run_backup(pol, engine=engine, repository=LocalRepository(repo_dir), progress=observe)
    assert outcome.succeeded
    halted = "exited" if mode == "stop" else "paused"
    assert seen[0] == {app1.name: halted, app2.name: halted, idle.name: "exited"}
    after = {c.name: docker_client.containers.get(c.id).status for c in (app1, app2, idle)}
    assert after == {app1.name: "running", app2.name: "running", idle.name: "exited"}


def test_interrupted_backup_resumes_containers_and_leaves_nothing(docker_client, engine, volumes, repo_dir, containers,
                                                                  test_image, unique):
    source = volumes("int")
    populate_volume(docker_client, source, megabytes=20)
    (app,) = _users(docker_client, test_image, source, containers, [unique("app")])
    cancel = threading.Event()
    pol = policy("int", source, repo_dir, volume_extra={"quiesce": "stop"})
    outcome = run_backup(pol, engine=engine, repository=LocalRepository(repo_dir), cancel=cancel,
                         progress=lambda _n: cancel.set())
    assert outcome.record.status.phase == "Failed" and "cancelled" in outcome.record.status.message
    assert docker_client.containers.get(app.id).status == "running"
    assert docker_client.containers.list(all=True, filters={"label": LABEL_JOB}) == []
    assert list((repo_dir / "int").iterdir()) == []


@pytest.mark.parametrize("transport", ["api", "fifo", "api-remote"])
def test_both_transports_back_up_and_restore_the_same(docker_client, test_image, volumes, repo_dir, transport,
                                                      monkeypatch):
    """api: the helper's command runs through `docker exec` and the stream crosses the engine's connection, so
    nothing but the API is shared; fifo: named pipes in a shared temp dir. Both must give the same result.
    api-remote: the api transport as on a remote engine (Engine.remote), where the helpers compress the backup
    and decompress the restore themselves, so the engine carries zstd both ways."""
    from dockvault.engine.core import Engine

    remote = transport == "api-remote"
    transport = transport.removesuffix("-remote")
    monkeypatch.setattr(Engine, "remote", property(lambda self: remote))
    engine = Engine(docker_client, helper_image=test_image, transport=transport)
    source, target = volumes(f"{transport}-src"), volumes(f"{transport}-dst")
    populate_volume(docker_client, source, megabytes=8)
    from docker.models.containers import ContainerCollection

    commands: list = []
    create = ContainerCollection.create

    def spy(self, image, command=None, **kwargs):
        commands.append(command)
        return create(self, image, command, **kwargs)

    monkeypatch.setattr(ContainerCollection, "create", spy)
    pol = policy(transport, source, repo_dir)
    outcome = run_backup(pol, engine=engine, repository=LocalRepository(repo_dir))
    assert outcome.succeeded, outcome.record.status.message
    assert outcome.record.status.artifacts[0].details.get("compressedBy") == ("helper" if remote else None)
    result = run_restore(restore_request(transport, target), pol, engine=engine, repository=LocalRepository(repo_dir))
    assert result.succeeded, result.status.message
    monkeypatch.undo()
    assert snapshot_volume(docker_client, target) == snapshot_volume(docker_client, source)
    idle = [c for c in commands if c == ["sleep", "infinity"]]
    assert len(idle) == (2 if transport == "api" else 0)  # the api transport's helpers idle; their work is exec'd
    probes = [c for c in commands if c and c[:2] == ["sh", "-c"] and "command -v" in c[2]]
    assert probes == ([["sh", "-c", 'command -v "$1" > /dev/null', "sh", "zstd"]] if remote else [])


@pytest.mark.parametrize("remote", [False, True], ids=["dockvault-compresses", "helper-compresses"])
def test_a_helper_killed_mid_stream_fails_the_backup_over_the_api(docker_client, test_image, volumes, repo_dir,
                                                                  monkeypatch, remote):
    from dockvault.engine.core import LABEL_JOB as JOB, Engine

    # remote: as for an engine over TCP, the helper compresses (TAR_ZSTD), here on the local engine
    monkeypatch.setattr(Engine, "remote", property(lambda self: remote))
    engine = Engine(docker_client, helper_image=test_image, transport="api")
    source = volumes("killed-src")
    populate_volume(docker_client, source, megabytes=60)
    killed: list[str] = []

    def kill_helper(_n: int) -> None:
        if not killed:
            (helper,) = docker_client.containers.list(filters={"label": JOB})
            helper.kill()
            killed.append(helper.name)

    outcome = run_backup(policy("killed", source, repo_dir), engine=engine, repository=LocalRepository(repo_dir),
                         progress=kill_helper)
    assert killed and outcome.record.status.phase == "Failed"
    assert "tar of volume" in outcome.record.status.message or "incomplete" in outcome.record.status.message
    assert list((repo_dir / "killed").iterdir()) == []  # nothing published
    assert docker_client.containers.list(all=True, filters={"label": JOB}) == []
