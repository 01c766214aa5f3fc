#!/usr/bin/env python3
"""PostgreSQL dump/restore benchmark: dockvault against the plain `docker exec pg_dump` / `pg_restore`.

Run it inside the harness (private dockerd, fixture image with postgresql-15):

    bash scripts/harness.sh python3 benchmarks/db_dump.py --size 500M --repeat 3

A PostgreSQL 15 server container (tests/dbfixtures.py, `network_mode=none`) gets a database of about
`--size` bytes on disk (pg_database_size, indexes included), generated server-side with SQL:
customers, orders, events (word-like text, numbers, timestamps, jsonb) and attachments (bytea, half
incompressible, half text), with primary keys, foreign keys and secondary indexes.

Methods, interleaved per repeat, the order reversed every other repeat (a b a' b', b a b' a', ...); before
every timed command the server checkpoints, the host syncs, and the benchmark waits (bounded) for an idle
machine:

  (a)  plain:     docker exec -e PGPASSWORD CONTAINER pg_dump -U postgres -Fc DB > file
  (b)  dockvault: dockvault backup POLICY --config-dir DIR      (pg_dump --format=custom via the exec API)
  (a') plain:     docker exec -i -e PGPASSWORD CONTAINER pg_restore -U postgres -d NEW --single-transaction < file
                  (NEW created before the timer starts)
  (b') dockvault: dockvault run --once --config-dir DIR          with a RestoreRequest into a new database

After the repeats, the same four methods run 3 times on a database with one row (bench_empty): what a
run costs whatever the size (CLI start-up, extra execs, fsync, ...), so that the gap at full size splits
into a fixed part and a part that grows with the data.

The password reaches `docker exec` through the environment of the docker CLI (`-e PGPASSWORD` without a
value), never through argv. Wall time, peak RSS and CPU of the dockvault / docker CLI processes are measured as
in all the benchmarks here (common.run_timed): os.wait4() of the command started by a small spawner process
(ru_maxrss, KiB); the CPU of the database container (pg_dump / pg_restore and the server backend) from its
cgroup. Every restore is checked: the row count of every table must match the source; the restored
database is dropped right after its check (so autovacuum on it cannot slow down the next timed command).
Targets are printed as PASS/MISS; nothing is asserted but correctness.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from common import (DOCKVAULT, QUIET, BenchError, Method, Run, add_run_options, check_args, cli_startup,
                    dockvault_env, fmt, human, log, machine, machine_line, mark, parse_size, print_methods, print_rows, rss_floor,
                    process_cpu_reader, run_bench, run_timed, size_label, sync)

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

CONTAINER = "dockvault-bench-pg"
GENERATOR = 2            # bump when the data recipe changes: a kept database is then rebuilt
POLICY = "bench"
TARGET = "db"

TARGETS = {
    "backup_ratio": 0.9,     # throughput dockvault / plain, backup >=
    "restore_ratio": 0.9,    # throughput dockvault / plain, restore >=
    "rss_mib": 100.0,        # peak RSS of the dockvault process, backup and restore <=
}
CALM_FOREIGN = 0.5       # cores of foreign load up to which a run counts as calm (see the "calm runs" ratios)


# ------------------------------------------------------------------------------- data generation --
# Word-like text without a vocabulary table: the word of rank r (0..7999) is spelled from syllables by
# r's base-28 digits, so frequent (low) ranks are short words; ranks are drawn with a power law.
# Everything is inlined into the INSERT ... SELECT: no function calls, no detoasting per row.
SYLLABLES = ["ka", "lo", "mi", "ren", "to", "sa", "ve", "qui", "dor", "an", "el", "us", "pra", "ni",
             "mo", "ta", "ex", "ul", "ri", "fe", "gon", "be", "stra", "li", "cu", "po", "er", "in"]
_SYL = "(ARRAY[" + ",".join(f"'{s}'" for s in SYLLABLES) + "])"
VOCABULARY = 8000


def _word(r: str) -> str:
    return (f"{_SYL}[1 + {r} % 28] || CASE WHEN {r} >= 28 THEN {_SYL}[1 + ({r} / 28) % 28] ELSE '' END"
            f" || CASE WHEN {r} >= 784 THEN {_SYL}[1 + ({r} / 784) % 28] ELSE '' END")


def sql_words(count: str, skew: float = 2.5) -> str:
    """`count` (an SQL expression over the row) words separated by spaces, Zipf-like frequencies."""
    return (f"array_to_string(ARRAY(SELECT {_word('r')} FROM (SELECT floor({VOCABULARY} * power(random(), {skew}))::int"
            f" AS r FROM generate_series(1, {count})) AS q), ' ')")


def sql_word(vocabulary: int, skew: float, row: str = "i") -> str:
    """One word; `row` makes the subquery correlated, else it would run once for the whole INSERT."""
    return (f"(SELECT {_word('r')} FROM (SELECT floor({vocabulary} * power(random(), {skew}) + 0 * {row})::int AS r)"
            f" AS q)")


SCHEMA = """
CREATE TABLE bench_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE customers (
  id bigint PRIMARY KEY,
  name text NOT NULL,
  email text NOT NULL,
  city text NOT NULL,
  created_at timestamptz NOT NULL,
  balance numeric(12,2) NOT NULL,
  active boolean NOT NULL
);
CREATE INDEX customers_email ON customers (email);
CREATE TABLE orders (
  id bigint PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES customers (id),
  status text NOT NULL,
  quantity integer NOT NULL,
  total numeric(12,2) NOT NULL,
  created_at timestamptz NOT NULL,
  shipped_at timestamptz,
  note text
);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE INDEX orders_created ON orders (created_at);
CREATE TABLE events (
  id bigint PRIMARY KEY,
  occurred_at timestamptz NOT NULL,
  level text NOT NULL,
  source text NOT NULL,
  message text NOT NULL,
  latency_ms double precision,
  attrs jsonb
);
CREATE INDEX events_occurred ON events (occurred_at);
CREATE TABLE attachments (
  id bigint PRIMARY KEY,
  order_id bigint NOT NULL REFERENCES orders (id),
  filename text NOT NULL,
  mime text NOT NULL,
  created_at timestamptz NOT NULL,
  content bytea NOT NULL
);
CREATE INDEX attachments_order ON attachments (order_id);
"""
TABLES = ["customers", "orders", "events", "attachments", "bench_meta"]
# Rows per batch and scale unit: about 10.5 MB on disk with indexes (events ~50%, attachments ~28%).
UNIT = {"customers": 2000, "orders": 10000, "events": 20000, "attachments": 2000}


def batch_sql(k: int, scale: int, fraction: float = 1.0) -> str:
    """Batch k: its own id ranges, foreign keys only into its own batch, so batches can load in parallel.

    A `fraction` < 1 fills only the start of the batch's id ranges (the last, partial batch).
    """
    full = [UNIT[t] * scale for t in ("customers", "orders", "events", "attachments")]
    c0, o0, e0, a0 = (k * n for n in full)
    nc, no, ne, na = (max(1, round(n * fraction)) for n in full)
    return f"""
SELECT setseed({(k % 1000) / 1000.0 + 0.0005});
BEGIN;
INSERT INTO customers
SELECT i,
       initcap({sql_word(VOCABULARY, 1.5)}) || ' ' || initcap({sql_word(VOCABULARY, 1)}),
       {sql_word(VOCABULARY, 1)} || '.' || i || '@' || {sql_word(300, 1)} || '.example',
       initcap({sql_word(500, 3)}),
       timestamptz '2019-01-01 00:00:00+00' + i * interval '31 seconds' + random() * interval '1 day',
       round((random() * 20000 - 2000)::numeric, 2),
       random() < 0.9
FROM generate_series({c0 + 1}, {c0 + nc}) AS i;
INSERT INTO orders
SELECT i,
       {c0 + 1} + floor(random() * {nc})::bigint,
       (ARRAY['new','paid','packed','shipped','shipped','shipped','delivered','delivered','delivered','cancelled'])[1 + i % 10],
       1 + floor(power(random(), 4) * 40)::int,
       round((random() * 500 + 5)::numeric, 2),
       timestamptz '2020-01-01 00:00:00+00' + i * interval '6 seconds',
       CASE WHEN i % 10 BETWEEN 3 AND 8
            THEN timestamptz '2020-01-02 00:00:00+00' + i * interval '6 seconds' + random() * interval '5 days' END,
       CASE WHEN i % 4 = 0 THEN {sql_words('3 + i % 17')} END
FROM generate_series({o0 + 1}, {o0 + no}) AS i;
INSERT INTO events
SELECT i,
       timestamptz '2021-01-01 00:00:00+00' + i * interval '2 seconds' + random() * interval '2 seconds',
       (ARRAY['INFO','INFO','INFO','INFO','INFO','DEBUG','DEBUG','WARN','ERROR'])[1 + floor(random() * 9)::int],
       (ARRAY['http','db.pool','auth','cache','scheduler','worker','billing','mailer'])[1 + floor(random() * 8)::int],
       {sql_words('6 + i % 23')},
       round((power(random(), 3) * 2000)::numeric, 3)::double precision,
       CASE WHEN i % 3 = 0 THEN jsonb_build_object('user', floor(random() * 50000)::int,
            'route', '/api/v2/' || {sql_word(200, 1)} || '/' || floor(random() * 100000)::int,
            'status', (ARRAY[200,200,200,201,204,304,400,404,500])[1 + floor(random() * 9)::int]) END
FROM generate_series({e0 + 1}, {e0 + ne}) AS i;
INSERT INTO attachments
SELECT i,
       {o0 + 1} + floor(random() * {no})::bigint,
       {sql_word(VOCABULARY, 1)} || '-' || i || CASE WHEN i % 2 = 0 THEN '.bin' ELSE '.txt' END,
       CASE WHEN i % 2 = 0 THEN 'application/octet-stream' ELSE 'text/plain' END,
       timestamptz '2020-01-01 00:00:00+00' + i * interval '90 seconds',
       CASE WHEN i % 2 = 0
            THEN (SELECT string_agg(sha256(int8send(i * 1000 + j)), ''::bytea) FROM generate_series(1, 8 + i % 57) AS j)
            ELSE convert_to({sql_words('100 + i % 300')}, 'UTF8') END
FROM generate_series({a0 + 1}, {a0 + na}) AS i;
COMMIT;
"""


# --------------------------------------------------------------------------------- cpu counters --
def container_cpu_reader(container_id: str):
    """A function returning the container's CPU seconds so far (cgroup v1 or v2), or None when unreadable."""
    candidates = [Path(f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage"),
                  Path(f"/sys/fs/cgroup/cpu,cpuacct/docker/{container_id}/cpuacct.usage"),
                  Path(f"/sys/fs/cgroup/docker/{container_id}/cpu.stat"),
                  Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat")]
    for path in candidates:
        if not path.exists():
            continue
        if path.name == "cpuacct.usage":
            return lambda p=path: int(p.read_text()) / 1e9

        def v2(p: Path = path) -> float:
            for line in p.read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
            return float("nan")
        return v2
    return lambda: None


def dockerd_cpu_reader():
    """CPU seconds of the private dockerd (the harness's pidfile next to its socket), or None."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host.startswith("unix://"):
        return lambda: None
    pidfile = Path(host[len("unix://"):]).parent / "pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return lambda: None
    return process_cpu_reader(pid)


@dataclass
class DbRun(Run):
    """common.Run (wall time, peak RSS and CPU of the docker CLI or dockvault) and what this benchmark adds."""

    container_cpu: float | None = None   # the database container's cgroup during the run
    dockerd_cpu: float | None = None     # the private dockerd during the run
    foreign_cores: float | None = None   # cores busy on average with work that is not this run's (other users)
    create_seconds: float | None = None  # plain restore: the CREATE DATABASE before the timer (dockvault's is inside)


@dataclass
class Subject:
    """A database to dump and restore: the big one, or the empty one that shows the fixed cost per run."""

    db: str
    policy: str
    plain_file: Path
    counts: dict[str, int]
    tag: str = ""          # in restored database names


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.image = os.environ["DOCKVAULT_TEST_IMAGE"]
        self.token = uuid.uuid4().hex[:6]
        self.server = None
        self.restored: list[str] = []
        self.methods = {k: Method(k, t) for k, t in [
            ("a", "(a)  plain: docker exec pg_dump -Fc > file"),
            ("b", "(b)  dockvault backup"),
            ("a'", "(a') plain: docker exec -i pg_restore < file"),
            ("b'", "(b') dockvault run --once (restore)"),
        ]}
        # the same four on a database with one row: what a run costs regardless of size
        self.fixed = {k: Method(k, t) for k, t in [
            ("a", "(a)  plain pg_dump, empty database"), ("b", "(b)  dockvault backup, empty database"),
            ("a'", "(a') plain pg_restore, empty database"), ("b'", "(b') dockvault restore, empty database"),
        ]}

    # ---- server and database
    def start_server(self) -> None:
        import docker as docker_sdk

        from tests.dbfixtures import PgServer, start_pg_server

        self.client = docker_sdk.from_env(timeout=600)
        try:
            found = self.client.containers.get(CONTAINER)
        except docker_sdk.errors.NotFound:
            found = None
        if found is not None:
            env = dict(item.split("=", 1) for item in found.attrs["Config"].get("Env") or [] if "=" in item)
            mounts = [m for m in found.attrs.get("Mounts", []) if m.get("Type") == "volume"]
            if "POSTGRES_PASSWORD" not in env or not mounts:
                raise BenchError(f"a container {CONTAINER!r} exists but is not a kept benchmark server; remove it")
            self.server = PgServer(container=found, name=CONTAINER, password=env["POSTGRES_PASSWORD"],
                                   user=env.get("POSTGRES_USER", "postgres"), volume=mounts[0]["Name"], owns_volume=True)
            if found.status != "running":
                found.start()
            self.server.wait_ready()
            log(f"reusing kept server container {CONTAINER} (volume {self.server.volume})")
        else:
            log(f"starting PostgreSQL server container {CONTAINER}")
            self.server = start_pg_server(self.client, self.image, name=CONTAINER)
        self.container_id = self.server.container.id
        self.container_cpu = container_cpu_reader(self.container_id)
        self.dockerd_cpu = dockerd_cpu_reader()
        self.pg_version = self.server.psql("SHOW server_version")
        for db in self.server.psql("SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_restore\\_%'").split():
            self.drop_database(db)

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self.server.psql(sql, db)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def db_size(self, db: str) -> int:
        return int(self.psql(f"SELECT pg_database_size('{db}')"))

    def ensure_database(self) -> None:
        size = self.args.size
        self.db = f"bench_{size_label(size)}"
        wanted = {"generator": str(GENERATOR), "size_arg": str(size)}
        exists = self.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{self.db}'") == "1"
        if exists:
            try:
                meta = dict(line.split("|", 1) for line in self.psql("SELECT key, value FROM bench_meta", self.db).splitlines())
            except Exception:  # noqa: BLE001 - half-built: rebuild
                meta = {}
            if {k: meta.get(k) for k in wanted} == wanted:
                self.meta = meta
                log(f"reusing database {self.db} ({human(self.db_size(self.db))}, built {meta.get('created')})")
                return
            log(f"database {self.db} is stale or incomplete; rebuilding it")
            self.drop_database(self.db)
        self.build_database(wanted)

    def build_database(self, wanted: dict[str, str]) -> None:
        size, db = self.args.size, self.db
        t0 = time.perf_counter()
        self.psql(f'CREATE DATABASE "{db}"')
        self.psql(SCHEMA, db)
        base = self.db_size(db)
        unit_bytes = 10.5e6
        # batches of about 1/24 of the data (at least one unit), loaded by two sessions at once
        scale = max(1, round((size - base) / 24 / unit_bytes))
        log(f"building database {db}: target {human(size)} on disk, batches of {scale} unit(s) (~{human(scale * unit_bytes)})")
        failure: list[BaseException] = []

        def load(batches: list[int]) -> None:
            def worker(mine: list[int]) -> None:
                try:
                    for k in mine:
                        self.psql(batch_sql(k, scale), db)
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    failure.append(exc)
            threads = [threading.Thread(target=worker, args=(batches[j::2],)) for j in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if failure:
                raise BenchError(f"loading data failed: {failure[0]}")

        load([0, 1])
        next_batch, loaded = 2, 2.0
        current = self.db_size(db)
        per_batch = (current - base) / 2
        while current < size * 0.98:
            # whole batches while at least one fits, then one partial batch for the rest
            whole = int((size - current) / per_batch)
            if whole >= 1:
                load(list(range(next_batch, next_batch + whole)))
                next_batch += whole
                loaded += whole
            else:
                fraction = max(0.05, (size - current) / per_batch)
                self.psql(batch_sql(next_batch, scale, fraction), db)
                next_batch += 1
                loaded += fraction
            current = self.db_size(db)
            per_batch = (current - base) / loaded
            log(f"  {loaded:.2f} batches: {human(current)} after {time.perf_counter() - t0:.0f}s")
        self.psql("VACUUM (FREEZE, ANALYZE)", db)
        self.psql("CHECKPOINT")
        meta = {**wanted, "batches": f"{loaded:.2f}", "scale": str(scale),
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        values = ", ".join(f"('{k}', '{v}')" for k, v in meta.items())
        self.psql(f"INSERT INTO bench_meta VALUES {values}", db)
        self.meta = meta
        log(f"database built in {time.perf_counter() - t0:.0f}s: {human(self.db_size(db))}")

    def row_counts(self, db: str) -> dict[str, int]:
        sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in TABLES)
        return {name: int(n) for name, n in (line.split("|") for line in self.psql(sql, db).splitlines())}

    def describe_source(self) -> None:
        self.source_bytes = self.db_size(self.db)
        self.source_counts = self.row_counts(self.db)
        rows = self.psql(
            "SELECT c.relname, c.relkind, pg_total_relation_size(c.oid), pg_relation_size(c.oid) FROM pg_class c "
            "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'i') ORDER BY 3 DESC", self.db)
        self.relations = [(n, kind, int(total), int(main)) for n, kind, total, main in
                          (line.split("|") for line in rows.splitlines())]
        tables = {n: total for n, kind, total, _ in self.relations if kind == "r"}
        log(f"source {self.db}: {human(self.source_bytes)} ({self.source_bytes:,} bytes); "
            + ", ".join(f"{t} {self.source_counts[t]:,} rows / {human(tables.get(t, 0))}" for t in TABLES[:4]))

    # ---- setup
    def setup(self) -> None:
        self.start_server()
        self.ensure_database()
        self.describe_source()
        self.work = Path(tempfile.mkdtemp(prefix="dockvault-dbbench-"))
        self.scratch = self.work / "scratch"
        self.plain_dir = self.work / "plain"
        self.repo = self.work / "repo"
        self.config = self.work / "config"
        self.state = self.work / "state"
        for d in (self.scratch, self.plain_dir, self.repo, self.config, self.state):
            d.mkdir()
        self.main = Subject(self.db, POLICY, self.plain_dir / f"{self.db}.pgdump", self.source_counts)
        empty = "bench_empty"
        if self.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{empty}'") != "1":
            self.psql(f'CREATE DATABASE "{empty}"')
            self.psql("CREATE TABLE one (id integer PRIMARY KEY, note text); INSERT INTO one VALUES (1, 'x')", empty)
        self.empty = Subject(empty, POLICY + "-empty", self.plain_dir / f"{empty}.pgdump", {"one": 1}, "e")
        for subject in (self.main, self.empty):
            (self.config / f"{subject.policy}.yaml").write_text(textwrap.dedent(f"""\
                apiVersion: dockvault.io/v1alpha1
                kind: BackupPolicy
                metadata: {{name: {subject.policy}}}
                spec:
                  targets:
                    - name: {TARGET}
                      postgres: {{container: {CONTAINER}, databases: [{subject.db}]}}
                  storage: {{local: {{path: {self.repo}}}}}
                  retention: {{keepLast: 1}}
                """))
        self.env = dockvault_env(self.image, self.state)
        self.plain_env = dict(os.environ, PGPASSWORD=self.server.password)
        self.load_start = os.getloadavg()

    def prepare(self) -> None:
        """Before every timed run: no dirty buffers left in the server, none on the host."""
        self.psql("CHECKPOINT")
        sync()

    def run_timed(self, cmd: list[str], *, env: dict[str, str], label: str, stdin: Path | None = None,
                  stdout: Path | None = None, max_wait: float | None = None) -> DbRun:
        run = run_timed(cmd, label=label, scratch=self.scratch, env=env, stdin=stdin, stdout=stdout,
                        prepare=self.prepare, max_wait=max_wait, make=DbRun,
                        counters={"container_cpu": self.container_cpu, "dockerd_cpu": self.dockerd_cpu})
        # all CPU time the machine spent, less the child's, the container's and dockerd's (containerd-shim and the
        # kernel's writeback are left in: small), per second of the run: other sessions sharing the machine
        ours = [run.cpu_seconds, run.container_cpu, run.dockerd_cpu]
        if None not in ours:
            run.foreign_cores = max(0.0, (run.busy_cpu_seconds - sum(ours)) / run.seconds)
        return run

    # ---- methods
    def backup_plain(self, subject: Subject, i: int) -> DbRun:
        subject.plain_file.unlink(missing_ok=True)
        run = self.run_timed(["docker", "exec", "-e", "PGPASSWORD", CONTAINER,
                              "pg_dump", "-U", "postgres", "-Fc", subject.db],
                             env=self.plain_env, label=f"(a) plain pg_dump of {subject.db}", stdout=subject.plain_file,
                             max_wait=self.max_wait(subject))
        run.output_bytes = subject.plain_file.stat().st_size
        return run

    def backup_dockvault(self, subject: Subject, i: int) -> DbRun:
        run = self.run_timed([*DOCKVAULT, "backup", subject.policy, "--config-dir", str(self.config)], env=self.env,
                             label=f"(b) dockvault backup of {subject.db}", max_wait=self.max_wait(subject))
        dumps = sorted(self.repo.glob(f"{subject.policy}/*/{TARGET}.{subject.db}.pgdump"))
        if len(dumps) != 1:
            raise BenchError(f"expected exactly one dump in the repository (keepLast: 1), found {dumps}")
        run.output_bytes = dumps[0].stat().st_size
        self.globals_bytes = sum(p.stat().st_size for p in dumps[0].parent.glob(f"{TARGET}.globals.sql*"))
        return run

    def verify(self, label: str, subject: Subject, db: str) -> None:
        """Row counts of every table as in the source; then the copy is dropped at once, so that autovacuum
        (which vacuums and analyzes freshly restored tables) does not run into the next timed command."""
        tables = list(subject.counts)
        sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in tables)
        got = {name: int(n) for name, n in (line.split("|") for line in self.psql(sql, db).splitlines())}
        if got != subject.counts:
            differ = {t: (got.get(t), n) for t, n in subject.counts.items() if got.get(t) != n}
            raise BenchError(f"RESTORE CHECK FAILED for {label} into {db}: row counts (restored, source) {differ}")
        self.drop_database(db)
        self.restored.remove(db)

    def restore_plain(self, subject: Subject, i: int) -> DbRun:
        db = f"bench_restore_{self.token}_{subject.tag}a{i}"
        self.restored.append(db)
        t = time.perf_counter()
        self.psql(f'CREATE DATABASE "{db}"')
        create = time.perf_counter() - t
        run = self.run_timed(["docker", "exec", "-i", "-e", "PGPASSWORD", CONTAINER,
                              "pg_restore", "-U", "postgres", "-d", db, "--single-transaction"],
                             env=self.plain_env, label=f"(a') plain pg_restore of {subject.db}", stdin=subject.plain_file,
                             max_wait=self.max_wait(subject))
        run.create_seconds = create
        self.verify("(a') plain pg_restore", subject, db)
        return run

    def restore_dockvault(self, subject: Subject, i: int) -> DbRun:
        db = f"bench_restore_{self.token}_{subject.tag}b{i}"
        self.restored.append(db)
        request = self.config / f"restore-{subject.tag}{i}.yaml"
        request.write_text(textwrap.dedent(f"""\
            apiVersion: dockvault.io/v1alpha1
            kind: RestoreRequest
            metadata: {{name: bench-restore-{self.token}-{subject.tag}{i}}}
            spec:
              policy: {subject.policy}
              backup: latest
              targets:
                - from: {TARGET}
                  postgres: {{container: {CONTAINER}, database: {db}}}
            """))
        try:
            run = self.run_timed([*DOCKVAULT, "run", "--once", "--config-dir", str(self.config)], env=self.env,
                                 label=f"(b') dockvault restore of {subject.db}", max_wait=self.max_wait(subject))
        finally:
            request.unlink()
        self.verify("(b') dockvault restore", subject, db)
        return run

    def max_wait(self, subject: Subject) -> float | None:
        return min(QUIET["max_wait"], 5.0) if subject is self.empty else None

    def clean_repeat(self) -> None:
        for db in list(self.restored):
            self.drop_database(db)
        self.restored.clear()

    def run_set(self, subject: Subject, methods: dict[str, Method], repeats: int, what: str) -> None:
        steps = {"a": self.backup_plain, "b": self.backup_dockvault,
                 "a'": self.restore_plain, "b'": self.restore_dockvault}
        for i in range(repeats):
            # a b a' b', then b a b' a', ...: a drift over time (page cache, other load) hits both alike
            order = ["a", "b", "a'", "b'"] if i % 2 == 0 else ["b", "a", "b'", "a'"]
            for key in order:
                run = steps[key](subject, i)
                methods[key].runs.append(run)
                extra = f", {run.output_bytes:,} bytes" if run.output_bytes is not None else ""
                cont = f", container cpu {run.container_cpu:.1f}s" if run.container_cpu is not None else ""
                log(f"{what} {i + 1}/{repeats} {key:2}: {run.seconds:7.2f}s{extra}, peak RSS "
                    f"{run.maxrss_kib / 1024:.1f} MiB, cpu {run.cpu_seconds:.2f}s{cont} "
                    f"(sync after {run.flush_seconds:.2f}s, busy before {run.background:.0%} / during "
                    f"{run.machine_busy:.0%}, foreign load {fmt(run.foreign_cores, '.2f')} cores)")
            self.clean_repeat()

    def run(self) -> None:
        self.run_set(self.main, self.methods, self.args.repeat, "repeat")
        self.run_set(self.empty, self.fixed, 3, "empty db")

    def cleanup(self) -> None:
        if self.server is not None:
            for db in self.restored:
                try:
                    self.drop_database(db)
                except Exception as exc:  # noqa: BLE001 - best effort
                    log(f"warning: could not drop {db}: {exc}")
            if not self.args.keep:
                log(f"removing server container {CONTAINER} and its volume")
                self.server.remove()
            else:
                log(f"kept server container {CONTAINER} (volume {self.server.volume}) with database {self.db}")
        if getattr(self, "work", None):
            shutil.rmtree(self.work, ignore_errors=True)

    # ---- report
    def summary(self) -> dict:
        m, f = self.methods, self.fixed
        size = self.source_bytes
        ratios = {
            "backup": m["a"].seconds / m["b"].seconds,       # throughput (b)/(a) = time (a)/(b)
            "restore": m["a'"].seconds / m["b'"].seconds,
            "backup_with_sync": statistics.median(r.seconds + r.flush_seconds for r in m["a"].runs)
                                / statistics.median(r.seconds + r.flush_seconds for r in m["b"].runs),
            # dockvault creates the database inside its run; the plain method before its timer
            "restore_with_create": statistics.median(r.seconds + r.create_seconds for r in m["a'"].runs)
                                   / m["b'"].seconds,
            "dump_bytes": m["b"].median("output_bytes") / m["a"].median("output_bytes"),
        }
        # CPU seconds all the run's processes used (client, database container, dockerd): unlike wall time, hardly
        # changed by other load on a shared machine. plain / dockvault, like the throughput ratios.
        cpu = {k: statistics.median(r.cpu_seconds + (r.container_cpu or 0.0) + (r.dockerd_cpu or 0.0) for r in v.runs)
               for k, v in m.items()}
        ratios["backup_cpu"] = cpu["a"] / cpu["b"]
        ratios["restore_cpu"] = cpu["a'"] / cpu["b'"]
        # Only the runs during which other sessions used at most CALM_FOREIGN cores (None: a side has none).
        calm = {k: [r.seconds for r in v.runs if r.foreign_cores is not None and r.foreign_cores <= CALM_FOREIGN]
                for k, v in m.items()}
        for name, plain, ours in (("backup", "a", "b"), ("restore", "a'", "b'")):
            ratios[f"{name}_calm"] = (statistics.median(calm[plain]) / statistics.median(calm[ours])
                                      if calm[plain] and calm[ours] else None)
            ratios[f"{name}_calm_runs"] = [len(calm[plain]), len(calm[ours])]
        # Extra seconds per run: on the big database, and on the empty one (start-up, extra execs, fsync, ...).
        # What is left after the fixed part is the cost that grows with the data.
        gaps = {
            "backup": m["b"].seconds - m["a"].seconds,
            "restore": m["b'"].seconds - m["a'"].seconds,
            "backup_fixed": f["b"].seconds - f["a"].seconds,
            "restore_fixed": f["b'"].seconds - f["a'"].seconds,
        }
        gaps["backup_per_gb"] = (gaps["backup"] - gaps["backup_fixed"]) / (size / 1e9)
        gaps["restore_per_gb"] = (gaps["restore"] - gaps["restore_fixed"]) / (size / 1e9)
        rss = {"backup_mib": max(r.maxrss_kib for r in m["b"].runs) / 1024,
               "restore_mib": max(r.maxrss_kib for r in m["b'"].runs) / 1024}
        checks = {
            "backup_ratio": ratios["backup"] >= TARGETS["backup_ratio"],
            "restore_ratio": ratios["restore"] >= TARGETS["restore_ratio"],
            "rss_backup": rss["backup_mib"] <= TARGETS["rss_mib"],
            "rss_restore": rss["restore_mib"] <= TARGETS["rss_mib"],
        }
        return {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine(),
            "postgres": self.pg_version,
            "database": {"name": self.db, "size_arg": self.args.size, "bytes": size, "rows": self.source_counts,
                         "relations": [{"name": n, "kind": k, "total_bytes": t, "main_bytes": b}
                                       for n, k, t, b in self.relations],
                         **{k: self.meta.get(k) for k in ("batches", "scale", "created")}},
            "repeats": self.args.repeat,
            "globals_bytes": getattr(self, "globals_bytes", None),
            "methods": {k: {**v.summary(size),
                            "container_cpu_seconds_median": v.median("container_cpu"),
                            "dockerd_cpu_seconds_median": v.median("dockerd_cpu"),
                            "foreign_cores": [None if r.foreign_cores is None else round(r.foreign_cores, 3)
                                              for r in v.runs]}
                        for k, v in m.items()},
            "fixed_cost": {k: {"title": v.title.split(None, 1)[1], "seconds_median": v.seconds,
                               "seconds": [round(r.seconds, 3) for r in v.runs],
                               "cpu_seconds_median": v.median("cpu_seconds"),
                               "foreign_cores": [None if r.foreign_cores is None else round(r.foreign_cores, 3)
                                                 for r in v.runs]}
                           for k, v in f.items()},
            "plain_create_database_seconds_median": m["a'"].median("create_seconds"),
            "gaps_seconds": gaps,
            "ratios": ratios, "peak_rss": rss, "targets": TARGETS, "pass": checks, "quiet": QUIET,
            "calm_foreign_cores": CALM_FOREIGN,
            "load_average": {"start": self.load_start, "end": os.getloadavg()},
            "dockvault_cli_startup_seconds": cli_startup(self.env),
            "rss_floor_mib": rss_floor(self.scratch),
        }


def print_report(s: dict) -> None:
    M, R, P, T = s["methods"], s["ratios"], s["pass"], s["targets"]
    db, mach = s["database"], s["machine"]
    print()
    print(f"dockvault PostgreSQL dump benchmark  {s['date']}")
    print(machine_line(mach, f"PostgreSQL {s['postgres']}"))
    print(f"database {db['name']}: {db['bytes']:,} bytes ({human(db['bytes'])}) on disk (pg_database_size), "
          + ", ".join(f"{t} {n:,}" for t, n in db["rows"].items() if t != "bench_meta") + " rows")
    print("  largest relations: " + ", ".join(f"{r['name']} {human(r['total_bytes'])}" for r in db["relations"][:6]))
    print(f"repeats: {s['repeats']} (median shown; MB/s = 10^6 bytes of the database's on-disk size per second)")
    print()
    header = (f"{'method':46} {'seconds':>8} {'MB/s':>7} {'dump bytes':>13} {'RSS MiB':>8} {'cpu s':>6} "
              f"{'ctr cpu':>7} {'dockerd':>7} {'sync s':>6}  runs (s) [foreign load, cores]")
    print_methods(M, header, lambda v, out: (
        f"{v['title']:41} {v['seconds_median']:8.2f} {v['mb_per_s']:7.1f} {out:>13} "
        f"{v['peak_rss_mib']:8.1f} {v['cpu_seconds_median']:6.2f} "
        f"{fmt(v['container_cpu_seconds_median'], '7.1f'):>7} {fmt(v['dockerd_cpu_seconds_median'], '7.2f'):>7} "
        f"{v['sync_after_seconds_median']:6.2f}  "
        + " ".join(f"{x:.2f}" for x in v["seconds"])
        + "  [" + " ".join(fmt(f, ".2f") for f in v["foreign_cores"]) + "]"))
    print("RSS and cpu s: the child process (docker CLI or dockvault) from wait4, started by a small spawner process")
    print(f"  (floor: `true` reports {s['rss_floor_mib']:.1f} MiB); ctr cpu: the database container's")
    print("  cgroup (pg_dump/pg_restore and the server backend); dockerd: the private engine relaying the exec stream;")
    print("  sync s: the host `sync` right after the run (dockvault fsyncs its artifact inside the run, the plain")
    print(f"  redirect does not). dockvault's globals dump (pg_dumpall --globals-only): {s['globals_bytes']} bytes.")
    print("  total CPU (ratios below): cpu s + ctr cpu + dockerd of each run, median; little affected by other load.")
    print("  foreign load: CPU time the machine spent on anything but this run's processes, per second of the run")
    print("  (other sessions on a shared machine; a value well above 0.1 on a 2-core machine means a noisy run).")
    print(f"  calm runs only: medians over the runs with foreign load <= {CALM_FOREIGN} cores (counts: plain + dockvault).")
    load = s["load_average"]
    busy_runs = sum(b > QUIET["threshold"] for v in M.values() for b in v["machine_busy_before"])
    noisy_runs = sum(f is not None and f > 0.25 for v in M.values() for f in v["foreign_cores"])
    print(f"load average at start {load['start'][0]:.2f}, at end {load['end'][0]:.2f}"
          + (f"; WARNING: {busy_runs} run(s) started while other processes kept the machine busy" if busy_runs else "")
          + (f"; WARNING: {noisy_runs} run(s) shared the machine with > 0.25 cores of foreign load: numbers are noisy"
             if noisy_runs else ""))
    print(f"dockvault CLI start-up (python -m dockvault --version): {s['dockvault_cli_startup_seconds']:.2f}s")
    print()
    F, G = s["fixed_cost"], s["gaps_seconds"]
    print("FIXED COST PER RUN (database bench_empty: one table, one row; 3 runs each, median)")
    for k in ("a", "b", "a'", "b'"):
        v = F[k]
        print(f"  {'(' + k + ')':5}{v['title']:38} {v['seconds_median']:6.2f}s  cpu {v['cpu_seconds_median']:5.2f}s  "
              "runs " + " ".join(f"{x:.2f}" for x in v["seconds"])
              + "  [" + " ".join(fmt(x, ".2f") for x in v["foreign_cores"]) + "]")
    print(f"  dockvault - plain: backup {G['backup']:+.2f}s at {human(db['bytes'])}, {G['backup_fixed']:+.2f}s empty "
          f"-> {G['backup_per_gb']:+.2f}s per GB grows with the data (estimate)")
    print(f"                     restore {G['restore']:+.2f}s at {human(db['bytes'])}, {G['restore_fixed']:+.2f}s empty "
          f"-> {G['restore_per_gb']:+.2f}s per GB grows with the data (estimate)")
    print(f"  plain CREATE DATABASE before (a') (not timed; dockvault's is inside (b')): "
          f"{s['plain_create_database_seconds_median']:.2f}s")
    print()
    print("RATIOS AND TARGETS")
    rows = [
        ("backup throughput (b)/(a)", f"{R['backup']:.3f}x", f">= {T['backup_ratio']}x", mark(P["backup_ratio"])),
        ("  with the sync after each, info", f"{R['backup_with_sync']:.3f}x", "-", ""),
        ("  total CPU (a)/(b), info", f"{R['backup_cpu']:.3f}x", "-", ""),
        ("  calm runs only, info", "-" if R["backup_calm"] is None else f"{R['backup_calm']:.3f}x",
         "{} + {} runs".format(*R["backup_calm_runs"]), ""),
        ("dump bytes (b)/(a)", f"{R['dump_bytes']:.4f}", "-", ""),
        ("restore throughput (b')/(a')", f"{R['restore']:.3f}x", f">= {T['restore_ratio']}x", mark(P["restore_ratio"])),
        ("  incl. (a')'s CREATE DATABASE", f"{R['restore_with_create']:.3f}x", "-", ""),
        ("  total CPU (a')/(b'), info", f"{R['restore_cpu']:.3f}x", "-", ""),
        ("  calm runs only, info", "-" if R["restore_calm"] is None else f"{R['restore_calm']:.3f}x",
         "{} + {} runs".format(*R["restore_calm_runs"]), ""),
        ("dockvault peak RSS, backup", f"{s['peak_rss']['backup_mib']:.1f} MiB", f"<= {T['rss_mib']:.0f} MiB",
         mark(P["rss_backup"])),
        ("dockvault peak RSS, restore", f"{s['peak_rss']['restore_mib']:.1f} MiB", f"<= {T['rss_mib']:.0f} MiB",
         mark(P["rss_restore"])),
    ]
    print_rows(rows)


def size_arg(text: str) -> int:
    return parse_size(text, why=" (an empty database is ~7.5 MiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--size", type=size_arg, default=size_arg("500M"),
                        help="approximate on-disk size of the database, e.g. 50M or 1G (default 500M)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of every method; medians are reported (default 3)")
    parser.add_argument("--keep", action="store_true",
                        help=f"keep the server container {CONTAINER} and its volume (and database) for the next run")
    add_run_options(parser)
    args = parser.parse_args(argv)
    check_args(parser, args, example="bash scripts/harness.sh python3 benchmarks/db_dump.py --size 50M")
    return run_bench(Bench(args), args.json, print_report)


if __name__ == "__main__":
    sys.exit(main())
