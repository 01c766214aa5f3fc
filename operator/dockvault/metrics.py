"""Prometheus metrics for dockvault: gauges computed from facts at scrape time, counters and histograms from events.

Gauges are derived when Prometheus scrapes, from facts the front end already keeps (the repository's
manifests and the state store), so the RPO age moves with the clock and is right straight after a restart
without any ticking loop. Everything lives on a registry passed in, never the process-global one, so tests and
several operators in one process do not share state.

Series that have no value are left out rather than exported as 0 or NaN: `dockvault_rpo_age_seconds` and
`dockvault_backup_last_success_timestamp_seconds` are absent until a policy has a successful backup, and
`dockvault_backup_last_status` until it has been attempted. Alerts must treat the missing series as the worst
case, for example with `dockvault_repository_backups unless on (policy, host) dockvault_rpo_age_seconds` (policies
without any good backup) next to `dockvault_rpo_age_seconds > on (policy, host) dockvault_rpo_target_seconds`.

Old names keep working as deprecated copies of the new series (DEPRECATED_GAUGES), so dashboards and alerts
written for them do not break; README "Deprecated names" lists them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .api.notify import CHANNELS
from .controller.facts import PolicyFacts, facts_for  # noqa: F401 - facts_for re-exported: the gauges' inputs
from .exposition import EventFamily

log = logging.getLogger(__name__)

PREFIX = "dockvault_"
POLICY_LABELS = ("policy", "host")
# From a one-second volume archive to a six-hour database dump.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
# deprecated name -> the gauge it copies
DEPRECATED_GAUGES = {
    "rpo_seconds": "rpo_age_seconds",
    "verify_last_success_timestamp_seconds": "drill_last_success_timestamp_seconds",
}


class DockvaultMetrics:
    """The metrics of one dockvault operator, registered on `registry`; the event methods are thread-safe."""

    def __init__(
        self,
        registry: CollectorRegistry,
        facts: Callable[[], Sequence[PolicyFacts]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        def counter(name: str, documentation: str, labels: Sequence[str] = POLICY_LABELS) -> EventFamily:
            return EventFamily(PREFIX + name, documentation, labels)

        def histogram(name: str, documentation: str) -> EventFamily:
            return EventFamily(PREFIX + name, documentation, POLICY_LABELS, DURATION_BUCKETS)

        self._backup_attempts = counter("backup_attempts_total", "Backup runs started and finished, successful or not.")
        self._backup_failures = counter("backup_failures_total", "Backup runs that failed (nothing was published).")
        self._backup_retries = counter("backup_retries_total",
                                       "Backup runs that retried a temporary failure (also counted in attempts).")
        self._backup_duration = histogram(
            "backup_duration_seconds", "Duration of successful backup runs in seconds, all targets together."
        )
        self._retention_deleted = counter("retention_deleted_total", "Backups deleted by retention.")
        self._retention_refused = counter("retention_refused_total",
                                          "Backups retention would delete but the repository keeps (S3 Object Lock).")
        self._restores = counter("restores_total", "Restores and restore drills finished, successful or not.")
        self._restore_failures = counter("restore_failures_total", "Restores and restore drills that failed.")
        self._restore_duration = histogram(
            "restore_duration_seconds", "Duration of successful restores and restore drills in seconds."
        )
        copy_labels = (*POLICY_LABELS, "copy")
        self._copies = counter("copy_syncs_total", "Syncs of a copy (3-2-1), successful or not.", copy_labels)
        self._copy_failures = counter("copy_failures_total", "Syncs of a copy (3-2-1) that failed.", copy_labels)
        self._notifications_failed = counter(
            "notifications_failed_total",
            "Notifications (a mail, or a POST to one webhook) that did not arrive after their retries, or were dropped.",
            (*POLICY_LABELS, "channel"))
        registry.register(EventsCollector((*self._per_policy(), self._copies, self._copy_failures,
                                           self._notifications_failed)))
        registry.register(FactsCollector(facts, clock))

    def policy_seen(self, policy: str, host: str, targets: Sequence[str]) -> None:
        """Make the policy's counters and histograms exist at 0, so rate() and increase() see its first event.

        `targets` is accepted for the day a per-target event series appears; none has a target label yet.
        """
        for family in self._per_policy():
            family.touch(policy, host)
        for channel in CHANNELS:
            self._notifications_failed.touch(policy, host, channel)

    def backup_finished(self, policy: str, host: str, *, succeeded: bool, duration_seconds: float,
                        retry: bool = False) -> None:
        self.policy_seen(policy, host, ())
        self._backup_attempts.inc(policy, host)
        if retry:
            self._backup_retries.inc(policy, host)
        if succeeded:
            self._backup_duration.observe(policy, host, amount=max(0.0, duration_seconds))
        else:
            self._backup_failures.inc(policy, host)

    def retention_deleted(self, policy: str, host: str, count: int, refused: int = 0) -> None:
        self.policy_seen(policy, host, ())
        self._retention_deleted.inc(policy, host, amount=count)
        self._retention_refused.inc(policy, host, amount=refused)

    def copy_finished(self, policy: str, host: str, copy: str, *, succeeded: bool) -> None:
        self._copies.inc(policy, host, copy)
        self._copy_failures.inc(policy, host, copy, amount=0.0 if succeeded else 1.0)

    def notification_failed(self, policy: str, host: str, channel: str) -> None:
        """One receiver of `channel` (webhook or email) did not get a notification of the policy."""
        self._notifications_failed.inc(policy, host, channel)

    def restore_finished(self, policy: str, host: str, *, succeeded: bool, duration_seconds: float) -> None:
        self.policy_seen(policy, host, ())
        self._restores.inc(policy, host)
        if succeeded:
            self._restore_duration.observe(policy, host, amount=max(0.0, duration_seconds))
        else:
            self._restore_failures.inc(policy, host)

    def _per_policy(self) -> tuple[EventFamily, ...]:
        return (
            self._backup_attempts,
            self._backup_failures,
            self._backup_retries,
            self._backup_duration,
            self._retention_deleted,
            self._retention_refused,
            self._restores,
            self._restore_failures,
            self._restore_duration,
        )


class EventsCollector(Collector):
    """The counters and histograms, each a snapshot taken at the scrape."""

    def __init__(self, families: Sequence[EventFamily]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.collect()


class FactsCollector(Collector):
    """Builds the gauges from `facts()` on every scrape; a failing `facts()` drops only these gauges, never the rest."""

    def __init__(self, facts: Callable[[], Sequence[PolicyFacts]], clock: Callable[[], float]) -> None:
        self._facts = facts
        self._clock = clock
        self._lock = threading.Lock()
        self._errors = 0
        self._last_error = ""

    def describe(self) -> Iterator[Metric]:
        # Names only: lets the registry reject duplicates without calling facts() at registration.
        yield from self._empty_families()
        yield from self._own_families()

    def collect(self) -> Iterator[Metric]:
        try:
            families = self._families(self._facts(), self._clock())
        except Exception as exc:
            families = []
            self._record_error(exc)
        else:
            with self._lock:
                self._last_error = ""
        yield from families
        yield from self._own_families()

    def _families(self, all_facts: Sequence[PolicyFacts], now: float) -> list[Metric]:
        families = self._empty_families()
        by_name = {family.name: family for family in families}

        def gauge(name: str, facts: PolicyFacts, value: float | None, *target: str) -> None:
            # Converted here so that a malformed fact fails this collector, not the whole exposition later.
            if value is not None:
                by_name[PREFIX + name].add_metric([str(facts.policy), str(facts.host), *map(str, target)], float(value))

        seen: set[tuple[str, str]] = set()
        for facts in all_facts:
            key = (facts.policy, facts.host)
            if key in seen:
                log.warning("metrics: policy %r on host %r reported twice; the first facts are exported", *key)
                continue
            seen.add(key)
            last_success = facts.last_success_timestamp
            gauge("backup_last_success_timestamp_seconds", facts, last_success)
            gauge("backup_last_status", facts, facts.last_status)
            for target, size in sorted(facts.target_sizes.items()):
                gauge("backup_size_bytes", facts, size, target)
            gauge("rpo_target_seconds", facts, facts.rpo_target_seconds)
            # A clock stepped back must not make the newest backup look younger than brand new.
            gauge("rpo_age_seconds", facts, None if last_success is None else max(0.0, now - last_success))
            gauge("rto_target_seconds", facts, facts.rto_target_seconds)
            gauge("rto_seconds", facts, facts.rto_seconds)
            gauge("drill_last_success_timestamp_seconds", facts, facts.drill_last_success_timestamp)
            gauge("repository_backups", facts, facts.repository_backups)
            for copy, at in sorted(facts.copy_last_success.items()):
                gauge("copy_last_success_timestamp_seconds", facts, at, copy)
            gauge("check_last_run_timestamp_seconds", facts, facts.check_last_timestamp)
            gauge("check_damaged_artifacts", facts, facts.check_damaged_artifacts)
        by_name[PREFIX + "policies"].add_metric([], len(seen))
        for old, new in DEPRECATED_GAUGES.items():
            for sample in by_name[PREFIX + new].samples:
                by_name[PREFIX + old].add_metric([sample.labels[label] for label in POLICY_LABELS], sample.value)
        return families

    def _record_error(self, exc: Exception) -> None:
        with self._lock:
            self._errors += 1
            repeated = str(exc) == self._last_error
            self._last_error = str(exc)
        # The full traceback once per distinct error: a scrape every 15 s must not flood the log.
        if repeated:
            log.debug("metrics: reading the facts failed again: %s", exc)
        else:
            log.error("metrics: reading the facts failed; policy gauges are left out of this scrape", exc_info=exc)

    def _own_families(self) -> list[Metric]:
        build = GaugeMetricFamily(
            PREFIX + "build_info", "Always 1; the version label is the running dockvault.", labels=["version"]
        )
        build.add_metric([__version__], 1)
        with self._lock:
            errors = self._errors
        failed = CounterMetricFamily(
            PREFIX + "facts_errors",
            "Scrapes whose policy facts could not be read, so the policy gauges were left out.",
            value=errors,
        )
        return [build, failed]

    @staticmethod
    def _empty_families() -> list[GaugeMetricFamily]:
        def family(name: str, documentation: str, *, per_target: bool = False) -> GaugeMetricFamily:
            labels = [*POLICY_LABELS, "target"] if per_target else list(POLICY_LABELS)
            return GaugeMetricFamily(PREFIX + name, documentation, labels=labels)

        return [
            family(
                "backup_last_success_timestamp_seconds",
                "Unix time in seconds when the newest successful backup completed.",
            ),
            family("backup_last_status", "1 if the last backup attempt succeeded, 0 if it failed."),
            family("backup_size_bytes", "Bytes stored for the target in the newest good backup.", per_target=True),
            family("rpo_target_seconds", "Recovery point objective of the policy in seconds."),
            family("rpo_age_seconds",
                   "Age in seconds of the newest successful backup (data that a loss now would cost)."),
            family("rto_target_seconds", "Recovery time objective of the policy in seconds."),
            family("rto_seconds", "Duration in seconds of the last measured restore or restore drill."),
            family(
                "drill_last_success_timestamp_seconds",
                "Unix time in seconds when the last successful restore drill completed.",
            ),
            family("repository_backups", "Complete backups kept in the repository."),
            GaugeMetricFamily(PREFIX + "copy_last_success_timestamp_seconds",
                              "Unix time in seconds when a sync of the copy (3-2-1) last succeeded.",
                              labels=[*POLICY_LABELS, "copy"]),
            family("check_last_run_timestamp_seconds",
                   "Unix time in seconds when the last scheduled repository check (spec.check) ended."),
            family("check_damaged_artifacts",
                   "Damaged artifacts and manifests the last repository check found, in the primary and all copies."),
            GaugeMetricFamily(PREFIX + "policies", "Backup policies known to this operator."),
            *(family(old, f"Deprecated: the same as {PREFIX}{new}.") for old, new in DEPRECATED_GAUGES.items()),
        ]
