"""MySQL and MariaDB: one mysqldump per database (restorable under a new name), users and grants apart.

The container's own client tools run through `docker exec` on the local socket; the password travels
in the exec environment (MYSQL_PWD), and database names reach SQL only as escaped identifiers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
    spec = destination.mysql
    assert spec is not None
    server = Server(ctx.engine, spec)
    exists = spec.database in server.databases()
    if exists and not spec.overwrite:
        raise RestoreRefused(f"database {spec.database!r} already exists in container {server.db.name!r}; "
                             "set overwrite: true to restore into it")
    name = identifier(spec.database)
    if not exists:
        server.sql(f"CREATE DATABASE {name};".encode(), what="creating the database")
    ((_, dump),) = streams

    def script() -> Iterator[bytes]:
        yield f"USE {name};\n".encode()  # the dump names no database, so it lands where we say
        yield from ctx.stream(dump)

    try:
        server.db.feed([server.client, server.user, "--binary-mode"], script(),
                       what=f"restoring database {spec.database!r}", cancel=ctx.cancel)
    except BaseException:
        if not exists:
            with contextlib.suppress(Exception):
                server.sql(f"DROP DATABASE IF EXISTS {name};".encode(), what="dropping the half-restored database")
        raise
    ctx.notes.append(f"{'restored into' if exists else 'created'} database {spec.database} in {server.db.name}")


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
