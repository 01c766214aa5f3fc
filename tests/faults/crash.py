"""SIGKILL at a random point of a job, then the next start: what it must leave, counted.

One `Site` per job kind holds its own config dir, state dir, repository, TMPDIR, application or database and
policy (names unique to the site, so every assertion is scoped by them on a shared engine). `Site.kill_once`
kills the job's `dockvault` process at a seeded random moment, runs the next start (`dockvault run --once`)
and the next job, and returns a `Tally` of the five figures that must stay at zero. tests/faults and
benchmarks/faults.py run the same code, at small and at full scale.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from dockvault.storage.s3 import INDEX
from tests.treecheck import APP_LOOP, populate_volume

KINDS = ("volume-stop", "volume-stop-deaf", "postgres", "mariadb", "restore", "drill", "retention", "copy", "s3")
DEAF_LOOP = "while true; do sleep 1; done"  # PID 1 without a TERM handler: `docker stop` waits its grace period
DUMP_TOOLS = ("pg_dump", "pg_dumpall", "pg_restore", "mysqldump", "mariadb-dump", "mariadb", "mysql", "psql")
FIGURES = ("corrupt", "lost", "stopped", "leftovers", "failed_next")


@dataclass
class Tally:
    """Kills that landed, and the five figures that must stay at zero (with what each finding was)."""

    kills: int = 0
    corrupt: int = 0      # corrupt or half-listed backups
    lost: int = 0         # earlier backups lost
    stopped: int = 0      # applications left stopped after the next start
    leftovers: int = 0    # helpers, scratch resources, temporary files, dump clients after the next start
    failed_next: int = 0  # next starts or next jobs that failed
    notes: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for f in fields(self):
            if f.name == "notes":
                self.notes.extend(other.notes)
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def bad(self, figure: str, count: int, note: str) -> None:
        if count:
            setattr(self, figure, getattr(self, figure) + count)
            self.notes.append(f"{figure}: {note}")

    @property
    def clean(self) -> bool:
        return not any(getattr(self, f) for f in FIGURES)


def sha256(stream) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


class Site:
    """One job kind's world on the shared engine; `setup()`, then `kill_once()` as often as wanted, `close()`."""

    def __init__(self, kind: str, root: Path, client, image: str, *, pg=None, maria=None, s3=None,
                 volume_mb: int = 20) -> None:
        assert kind in KINDS, kind
        self.kind, self.root, self.client, self.image = kind, root, client, image
        self.pg, self.maria, self.s3 = pg, maria, s3
        self.volume_mb = volume_mb
        token = uuid.uuid4().hex[:8]
        self.policy = f"fault-{kind}-{token}"
        self.config, self.state, self.repo, self.copy_repo, self.tmp = (
            root / "config", root / "state", root / "repo", root / "copy", root / "tmp")
        for path in (self.config, self.state, self.repo, self.copy_repo, self.tmp):
            path.mkdir(parents=True, exist_ok=True)
        self.source = f"dvf-src-{token}"
        self.volumes: list[str] = []
        self.apps: list = []
        self.database: str | None = None
        self.bucket: str | None = None
        self.restores = 0
        self.duration = 5.0  # of one uninterrupted job; measured in setup()
        self.env = dict(os.environ, DOCKVAULT_STATE_DIR=str(self.state), DOCKVAULT_HELPER_IMAGE=image,
                        DOCKVAULT_CONFIG_DIR=str(self.config), TMPDIR=str(self.tmp))
        if s3 is not None:
            self.env.update(s3.env)

    # --- set-up ----------------------------------------------------------------------------------
    def setup(self) -> None:
        targets: list[dict[str, Any]]
        spec: dict[str, Any] = {"schedule": "0 3 * * *", "storage": {"local": {"path": str(self.repo)}}}
        if self.kind in ("postgres", "mariadb"):
            server = self.pg if self.kind == "postgres" else self.maria
            self.database = f"fault_{uuid.uuid4().hex[:10]}"
            if self.kind == "postgres":
                server.psql(f'CREATE DATABASE "{self.database}"')
                server.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g",
                            self.database)
            else:
                server.mysql(f"CREATE DATABASE `{self.database}`")
                server.mysql("SET SESSION max_recursive_iterations = 200000; "
                             "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(64)) ENGINE=InnoDB; "
                             "INSERT INTO t WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s "
                             "WHERE i < 100000) SELECT i, md5(i) FROM s", self.database)
            targets = [{"name": "db", self.kind.replace("mariadb", "mysql"):
                        {"container": server.name, "databases": [self.database]}}]
        else:
            self.volumes.append(self.source)
            populate_volume(self.client, self.source, megabytes=self.volume_mb)
            quiesce = "stop" if self.kind.startswith("volume-stop") else "none"
            targets = [{"name": "data", "volume": {"name": self.source, "quiesce": quiesce}}]
            if quiesce == "stop":
                deaf = self.kind == "volume-stop-deaf"
                for i in range(2):
                    self.apps.append(self.app(f"{self.policy}-app{i}", DEAF_LOOP if deaf and i == 0 else APP_LOOP,
                                              stop_timeout=3 if deaf else 10))
        if self.kind == "retention":
            spec["retention"] = {"keepLast": 3}
        if self.kind == "copy":
            spec["copies"] = [{"name": "second", "local": {"path": str(self.copy_repo)}}]
        if self.kind == "s3":
            self.bucket = self.s3.bucket("fault")
            spec["storage"] = self.s3.storage(self.bucket, prefix="host-a")
        self.write({"apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy",
                    "metadata": {"name": self.policy}, "spec": {**spec, "targets": targets}})
        for _ in range(3 if self.kind == "retention" else 1):
            self.cli("backup", self.policy)
        started = time.monotonic()
        self.next_job()  # calibration: an uninterrupted job, timed (and one more earlier backup or restore)
        self.duration = time.monotonic() - started
        if self.kind == "restore":
            self.new_restore()

    def app(self, name: str, script: str, *, stop_timeout: int):
        """An application container using the source volume (the SDK's run() lacks StopTimeout)."""
        api = self.client.api
        created = api.create_container(self.image, ["sh", "-c", script], name=name, stop_timeout=stop_timeout,
                                       host_config=api.create_host_config(network_mode="none",
                                                                          binds={self.source: {"bind": "/data",
                                                                                               "mode": "rw"}}))
        container = self.client.containers.get(created["Id"])
        container.start()
        return container

    def write(self, doc: dict[str, Any], file: str | None = None) -> None:
        (self.config / (file or f"{doc['kind']}-{doc['metadata']['name']}.yaml")).write_text(yaml.safe_dump(doc))

    def new_restore(self) -> str:
        """A RestoreRequest of the latest backup into a new volume; its name."""
        self.restores += 1
        name, volume = f"r{self.restores}", f"{self.source}-r{self.restores}"
        self.volumes.append(volume)
        for old in self.config.glob("RestoreRequest-*.yaml"):
            old.unlink()  # one request at a time: each `run --once` runs exactly the newest
        self.write({"apiVersion": "dockvault.io/v1alpha1", "kind": "RestoreRequest", "metadata": {"name": name},
                    "spec": {"policy": self.policy, "backup": "latest",
                             "targets": [{"from": "data", "volume": {"name": volume}}]}})
        return volume

    # --- commands --------------------------------------------------------------------------------
    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "dockvault", *args]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True, timeout=600,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"dockvault {' '.join(args)} exited {result.returncode}\n{result.stdout}\n"
                                 f"{result.stderr[-4000:]}")
        return result

    def job(self) -> list[str]:
        """The command that is killed: the job of this kind."""
        if self.kind == "restore":
            return self.argv("run", "--once")
        if self.kind == "drill":
            return self.argv("drill", self.policy)
        return self.argv("backup", self.policy)

    def next_job(self) -> subprocess.CompletedProcess:
        """One more job of the kind after the next start; it must succeed."""
        if self.kind == "restore":
            self.new_restore()
        return self.cli(*self.job()[3:], check=False)

    # --- one kill --------------------------------------------------------------------------------
    def kill_once(self, rng: random.Random, *, attempts: int = 5) -> Tally:
        """Start the job, SIGKILL it at a random moment (again when it finished first), then check the next start."""
        tally = Tally()
        earlier = self.backup_ids()
        for _ in range(attempts):
            delay = rng.uniform(0.15, 1.0) * self.duration
            proc = subprocess.Popen(self.job(), env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                proc.wait(delay)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                tally.kills = 1
                break
            if self.kind == "restore":
                self.new_restore()
            earlier = self.backup_ids()
        if not tally.kills:
            tally.notes.append(f"{self.kind}: the job always finished before its kill")
            return tally
        start = self.cli("run", "--once", check=False)
        if start.returncode != 0 and not (self.kind == "restore" and "interrupted" in start.stdout + start.stderr):
            tally.bad("failed_next", 1, f"{self.kind}: next start exited {start.returncode}: {start.stderr[-1500:]}")
        self.audit(tally, earlier, when="after the next start")
        result = self.next_job()
        if result.returncode != 0:
            tally.bad("failed_next", 1, f"{self.kind}: next job exited {result.returncode}: {result.stderr[-1500:]}")
        if self.kind == "restore":
            self.new_restore()
        return tally

    # --- what the next start left ----------------------------------------------------------------
    def repositories(self) -> list:
        from dockvault.api import BackupPolicy
        from dockvault.storage import repository_for

        policy = BackupPolicy.model_validate(yaml.safe_load(
            (self.config / f"BackupPolicy-{self.policy}.yaml").read_text()))
        return [repository_for(policy)] + [repository_for(copy) for copy in policy.spec.copies or []]

    def backup_ids(self) -> list[str]:
        with _env(self.env):
            return [b.id for b in self.repositories()[0].backups(self.policy)]

    def audit(self, tally: Tally, earlier: list[str], *, when: str) -> None:
        kind = self.kind
        with _env(self.env):
            repos = self.repositories()
            for repo in repos:
                for record in repo.backups(self.policy):
                    for artifact in record.status.artifacts:
                        try:
                            stream = repo.open_artifact(self.policy, record.id, artifact.file)
                            try:
                                size, digest = sha256(stream)
                            finally:
                                stream.close()
                        except Exception as exc:  # noqa: BLE001 - a missing artifact is a finding
                            size, digest = -1, repr(exc)
                        tally.bad("corrupt", (size, digest) != (artifact.bytes, artifact.sha256),
                                  f"{kind}: {repo.location} {record.id}/{artifact.file}: {size} {digest}")
            now = [b.id for b in repos[0].backups(self.policy)]
        kept = earlier[-2:] if kind == "retention" else earlier  # keepLast 3: one new backup can push out one
        missing = [b for b in kept if b not in now]
        tally.bad("lost", len(missing), f"{kind}: earlier backups gone {when}: {missing}")
        for folder in (self.repo / self.policy, self.copy_repo / self.policy):
            if folder.is_dir():
                half = [f.name for f in folder.iterdir() if f.is_dir() and not (f / "manifest.json").exists()]
                tally.bad("corrupt", len(half), f"{kind}: folders without a manifest {when}: {half}")
        temps = [str(p) for p in (*self.repo.rglob("*.dvtmp"), *self.copy_repo.rglob("*.dvtmp"), *self.tmp.iterdir())]
        tally.bad("leftovers", len(temps), f"{kind}: temporary files {when}: {temps}")
        if self.s3 is not None and self.bucket:
            client = self.s3.client()
            uploads = client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
            tally.bad("leftovers", len(uploads), f"{kind}: multipart uploads {when}: {[u['Key'] for u in uploads]}")
            listed = {b for b in now}
            keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
                    for o in page.get("Contents", [])]
            stray = [k for k in keys if k.split("/")[2] not in listed and "/.restores/" not in f"/{k}"
                     and not k.endswith(f"/{INDEX}")]  # the listing index is not a backup's
            tally.bad("corrupt", len(stray), f"{kind}: objects outside any listed backup {when}: {stray}")
        helpers = self.client.containers.list(all=True, filters={"label": f"dockvault.io/policy={self.policy}"})
        tally.bad("leftovers", len(helpers), f"{kind}: helper containers {when}: {[c.name for c in helpers]}")
        scratch = self.client.volumes.list(filters={"label": ["dockvault.io/drill", f"dockvault.io/policy={self.policy}"]})
        tally.bad("leftovers", len(scratch), f"{kind}: scratch volumes {when}: {[v.name for v in scratch]}")
        for app in self.apps:
            app.reload()
            tally.bad("stopped", app.status != "running", f"{kind}: application {app.name} is {app.status} {when}")
        server = self.pg if kind == "postgres" else self.maria if kind == "mariadb" else None
        if server is not None:
            clients = _clients_left(server.container)
            tally.bad("leftovers", len(clients), f"{kind}: dump clients still running {when}: {clients}")
        for volume in self.volumes[-1:] if kind == "restore" else ():  # the killed request's target
            staged = _staging_left(self.client, volume)
            tally.bad("leftovers", len(staged), f"{kind}: restore staging folders in {volume} {when}: {staged}")

    def close(self) -> None:
        for app in self.apps:
            with contextlib.suppress(Exception):
                app.remove(force=True)
        for container in self.client.containers.list(all=True, filters={"label": f"dockvault.io/policy={self.policy}"}):
            with contextlib.suppress(Exception):
                container.remove(force=True)
        for volume in self.volumes:
            with contextlib.suppress(Exception):
                self.client.volumes.get(volume).remove(force=True)
        if self.database:
            with contextlib.suppress(Exception):
                if self.kind == "postgres":
                    self.pg.psql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
                else:
                    self.maria.mysql(f"DROP DATABASE IF EXISTS `{self.database}`")


@contextlib.contextmanager
def _env(env: dict[str, str]):
    """The site's S3 keys in this process's environment while its repositories are read."""
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("DV_TEST_S3_")})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _clients_left(container, settle: float = 15.0) -> list[str]:
    """Dump and restore clients still running in a database container (given `settle` seconds to notice their
    reader is gone)."""
    deadline = time.monotonic() + settle
    while True:
        procs = container.top(ps_args="-eo pid,comm").get("Processes") or []
        left = [" ".join(p) for p in procs if p[-1] in DUMP_TOOLS]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _staging_left(client, volume: str) -> list[str]:
    try:
        mountpoint = Path(client.volumes.get(volume).attrs["Mountpoint"])
    except Exception:  # noqa: BLE001 - no volume, no staging folder
        return []
    return [p.name for p in mountpoint.glob(".dockvault-restore-*")]
