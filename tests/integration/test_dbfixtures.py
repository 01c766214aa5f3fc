"""The database fixtures themselves: servers answer, passwords are required and never in process args."""

from __future__ import annotations

import time

import pytest

from tests.dbfixtures import (
    MARIA_SOCKET,
    PG_BIN,
    DbCommandError,
    new_password,
    start_maria_server,
    start_pg_server,
)
from tests.treecheck import volume_path

pytestmark = pytest.mark.docker


def test_servers_answer_with_the_expected_versions_and_tools(pg_server, maria_server):
    assert pg_server.psql("SHOW server_version").startswith("15.")
    assert pg_server.psql("SELECT current_user") == "postgres"
    # PATH in the container puts version 15 first: no Debian pg_wrapper in between for docker exec.
    names = ("psql", "pg_dump", "pg_dumpall", "pg_restore")
    tools = pg_server.exec(["sh", "-c", f"for t in {' '.join(names)}; do command -v $t; done"], check=True).text
    assert tools.splitlines() == [f"{PG_BIN}/{name}" for name in names]
    assert "(PostgreSQL) 15." in pg_server.exec(["pg_dump", "--version"], check=True).text

    assert maria_server.mysql("SELECT VERSION()").startswith("10.11.")
    assert maria_server.mysql("SELECT CURRENT_USER()") == "root@localhost"
    assert maria_server.mysql("SELECT @@skip_networking, @@socket") == f"1\t{MARIA_SOCKET}"
    assert maria_server.exec(["mariadb-dump", "--version"], check=True).exit_code == 0


def test_postgres_requires_the_password_on_the_local_socket(pg_server):
    assert pg_server.psql("SELECT type, database, user_name, auth_method FROM pg_hba_file_rules") \
        == "local|{all}|{all}|scram-sha-256"
    assert pg_server.psql("SHOW listen_addresses") == ""

    with pytest.raises(DbCommandError) as wrong:
        pg_server.psql("SELECT 1", password="not-" + pg_server.password)
    assert 'password authentication failed for user "postgres"' in wrong.value.stderr
    with pytest.raises(DbCommandError) as missing:
        pg_server.psql("SELECT 1", password="")
    assert "no password supplied" in missing.value.stderr
    # No peer authentication either: the postgres OS user gets no free pass.
    with pytest.raises(DbCommandError) as peer:
        pg_server.psql("SELECT 1", password="", os_user="postgres")
    assert "no password supplied" in peer.value.stderr
    with pytest.raises(DbCommandError):
        pg_server.psql("SELECT 1", password="wrong", os_user="postgres")
    # The right password works from any OS user.
    assert pg_server.psql("SELECT 1", os_user="postgres") == "1"


def test_mariadb_requires_the_password_on_the_local_socket(maria_server):
    accounts = maria_server.mysql("SELECT user, host, plugin FROM mysql.user ORDER BY user").splitlines()
    assert accounts == ["mariadb.sys\tlocalhost\tmysql_native_password",
                        "root\tlocalhost\tmysql_native_password"]

    with pytest.raises(DbCommandError) as wrong:
        maria_server.mysql("SELECT 1", password="not-" + maria_server.password)
    assert "Access denied for user 'root'@'localhost' (using password: YES)" in wrong.value.stderr
    # No unix_socket authentication: neither OS root nor OS mysql gets in without the password.
    for os_user in ("root", "mysql"):
        with pytest.raises(DbCommandError) as missing:
            maria_server.mysql("SELECT 1", password="", os_user=os_user)
        assert "Access denied for user 'root'@'localhost' (using password: NO)" in missing.value.stderr
    result = maria_server.exec(["mariadb-admin", "-u", "root", "status"], env=maria_server.env("wrong"))
    assert result.exit_code != 0 and b"Access denied" in result.stderr


def test_password_is_in_no_process_args(pg_server, maria_server):
    for server, daemon in ((pg_server, "postgres -D "), (maria_server, "mariadbd ")):
        args = server.exec(["ps", "-eo", "args"], check=True).text
        assert daemon in args
        assert server.password not in args
        assert server.password not in " ".join(server.container.attrs["Config"]["Cmd"])
        assert server.password not in " ".join(server.container.attrs["Args"])
        # The password files of the first start are gone.
        leftovers = server.exec(["sh", "-c", "ls -A /run/postgresql/ /run/mysqld/ 2>/dev/null"]).text.split()
        assert not [name for name in leftovers if name.startswith((".pwfile", ".init", ".install"))], leftovers
    # Also while a client is connected and busy.
    busy = pg_server.container.client.api.exec_create(
        pg_server.container.id, ["psql", "-Xqw", "-U", "postgres", "-c", "SELECT pg_sleep(3)"],
        environment=pg_server.env())
    pg_server.container.client.api.exec_start(busy["Id"], detach=True)
    deadline = time.monotonic() + 10
    while "SELECT pg_sleep" not in (args := pg_server.exec(["ps", "-eo", "args"], check=True).text):
        assert time.monotonic() < deadline, args
        time.sleep(0.1)
    assert pg_server.password not in args


def test_unicode_and_bytea_roundtrip_through_psql(pg_server, pg_database):
    db = pg_database()
    text = "Grüße, 世界, ĳ, \u00a0nbsp, emoji 🎉, quote ' and backslash \\"
    blob = bytes(range(256)) * 3
    pg_server.psql(f"""
        CREATE TABLE t (id int PRIMARY KEY, s text NOT NULL, b bytea NOT NULL);
        INSERT INTO t VALUES (1, $q${text}$q$, '\\x{blob.hex()}');
    """, db=db)
    assert pg_server.psql("SELECT s FROM t WHERE id = 1", db=db) == text
    assert pg_server.psql("SELECT char_length(s) FROM t", db=db) == str(len(text))
    assert bytes.fromhex(pg_server.psql("SELECT encode(b, 'hex') FROM t", db=db)) == blob
    assert pg_server.psql("SELECT b FROM t", db=db) == "\\x" + blob.hex()  # bytea_output = hex
    assert pg_server.psql(f"SELECT datname FROM pg_database WHERE datname = '{db}'") == db


def test_unicode_roundtrip_through_mariadb(maria_server, maria_database):
    db = maria_database()
    text = "Grüße, 世界, emoji 🎉"
    maria_server.mysql(f"""
        CREATE TABLE t (id INT PRIMARY KEY, s TEXT NOT NULL, b LONGBLOB NOT NULL);
        INSERT INTO t VALUES (1, '{text}', X'{bytes(range(256)).hex()}');
    """, db=db)
    assert maria_server.mysql("SELECT s FROM t", db=db) == text
    assert maria_server.mysql("SELECT CHAR_LENGTH(s), HEX(b) FROM t", db=db) \
        == f"{len(text)}\t{bytes(range(256)).hex().upper()}"


def test_database_factories_give_distinct_databases(pg_server, pg_database, maria_server, maria_database):
    first, second = pg_database(), pg_database("dump")
    assert first != second and second.startswith("dump_")
    listed = set(pg_server.psql("SELECT datname FROM pg_database").splitlines())
    assert {first, second} <= listed
    mfirst, msecond = maria_database(), maria_database()
    assert mfirst != msecond
    assert {mfirst, msecond} <= set(maria_server.mysql("SHOW DATABASES").splitlines())


def test_restart_and_new_container_reuse_the_data_volume(docker_client, test_image):
    """Clean stop on SIGTERM; a later start (same or new container) skips init and keeps data and password."""
    password = new_password() + " with spaces"
    pg = start_pg_server(docker_client, test_image, password=password)
    maria = start_maria_server(docker_client, test_image, password=password)
    reused = []
    try:
        assert (volume_path(docker_client, pg.volume) / "PG_VERSION").read_text() == "15\n"
        assert (volume_path(docker_client, maria.volume) / "mysql").is_dir()
        pg.psql("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
        maria.mysql("CREATE DATABASE kept; CREATE TABLE kept.t (v TEXT); INSERT INTO kept.t VALUES ('still here')")

        for server in (pg, maria):
            started = time.monotonic()
            server.container.stop(timeout=30)
            assert time.monotonic() - started < 10
            server.container.reload()
            assert server.container.attrs["State"]["ExitCode"] == 0, server.logs()
            server.container.start()
            server.wait_ready()
        assert "skipping initdb" in pg.logs()
        assert "skipping mariadb-install-db" in maria.logs()
        assert pg.psql("SELECT v FROM kept") == "still here"
        assert maria.mysql("SELECT v FROM kept.t") == "still here"

        # A new container on the same volume: init skipped, the original password still the one.
        pg.container.stop(timeout=30)
        maria.container.stop(timeout=30)
        reused.append(start_pg_server(docker_client, test_image, password=password, volume=pg.volume))
        reused.append(start_maria_server(docker_client, test_image, password=password, volume=maria.volume))
        assert reused[0].psql("SELECT v FROM kept") == "still here"
        assert reused[1].mysql("SELECT v FROM kept.t") == "still here"
        with pytest.raises(DbCommandError):
            reused[0].psql("SELECT 1", password="x" + password)
        with pytest.raises(DbCommandError):
            reused[1].mysql("SELECT 1", password="x" + password)
    finally:
        for server in reused:
            server.remove()  # the volume belongs to the first server
        for server in (pg, maria):
            server.remove()
    assert not docker_client.volumes.list(filters={"name": pg.volume})
    assert not docker_client.volumes.list(filters={"name": maria.volume})
