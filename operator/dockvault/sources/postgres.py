"""PostgreSQL: pg_dump -Fc per database plus roles, run inside the database's own container.

Client and server versions always match because the container's own tools do the work; the
connection is the container's local socket, never the network. Database names travel inside a
quoted connection string or as psql variables, never through a shell or SQL text.

A `tables:` restore chooses the tables' entries from the archive's table of contents (see pgtoc) and restores
just those with `pg_restore --use-list`; with `overwrite` it drops exactly those first, in the same transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import quote

from ..api.backup import Artifact
from ..api.policy import BackupTarget, CompressionSpec, DrillCheck
from ..api.restore import PostgresRestore, RestoreTarget
from ..engine.execstream import ExecResult
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
from .pgtoc import PlanError, TablePlan, parse_listing, plan_tables

kind = "postgres"
PASSWORD_KEYS = ("POSTGRES_PASSWORD",)
STORED = CompressionSpec(algorithm="none")  # pg_dump -Fc compresses already
LIST_DATABASES = ("SELECT encode(convert_to(datname, 'UTF8'), 'hex') FROM pg_database "
                  "WHERE datallowconn AND NOT datistemplate ORDER BY datname")
LIST_RELATIONS = ("SELECT encode(convert_to(n.nspname, 'UTF8'), 'hex') || ' ' || encode(convert_to(c.relname, 'UTF8'), "
                  "'hex') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                  "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')")
# pg_restore reads the dump on stdin and a --use-list from a file: the list (entry ids) arrives as $1 and
# reaches it through a pipe on fd 3, so nothing is written inside the user's container.
USE_LIST = 'list=$1; shift; exec 4<&0; printf "%s" "$list" | "$@" --use-list=/dev/fd/3 3<&0 0<&4 4<&-'
# pg_restore stops reading once it has the table of contents; `cat` takes the rest of what is sent, so no
# write waits on a process that has gone.
LIST_TOC = ["sh", "-c", "pg_restore --list --verbose; status=$?; cat >/dev/null; exit $status"]
TOC_PREFIX = 4 << 20  # holds the table of contents of tens of thousands of objects
LISTING_LIMIT = 1 << 30  # the listing is held in memory; this is far above any real one, so nothing is cut


# Rows per table, read in the same snapshot pg_dump dumps, so a drill can prove nothing went missing.
COUNT_TABLES = (
    "SELECT format('%I.%I', n.nspname, c.relname) || E'\\t' || (xpath('/row/c/text()', query_to_xml("
    "format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname !~ '^pg_(toast|temp)' ORDER BY 1;"
)


def parse_counts(output: bytes) -> dict[str, int]:
    """Records of `COUNT_TABLES` as printed by `psql -A -t -0`."""
    counts = {}
    for record in output.decode("utf-8").split("\0"):
        if record.strip():
            name, _, rows = record.strip("\n").rpartition("\t")
            counts[name] = int(rows)
    return counts


def conninfo(database: str) -> str:
    """A libpq connection string selecting `database`, quoted so no name can add parameters."""
    escaped = database.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{escaped}'"


def psql(database: str, sql: str) -> list[str]:
    return ["psql", "-X", "-w", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", f"--dbname={conninfo(database)}", "-c", sql]


def _db(engine, spec) -> DbContainer:
    cid, name, env, image = connect(engine, spec.container)
    user = spec.user or env.get("POSTGRES_USER") or "postgres"
    password = credentials(spec, env, PASSWORD_KEYS)
    exec_env = {"PGUSER": user, "PGAPPNAME": "dockvault", "PGCONNECT_TIMEOUT": "10"}
    if password is not None:
        exec_env["PGPASSWORD"] = password  # exec environment: not in argv, not in `docker inspect`
    return DbContainer(engine, cid, name, exec_env, image)


def artifact_name(target: str, database: str) -> str:
    return f"{target}.{quote(database, safe='')}.pgdump"


def backup(target: BackupTarget, ctx: BackupContext) -> list[Artifact]:
    spec = target.postgres
    assert spec is not None
    db = _db(ctx.engine, spec)
    server = db.run(psql("postgres", "SHOW server_version"), what="psql").decode().strip()
    client = db.run(["pg_dump", "--version"], what="pg_dump --version").decode().strip()
    databases = spec.databases or hex_names(db.run(psql("postgres", LIST_DATABASES), what="listing databases"))
    facts = {"container": db.name, "image": db.image, "serverVersion": server, "pgDumpVersion": client,
             "databases": ",".join(quote(d, safe="") for d in databases)}
    artifacts = []
    for database in databases:
        details = {**facts, "database": database, "format": "pg_dump custom"}
        argv = ["pg_dump", "--no-password", "--format=custom", f"--dbname={conninfo(database)}"]
        if not ctx.record_tables:
            chunks = db.stream(argv, what=f"pg_dump of database {database!r}", cancel=ctx.cancel)
            artifacts.append(ctx.publish(target=target.name, source=kind, base_name=artifact_name(target.name, database),
                                         chunks=chunks, compression=STORED, details=details))
            continue
        with db.session(["psql", "-X", "-w", "-A", "-t", "-q", "-0", "-v", "ON_ERROR_STOP=1",
                         f"--dbname={conninfo(database)}"]) as session:
            session.send(b"BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\nSELECT pg_export_snapshot();\n")
            snapshot = session.read_until(b"\0")[:-1].decode().strip()
            chunks = db.stream([*argv, f"--snapshot={snapshot}"], what=f"pg_dump of database {database!r}",
                               cancel=ctx.cancel)
            artifact = ctx.publish(target=target.name, source=kind, base_name=artifact_name(target.name, database),
                                   chunks=chunks, compression=STORED, details=details)
            session.send(COUNT_TABLES.encode() + b"\nCOMMIT;\n")
            session.close_stdin()
            counts = parse_counts(session.read_rest())
            db.check(session.result(), f"counting rows of database {database!r}")
        artifacts.append(artifact.model_copy(update={"tables": counts}))
    roles = db.stream(["pg_dumpall", "--no-password", "--globals-only", f"--dbname={conninfo('postgres')}"],
                      what="pg_dumpall --globals-only", cancel=ctx.cancel)
    artifacts.append(ctx.publish(target=target.name, source=kind, base_name=f"{target.name}.globals.sql", chunks=roles,
                                 details={**facts, "database": "", "format": "pg_dumpall globals (SQL)"}))
    return artifacts


def artifacts_for(artifacts: list[Artifact], destination: RestoreTarget) -> list[Artifact]:
    spec = destination.postgres
    assert spec is not None
    chosen = pick_dumps(artifacts, destination, spec.from_database, field="postgres.fromDatabase")
    roles = [a for a in artifacts if not a.details.get("database")] if spec.globals_ else []
    return roles + chosen


def restore(destination: RestoreTarget, streams: list[tuple[Artifact, Opener]], ctx: RestoreContext) -> None:
    spec = destination.postgres
    assert spec is not None
    db = _db(ctx.engine, spec)
    existing = hex_names(db.run(psql("postgres", LIST_DATABASES), what="listing databases"))
    exists = spec.database in existing
    if exists and not spec.overwrite:
        raise RestoreRefused(f"database {spec.database!r} already exists in container {db.name!r}; "
                             "set overwrite: true to restore into it")
    *roles, (_, dump) = streams
    plan = _plan_tables(db, spec, lambda: ctx.stream(dump), exists=exists) if spec.tables else None
    for _, opener in roles:
        # Roles that exist already make their CREATE fail; the rest must still apply, so errors do not stop it.
        db.feed(["psql", "-X", "-w", "-q", "-v", "ON_ERROR_STOP=0", f"--dbname={conninfo('postgres')}"],
                ctx.stream(opener), what="restoring roles", cancel=ctx.cancel)
    if not exists:
        db.feed(["psql", "-X", "-w", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"name={spec.database}",
                 f"--dbname={conninfo('postgres')}"], [b'CREATE DATABASE :"name";\n'], what="creating the database")
    argv = ["pg_restore", "--no-password", "--exit-on-error", "--single-transaction", f"--dbname={conninfo(spec.database)}"]
    if exists:
        argv += ["--clean", "--if-exists"]  # drops exactly the entries restored, never with CASCADE
    if plan is not None:
        argv = ["sh", "-c", USE_LIST, "sh", plan.use_list(), *argv]
    try:
        db.feed(argv, ctx.stream(dump), what=f"pg_restore into database {spec.database!r}", cancel=ctx.cancel)
    except BaseException as exc:
        if not exists:
            with contextlib.suppress(Exception):
                db.feed(["psql", "-X", "-w", "-q", "-v", "name=" + spec.database, f"--dbname={conninfo('postgres')}"],
                        [b'DROP DATABASE IF EXISTS :"name";\n'], what="dropping the half-restored database")
        if plan is not None and isinstance(exc, SourceError) and "other objects depend on it" in str(exc):
            raise SourceError(f"{exc} (nothing was changed: name those objects in tables: too; dockvault never "
                              "drops with CASCADE)") from exc
        raise
    if plan is None:
        ctx.notes.append(f"{'restored into' if exists else 'created'} database {spec.database} in {db.name}")
        return
    came = plan.summary()
    ctx.notes.append(f"restored {', '.join(r.describe() for r in plan.relations)} into database {spec.database} "
                     f"in {db.name}" + (f" with its {came}" if came else ""))
    if plan.left_out:
        ctx.notes.append(f"not restored (name them, or the tables they need, in tables: to restore them too): "
                         f"{', '.join(plan.left_out)}")


def _plan_tables(db: DbContainer, spec: PostgresRestore, open_dump: Callable[[], Iterator[bytes]], *,
                 exists: bool) -> TablePlan:
    """The archive entries that make up the named tables, given what the destination database already holds."""
    listing = parse_listing(_listing(db, open_dump, what="reading the dump's table of contents"))
    relations: set[tuple[str, str]] = set()
    if exists:
        names = hex_names(db.run(psql(spec.database, LIST_RELATIONS), what=f"listing relations of {spec.database!r}"))
        relations = set(zip(names[::2], names[1::2]))
    try:
        return plan_tables(listing, spec.tables or [], existing=relations, new_database=not exists)
    except PlanError as exc:
        raise SourceError(f"postgres.tables: {exc}") from None


def _listing(db: DbContainer, open_dump: Callable[[], Iterator[bytes]], *, what: str) -> str:
    """`pg_restore --list --verbose` of a dump. The table of contents leads the archive, so its first TOC_PREFIX
    bytes are enough, and the whole dump is read only when they are not."""
    head = bytearray()
    with contextlib.closing(open_dump()) as chunks:
        for chunk in chunks:
            head += chunk
            if len(head) >= TOC_PREFIX:
                break
    out, result = _list_toc(db, [bytes(head)])
    if result.exit_code != 0 and len(head) >= TOC_PREFIX:
        with contextlib.closing(open_dump()) as chunks:
            out, result = _list_toc(db, chunks)
    db.check(result, what)
    return out.decode("utf-8", "replace")


def _list_toc(db: DbContainer, chunks: Iterable[bytes]) -> tuple[bytes, ExecResult]:
    with db.session(LIST_TOC) as proc:
        return proc.feed(chunks, limit=LISTING_LIMIT), proc.result()


def drill(target: BackupTarget, streams: list[tuple[Artifact, Opener]], ctx: RestoreContext,
          checks: list[DrillCheck]) -> None:
    """Restore every dump into a scratch server from the same image; rows per table must match the backup's."""
    spec = target.postgres
    assert spec is not None
    roles = [s for s in streams if not s[0].details.get("database")]
    dumps = [s for s in streams if s[0].details.get("database")]
    name = f"dockvault-drill-{ctx.job_id}-{target.name}"
    with throwaway(ctx.engine, spec.container, name=name, labels=ctx.labels(target.name)) as scratch:
        access = {"container": scratch.name, "user": spec.user, "passwordFrom": spec.password_from}
        admin = PostgresRestore.model_validate({**access, "database": "postgres"})
        wait_ready(lambda: _db(ctx.engine, admin).run(psql("postgres", "SELECT 1"), what="probe"),
                   what=f"scratch server {scratch.name}", cancel=ctx.cancel, scratch=scratch)
        db = _db(ctx.engine, admin)
        for index, (artifact, opener) in enumerate(dumps):
            database = artifact.details["database"]
            destination = RestoreTarget.model_validate(
                {"from": target.name, "postgres": {**access, "database": database, "overwrite": True}})
            restore(destination, (roles if index == 0 else []) + [(artifact, opener)], ctx)
            if artifact.tables is not None:
                counted = parse_counts(db.run(["psql", "-X", "-w", "-A", "-t", "-q", "-0", f"--dbname={conninfo(database)}",
                                               "-c", COUNT_TABLES], what="counting rows"))
                wrong = [f"{t}: {counted.get(t, 'missing')} rows, backup had {n}" for t, n in artifact.tables.items()
                         if counted.get(t) != n]
                if wrong:
                    raise SourceError(f"database {database!r} restored with wrong row counts: {'; '.join(wrong[:5])}")
            for check in checks_for(checks, target.name, database):
                value = db.run(psql(database, check.sql), what=f"check {check.sql!r}").decode()
                if problem := check_value(check, value):
                    raise SourceError(f"database {database!r}: {problem}")
            ctx.notes.append(f"{target.name}: database {database} restored"
                             + (f", {len(artifact.tables)} tables with matching row counts" if artifact.tables else ""))
