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
    containers = [c.name for c in client.containers.list(all=True, filters={"label": LABEL_JOB})]
    return containers + [v.name for v in client.volumes.list(filters={"label": LABEL_DRILL})]


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
