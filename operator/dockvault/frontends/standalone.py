"""Standalone mode: resources from a directory of YAML files, status in a local SQLite store.

The directory is watched; added, changed and removed files apply without restart. A bad file is
reported and skipped, and every other policy keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..actions.backup import BackupOutcome, run_backup
from ..actions.restore import RestoreOutcome, run_restore
from ..actions.verify import DrillOutcome, run_drill
from ..api import Backup, BackupPolicy, RestoreRequest, RestoreRequestStatus
from ..api.loader import Loaded, ResourceError, load_paths
from ..controller.schedule import backup_due, drill_due
from ..controller.status import Attempt
from ..engine.core import Engine
from ..engine.quiesce import resume_journaled
from ..metrics import DockvaultMetrics, PolicyFacts, facts_for
from ..notify import Event, Notifier
from ..sources.base import Progress
from ..storage.local import LocalRepository
from .state import StateStore

log = logging.getLogger(__name__)


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass
class Config:
    policies: dict[str, Loaded] = field(default_factory=dict)
    restores: dict[str, Loaded] = field(default_factory=dict)
    errors: list[ResourceError] = field(default_factory=list)

    def policy(self, name: str) -> BackupPolicy | None:
        item = self.policies.get(name)
        return item.resource if item else None  # type: ignore[return-value]


def load_config(config_dir: Path, *, host: str | None = None) -> Config:
    """Every resource in the directory; duplicates and foreign kinds become errors naming both files."""
    loaded = load_paths([config_dir])
    config = Config(errors=list(loaded.errors))
    for item in loaded.items:
        resource = item.resource
        if isinstance(resource, BackupPolicy):
            if host is not None and resource.spec.host != host:
                continue
            table = config.policies
        elif isinstance(resource, RestoreRequest):
            table = config.restores
        else:
            config.errors.append(ResourceError(item.file, resource.kind, resource.metadata.name, "kind",
                                               "Backup records live in the repository, not in the config directory"))
            continue
        if resource.name in table:
            config.errors.append(ResourceError(item.file, resource.kind, resource.name, "metadata.name",
                                               f"duplicate name; already defined in {table[resource.name].file}"))
            continue
        table[resource.name] = item
    return config


def policy_facts(policy: BackupPolicy, backups: list[Backup], state: StateStore) -> PolicyFacts:
    verified = [at.timestamp() + (v.duration_seconds or 0) for at, v in state.drills(policy.name) if v.result == "Succeeded"]
    return facts_for(policy, backups, last=state.last_attempt(policy.name), measured=state.last_measurement(policy.name),
                     verified_at=max(verified, default=None))


def repository_for(policy: BackupPolicy) -> LocalRepository:
    assert policy.spec.storage.local is not None
    return LocalRepository(policy.spec.storage.local.path)


class Controller:
    """Runs due backups and pending restores of one config directory, at most one job per policy at a time."""

    def __init__(
        self,
        *,
        config_dir: Path,
        state: StateStore,
        engine: Callable[[], Engine],
        max_parallel: int = 2,
        host: str = "local",
    ) -> None:
        self.config_dir = Path(config_dir)
        self.state = state
        self._engine_factory = engine
        self._engine: Engine | None = None
        self.host = host
        self.pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="job")
        self.cancel = threading.Event()
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self.config = Config()
        self._seen_errors: set[str] = set()
        self.metrics: DockvaultMetrics | None = None
        self.notifier = Notifier()
        self._facts: list[PolicyFacts] = []
        self.ready = threading.Event()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._engine_factory()
        return self._engine

    # --- configuration -------------------------------------------------------------------------
    def reload(self) -> Config:
        old = self.config
        self.config = new = load_config(self.config_dir, host=self.host)
        messages = {str(e) for e in new.errors}
        for message in sorted(messages - self._seen_errors):
            log.error("invalid resource, skipped: %s", message)
        self._seen_errors = messages
        if self.metrics is not None:
            for item in new.policies.values():
                policy: BackupPolicy = item.resource  # type: ignore[assignment]
                self.metrics.policy_seen(policy.name, policy.spec.host, [t.name for t in policy.spec.targets])
        self.refresh_facts()
        for kind, before, after in (("policy", old.policies, new.policies), ("restore", old.restores, new.restores)):
            for name in sorted(after.keys() - before.keys()):
                log.info("%s %s added (%s)", kind, name, after[name].file)
            for name in sorted(before.keys() - after.keys()):
                log.info("%s %s removed", kind, name)
            for name in sorted(after.keys() & before.keys()):
                if after[name].resource != before[name].resource:
                    log.info("%s %s changed (%s)", kind, name, after[name].file)
        return new

    def startup(self) -> None:
        """Recover from a crash: remove leftover helpers and temporaries, rebuild state from the repositories."""
        self.state.lock()
        self.reload()
        removed = self.engine.remove_leftovers()
        if removed:
            log.warning("removed %d leftover helper container(s): %s", len(removed), ", ".join(removed))
        resumed = resume_journaled(self.engine, self.state.halted_containers(), self.state)
        if resumed:
            log.warning("resumed container(s) a stopped dockvault had left quiesced: %s", ", ".join(resumed))
        policies = [item.resource for item in self.config.policies.values()]
        by_root = {policy.spec.storage.local.path: policy for policy in policies}  # type: ignore[union-attr]
        for policy in by_root.values():
            for path in repository_for(policy).clean_temporaries():
                log.warning("removed incomplete backup data %s", path)
        for name, item in self.config.policies.items():
            self.state.sync_backups(name, repository_for(item.resource).backups(name))  # type: ignore[arg-type]
        self.state.fail_interrupted_restores()
        self.refresh_facts()
        self.ready.set()

    # --- jobs ----------------------------------------------------------------------------------
    def _claim(self, policy: str) -> bool:
        with self._lock:
            if policy in self._busy:
                return False
            self._busy.add(policy)
            return True

    def _release(self, policy: str) -> None:
        with self._lock:
            self._busy.discard(policy)

    def backup(self, policy: BackupPolicy, *, trigger: str, progress: Progress | None = None) -> BackupOutcome:
        started = now_utc()
        self.state.record_attempt(policy.name, Attempt("pending", "Running", started, trigger=trigger))
        try:
            outcome = run_backup(policy, engine=self.engine, repository=repository_for(policy), trigger=trigger,
                                 progress=progress, cancel=self.cancel, journal=self.state)
        finally:
            self.state.forget_attempt(policy.name, "pending")
        st = outcome.record.status
        self.state.record_attempt(policy.name, Attempt(outcome.record.id, st.phase, st.started_at, st.completed_at,
                                                       st.bytes, st.message, trigger))
        self.notifier.send_async(policy.spec.notify, Event(
            policy=policy.name, target=None, kind="backup", phase=st.phase, backup_id=outcome.record.id,
            bytes=st.bytes if outcome.succeeded else None, duration_seconds=st.duration_seconds, message=st.message,
            host=policy.spec.host))
        if self.metrics is not None:
            self.metrics.backup_finished(policy.name, policy.spec.host, succeeded=outcome.succeeded,
                                         duration_seconds=st.duration_seconds or 0.0)
            if outcome.deleted:
                self.metrics.retention_deleted(policy.name, policy.spec.host, len(outcome.deleted))
        self.refresh_facts()
        return outcome

    def restore(self, request: RestoreRequest, policy: BackupPolicy) -> RestoreOutcome:
        running = RestoreRequestStatus(phase="Running", started_at=now_utc())
        self.state.record_restore(request.name, request.spec_hash, policy.name, running, now_utc())
        repository = repository_for(policy)
        outcome = run_restore(request, policy, engine=self.engine, repository=repository, cancel=self.cancel)
        repository.save_restore(request.name, request.spec_hash, outcome.status)
        self.state.record_restore(request.name, request.spec_hash, policy.name, outcome.status, now_utc())
        st = outcome.status
        self.notifier.send_async(policy.spec.notify, Event(
            policy=policy.name, target=None, kind="restore", phase=st.phase, backup_id=st.backup, bytes=None,
            duration_seconds=st.duration_seconds, message=st.message, host=policy.spec.host))
        if self.metrics is not None:
            self.metrics.restore_finished(policy.name, policy.spec.host, succeeded=outcome.succeeded,
                                          duration_seconds=outcome.status.duration_seconds or 0.0)
        self.refresh_facts()
        return outcome

    # --- metrics ---------------------------------------------------------------------------------
    def refresh_facts(self) -> None:
        """Recompute what the exporter reports; scrapes read the snapshot and never touch disk or SQLite."""
        facts = [policy_facts(item.resource, repository_for(item.resource).backups(name), self.state)  # type: ignore[arg-type]
                 for name, item in sorted(self.config.policies.items())]
        with self._lock:
            self._facts = facts

    def facts(self) -> list[PolicyFacts]:
        with self._lock:
            return list(self._facts)

    def drill(self, policy: BackupPolicy) -> DrillOutcome:
        outcome = run_drill(policy, engine=self.engine, repository=repository_for(policy), cancel=self.cancel)
        verification = outcome.verification
        self.state.record_drill(policy.name, outcome.started_at, verification)
        self.notifier.send_async(policy.spec.notify, Event(
            policy=policy.name, target=None, kind="drill", phase=verification.result, backup_id=verification.backup,
            bytes=None, duration_seconds=verification.duration_seconds, message=verification.message,
            host=policy.spec.host))
        if self.metrics is not None:
            self.metrics.restore_finished(policy.name, policy.spec.host, succeeded=outcome.succeeded,
                                          duration_seconds=outcome.seconds)
        self.refresh_facts()
        return outcome

    def due_drills(self, now: datetime) -> list[BackupPolicy]:
        due = []
        for item in self.config.policies.values():
            policy: BackupPolicy = item.resource  # type: ignore[assignment]
            if policy.spec.verify is None or policy.spec.verify.schedule is None:
                continue
            last = self.state.last_drill(policy.name)
            has_backup = self.state.last_success(policy.name) is not None
            if drill_due(policy.spec, last_drill=last[0] if last else None, has_backup=has_backup, now=now).due:
                due.append(policy)
        return due

    def pending_restores(self) -> list[RestoreRequest]:
        pending = []
        for item in self.config.restores.values():
            request: RestoreRequest = item.resource  # type: ignore[assignment]
            if self.state.restore_status(request.name, request.spec_hash) is not None:
                continue
            policy = self.config.policy(request.spec.policy)
            done = repository_for(policy).restore_outcome(request.name, request.spec_hash) if policy else None
            if done is not None:  # the state dir was lost; the repository remembers
                self.state.record_restore(request.name, request.spec_hash, policy.name, done, now_utc())
                continue
            pending.append(request)
        return pending

    def due_backups(self, now: datetime) -> list[BackupPolicy]:
        due = []
        for item in self.config.policies.values():
            policy: BackupPolicy = item.resource  # type: ignore[assignment]
            last = self.state.last_attempt(policy.name)
            if backup_due(policy.spec, last_attempt=last.started_at if last else None, now=now).due:
                due.append(policy)
        return due

    def _submit(self, key: str, work: Callable[[], object]) -> Future | None:
        if not self._claim(key):
            return None

        def run() -> object:
            try:
                return work()
            finally:
                self._release(key)

        return self.pool.submit(run)

    def dispatch(self, now: datetime, *, skip: frozenset[str] = frozenset()) -> list[tuple[str, Future]]:
        """Start every due backup and drill and every pending restore whose policy is idle (labels in `skip` excepted)."""
        started: list[tuple[str, Future]] = []
        jobs = [(f"backup {p.name}", p, lambda p=p: self.backup(p, trigger="schedule")) for p in self.due_backups(now)]
        jobs += [(f"drill {p.name}", p, lambda p=p: self.drill(p)) for p in self.due_drills(now)]
        for request in self.pending_restores():
            policy = self.config.policy(request.spec.policy)
            if policy is None:
                if f"restore:{request.name}" not in self._seen_errors:
                    log.error("restore %s waits: policy %r is not loaded", request.name, request.spec.policy)
                    self._seen_errors.add(f"restore:{request.name}")
                continue
            jobs.append((f"restore {request.name}", policy, lambda r=request, p=policy: self.restore(r, p)))
        for label, policy, work in jobs:
            if label in skip:
                continue
            future = self._submit(policy.name, work)
            if future:
                started.append((label, future))
        return started

    def run_once(self) -> bool:
        """One reconcile pass; True only when the config was valid and every job succeeded."""
        self.startup()
        ok = not self.config.errors
        for request in self.pending_restores():
            if self.config.policy(request.spec.policy) is None:
                log.error("restore %s: policy %r is not loaded", request.name, request.spec.policy)
                ok = False
        done: set[str] = set()
        running: list[tuple[str, Future]] = []
        while True:  # jobs of one policy run one after another; each job at most once per pass
            running += self.dispatch(now_utc(), skip=frozenset(done))
            if not running:
                return ok
            label, future = running.pop(0)
            done.add(label)
            if not future.result().succeeded:
                log.error("%s failed", label)
                ok = False

    def serve(self, stop: threading.Event, *, tick: float = 1.0, facts_every: float = 5.0) -> None:
        """Watch the config directory and dispatch due jobs every tick until `stop` is set.

        Facts are also re-read every `facts_every` seconds: a `dockvault backup` run by hand in another
        process must show in the metrics without waiting for this process's next job.
        """
        from watchfiles import watch

        self.startup()
        self.dispatch(now_utc())
        refreshed = time.monotonic()
        for changes in watch(self.config_dir, stop_event=stop, yield_on_timeout=True, rust_timeout=int(tick * 1000)):
            if changes:
                self.reload()
            elif time.monotonic() - refreshed >= facts_every:
                self.refresh_facts()
                refreshed = time.monotonic()
            self.dispatch(now_utc())

    def shutdown(self) -> None:
        self.cancel.set()
        self.pool.shutdown(wait=True)
        self.notifier.flush(10)
