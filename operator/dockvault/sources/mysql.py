"""MySQL and MariaDB: one mysqldump per database (restorable under a new name), users and grants apart.

The container's own client tools run through `docker exec` on the local socket; the password travels
in the exec environment (MYSQL_PWD), and database names reach SQL only as escaped identifiers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

from ..api.backup import Artifact
from ..api.policy import BackupTarget, DrillCheck
from ..api.restore import MysqlRestore, RestoreTarget
from .base import BackupContext, Opener, RestoreContext, RestoreRefused, SourceError
from .database import (
    DbContainer,
    check_value,
    checks_for,
    connect,
    credentials,
    hex_names,
    pick_dumps,
    throwaway,
    wait_ready,
)
from .mysqldump_filter import select_tables, tables_in

kind = "mysql"
PASSWORD_KEYS = ("MARIADB_ROOT_PASSWORD", "MYSQL_ROOT_PASSWORD")
SYSTEM_DATABASES = {"information_schema", "performance_schema", "mysql", "sys"}
LIST_DATABASES = b"SELECT HEX(schema_name) FROM information_schema.schemata ORDER BY schema_name;"
DUMP_OPTIONS = ["--single-transaction", "--routines", "--events", "--triggers", "--hex-blob",
                "--default-character-set=utf8mb4"]


def identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class Server:
    """A MySQL/MariaDB server in a container, reached with the client tools that container ships."""

    def __init__(self, engine, spec) -> None:
        cid, name, env, image = connect(engine, spec.container)
        password = credentials(spec, env, PASSWORD_KEYS)
        self.db = DbContainer(engine, cid, name, {"MYSQL_PWD": password} if password is not None else {}, image)
        found = self.db.run(["sh", "-c", "command -v mariadb-dump || command -v mysqldump || true"],
                            what="finding mysqldump").decode().split()
        if not found:
            raise SourceError(f"container {name!r} has neither mariadb-dump nor mysqldump")
        self.dump = found[0]
        self.mariadb = self.dump.endswith("mariadb-dump")
        self.client = "mariadb" if self.mariadb else "mysql"
        self.user = f"--user={spec.user or 'root'}"

    def sql(self, statement: bytes, *, what: str) -> bytes:
        return self.db.run([self.client, self.user, "--batch", "--skip-column-names"], stdin=[statement], what=what)

    def databases(self) -> list[str]:
        return hex_names(self.sql(LIST_DATABASES, what="listing databases"))


def backup(target: BackupTarget, ctx: BackupContext) -> list[Artifact]:
    spec = target.mysql
    assert spec is not None
    server = Server(ctx.engine, spec)
    db = server.db
    version = server.sql(b"SELECT VERSION();", what="server version").decode().strip()
    tool = db.run([server.dump, "--version"], what="mysqldump --version").decode().strip()
    databases = spec.databases or [d for d in server.databases() if d not in SYSTEM_DATABASES]
    facts = {"container": db.name, "image": db.image, "serverVersion": version, "dumpVersion": tool,
             "databases": ",".join(quote(d, safe="") for d in databases)}
    artifacts = []
    for database in databases:
        chunks = db.stream([server.dump, server.user, *DUMP_OPTIONS, "--", database],
                           what=f"mysqldump of database {database!r}", cancel=ctx.cancel)
        artifacts.append(ctx.publish(target=target.name, source=kind, chunks=chunks,
                                     base_name=f"{target.name}.{quote(database, safe='')}.sql",
                                     details={**facts, "database": database, "format": "mysqldump (SQL)"}))
    if server.mariadb:  # MySQL has no portable users-and-grants dump; its grants live in the mysql schema
        grants = db.stream([server.dump, server.user, "--system=users"], what="dumping users and grants", cancel=ctx.cancel)
        artifacts.append(ctx.publish(target=target.name, source=kind, base_name=f"{target.name}.grants.sql", chunks=grants,
                                     details={**facts, "database": "", "format": "mariadb-dump --system=users (SQL)"}))
    return artifacts


def artifacts_for(artifacts: list[Artifact], destination: RestoreTarget) -> list[Artifact]:
    assert destination.mysql is not None
    return pick_dumps(artifacts, destination, destination.mysql.from_database, field="mysql.fromDatabase")


def restore(destination: RestoreTarget, streams: list[tuple[Artifact, Opener]], ctx: RestoreContext) -> None:
    """Feed the dump, or with `tables:` only those tables' sections, to the client.

    Not one transaction: MySQL commits every DROP and CREATE on its own. A table restore drops and creates
    each table, then loads its rows in one transaction (committed when its rows end; a failure rolls them
    back), then creates its triggers. A restore that fails midway can leave a table empty or missing:
    running it again repairs that.
    """
    spec = destination.mysql
    assert spec is not None
    server = Server(ctx.engine, spec)
    exists = spec.database in server.databases()
    if exists and not spec.overwrite:
        raise RestoreRefused(f"database {spec.database!r} already exists in container {server.db.name!r}; "
                             "set overwrite: true to restore into it")
    name = identifier(spec.database)
    ((artifact, dump),) = streams
    if spec.tables:
        with contextlib.closing(ctx.stream(dump)) as chunks:
            found = tables_in(chunks, until=spec.tables)
        if absent := [t for t in spec.tables if t not in found]:
            raise SourceError(f"mysql.tables: the dump of database {artifact.details['database']!r} has no table or "
                              f"view {', '.join(map(repr, absent))} (it has: {', '.join(sorted(found)) or 'none'})")
    if not exists:
        server.sql(f"CREATE DATABASE {name};".encode(), what="creating the database")

    def script() -> Iterator[bytes]:
        yield f"USE {name};\n".encode()  # the dump names no database, so it lands where we say
        if not spec.tables:
            yield from ctx.stream(dump)
            return
        yield b"SET autocommit = 0;\n"  # a table's rows commit together, when the DDL after them commits
        yield from select_tables(ctx.stream(dump), spec.tables)
        yield b"\nCOMMIT;\n"

    try:
        server.db.feed([server.client, server.user, "--binary-mode"], script(),
                       what=f"restoring database {spec.database!r}", cancel=ctx.cancel)
    except BaseException:
        if not exists:
            with contextlib.suppress(Exception):
                server.sql(f"DROP DATABASE IF EXISTS {name};".encode(), what="dropping the half-restored database")
        raise
    if not spec.tables:
        ctx.notes.append(f"{'restored into' if exists else 'created'} database {spec.database} in {server.db.name}")
        return
    ctx.notes.append(f"restored {', '.join(spec.tables)} into database {spec.database} in {server.db.name}")
    ctx.notes.extend(_foreign_key_problems(server, spec.database, spec.tables))


# Foreign keys within the database, one row per column: (constraint, table, column, referenced table and column).
FOREIGN_KEY_COLUMNS = (b"SELECT HEX(CONSTRAINT_NAME), HEX(TABLE_NAME), HEX(COLUMN_NAME), HEX(REFERENCED_TABLE_NAME), "
                       b"HEX(REFERENCED_COLUMN_NAME) FROM information_schema.KEY_COLUMN_USAGE "
                       b"WHERE TABLE_SCHEMA = DATABASE() AND REFERENCED_TABLE_SCHEMA = DATABASE() "
                       b"ORDER BY TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION;")
LIST_TABLES = b"SELECT HEX(TABLE_NAME) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE();"


@dataclass(frozen=True)
class ForeignKey:
    name: str
    table: str
    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]

    def orphans_query(self) -> str:
        """Rows of `table` whose key is in no row of `parent` (a key with a NULL is not checked, as MySQL does)."""
        present = " AND ".join(f"c.{identifier(c)} IS NOT NULL" for c in self.columns)
        match = " AND ".join(f"p.{identifier(p)} = c.{identifier(c)}" for c, p in zip(self.columns, self.parent_columns))
        return (f"SELECT COUNT(*) FROM {identifier(self.table)} c WHERE {present} "
                f"AND NOT EXISTS (SELECT 1 FROM {identifier(self.parent)} p WHERE {match});")


def foreign_keys(rows: list[str]) -> list[ForeignKey]:
    """`FOREIGN_KEY_COLUMNS`' names, five a row, grouped into foreign keys."""
    grouped: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for name, table, column, parent, parent_column in zip(*[iter(rows)] * 5):
        grouped.setdefault((name, table), []).append((column, parent, parent_column))
    return [ForeignKey(name, table, tuple(c for c, _, _ in cols), cols[0][1], tuple(p for _, _, p in cols))
            for (name, table), cols in grouped.items()]


def _foreign_key_problems(server: Server, database: str, restored: list[str]) -> list[str]:
    """Rows load with FOREIGN_KEY_CHECKS=0, so the keys from and to the restored tables are checked afterwards."""
    use = f"USE {identifier(database)};\n".encode()
    tables = set(hex_names(server.sql(use + LIST_TABLES, what="listing tables")))
    problems = []
    for key in foreign_keys(hex_names(server.sql(use + FOREIGN_KEY_COLUMNS, what="listing foreign keys"))):
        if key.table not in restored and key.parent not in restored:
            continue
        if key.parent not in tables:
            problems.append(f"foreign key {key.name} of table {key.table} references table {key.parent}, which is "
                            f"not in database {database}: restore it too")
            continue
        orphans = int(server.sql(use + key.orphans_query().encode(), what=f"checking foreign key {key.name}"))
        if orphans:
            problems.append(f"foreign key {key.name}: {orphans} rows of table {key.table} reference rows not in "
                            f"table {key.parent}")
    return problems


def drill(target: BackupTarget, streams: list[tuple[Artifact, Opener]], ctx: RestoreContext,
          checks: list[DrillCheck]) -> None:
    """Restore every dump into a scratch server from the same image and run the policy's checks.

    Row counts are not compared: mysqldump's snapshot cannot be shared, so counts taken beside it could
    differ on a busy server and fail a good backup.
    """
    spec = target.mysql
    assert spec is not None
    name = f"dockvault-drill-{ctx.job_id}-{target.name}"
    with throwaway(ctx.engine, spec.container, name=name, labels=ctx.labels(target.name)) as scratch:
        access = {"container": scratch.name, "user": spec.user, "passwordFrom": spec.password_from}
        probe = MysqlRestore.model_validate({**access, "database": "mysql"})
        wait_ready(lambda: Server(ctx.engine, probe).sql(b"SELECT 1;", what="probe"),
                   what=f"scratch server {scratch.name}", cancel=ctx.cancel, scratch=scratch)
        server = Server(ctx.engine, probe)
        for artifact, opener in (s for s in streams if s[0].details.get("database")):
            database = artifact.details["database"]
            destination = RestoreTarget.model_validate(
                {"from": target.name, "mysql": {**access, "database": database, "overwrite": True}})
            restore(destination, [(artifact, opener)], ctx)
            for check in checks_for(checks, target.name, database):
                value = server.sql(f"USE {identifier(database)}; {check.sql}".encode(), what=f"check {check.sql!r}")
                if problem := check_value(check, value.decode()):
                    raise SourceError(f"database {database!r}: {problem}")
            ctx.notes.append(f"{target.name}: database {database} restored")
