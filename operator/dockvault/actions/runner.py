"""The one job runner: both front ends and the one-shot commands run every backup, restore, drill and check
through it.

Given the resources, the state and the time, it asks controller.jobs what is due (restores, then backups,
then drills, then repository checks), runs each job under its policy's lock and within `max_parallel`, records the outcome in the
state, updates the metrics, sends the notifications and tells the front end (which writes status and
events). Any exception inside a job ends as a recorded Failed outcome, logged once with its traceback; a
temporary failure is retried with backoff before the next slot.

Start-up recovery is per policy, under the policy's lock, so it never touches a job another live process
runs: leftover helpers and scratch resources, temporary repository data, containers a killed dockvault left
paused or stopped, restores left Running.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..api.backup import Backup
from ..api.policy import BackupPolicy, Drill, RepositoryCheck
from ..api.restore import RestoreRequest, RestoreRequestStatus
from ..controller import jobs
from ..controller.jobs import Job
from ..controller.facts import PolicyFacts, facts_for
from ..controller.status import Attempt, iso, parse_time
from ..credentials import mask
from ..engine.core import Engine, is_temporary
from ..engine.quiesce import recover_halted
from ..notify import Event, Notifier
from ..sources.base import Progress
from ..storage import repository_for
from .backup import BackupOutcome, run_backup
from .locks import JobLocks, Lease
from .state import PolicyJournal, State

if TYPE_CHECKING:  # imported by the job that needs them: a one-shot backup starts without them
    from ..metrics import DockvaultMetrics
    from .check import CheckReport
    from .copy import CopyOutcome
    from .drill import DrillOutcome
    from .restore import RestoreOutcome

log = logging.getLogger(__name__)


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Resources:
    """What a front end knows right now: the policies this host runs, by key; the restore requests this host
    performs, by key with their policy's key; and policies of other hosts that restores may read (migration)."""

    policies: Mapping[str, BackupPolicy] = field(default_factory=dict)
    restores: Mapping[str, tuple[RestoreRequest, str]] = field(default_factory=dict)
    others: Mapping[str, BackupPolicy] = field(default_factory=dict)  # never scheduled here

    def policy(self, key: str) -> BackupPolicy | None:
        return self.policies.get(key) or self.others.get(key)


@dataclass(frozen=True)
class JobResult:
    """One finished job, as the front ends report it."""

    job: Job
    policy: BackupPolicy
    succeeded: bool
    message: str
    backup_id: str | None = None
    error: str | None = None  # jobs.TEMPORARY, PERMANENT or UNEXPECTED when it failed
    backup: BackupOutcome | None = None
    restore: RestoreOutcome | None = None
    drill: DrillOutcome | None = None
    check: list[CheckReport] | None = None
    request: RestoreRequest | None = None
    copies: list[CopyOutcome] = field(default_factory=list)


class JobRunner:
    def __init__(
        self,
        *,
        state: State,
        engine: Callable[[], Engine],
        locks: JobLocks | None = None,
        metrics: DockvaultMetrics | None = None,
        notifier: Notifier | None = None,
        max_parallel: int = 2,
        job_context: Callable[[str], contextlib.AbstractContextManager] | None = None,
        on_result: Callable[[JobResult], None] | None = None,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.state = state
        self._engine_factory = engine
        self._engine: Engine | None = None
        self.locks = locks or JobLocks()
        self.metrics = metrics
        self.notifier = notifier or Notifier(on_failed_delivery=self._notification_failed)
        self.job_context = job_context or (lambda _policy: contextlib.nullcontext())
        self.on_result = on_result
        self.clock = clock
        self.cancel = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="job")
        self._guard = threading.Lock()
        self._listing_errors: dict[str, str] = {}
        self._facts: dict[str, PolicyFacts] = {}
        self._listings: dict[str, tuple[datetime | None, bool]] = {}  # newest good backup's start, any good backup
        self._recovered: set[str] = set()

    @property
    def engine(self) -> Engine:
        with self._guard:
            if self._engine is None:
                self._engine = self._engine_factory()
            return self._engine

    # --- planning ----------------------------------------------------------------------------------
    def _remember_listing(self, key: str, backups: list[Backup]) -> tuple[datetime | None, bool]:
        good = [b for b in backups if b.succeeded]
        listing = (max((b.status.started_at for b in good), default=None), bool(good))
        with self._guard:
            self._listings[key] = listing
        return listing

    def history(self, key: str, policy: BackupPolicy) -> jobs.History:
        """What planning needs of a policy. The repository part comes from the last `refresh` (after every job and
        on each of the front end's refreshes), so a tick does not read every manifest again."""
        with self._guard:
            listing = self._listings.get(key)
        if listing is None:
            backups = self.list_backups(key, policy)
            if backups is not None:
                listing = self._remember_listing(key, backups)
            else:  # planned as a policy without backups: its job fails and says why; the next refresh lists again
                listing = (None, False)
                with self._guard:
                    self._listings[key] = listing
        drill = self.state.last_drill(key)
        check = self.state.last_check(key)
        return jobs.History(
            last_attempt=self.state.last_attempt(key),
            newest_backup_started=listing[0],
            last_drill=parse_time(drill.started_at) if drill else None,
            has_backup=listing[1],
            last_check=parse_time(check.started_at) if check else None,
        )

    def restore_pending(self, key: str, request: RestoreRequest, policy_key: str, policy: BackupPolicy) -> bool:
        """Has this request not yet run for its current spec? A lost state learns the answer from the repository."""
        if self.state.restore_status(key, request.spec_hash) is not None:
            return False
        with self.job_context(policy_key):
            done = repository_for(policy).restore_outcome(request.name, request.spec_hash)
        if done is not None:
            self.state.record_restore(key, request.spec_hash, policy_key, done)
            return False
        return True

    def due(self, resources: Resources, now: datetime | None = None) -> list[Job]:
        """Every job due now, highest priority first."""
        now = now or self.clock()
        policies = [(key, policy, self.history(key, policy)) for key, policy in resources.policies.items()]
        restores = [(key, request, policy_key) for key, (request, policy_key) in resources.restores.items()
                    if (policy := resources.policy(policy_key)) is not None
                    and self.restore_pending(key, request, policy_key, policy)]
        return jobs.plan(policies, restores, now)

    # --- dispatching -------------------------------------------------------------------------------
    def dispatch(self, resources: Resources, now: datetime | None = None, *,
                 skip: frozenset[str] = frozenset()) -> list[tuple[Job, Future]]:
        """Start every due job whose policy is idle, highest priority first (labels in `skip` excepted).

        A policy whose lock another job (or process) holds keeps its jobs for a later pass. The futures never
        raise: every outcome, unexpected ones included, is recorded by the job itself.
        """
        started = []
        for job in self.due(resources, now):
            if job.label in skip:
                continue
            lease = self.locks.try_acquire(job.policy, job.label)
            if lease is None:
                continue
            try:
                # The job thread inherits the caller's context (kopf's, in Kubernetes mode: events, Secrets).
                future = self.pool.submit(contextvars.copy_context().run, self._run_leased, job, resources, lease)
            except RuntimeError:  # the pool is shut down: dockvault is stopping
                lease.release()
                break
            started.append((job, future))
        return started

    def _run_leased(self, job: Job, resources: Resources, lease: Lease) -> JobResult:
        with lease:
            return self.execute(job, resources)

    def run_pass(self, resources: Resources) -> bool:
        """Run everything due now to its end, each job at most once (`dockvault run --once`); True if all succeeded."""
        done: set[str] = set()
        running: list[tuple[Job, Future]] = []
        ok = True
        while True:
            running += self.dispatch(resources, skip=frozenset(done))
            if not running:
                return ok
            job, future = running.pop(0)
            done.add(job.label)
            result = future.result()
            if not result.succeeded:
                log.error("%s failed: %s", job.label, result.message)
                ok = False

    # --- running one job ------------------------------------------------------------------------------
    def execute(self, job: Job, resources: Resources, *, progress: Progress | None = None) -> JobResult:
        """Run `job` now (the caller holds its policy's lock); record, count, notify and report the outcome."""
        policy = resources.policy(job.policy)
        assert policy is not None, job
        try:
            if job.policy in resources.policies:  # another host's policy: that host recovers its own jobs
                self.recover_policy(job.policy, policy)
            with self.job_context(job.policy):
                if job.kind == "backup":
                    result = self._backup(job, policy, progress)
                elif job.kind == "restore":
                    request = resources.restores[job.request][0]
                    result = self._restore(job, policy, request)
                elif job.kind == "check":
                    result = self._check(job, policy)
                else:
                    result = self._drill(job, policy)
        except Exception as exc:  # noqa: BLE001 - any job ends recorded, never silently, never re-run each tick
            result = self._unexpected(job, policy, resources, exc)
        self.refresh(job.policy, policy)
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:  # noqa: BLE001 - the job's outcome is recorded; the status write retries next tick
                log.exception("%s: cannot report the outcome", job.label)
        return result

    def backup_now(self, key: str, policy: BackupPolicy, *, trigger: str = "manual",
                   progress: Progress | None = None, level: str = "full") -> JobResult:
        """A backup typed by hand; the caller holds the policy's lock."""
        return self.execute(Job("backup", key, trigger, level=level), Resources({key: policy}), progress=progress)

    def drill_now(self, key: str, policy: BackupPolicy) -> JobResult:
        return self.execute(Job("drill", key, "manual"), Resources({key: policy}))

    def _backup(self, job: Job, policy: BackupPolicy, progress: Progress | None) -> JobResult:
        trigger = "manual" if job.reason == "manual" else "schedule"
        started = self.clock()
        self.state.record_attempt(job.policy, Attempt("pending", "Running", started, trigger=trigger,
                                                      attempt=job.attempt, level=job.level))
        try:
            outcome = run_backup(policy, engine=self.engine, repository=repository_for(policy), trigger=trigger,
                                 progress=progress, cancel=self.cancel, journal=PolicyJournal(self.state, job.policy),
                                 level=job.level)
        finally:
            self.state.forget_attempt(job.policy, "pending")
        st = outcome.record.status
        retry = None
        if outcome.error == jobs.TEMPORARY and trigger == "schedule":
            retry = jobs.retry_at(policy, attempt=job.attempt, failed_at=st.completed_at or self.clock(),
                                  started_at=st.started_at)
        self.state.record_attempt(job.policy, Attempt(outcome.record.id, st.phase, st.started_at, st.completed_at,
                                                      st.bytes, st.message, trigger, outcome.error, job.attempt, retry,
                                                      outcome.record.level))
        if retry is not None:
            log.warning("backup %s: temporary failure (attempt %d); retrying at %s", job.policy, job.attempt, iso(retry))
        if self.metrics is not None:
            self.metrics.backup_finished(policy.name, policy.spec.host, succeeded=outcome.succeeded,
                                         duration_seconds=st.duration_seconds or 0.0, retry=job.attempt > 1)
            if outcome.deleted or outcome.refused:
                self.metrics.retention_deleted(policy.name, policy.spec.host, len(outcome.deleted),
                                               refused=len(outcome.refused))
        self._notify(job.policy, policy, "backup", st.phase, outcome.record.id,
                     st.bytes if outcome.succeeded else None, st.duration_seconds, st.message,
                     raw_bytes=sum(a.raw_bytes for a in st.artifacts) if outcome.succeeded else None)
        copies = self._copies(job.policy, policy) if outcome.succeeded else []
        pruned = f"; retention deleted {', '.join(outcome.deleted)}" if outcome.deleted else ""
        copied = "".join(f"; copy {c.status.name}: {c.status.message}" for c in copies)
        message = st.message or f"backup {outcome.record.id}: {st.bytes} bytes in {st.duration_seconds}s{pruned}{copied}"
        return JobResult(job, policy, outcome.succeeded, message, outcome.record.id, outcome.error, backup=outcome,
                         copies=copies)

    def _copies(self, key: str, policy: BackupPolicy) -> list[CopyOutcome]:
        """3-2-1: bring every copy up to date (catching up on what an earlier sync missed); a failed copy fails
        neither the backup nor the other copies, it shows in CopiesSynced, the metrics and a notification."""
        if not policy.spec.copies:
            return []
        from .copy import sync_copies
        outcomes = sync_copies(policy, repository_for(policy), previous=self.state.copy_statuses(key),
                               cancel=self.cancel)
        for outcome in outcomes:
            self.state.record_copy(key, outcome.status)
            if self.metrics is not None:
                self.metrics.copy_finished(policy.name, policy.spec.host, outcome.status.name,
                                           succeeded=outcome.succeeded)
            if not outcome.succeeded:
                self._notify(key, policy, "copy", "Failed", outcome.status.newest_backup, None, None,
                             outcome.status.message)
        return outcomes

    def _restore(self, job: Job, policy: BackupPolicy, request: RestoreRequest) -> JobResult:
        from .restore import run_restore
        running = RestoreRequestStatus(phase="Running", started_at=self.clock())
        self.state.record_restore(job.request, request.spec_hash, job.policy, running)
        repository = repository_for(policy)
        outcome = run_restore(request, policy, engine=self.engine, repository=repository, cancel=self.cancel)
        st = outcome.status
        repository.save_restore(request.name, request.spec_hash, st)
        self.state.record_restore(job.request, request.spec_hash, job.policy, st)
        if self.metrics is not None:
            self.metrics.restore_finished(policy.name, policy.spec.host, succeeded=outcome.succeeded,
                                          duration_seconds=st.duration_seconds or 0.0)
        self._notify(job.policy, policy, "restore", st.phase, st.backup, None, st.duration_seconds, st.message)
        return JobResult(job, policy, outcome.succeeded, st.message or "", st.backup,
                         None if outcome.succeeded else jobs.PERMANENT, restore=outcome, request=request)

    def _drill(self, job: Job, policy: BackupPolicy) -> JobResult:
        from .drill import run_drill
        outcome = run_drill(policy, engine=self.engine, repository=repository_for(policy), cancel=self.cancel)
        drill = outcome.drill
        self.state.record_drill(job.policy, outcome.started_at, drill)
        if self.metrics is not None:
            self.metrics.restore_finished(policy.name, policy.spec.host, succeeded=outcome.succeeded,
                                          duration_seconds=outcome.seconds)
        self._notify(job.policy, policy, "drill", drill.phase, drill.backup, None, drill.duration_seconds, drill.message)
        return JobResult(job, policy, outcome.succeeded, drill.message or "", drill.backup,
                         None if outcome.succeeded else jobs.PERMANENT, drill=outcome)

    def _check(self, job: Job, policy: BackupPolicy) -> JobResult:
        """A scheduled repository check of the primary and every copy (the CLI's `dockvault check` without state)."""
        from .check import check_policy, summarize
        spec = policy.spec.check
        started = self.clock()
        reports = check_policy(policy, repository_for(policy), read_data=bool(spec and spec.read_data),
                               subset=spec.subset if spec else None, cancel=self.cancel)
        check = summarize(reports, started_at=iso(started))
        self.state.record_check(job.policy, check)
        if not check.succeeded:
            self._notify(job.policy, policy, "check", "Failed", None, None, check.duration_seconds, check.message)
        return JobResult(job, policy, check.succeeded, check.message or "", None,
                         None if check.succeeded else jobs.PERMANENT, check=reports)

    def _unexpected(self, job: Job, policy: BackupPolicy, resources: Resources, exc: Exception) -> JobResult:
        """Record an exception no action caught: Failed with a message, temporary when the engine was away."""
        temporary = is_temporary(exc)
        error = jobs.TEMPORARY if temporary else jobs.UNEXPECTED
        message = mask(f"{'temporary failure' if temporary else 'unexpected error'}: {type(exc).__name__}: {exc}")
        if temporary:
            log.error("%s failed: %s", job.label, message)
        else:
            log.exception("%s failed with an unexpected error; this is a bug, please report it", job.label)
        now = self.clock()
        backup_id = None
        try:
            if job.kind == "backup":
                retry = jobs.retry_at(policy, attempt=job.attempt, failed_at=now, started_at=now) if temporary else None
                backup_id = "failed-" + now.strftime("%Y%m%dT%H%M%SZ")
                self.state.record_attempt(job.policy, Attempt(backup_id, "Failed", now, now, None, message,
                                                              "schedule", error, job.attempt, retry, job.level))
                if self.metrics is not None:
                    self.metrics.backup_finished(policy.name, policy.spec.host, succeeded=False, duration_seconds=0.0,
                                                 retry=job.attempt > 1)
            elif job.kind == "restore":
                request = resources.restores[job.request][0]
                failed = RestoreRequestStatus(phase="Failed", started_at=now, completed_at=now, message=message)
                with contextlib.suppress(Exception):
                    repository_for(policy).save_restore(request.name, request.spec_hash, failed)
                self.state.record_restore(job.request, request.spec_hash, job.policy, failed)
            elif job.kind == "check":
                self.state.record_check(job.policy, RepositoryCheck(phase="Failed", started_at=iso(now),
                                                                    duration_seconds=0.0, backups=0, message=message))
            else:
                self.state.record_drill(job.policy, now, Drill(phase="Failed", started_at=iso(now),
                                                               duration_seconds=0.0, message=message))
        except Exception as failure:  # noqa: BLE001 - the state itself is failing; the log above says what happened
            if is_temporary(failure):  # e.g. its disk is full: the log above named the cause
                log.error("%s: cannot record the failure: %s", job.label, failure)
            else:
                log.exception("%s: cannot record the failure", job.label)
        with contextlib.suppress(Exception), self.job_context(job.policy):  # Secrets of a mail login, in kube mode
            self._notify(job.policy, policy, job.kind, "Failed", backup_id, None, None, message)
        return JobResult(job, policy, False, message, backup_id, error)

    def _notify(self, key: str, policy: BackupPolicy, kind: str, phase: str, backup_id: str | None,
                size: int | None, seconds: float | None, message: str | None, *, raw_bytes: int | None = None) -> None:
        """Hand the outcome to the notifier (best effort, in the background): webhooks and mail."""
        if policy.spec.notify is None:
            return
        facts = self._facts.get(key)
        if kind == "backup" and phase == "Succeeded":
            rpo_age: float | None = 0.0
        elif facts is not None and facts.last_success_timestamp is not None:
            rpo_age = max(0.0, self.clock().timestamp() - facts.last_success_timestamp)
        else:
            rpo_age = None
        objectives, compression = policy.spec.objectives, policy.spec.compression
        measured = self.state.last_measurement(key)
        self.notifier.send_async(policy.spec.notify, Event(
            policy=policy.name, target=None, kind=kind, phase=phase, backup_id=backup_id, bytes=size,  # type: ignore[arg-type]
            duration_seconds=seconds, message=message, host=policy.spec.host, namespace=policy.metadata.namespace,
            raw_bytes=raw_bytes, rpo_age_seconds=rpo_age,
            compression=f"{compression.algorithm} level {compression.effective_level}"
            if compression.effective_level is not None else compression.algorithm,
            rpo_target_seconds=objectives.rpo.total_seconds() if objectives.rpo else None,
            rto_seconds=measured.seconds if measured else None,
            rto_target_seconds=objectives.rto.total_seconds() if objectives.rto else None))

    def _notification_failed(self, event: Event, channel: str) -> None:
        if self.metrics is not None:
            self.metrics.notification_failed(event.policy, event.host, channel)

    # --- recovery ------------------------------------------------------------------------------------
    def recover_policy(self, key: str, policy: BackupPolicy) -> None:
        """Before a policy's job, with its lock held: resume the containers and remove the helpers an earlier job
        left (killed, or cut off from the engine); once per process also its temporaries and interrupted runs."""
        with self._guard:
            recovered = key in self._recovered
        # Also later on: a job of this process that could not resume its containers (the engine was away) left
        # them journaled; the lock is held, so no job of the policy is running now.
        entries = [entry for entry in self.state.halted_containers() if entry.policy in (key, None)]
        if entries:
            resumed = recover_halted(self.engine, entries, self.state, now=self.clock())
            if resumed:
                log.warning("resumed container(s) a stopped dockvault had left quiesced: %s", ", ".join(resumed))
        removed = self.engine.remove_leftovers(policy=policy.name)
        if removed:
            log.warning("policy %s: removed leftovers of an interrupted job: %s", key, ", ".join(removed))
        if recovered:
            return
        with self.job_context(key):
            self._recover_repository(key, policy)

    def _recover_repository(self, key: str, policy: BackupPolicy) -> None:
        for path in repository_for(policy).clean_temporaries(policy.name):
            log.warning("policy %s: removed incomplete backup data %s", key, path)
        last = self.state.last_attempt(key)
        if last is not None and last.phase == "Running":
            self.state.record_attempt(key, Attempt(last.backup_id, "Failed", last.started_at, self.clock(), None,
                                                   "interrupted: dockvault stopped during the backup", last.trigger,
                                                   jobs.TEMPORARY, last.attempt, level=last.level))
            self.state.forget_attempt(key, "pending")
        for request, spec_hash, policy_key, status in self.state.interrupted_restores():
            if policy_key != key:
                continue
            done = repository_for(policy).restore_outcome(request.rsplit("/", 1)[-1], spec_hash)
            self.state.record_restore(request, spec_hash, key, done or status.model_copy(update={
                "phase": "Failed", "completed_at": self.clock(),
                "message": "interrupted: dockvault stopped during the restore; change the spec to run it again"}))
        with self._guard:
            self._recovered.add(key)  # only once it all worked: a failed recovery is tried again

    def recover(self, resources: Resources) -> list[str]:
        """Start-up recovery of every policy whose lock is free; returns the keys of busy ones (left alone)."""
        busy = []
        for key, policy in sorted(resources.policies.items()):
            with self._guard:
                if key in self._recovered:
                    continue
            lease = self.locks.try_acquire(key, "start-up recovery")
            if lease is None:
                busy.append(key)
                log.info("policy %s: another job holds its lock (%s); recovery waits for the policy's next job", key,
                         self.locks.holder(key) or "unknown")
                continue
            with lease:
                try:
                    self.recover_policy(key, policy)
                except Exception as exc:  # noqa: BLE001 - one policy's repository or engine never stops the others
                    log.error("policy %s: start-up recovery failed, tried again before its next job: %s", key, exc)
        return busy

    def list_backups(self, key: str, policy: BackupPolicy) -> list[Backup] | None:
        """The policy's backups, read in its job context (its repository's keys may be in a Secret); None, logged,
        when the repository cannot be listed (unreachable, credentials refused), so that it never stops the other
        policies: the policy's own jobs fail and say why."""
        try:
            with self.job_context(key):
                backups = repository_for(policy).backups(policy.name)
        except Exception as exc:  # noqa: BLE001
            error = mask(str(exc)) or type(exc).__name__
            with self._guard:
                again = self._listing_errors.get(key) == error
                self._listing_errors[key] = error
            log.log(logging.DEBUG if again else logging.ERROR, "policy %s: cannot list its repository: %s", key, error)
            return None
        with self._guard:
            self._listing_errors.pop(key, None)
        return backups

    def listing_error(self, key: str) -> str | None:
        """Why the policy's repository could not be listed the last time (None: it could)."""
        with self._guard:
            return self._listing_errors.get(key)

    # --- metrics facts ---------------------------------------------------------------------------------
    def refresh(self, key: str, policy: BackupPolicy | None) -> list[Backup] | None:
        """Recompute what the exporter reports of one policy (None: forget it); scrapes never touch disk or state.
        Returns the backups it listed (None when the repository could not be listed)."""
        if policy is None:
            with self._guard:
                self._facts.pop(key, None)
                self._listings.pop(key, None)
            return None
        backups = None
        try:
            drill = self.state.last_successful_drill(key)
            started = parse_time(drill.started_at) if drill else None
            drilled_at = started.timestamp() + (drill.duration_seconds or 0) if drill and started else None
            backups = self.list_backups(key, policy)
            if backups is None:
                return None  # keep the last facts; the next refresh tries again
            self._remember_listing(key, backups)
            facts = facts_for(policy, backups, last=self.state.last_attempt(key),
                              measured=self.state.last_measurement(key), drilled_at=drilled_at,
                              copies=self.state.copy_statuses(key), check=self.state.last_check(key))
        except Exception:  # noqa: BLE001 - keep the last facts; the next refresh tries again
            log.exception("policy %s: cannot refresh its metrics", key)
            return backups
        with self._guard:
            self._facts[key] = facts
        return backups

    def refresh_all(self, resources: Resources) -> dict[str, list[Backup] | None]:
        """`refresh` of every policy; the backups each listing found, by policy key."""
        listed = {key: self.refresh(key, policy) for key, policy in resources.policies.items()}
        with self._guard:
            for key in set(self._facts) - set(resources.policies):
                del self._facts[key]
                self._listings.pop(key, None)
        return listed

    def facts(self) -> list[PolicyFacts]:
        with self._guard:
            return [self._facts[key] for key in sorted(self._facts)]

    # --- shutting down -------------------------------------------------------------------------------
    def shutdown(self, *, notify_timeout: float = 10) -> None:
        self.cancel.set()
        self.pool.shutdown(wait=True)
        self.notifier.flush(notify_timeout)

