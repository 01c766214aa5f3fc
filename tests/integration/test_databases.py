"""PostgreSQL and MariaDB dumps and restores on real servers: back up, destroy, restore, compare row by row."""

from __future__ import annotations

import json
import logging
import re
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
        odd = 'it\'s a "table"; -- x'
        quoted = '"' + odd.replace('"', '""') + '"'
        pg_server.psql(f"CREATE TABLE {quoted} (id serial PRIMARY KEY, v text); CREATE INDEX odd_v ON {quoted} (v); "
                       f"INSERT INTO {quoted} (v) VALUES ('a'), ('b')", name)
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

        pg_server.psql(f"DROP TABLE {quoted}", name)
        one = run_restore(db_restore("postgres", pg_server, name, tables=[odd], overwrite=True), pol,
                          engine=_engine(pg_server), repository=LocalRepository(repo_dir))
        assert one.succeeded, one.status.message
        assert pg_server.psql(f"INSERT INTO {quoted} (v) VALUES ('c') RETURNING id, (SELECT count(*) FROM pg_indexes "
                              "WHERE indexname = 'odd_v')", name) == "3|1"
        assert pg_server.psql("SELECT v FROM x", name) == "kept"
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


# A shop a DBA would recognise: orders with a serial key, foreign keys to and from it, a check, indexes, a
# trigger, comments, grants, row-level security and a view on it.
PG_SHOP = """
CREATE ROLE {role} NOLOGIN;
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE orders (
  id serial PRIMARY KEY,
  customer_id integer NOT NULL REFERENCES customers(id) ON DELETE RESTRICT,
  total numeric(12,2) NOT NULL CONSTRAINT orders_total_positive CHECK (total >= 0),
  status text NOT NULL DEFAULT 'new',
  placed timestamptz NOT NULL DEFAULT '2026-01-01 00:00:00+00',
  updated timestamptz,
  reference text UNIQUE
);
CREATE INDEX orders_customer_placed ON orders (customer_id, placed DESC);
CREATE INDEX orders_open ON orders (placed) WHERE status = 'new';
CREATE TABLE order_items (id serial PRIMARY KEY, order_id integer NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
                          sku text NOT NULL, quantity integer NOT NULL CHECK (quantity > 0));
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.updated := now(); RETURN NEW; END$$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
COMMENT ON TABLE orders IS 'one row per order';
COMMENT ON COLUMN orders.total IS 'gross, in EUR';
COMMENT ON INDEX orders_open IS 'the open orders dashboard';
GRANT SELECT, INSERT, UPDATE ON orders TO {role};
GRANT USAGE ON SEQUENCE orders_id_seq TO {role};
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY orders_open_only ON orders FOR SELECT TO {role} USING (status = 'new');
CREATE VIEW open_orders AS SELECT id, customer_id, total FROM orders WHERE status = 'new';
INSERT INTO customers (name) SELECT 'customer ' || i FROM generate_series(1, 20) i;
INSERT INTO orders (customer_id, total, status, reference)
SELECT 1 + i % 20, i * 1.5, CASE WHEN i % 3 = 0 THEN 'shipped' ELSE 'new' END, 'R-' || i FROM generate_series(1, 500) i;
INSERT INTO order_items (order_id, sku, quantity) SELECT 1 + i % 500, 'sku-' || i, 1 + i % 4 FROM generate_series(1, 1500) i;
"""

# The shape of `orders`, not just its rows: what pg_restore --table alone loses.
PG_ORDERS_SHAPE = {
    "columns": "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
               "WHERE attrelid = 'orders'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    "constraints": "SELECT conrelid::regclass, conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
                   "WHERE conrelid = 'orders'::regclass OR confrelid = 'orders'::regclass ORDER BY 1::text, 2",
    "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'orders' ORDER BY 1",
    "triggers": "SELECT tgname, tgenabled, pg_get_triggerdef(oid) FROM pg_trigger "
                "WHERE tgrelid = 'orders'::regclass AND NOT tgisinternal ORDER BY 1",
    "defaults": "SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a "
                "ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = 'orders'::regclass ORDER BY 1",
    "sequence": "SELECT pg_get_serial_sequence('orders', 'id'), last_value, is_called FROM orders_id_seq",
    "comments": "SELECT obj_description('orders'::regclass, 'pg_class'), col_description('orders'::regclass, 3), "
                "obj_description('orders_open'::regclass, 'pg_class')",
    "acls": "SELECT relname, relacl FROM pg_class WHERE relname IN ('orders', 'orders_id_seq') ORDER BY 1",
    "security": "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'orders'::regclass",
    "policies": "SELECT polname, polcmd, polroles::regrole[], pg_get_expr(polqual, polrelid) FROM pg_policy "
                "WHERE polrelid = 'orders'::regclass",
    "rows": "SELECT count(*), md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o",
}
PG_VIEW = "SELECT count(*), sum(total) FROM open_orders"


def pg_shape(server, db: str) -> dict[str, str]:
    return {name: server.psql(sql, db) for name, sql in PG_ORDERS_SHAPE.items()}


def seed_shop(server, db: str) -> str:
    role = f"clerk_{db[-8:]}"
    server.psql(PG_SHOP.replace("{role}", role), db)
    return role


def test_postgres_one_table_restore_brings_back_the_whole_table(pg_server, pg_database, repo_dir):
    db = pg_database("shop")
    seed_shop(pg_server, db)
    before, view = pg_shape(pg_server, db), pg_server.psql(PG_VIEW, db)
    assert "orders_total_positive" in before["constraints"] and "nextval" in before["defaults"]
    pol = pg_policy("p", repo_dir, pg_server, [db])
    repo = LocalRepository(repo_dir)
    assert run_backup(pol, engine=_engine(pg_server), repository=repo).succeeded
    items = pg_server.psql("SELECT count(*), sum(order_id) FROM order_items", db)

    pg_server.psql("DROP TABLE orders CASCADE", db)  # takes the view and order_items' foreign key with it
    one = run_restore(db_restore("postgres", pg_server, db, tables=["orders"], overwrite=True), pol,
                      engine=_engine(pg_server), repository=repo)
    assert one.succeeded, one.status.message
    assert pg_shape(pg_server, db) == before
    assert "not restored" in one.status.message and "view public.open_orders" in one.status.message
    assert pg_server.psql("SELECT to_regclass('open_orders') IS NULL", db) == "t"
    assert pg_server.psql("INSERT INTO orders (customer_id, total) VALUES (1, 9) RETURNING id", db) == "501"
    with pytest.raises(Exception, match="order_items_order_id_fkey"):
        pg_server.psql("INSERT INTO order_items (order_id, sku, quantity) VALUES (99999, 'x', 1)", db)
    with pytest.raises(Exception, match="orders_total_positive"):
        pg_server.psql("INSERT INTO orders (customer_id, total) VALUES (1, -1)", db)
    assert pg_server.psql("UPDATE orders SET status = 'paid' WHERE id = 1 RETURNING updated IS NOT NULL", db) == "t"

    view_back = run_restore(db_restore("postgres", pg_server, db, tables=["public.open_orders"], overwrite=True), pol,
                            engine=_engine(pg_server), repository=repo)
    assert view_back.succeeded, view_back.status.message
    assert "not restored" not in view_back.status.message

    # Over the live table: its rows go back to the backup's, its neighbours keep theirs.
    pg_server.psql("UPDATE orders SET total = 0", db)
    refused = run_restore(db_restore("postgres", pg_server, db, tables=["orders"], overwrite=True), pol,
                          engine=_engine(pg_server), repository=repo)
    assert refused.status.phase == "Failed" and "view public.open_orders depends on table" in refused.status.message
    assert "name those objects in tables:" in refused.status.message
    assert pg_server.psql("SELECT count(*) FROM orders WHERE total <> 0", db) == "0"  # nothing changed
    again = run_restore(db_restore("postgres", pg_server, db, tables=["orders", "open_orders"], overwrite=True), pol,
                        engine=_engine(pg_server), repository=repo)
    assert again.succeeded, again.status.message
    assert pg_shape(pg_server, db) == before and pg_server.psql(PG_VIEW, db) == view
    assert pg_server.psql("SELECT count(*), sum(order_id) FROM order_items", db) == items


def test_postgres_tables_into_a_new_database(pg_server, pg_database, repo_dir):
    db = pg_database("shop")
    seed_shop(pg_server, db)
    before = pg_shape(pg_server, db)
    pol = pg_policy("p", repo_dir, pg_server, [db])
    repo = LocalRepository(repo_dir)
    assert run_backup(pol, engine=_engine(pg_server), repository=repo).succeeded

    missing = run_restore(db_restore("postgres", pg_server, db + "_x", tables=["ordres"]), pol,
                          engine=_engine(pg_server), repository=repo)
    assert missing.status.phase == "Failed" and "no table, view or materialized view 'ordres'" in missing.status.message
    assert pg_server.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{db}_x'") == "0"

    copy = pg_database("copy")
    pg_server.psql(f'DROP DATABASE "{copy}"')
    result = run_restore(db_restore("postgres", pg_server, copy, tables=["customers", "orders"]), pol,
                         engine=_engine(pg_server), repository=repo)
    assert result.succeeded, result.status.message
    shape = pg_shape(pg_server, copy)
    # order_items is not there, so neither is its foreign key to orders: reported, not restored.
    assert "fk constraint public.order_items order_items_order_id_fkey (needs table public.order_items)" in \
        result.status.message
    assert {k: v for k, v in shape.items() if k != "constraints"} == {k: v for k, v in before.items() if k != "constraints"}
    assert shape["constraints"] == "\n".join(line for line in before["constraints"].splitlines()
                                             if not line.startswith("order_items|"))
    assert pg_server.psql("SELECT to_regclass('order_items') IS NULL", copy) == "t"
    assert pg_server.psql("UPDATE orders SET status = 'paid' WHERE id = 1 RETURNING updated IS NOT NULL", copy) == "t"


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


MARIA_SHOP = """
SET SESSION max_recursive_iterations = 100000;
CREATE TABLE customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL UNIQUE);
CREATE TABLE orders (
  id INT AUTO_INCREMENT PRIMARY KEY,
  customer_id INT NOT NULL,
  total DECIMAL(12,2) NOT NULL COMMENT 'gross, in EUR',
  status VARCHAR(20) NOT NULL DEFAULT 'new',
  placed DATETIME NOT NULL DEFAULT '2026-01-01 00:00:00',
  updated DATETIME NULL,
  reference VARCHAR(40) UNIQUE,
  CONSTRAINT orders_total_positive CHECK (total >= 0),
  CONSTRAINT orders_customer FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE RESTRICT,
  KEY orders_customer_placed (customer_id, placed),
  KEY orders_status (status)
) COMMENT 'one row per order';
CREATE TABLE order_items (id INT AUTO_INCREMENT PRIMARY KEY, order_id INT NOT NULL, sku VARCHAR(40) NOT NULL,
  quantity INT NOT NULL CHECK (quantity > 0),
  CONSTRAINT order_items_order FOREIGN KEY (order_id) REFERENCES orders (id) ON DELETE CASCADE);
CREATE TABLE order_log (id INT AUTO_INCREMENT PRIMARY KEY, order_id INT, event VARCHAR(20));
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW SET NEW.updated = NOW();
CREATE TRIGGER orders_logged AFTER INSERT ON orders FOR EACH ROW
  INSERT INTO order_log (order_id, event) VALUES (NEW.id, 'placed');
CREATE VIEW open_orders AS SELECT id, customer_id, total FROM orders WHERE status = 'new';
INSERT INTO customers (name)
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < 20) SELECT CONCAT('customer ', i) FROM seq;
INSERT INTO orders (customer_id, total, status, reference)
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < 500)
SELECT 1 + i % 20, i * 1.5, IF(i % 3 = 0, 'shipped', 'new'), CONCAT('R-', i) FROM seq;
INSERT INTO order_items (order_id, sku, quantity)
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < 1500)
SELECT 1 + i % 500, CONCAT('sku-', i), 1 + i % 4 FROM seq;
"""

MARIA_ORDERS_SHAPE = {
    "create": "SHOW CREATE TABLE orders",  # columns, keys, foreign keys, checks, comments, AUTO_INCREMENT
    "indexes": "SELECT INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE, INDEX_TYPE FROM information_schema.STATISTICS "
               "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'orders' ORDER BY 1, 2",
    "constraints": "SELECT TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE FROM information_schema.TABLE_CONSTRAINTS "
                   "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ('orders', 'order_items') ORDER BY 1, 2",
    "foreign keys": "SELECT CONSTRAINT_NAME, TABLE_NAME, REFERENCED_TABLE_NAME, UPDATE_RULE, DELETE_RULE "
                    "FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE() "
                    "AND 'orders' IN (TABLE_NAME, REFERENCED_TABLE_NAME) ORDER BY 1",
    "checks": "SELECT CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
              "WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = 'orders' ORDER BY 1",
    "triggers": "SELECT TRIGGER_NAME, EVENT_MANIPULATION, ACTION_TIMING, ACTION_STATEMENT, ACTION_ORDER, SQL_MODE, "
                "DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() "
                "AND EVENT_OBJECT_TABLE = 'orders' ORDER BY 1",
    "rows": "SELECT COUNT(*), MD5(GROUP_CONCAT(CONCAT_WS('|', id, customer_id, total, status, placed, "
            "IFNULL(updated, '-'), reference) ORDER BY id)) FROM orders",
}
MARIA_VIEW = "SELECT COUNT(*), SUM(total) FROM open_orders"


def maria_shape(server, db: str) -> dict[str, str]:
    return {name: server.mysql(sql, db) for name, sql in MARIA_ORDERS_SHAPE.items()}


def maria_policy(repo: Path, server, db: str) -> BackupPolicy:
    return BackupPolicy.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "p"},
        "spec": {"targets": [{"name": "db", "mysql": {"container": server.name, "databases": [db]}}],
                 "storage": {"local": {"path": str(repo)}}}})


def test_mariadb_one_table_restore_brings_back_keys_constraints_and_triggers(maria_server, maria_database, repo_dir):
    db = maria_database("shop")
    maria_server.mysql(MARIA_SHOP, db)
    before, view = maria_shape(maria_server, db), maria_server.mysql(MARIA_VIEW, db)
    assert "orders_total_positive" in before["checks"] and "orders_logged" in before["triggers"]
    pol = maria_policy(repo_dir, maria_server, db)
    repo = LocalRepository(repo_dir)
    assert run_backup(pol, engine=_engine(maria_server), repository=repo).succeeded
    items = maria_server.mysql("SELECT COUNT(*), SUM(order_id) FROM order_items", db)

    typo = run_restore(db_restore("mysql", maria_server, db, tables=["orders", "ordres"], overwrite=True), pol,
                       engine=_engine(maria_server), repository=repo)
    assert typo.status.phase == "Failed" and "has no table or view 'ordres'" in typo.status.message
    assert maria_server.mysql("SELECT COUNT(*) FROM orders", db) == "500"  # refused before anything was dropped

    maria_server.mysql("SET FOREIGN_KEY_CHECKS = 0; DROP TABLE orders", db)  # MariaDB ignores CASCADE
    one = run_restore(db_restore("mysql", maria_server, db, tables=["orders"], overwrite=True), pol,
                      engine=_engine(maria_server), repository=repo)
    assert one.succeeded, one.status.message
    assert maria_shape(maria_server, db) == before
    assert maria_server.mysql(MARIA_VIEW, db) == view
    assert maria_server.mysql("SELECT COUNT(*), SUM(order_id) FROM order_items", db) == items
    assert "foreign key" not in one.status.message
    next_id = re.search(r"AUTO_INCREMENT=(\d+)", before["create"])[1]  # InnoDB reserves ids in batches
    assert maria_server.mysql("INSERT INTO orders (customer_id, total) VALUES (1, 9); SELECT LAST_INSERT_ID(); "
                              "SELECT COUNT(*) FROM order_log WHERE order_id = LAST_INSERT_ID()", db) == f"{next_id}\n1"
    with pytest.raises(Exception, match="orders_total_positive"):
        maria_server.mysql("INSERT INTO orders (customer_id, total) VALUES (1, -1)", db)
    with pytest.raises(Exception, match="foreign key constraint fails"):
        maria_server.mysql("INSERT INTO orders (customer_id, total) VALUES (999, 1)", db)

    # Over the live table: rows go back to the backup's; a row elsewhere that pointed at a newer order is reported.
    maria_server.mysql("UPDATE orders SET total = 0; INSERT INTO order_items (order_id, sku, quantity) "
                       f"VALUES ({next_id}, 'late', 1)", db)
    again = run_restore(db_restore("mysql", maria_server, db, tables=["orders", "open_orders"], overwrite=True), pol,
                        engine=_engine(maria_server), repository=repo)
    assert again.succeeded, again.status.message
    assert maria_shape(maria_server, db) == before and maria_server.mysql(MARIA_VIEW, db) == view
    assert "foreign key order_items_order: 1 rows of table order_items reference rows not in table orders" in \
        again.status.message


def test_mariadb_tables_into_a_new_database(maria_server, maria_database, repo_dir):
    db = maria_database("shop")
    maria_server.mysql(MARIA_SHOP, db)
    before = maria_shape(maria_server, db)
    pol = maria_policy(repo_dir, maria_server, db)
    repo = LocalRepository(repo_dir)
    assert run_backup(pol, engine=_engine(maria_server), repository=repo).succeeded

    copy = maria_database("copy")
    maria_server.mysql(f"DROP DATABASE `{copy}`")
    result = run_restore(db_restore("mysql", maria_server, copy, tables=["orders", "order_log"]), pol,
                         engine=_engine(maria_server), repository=repo)
    assert result.succeeded, result.status.message
    assert maria_server.mysql("SHOW TABLES", copy).split() == ["order_log", "orders"]
    shape = maria_shape(maria_server, copy)
    assert {k: shape[k] for k in ("create", "indexes", "checks", "triggers", "rows")} == \
        {k: before[k] for k in ("create", "indexes", "checks", "triggers", "rows")}
    assert (f"foreign key orders_customer of table orders references table customers, which is not in database "
            f"{copy}: restore it too") in result.status.message


def _engine_for(client, image):
    from dockvault.engine.core import Engine

    return Engine(client, helper_image=image)


def _engine(server):
    return _engine_for(server.container.client, server.container.image.tags[0] if server.container.image.tags else
                       server.container.image.id)
