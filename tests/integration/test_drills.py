"""Restore drills on the real engine: scratch volumes and scratch database servers, checked and always removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dockvault.actions.backup import run_backup
from dockvault.actions.drill import run_drill
from dockvault.api import BackupPolicy
from dockvault.engine.core import LABEL_DRILL, LABEL_JOB, Engine
from dockvault.sources import volume as volume_source
from dockvault.storage.local import LocalRepository
from tests.treecheck import populate_volume

pytestmark = pytest.mark.docker


def make_policy(repo: Path, targets: list[dict], checks: list[dict] | None = None) -> BackupPolicy:
    return BackupPolicy.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "drilled"},
        "spec": {"targets": targets, "storage": {"local": {"path": str(repo)}},
                 "drill": {"schedule": "0 5 * * 0", "checks": checks or []}}})


def leftovers(client) -> list[str]:
    """Helpers and scratch resources of this file's policy that outlived their job."""
    mine = "dockvault.io/policy=drilled"
    containers = [c.name for c in client.containers.list(all=True, filters={"label": [LABEL_JOB, mine]})]
    return containers + [v.name for v in client.volumes.list(filters={"label": [LABEL_DRILL, mine]})]


def test_volume_drill_restores_compares_and_cleans_up(docker_client, engine, volumes, repo_dir):
    source = volumes("drill-src")
    populate_volume(docker_client, source, megabytes=5)
    pol = make_policy(repo_dir, [{"name": "data", "volume": {"name": source}}])
    repo = LocalRepository(repo_dir)
    assert run_backup(pol, engine=engine, repository=repo).succeeded
    outcome = run_drill(pol, engine=engine, repository=repo)
    assert outcome.succeeded, outcome.drill.message
    assert "paths restored identical" in outcome.drill.message
    assert outcome.seconds > 0 and outcome.drill.duration_seconds == outcome.seconds
    assert leftovers(docker_client) == []


def test_volume_drill_fails_when_the_restore_loses_a_file(docker_client, engine, volumes, repo_dir, monkeypatch):
    source = volumes("drill-bad")
    populate_volume(docker_client, source, megabytes=2)
    pol = make_policy(repo_dir, [{"name": "data", "volume": {"name": source}}])
    repo = LocalRepository(repo_dir)
    assert run_backup(pol, engine=engine, repository=repo).succeeded
    # A restore that silently drops one file: exactly what a drill exists to catch.
    broken = volume_source.RESTORE_SCRIPT.replace('touch -r /tmp/.dockvault-mtime /target',
                                                  'rm -f /target/empty-file; touch -r /tmp/.dockvault-mtime /target')
    assert broken != volume_source.RESTORE_SCRIPT
    monkeypatch.setattr(volume_source, "RESTORE_SCRIPT", broken)
    outcome = run_drill(pol, engine=engine, repository=repo)
    assert outcome.drill.phase == "Failed"
    assert "target data: the restored volume differs from backup: empty-file: missing" in outcome.drill.message
    assert leftovers(docker_client) == []


def test_postgres_drill_checks_row_counts_from_the_dump_snapshot(pg_server, pg_database, repo_dir, test_image):
    db = pg_database("drill")
    pg_server.psql("CREATE TABLE items AS SELECT i, md5(i::text) AS t FROM generate_series(1, 2500) i; "
                   "CREATE TABLE empty (x int); CREATE SCHEMA \"odd schema\"; "
                   "CREATE TABLE \"odd schema\".\"odd\ttable\" AS SELECT 1 AS x;", db)
    engine = Engine(pg_server.container.client, helper_image=test_image)
    checks = [{"sql": "SELECT count(*) FROM items", "expect": "=2500"}, {"sql": "SELECT max(i) FROM items", "expect": ">0"}]
    pol = make_policy(repo_dir, [{"name": "db", "postgres": {"container": pg_server.name, "databases": [db]}}], checks)
    repo = LocalRepository(repo_dir)
    backup = run_backup(pol, engine=engine, repository=repo)
    assert backup.succeeded, backup.record.status.message
    dump = backup.record.status.artifacts[0]
    assert dump.tables == {"public.items": 2500, "public.empty": 0, '"odd schema"."odd\ttable"': 1}

    outcome = run_drill(pol, engine=engine, repository=repo)
    assert outcome.succeeded, outcome.drill.message
    assert f"database {db} restored, 3 tables with matching row counts" in outcome.drill.message
    assert leftovers(pg_server.container.client) == []

    failing = make_policy(repo_dir, pol.to_dict()["spec"]["targets"], [{"sql": "SELECT count(*) FROM items",
                                                                         "expect": ">2500"}])
    outcome = run_drill(failing, engine=engine, repository=repo)
    assert outcome.drill.phase == "Failed"
    assert "check 'SELECT count(*) FROM items' returned 2500, expected >2500" in outcome.drill.message

    manifest_path = repo_dir / "drilled" / backup.record.id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["status"]["artifacts"][0]["tables"]["public.items"] = 2501  # the backup said there were more rows
    manifest_path.write_text(json.dumps(manifest))
    outcome = run_drill(pol, engine=engine, repository=repo)
    assert outcome.drill.phase == "Failed"
    assert "public.items: 2500 rows, backup had 2501" in outcome.drill.message
    assert leftovers(pg_server.container.client) == []


def test_mysql_drill_restores_into_a_scratch_server(maria_server, maria_database, repo_dir, test_image):
    db = maria_database("drill")
    maria_server.mysql("CREATE TABLE items (i INT); INSERT INTO items VALUES (1), (2), (3);", db)
    engine = Engine(maria_server.container.client, helper_image=test_image)
    pol = make_policy(repo_dir, [{"name": "db", "mysql": {"container": maria_server.name, "databases": [db]}}],
                      [{"sql": "SELECT count(*) FROM items", "expect": "=3"}])
    repo = LocalRepository(repo_dir)
    assert run_backup(pol, engine=engine, repository=repo).succeeded
    outcome = run_drill(pol, engine=engine, repository=repo)
    assert outcome.succeeded, outcome.drill.message
    assert leftovers(maria_server.container.client) == []


def test_start_up_removes_drill_leftovers(docker_client, engine, test_image):
    docker_client.volumes.create("dockvault-drill-leftover", labels={LABEL_DRILL: "true"})
    docker_client.containers.create(test_image, ["true"], name="dockvault-drill-leftover-c",
                                    labels={LABEL_JOB: "x", LABEL_DRILL: "true"}, network_mode="none")
    removed = engine.remove_leftovers()
    assert "dockvault-drill-leftover-c" in removed and "volume dockvault-drill-leftover" in removed
    assert leftovers(docker_client) == []


def _pg_with_mounted_data(client, image: str, script_guard: str):
    """A PostgreSQL server whose data directory exists only as a mount point (/srv/pg is not in the image):
    `script_guard` runs first in its command, as such images' entrypoints check their mount."""
    from tests.dbfixtures import PG_INIT, PG_PATH, PgServer, _start, new_password

    password = new_password()
    env = {"POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": password, "PGDATA": "/srv/pg/data", "PATH": PG_PATH,
           "LANG": "C.UTF-8"}
    return _start(PgServer, client, image, kind="pg", env=env, script=script_guard + PG_INIT, data_dir="/srv/pg",
                  volume=None, name=None, timeout=120, password=password, user="postgres")


def test_a_drill_starts_a_server_whose_data_directory_is_only_a_mount_point(docker_client, repo_dir, test_image):
    server = _pg_with_mounted_data(docker_client, test_image,
                                   '[ -d /srv/pg ] || { echo "data directory /srv/pg is not mounted" >&2; exit 64; }\n')
    try:
        server.psql("CREATE DATABASE shop")
        server.psql("CREATE TABLE items AS SELECT generate_series(1, 10) AS i", "shop")
        engine = Engine(docker_client, helper_image=test_image)
        pol = make_policy(repo_dir, [{"name": "db", "postgres": {"container": server.name, "databases": ["shop"]}}],
                          [{"sql": "SELECT count(*) FROM items", "expect": "=10"}])
        repo = LocalRepository(repo_dir)
        assert run_backup(pol, engine=engine, repository=repo).succeeded
        outcome = run_drill(pol, engine=engine, repository=repo)
        assert outcome.succeeded, outcome.drill.message
        assert leftovers(docker_client) == []  # the scratch volume at /srv/pg is gone too
    finally:
        server.remove()


def test_a_scratch_server_that_exits_fails_the_drill_with_its_code_and_log(docker_client, repo_dir, test_image,
                                                                          monkeypatch):
    from docker.models.containers import ContainerCollection

    server = _pg_with_mounted_data(docker_client, test_image, "")
    try:
        server.psql("CREATE DATABASE shop")
        engine = Engine(docker_client, helper_image=test_image)
        pol = make_policy(repo_dir, [{"name": "db", "postgres": {"container": server.name, "databases": ["shop"]}}])
        repo = LocalRepository(repo_dir)
        assert run_backup(pol, engine=engine, repository=repo).succeeded
        run = ContainerCollection.run

        def refusing(self, image, command=None, **kwargs):  # an image whose entrypoint refuses to start
            if LABEL_DRILL in (kwargs.get("labels") or {}):
                command = ["sh", "-c", 'echo "not seeded: refusing to start" >&2; exit 7']
            return run(self, image, command, **kwargs)

        monkeypatch.setattr(ContainerCollection, "run", refusing)
        outcome = run_drill(pol, engine=engine, repository=repo)
        monkeypatch.undo()
        assert outcome.drill.phase == "Failed"
        message = outcome.drill.message
        assert f"the scratch server started from container {server.name!r} exited with code 7" in message
        assert "not seeded: refusing to start" in message
        assert leftovers(docker_client) == []
    finally:
        server.remove()
