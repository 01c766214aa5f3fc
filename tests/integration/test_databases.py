"""PostgreSQL and MariaDB dumps and restores on real servers: back up, destroy, restore, compare row by row."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from dockvault.actions.backup import run_backup
from dockvault.actions.restore import run_restore
from dockvault.api import BackupPolicy, RestoreRequest
from dockvault.storage.local import LocalRepository
from tests.dbfixtures import start_pg_server

pytestmark = pytest.mark.docker

PG_SCHEMA = """
CREATE ROLE {role} NOLOGIN;
CREATE SEQUENCE invoice_no START 1000;
CREATE TABLE items (
  id integer PRIMARY KEY,
  title text,
  note text,
  payload bytea,
  price numeric(12,2),
  created timestamptz
);
INSERT INTO items
SELECT i,
       'Ürün №' || i || ' — 東京 ' || repeat('ß', i % 7),
       CASE WHEN i % 5 = 0 THEN NULL ELSE 'line1' || chr(10) || 'tab' || chr(9) || 'quote'' "dq" \\ ' || i END,
       CASE WHEN i % 11 = 0 THEN NULL ELSE decode(md5(i::text) || '00ff', 'hex') END,
       (i * 3.17)::numeric(12,2),
       timestamptz '2026-01-01 00:00:00+00' + i * interval '37 minutes'
FROM generate_series(1, 10000) AS i;
CREATE TABLE invoices (no integer DEFAULT nextval('invoice_no'), item integer REFERENCES items(id));
INSERT INTO invoices (item) SELECT id FROM items WHERE id % 100 = 0;
CREATE VIEW expensive AS SELECT id, title FROM items WHERE price > 30000;
GRANT SELECT ON items TO {role};
"""

PG_CHECKS = [
    "SELECT id, title, note, encode(payload, 'base64'), price, created FROM items ORDER BY id",
    "SELECT no, item FROM invoices ORDER BY no",
    "SELECT * FROM expensive ORDER BY id",
    "SELECT last_value FROM invoice_no",
    "SELECT has_table_privilege('{role}', 'items', 'SELECT')",
]


def seed_pg(server, db: str) -> str:
    """Load the schema into `db`, with a role of its own so tests on one server stay apart; returns the role."""
    role = f"reader_{db[-8:]}"
    server.psql(PG_SCHEMA.replace("{role}", role), db)
    return role


def snapshot_pg(server, db: str, role: str) -> list[str]:
    return [server.psql(sql.replace("{role}", role), db) for sql in PG_CHECKS]


def pg_policy(name: str, repo: Path, server, databases: list[str] | None = None, **extra) -> BackupPolicy:
    source = {"container": server.name, **({"databases": databases} if databases else {}), **extra}
    return BackupPolicy.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": name},
        "spec": {"targets": [{"name": "db", "postgres": source}], "storage": {"local": {"path": str(repo)}}}})


def db_restore(kind: str, server, database: str, **extra) -> RestoreRequest:
    return RestoreRequest.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "RestoreRequest", "metadata": {"name": "r"},
        "spec": {"policy": "p", "targets": [{"from": "db", kind: {"container": server.name, "database": database,
                                                                  **extra}}]}})


def test_postgres_backup_drop_restore_compares_row_by_row(pg_server, pg_database, repo_dir):
    db = pg_database("shop")
    role = seed_pg(pg_server, db)
    before = snapshot_pg(pg_server, db, role)
    assert pg_server.psql("SELECT count(*), count(note), count(payload) FROM items", db) == "10000|8000|9091"
    pol = pg_policy("p", repo_dir, pg_server, [db])
    repo = LocalRepository(repo_dir)
    outcome = run_backup(pol, engine=_engine(pg_server), repository=repo)
    assert outcome.succeeded, outcome.record.status.message
    dump, roles = outcome.record.status.artifacts
    assert dump.file == f"db.{db}.pgdump" and dump.details["database"] == db and dump.compression == "none"
    assert dump.details["serverVersion"].startswith("15.") and "15." in dump.details["pgDumpVersion"]
    assert roles.file == "db.globals.sql.zst"

    pg_server.psql(f'DROP DATABASE "{db}" WITH (FORCE)')
    result = run_restore(db_restore("postgres", pg_server, db), pol, engine=_engine(pg_server), repository=repo)
    assert result.succeeded, result.status.message
    assert snapshot_pg(pg_server, db, role) == before


def test_postgres_restore_one_deleted_table_and_into_a_new_name(pg_server, pg_database, repo_dir):
    db = pg_database("tbl")
    role = seed_pg(pg_server, db)
    before = snapshot_pg(pg_server, db, role)
    pol = pg_policy("p", repo_dir, pg_server, [db])
    repo = LocalRepository(repo_dir)
    assert run_backup(pol, engine=_engine(pg_server), repository=repo).succeeded

    pg_server.psql("DROP TABLE invoices; DROP VIEW expensive;", db)
    pg_server.psql("UPDATE items SET title = 'changed after backup' WHERE id = 1", db)
    refused = run_restore(db_restore("postgres", pg_server, db, tables=["invoices"]), pol, engine=_engine(pg_server),
                          repository=repo)
    assert refused.status.phase == "Failed" and "already exists" in refused.status.message
    one = run_restore(db_restore("postgres", pg_server, db, tables=["invoices"], overwrite=True), pol,
                      engine=_engine(pg_server), repository=repo)
    assert one.succeeded, one.status.message
    assert pg_server.psql("SELECT no, item FROM invoices ORDER BY no", db) == before[1]
    assert pg_server.psql("SELECT title FROM items WHERE id = 1", db) == "changed after backup"  # only that table

    original = [pg_server.psql(sql, db) for sql in PG_CHECKS[:2]]
    copy = pg_database("copy")
    pg_server.psql(f'DROP DATABASE "{copy}"')
    into_new = run_restore(db_restore("postgres", pg_server, copy), pol, engine=_engine(pg_server), repository=repo)
    assert into_new.succeeded, into_new.status.message
    assert snapshot_pg(pg_server, copy, role) == before
    assert [pg_server.psql(sql, db) for sql in PG_CHECKS[:2]] == original  # the original is untouched


def test_hostile_database_name_round_trips_and_injects_nothing(pg_server, repo_dir):
    name = "it's a \"db\"; DROP TABLE x; -- \\"
    pg_server.psql("CREATE TABLE IF NOT EXISTS canary (v text); DELETE FROM canary; INSERT INTO canary VALUES ('alive')")
    pg_server.psql(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"')
    try:
        pg_server.psql("CREATE TABLE x (v text); INSERT INTO x VALUES ('kept')", name)
        pol = pg_policy("p", repo_dir, pg_server, [name])
        outcome = run_backup(pol, engine=_engine(pg_server), repository=LocalRepository(repo_dir))
        assert outcome.succeeded, outcome.record.status.message
        assert pg_server.psql("SELECT v FROM x", name) == "kept"
        assert pg_server.psql("SELECT v FROM canary") == "alive"
        target = name + " restored"
        result = run_restore(db_restore("postgres", pg_server, target), pol, engine=_engine(pg_server),
                             repository=LocalRepository(repo_dir))
        assert result.succeeded, result.status.message
        assert pg_server.psql("SELECT v FROM x", target) == "kept"
    finally:
        for db in (name, name + " restored"):
            pg_server.psql(f'DROP DATABASE IF EXISTS "{db.replace(chr(34), chr(34) * 2)}" WITH (FORCE)')


def test_wrong_password_fails_and_publishes_nothing(pg_server, pg_database, repo_dir, monkeypatch, caplog):
    db = pg_database("pw")
    monkeypatch.setenv("DV_TEST_WRONG_PW", "definitely-not-it-0x5eed")
    pol = pg_policy("p", repo_dir, pg_server, [db], passwordFrom={"env": "DV_TEST_WRONG_PW"})
    with caplog.at_level(logging.DEBUG):
        outcome = run_backup(pol, engine=_engine(pg_server), repository=LocalRepository(repo_dir))
    assert outcome.record.status.phase == "Failed"
    message = outcome.record.status.message
    assert "target db:" in message and "password authentication failed" in message
    assert "definitely-not-it-0x5eed" not in message + caplog.text
    assert list((repo_dir / "p").iterdir()) == []


def test_password_never_visible_in_argv_exec_inspect_logs_or_manifest(pg_server, pg_database, repo_dir, caplog):
    db = pg_database("secret")
    pg_server.psql("CREATE TABLE big AS SELECT i, repeat(md5(i::text), 20) AS t FROM generate_series(1, 200000) i", db)
    client = pg_server.container.client
    seen: dict[str, str] = {}

    def spy(_n: int) -> None:
        if seen:
            return
        seen["ps"] = pg_server.exec(["ps", "-eo", "args"]).text
        execs = client.api.inspect_container(pg_server.container.id).get("ExecIDs") or []
        seen["exec"] = json.dumps([client.api.exec_inspect(e) for e in execs])
        seen["execs"] = str(len(execs))

    pol = pg_policy("p", repo_dir, pg_server, [db])
    with caplog.at_level(logging.DEBUG):
        outcome = run_backup(pol, engine=_engine(pg_server), repository=LocalRepository(repo_dir), progress=spy)
    assert outcome.succeeded, outcome.record.status.message
    assert "pg_dump" in seen["ps"] and int(seen["execs"]) >= 1  # the spy saw the dump running
    manifest = (repo_dir / "p" / outcome.record.id / "manifest.json").read_text()
    for where, text in {**seen, "logs": caplog.text, "manifest": manifest,
                        "status": outcome.record.model_dump_json()}.items():
        assert pg_server.password not in text, f"password leaked into {where}"


def test_dump_killed_mid_stream_fails_without_manifest_and_keeps_earlier_backups(docker_client, test_image, volumes,
                                                                                  repo_dir):
    server = start_pg_server(docker_client, test_image, volume=volumes("pgkill"))
    try:
        server.psql("CREATE DATABASE big")
        server.psql("CREATE TABLE blob AS SELECT i, decode(repeat(md5(i::text), 64), 'hex') AS b "
                    "FROM generate_series(1, 300000) i", "big")
        pol = pg_policy("p", repo_dir, server, ["big"])
        repo = LocalRepository(repo_dir)
        first = run_backup(pol, engine=_engine(server), repository=repo)
        assert first.succeeded
        killed = threading.Event()

        def kill(_n: int) -> None:
            if not killed.is_set():
                killed.set()
                server.container.kill()

        second = run_backup(pol, engine=_engine(server), repository=repo, progress=kill)
        assert killed.is_set()
        assert second.record.status.phase == "Failed" and "target db:" in second.record.status.message
        assert [b.id for b in repo.backups("p")] == [first.record.id]
        assert sorted(p.name for p in (repo_dir / "p").iterdir()) == [first.record.id]
    finally:
        server.remove()


def test_missing_and_stopped_containers_fail_with_clear_messages(docker_client, test_image, repo_dir, containers):
    missing = BackupPolicy.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "p"},
        "spec": {"targets": [{"name": "db", "postgres": {"container": "no-such-container"}}],
                 "storage": {"local": {"path": str(repo_dir)}}}})
    engine = _engine_for(docker_client, test_image)
    out = run_backup(missing, engine=engine, repository=LocalRepository(repo_dir))
    assert out.record.status.message == "target db: container 'no-such-container' does not exist"

    stopped = docker_client.containers.create(test_image, ["sleep", "60"], network_mode="none")
    containers.append(stopped)
    pol = BackupPolicy.model_validate({**missing.to_dict(), "spec": {**missing.to_dict()["spec"], "targets": [
        {"name": "db", "mysql": {"container": stopped.name}}]}})
    out = run_backup(pol, engine=engine, repository=LocalRepository(repo_dir))
    assert out.record.status.message == f"target db: container '{stopped.name}' is created, not running"

    no_tools = docker_client.containers.run(test_image, ["/bin/sleep", "60"], network_mode="none", detach=True,
                                            environment={"PATH": "/nonexistent"})
    containers.append(no_tools)
    pol = BackupPolicy.model_validate({**missing.to_dict(), "spec": {**missing.to_dict()["spec"], "targets": [
        {"name": "db", "postgres": {"container": no_tools.name, "databases": ["x"]}}]}})
    out = run_backup(pol, engine=engine, repository=LocalRepository(repo_dir))
    assert "client tool not found" in out.record.status.message and no_tools.name in out.record.status.message


MARIA_SCHEMA = """
SET SESSION max_recursive_iterations = 100000;
CREATE TABLE items (id INT PRIMARY KEY, title VARCHAR(200) CHARACTER SET utf8mb4, note TEXT, payload BLOB,
                    price DECIMAL(12,2), created DATETIME(6));
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, item INT);
CREATE TRIGGER items_audit AFTER INSERT ON items FOR EACH ROW INSERT INTO audit (item) VALUES (NEW.id);
CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
INSERT INTO items
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < 10000)
SELECT i, CONCAT('Ürün №', i, ' — 東京 😀'), IF(i % 5 = 0, NULL, CONCAT('quote'' "dq" \\\\ ', i)),
       IF(i % 11 = 0, NULL, UNHEX(CONCAT(MD5(i), '00ff'))), i * 3.17,
       TIMESTAMP('2026-01-01') + INTERVAL i * 37 MINUTE
FROM seq;
CREATE VIEW expensive AS SELECT id, title FROM items WHERE price > 30000;
"""

MARIA_CHECKS = [
    "SELECT id, title, note, HEX(payload), price, created FROM items ORDER BY id",
    "SELECT COUNT(*), SUM(item) FROM audit",
    "SELECT * FROM expensive ORDER BY id",
    "SELECT twice(21)",
]


def test_mariadb_backup_drop_restore_and_restore_under_a_new_name(maria_server, maria_database, repo_dir):
    db = maria_database("shop")
    maria_server.mysql(MARIA_SCHEMA, db)
    before = [maria_server.mysql(sql, db) for sql in MARIA_CHECKS]
    assert maria_server.mysql("SELECT COUNT(*), COUNT(note), COUNT(payload) FROM items", db) == "10000\t8000\t9091"
    assert before[1] == "10000\t50005000"
    pol = BackupPolicy.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "p"},
        "spec": {"targets": [{"name": "db", "mysql": {"container": maria_server.name, "databases": [db]}}],
                 "storage": {"local": {"path": str(repo_dir)}}}})
    repo = LocalRepository(repo_dir)
    outcome = run_backup(pol, engine=_engine(maria_server), repository=repo)
    assert outcome.succeeded, outcome.record.status.message
    dump, grants = outcome.record.status.artifacts
    assert dump.file == f"db.{db}.sql.zst" and grants.file == "db.grants.sql.zst"
    assert "MariaDB" in dump.details["serverVersion"] or "10.11" in dump.details["serverVersion"]
    manifest = (repo_dir / "p" / outcome.record.id / "manifest.json").read_text()
    assert maria_server.password not in manifest

    maria_server.mysql(f"DROP DATABASE `{db}`")
    result = run_restore(db_restore("mysql", maria_server, db), pol, engine=_engine(maria_server), repository=repo)
    assert result.succeeded, result.status.message
    assert [maria_server.mysql(sql, db) for sql in MARIA_CHECKS] == before

    copy = db + " copy `x`"
    result = run_restore(db_restore("mysql", maria_server, copy), pol, engine=_engine(maria_server), repository=repo)
    try:
        assert result.succeeded, result.status.message
        assert [maria_server.mysql(sql, copy) for sql in MARIA_CHECKS] == before
        refused = run_restore(db_restore("mysql", maria_server, copy), pol, engine=_engine(maria_server),
                              repository=repo)
        assert refused.status.phase == "Failed" and "already exists" in refused.status.message
    finally:
        maria_server.mysql(f"DROP DATABASE IF EXISTS `{copy.replace('`', '``')}`")


def _engine_for(client, image):
    from dockvault.engine.core import Engine

    return Engine(client, helper_image=image)


def _engine(server):
    return _engine_for(server.container.client, server.container.image.tags[0] if server.container.image.tags else
                       server.container.image.id)
