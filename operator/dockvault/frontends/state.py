"""The standalone state store: run history and restore outcomes in SQLite.

It is a cache, never the truth: successful runs are rebuilt from the repository's manifests at start-up;
only failed runs and restore outcomes live here alone, and losing them loses history, not data.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..api.backup import Backup
from ..api.common import Condition
from ..api.policy import CopyStatus, Drill, RepositoryCheck
from ..api.restore import RestoreRequestStatus
from ..controller.status import Attempt, Measurement
from ..engine.core import ContainerRef
from ..engine.quiesce import Halted

SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
  policy TEXT NOT NULL, backup_id TEXT NOT NULL, phase TEXT NOT NULL, trigger TEXT NOT NULL,
  started_at TEXT NOT NULL, completed_at TEXT, bytes INTEGER, message TEXT,
  PRIMARY KEY (policy, backup_id));
CREATE TABLE IF NOT EXISTS restores (
  name TEXT NOT NULL, spec_hash TEXT NOT NULL, policy TEXT NOT NULL, status TEXT NOT NULL, recorded_at TEXT NOT NULL,
  PRIMARY KEY (name, spec_hash));
CREATE TABLE IF NOT EXISTS drills (
  policy TEXT NOT NULL, started_at TEXT NOT NULL, verification TEXT NOT NULL, PRIMARY KEY (policy, started_at));
CREATE TABLE IF NOT EXISTS checks (
  policy TEXT NOT NULL PRIMARY KEY, outcome TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS copies (
  policy TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL, PRIMARY KEY (policy, name));
CREATE TABLE IF NOT EXISTS conditions (
  policy TEXT NOT NULL PRIMARY KEY, conditions TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quiesced (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, container_id TEXT NOT NULL, name TEXT NOT NULL, mode TEXT NOT NULL);
"""
# Columns added since the first release: (table, column, declaration); added in place to older state files.
MIGRATIONS = (
    ("attempts", "error", "TEXT"),
    ("attempts", "attempt", "INTEGER NOT NULL DEFAULT 1"),
    ("attempts", "next_retry_at", "TEXT"),
    ("quiesced", "policy", "TEXT"),
    ("quiesced", "halted_at", "TEXT"),
    ("attempts", "level", "TEXT NOT NULL DEFAULT 'full'"),
)
ATTEMPT_COLUMNS = ("backup_id, phase, started_at, completed_at, bytes, message, trigger, error, attempt, next_retry_at, "
                   "level")


class StateLocked(RuntimeError):
    pass


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class StateDiskFull(RuntimeError):
    """The state database cannot be written: its disk is full. The job fails and is retried later, when space may
    have been freed; never a traceback."""

    temporary = True


class StateStore:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.directory / "state.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        for table, column, declaration in MIGRATIONS:
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        self._db.close()

    def lock(self) -> None:
        """Hold the state dir for one `dockvault run`: its start-up cleanup must not hit another's live jobs."""
        self._lock_file = open(self.directory / "run.lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "unknown"
            raise StateLocked(f"another `dockvault run` (pid {holder}) is using state dir {self.directory}") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()

    def _run(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(params)).fetchall()
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
                raise StateDiskFull(f"the disk is full: cannot write dockvault's state in {self.directory}; "
                                    "free some space there") from exc

    # --- backup attempts ---------------------------------------------------------------------
    def record_attempt(self, policy: str, attempt: Attempt) -> None:
        self._run(
            f"INSERT OR REPLACE INTO attempts (policy, {ATTEMPT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (policy, attempt.backup_id, attempt.phase, attempt.started_at.isoformat(),
             attempt.completed_at.isoformat() if attempt.completed_at else None, attempt.bytes, attempt.message,
             attempt.trigger, attempt.error, attempt.attempt,
             attempt.next_retry_at.isoformat() if attempt.next_retry_at else None, attempt.level),
        )

    @staticmethod
    def _attempt(row: tuple) -> Attempt:
        bid, phase, started, completed, size, message, trigger, error, number, retry, level = row
        return Attempt(bid, phase, _dt(started), _dt(completed), size, message, trigger, error, number or 1, _dt(retry),
                       level or "full")

    def last_attempt(self, policy: str) -> Attempt | None:
        rows = self._run(f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE policy=? "
                         "ORDER BY started_at DESC, backup_id DESC LIMIT 1", (policy,))
        return self._attempt(rows[0]) if rows else None

    def attempts(self, policy: str) -> list[tuple[str, str, str, str | None]]:
        return self._run("SELECT backup_id, phase, started_at, message FROM attempts WHERE policy=? ORDER BY started_at",
                         (policy,))

    def sync_backups(self, policy: str, backups: Iterable[Backup]) -> None:
        """Rebuild the runs from the repository's manifests (runs a crash interrupted: JobRunner.recover_policy)."""
        for backup in backups:
            st = backup.status
            self.record_attempt(policy, Attempt(backup.id, st.phase, st.started_at, st.completed_at, st.bytes, None,
                                                backup.spec.trigger, level=backup.level))

    # --- restores ----------------------------------------------------------------------------
    def restore_status(self, name: str, spec_hash: str) -> RestoreRequestStatus | None:
        rows = self._run("SELECT status FROM restores WHERE name=? AND spec_hash=?", (name, spec_hash))
        return RestoreRequestStatus.model_validate_json(rows[0][0]) if rows else None

    def record_restore(self, name: str, spec_hash: str, policy: str, status: RestoreRequestStatus) -> None:
        self._run("INSERT OR REPLACE INTO restores VALUES (?,?,?,?,?)",
                  (name, spec_hash, policy, status.model_dump_json(by_alias=True, exclude_none=True),
                   datetime.now(UTC).isoformat()))

    def forget_attempt(self, policy: str, backup_id: str) -> None:
        self._run("DELETE FROM attempts WHERE policy=? AND backup_id=?", (policy, backup_id))

    def interrupted_restores(self) -> list[tuple[str, str, str, RestoreRequestStatus]]:
        return [row for row in self.restores() if row[3].phase == "Running"]

    def restores(self) -> list[tuple[str, str, str, RestoreRequestStatus]]:
        rows = self._run("SELECT name, spec_hash, policy, status FROM restores ORDER BY recorded_at")
        return [(n, h, p, RestoreRequestStatus.model_validate_json(s)) for n, h, p, s in rows]

    # --- quiesce journal -----------------------------------------------------------------------
    def halted(self, policy: str, ref: ContainerRef, mode: str) -> None:
        self._run("INSERT INTO quiesced (container_id, name, mode, policy, halted_at) VALUES (?,?,?,?,?)",
                  (ref.id, ref.name, mode, policy, datetime.now(UTC).isoformat()))

    def resumed(self, ref: ContainerRef) -> None:
        self._run("DELETE FROM quiesced WHERE container_id=?", (ref.id,))

    def halted_containers(self) -> list[Halted]:
        rows = self._run("SELECT container_id, name, mode, policy, halted_at FROM quiesced ORDER BY seq")
        return [Halted(ContainerRef(cid, name, "halted"), mode, _dt(at) or datetime.fromtimestamp(0, UTC), policy)
                for cid, name, mode, policy, at in rows]

    # --- conditions and measured restores --------------------------------------------------------
    def conditions(self, policy: str) -> list[Condition]:
        rows = self._run("SELECT conditions FROM conditions WHERE policy=?", (policy,))
        return [Condition.model_validate(c) for c in json.loads(rows[0][0])] if rows else []

    def save_conditions(self, policy: str, conditions: list[Condition]) -> None:
        """Remember conditions so lastTransitionTime survives; best effort for read-only callers."""
        try:
            self._run("INSERT OR REPLACE INTO conditions VALUES (?,?)",
                      (policy, json.dumps([c.to_dict() for c in conditions])))
        except sqlite3.OperationalError:
            pass

    def record_drill(self, policy: str, started_at: datetime, drill: Drill) -> None:
        self._run("INSERT OR REPLACE INTO drills VALUES (?,?,?)",
                  (policy, started_at.isoformat(), drill.model_dump_json(by_alias=True, exclude_none=True)))

    def drills(self, policy: str) -> list[tuple[datetime, Drill]]:
        # the column keeps its first name; rows written by dockvault 0.1 say `result` for `phase` (Drill reads both)
        rows = self._run("SELECT started_at, verification FROM drills WHERE policy=? ORDER BY started_at", (policy,))
        return [(datetime.fromisoformat(at), Drill.model_validate_json(raw)) for at, raw in rows]

    def last_drill(self, policy: str) -> Drill | None:
        drills = self.drills(policy)
        return drills[-1][1] if drills else None

    def last_successful_drill(self, policy: str) -> Drill | None:
        good = [d for _at, d in self.drills(policy) if d.succeeded]
        return good[-1] if good else None

    def last_check(self, policy: str) -> RepositoryCheck | None:
        rows = self._run("SELECT outcome FROM checks WHERE policy=?", (policy,))
        return RepositoryCheck.model_validate_json(rows[0][0]) if rows else None

    def record_check(self, policy: str, check: RepositoryCheck) -> None:
        self._run("INSERT OR REPLACE INTO checks VALUES (?,?)",
                  (policy, check.model_dump_json(by_alias=True, exclude_none=True)))

    def copy_statuses(self, policy: str) -> list[CopyStatus]:
        rows = self._run("SELECT status FROM copies WHERE policy=? ORDER BY name", (policy,))
        return [CopyStatus.model_validate_json(raw) for (raw,) in rows]

    def record_copy(self, policy: str, status: CopyStatus) -> None:
        self._run("INSERT OR REPLACE INTO copies VALUES (?,?,?)",
                  (policy, status.name, status.model_dump_json(by_alias=True, exclude_none=True)))

    def last_measurement(self, policy: str) -> Measurement | None:
        """The newest successful restore or drill of the policy: the RTO last achieved."""
        best = None
        for _name, _hash, owner, status in self.restores():
            if owner == policy and status.phase == "Succeeded" and status.duration_seconds is not None:
                if best is None or status.completed_at > best.at:
                    best = Measurement(status.duration_seconds, status.completed_at, status.backup, "restore")
        for started, drill in self.drills(policy):
            if drill.succeeded and drill.duration_seconds is not None:
                finished = started + timedelta(seconds=drill.duration_seconds)
                if best is None or finished > best.at:
                    best = Measurement(drill.duration_seconds, finished, drill.backup, "drill")
        return best
