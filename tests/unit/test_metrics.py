"""The exporter on a fresh registry: gauges computed from facts and a fake clock at scrape time, counters from events."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from dockvault import __version__
from dockvault.metrics import DEPRECATED_GAUGES, DURATION_BUCKETS, DockvaultMetrics, PolicyFacts

NOW = 1_795_000_000.0
P = {"policy": "myapp", "host": "local"}

MYAPP = PolicyFacts(
    policy="myapp",
    host="local",
    targets=("db", "media"),
    rpo_target_seconds=86400.0,
    rto_target_seconds=1800.0,
    last_success_timestamp=NOW - 3600,
    last_status=1,
    repository_backups=7,
    target_sizes={"db": 123_456, "media": 9_876_543_210},
    rto_seconds=412.5,
    drill_last_success_timestamp=NOW - 7200,
)
NEVER_RAN = PolicyFacts(
    policy="fresh",
    host="local",
    targets=("media",),
    rpo_target_seconds=None,
    rto_target_seconds=None,
    last_success_timestamp=None,
    last_status=None,
    repository_backups=0,
    target_sizes={},
    rto_seconds=None,
    drill_last_success_timestamp=None,
)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def exporter(*facts: PolicyFacts, clock: Clock | None = None) -> tuple[CollectorRegistry, DockvaultMetrics]:
    registry = CollectorRegistry()
    return registry, DockvaultMetrics(registry, lambda: facts, clock=clock or Clock())


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# --- gauges from facts -----------------------------------------------------------------------------------------------


def test_gauges_are_the_facts():
    registry, _ = exporter(MYAPP)
    assert value(registry, "dockvault_backup_last_success_timestamp_seconds", **P) == NOW - 3600
    assert value(registry, "dockvault_backup_last_status", **P) == 1
    assert value(registry, "dockvault_backup_size_bytes", **P, target="db") == 123_456
    assert value(registry, "dockvault_backup_size_bytes", **P, target="media") == 9_876_543_210
    assert value(registry, "dockvault_rpo_target_seconds", **P) == 86400
    assert value(registry, "dockvault_rpo_age_seconds", **P) == 3600
    assert value(registry, "dockvault_rto_target_seconds", **P) == 1800
    assert value(registry, "dockvault_rto_seconds", **P) == 412.5
    assert value(registry, "dockvault_drill_last_success_timestamp_seconds", **P) == NOW - 7200
    assert value(registry, "dockvault_repository_backups", **P) == 7
    assert value(registry, "dockvault_policies") == 1
    assert value(registry, "dockvault_build_info", version=__version__) == 1
    assert value(registry, "dockvault_facts_errors_total") == 0


def test_rpo_age_moves_with_the_clock_without_any_event():
    clock = Clock()
    registry, _ = exporter(MYAPP, clock=clock)
    assert value(registry, "dockvault_rpo_age_seconds", **P) == 3600
    clock.now += 90_000
    assert value(registry, "dockvault_rpo_age_seconds", **P) == 93_600
    assert value(registry, "dockvault_backup_last_success_timestamp_seconds", **P) == NOW - 3600


def test_rpo_age_is_never_negative_when_the_clock_steps_back():
    registry, _ = exporter(MYAPP, clock=Clock(NOW - 5000))
    assert value(registry, "dockvault_rpo_age_seconds", **P) == 0


def test_facts_are_read_at_every_scrape():
    current = [NEVER_RAN]
    registry = CollectorRegistry()
    DockvaultMetrics(registry, lambda: current, clock=Clock())
    assert value(registry, "dockvault_rpo_age_seconds", policy="fresh", host="local") is None
    current = [dataclasses.replace(NEVER_RAN, last_success_timestamp=NOW - 60, last_status=1, repository_backups=1)]
    assert value(registry, "dockvault_rpo_age_seconds", policy="fresh", host="local") == 60
    assert value(registry, "dockvault_repository_backups", policy="fresh", host="local") == 1


def test_missing_facts_omit_the_series():
    registry, _ = exporter(MYAPP, NEVER_RAN)
    fresh = {"policy": "fresh", "host": "local"}
    for name in (
        "dockvault_backup_last_success_timestamp_seconds",
        "dockvault_backup_last_status",
        "dockvault_rpo_target_seconds",
        "dockvault_rpo_age_seconds",
        "dockvault_rto_target_seconds",
        "dockvault_rto_seconds",
        "dockvault_drill_last_success_timestamp_seconds",
    ):
        assert value(registry, name, **fresh) is None, name
    assert value(registry, "dockvault_backup_size_bytes", **fresh, target="media") is None
    assert value(registry, "dockvault_repository_backups", **fresh) == 0
    assert value(registry, "dockvault_policies") == 2


def test_a_failed_last_attempt_keeps_the_last_success_and_its_age():
    failed = dataclasses.replace(MYAPP, last_status=0)
    registry, _ = exporter(failed)
    assert value(registry, "dockvault_backup_last_status", **P) == 0
    assert value(registry, "dockvault_rpo_age_seconds", **P) == 3600


def test_the_same_policy_twice_exports_the_first_facts_only(caplog):
    registry, _ = exporter(MYAPP, dataclasses.replace(MYAPP, repository_backups=99))
    with caplog.at_level(logging.WARNING, logger="dockvault.metrics"):
        text = generate_latest(registry).decode()
    assert text.count('dockvault_repository_backups{host="local",policy="myapp"}') == 1
    assert value(registry, "dockvault_repository_backups", **P) == 7
    assert value(registry, "dockvault_policies") == 1
    assert "reported twice" in caplog.text


def test_the_same_policy_name_on_two_hosts_is_two_series():
    registry, _ = exporter(MYAPP, dataclasses.replace(MYAPP, host="nas", repository_backups=2))
    assert value(registry, "dockvault_repository_backups", policy="myapp", host="local") == 7
    assert value(registry, "dockvault_repository_backups", policy="myapp", host="nas") == 2
    assert value(registry, "dockvault_policies") == 2


# --- counters and histograms from events -----------------------------------------------------------------------------

COUNTERS = (
    "dockvault_backup_attempts_total",
    "dockvault_backup_failures_total",
    "dockvault_retention_deleted_total",
    "dockvault_restores_total",
    "dockvault_restore_failures_total",
)
HISTOGRAMS = ("dockvault_backup_duration_seconds", "dockvault_restore_duration_seconds")


def test_no_event_series_before_the_policy_is_seen():
    registry, _ = exporter()
    for name in COUNTERS:
        assert value(registry, name, **P) is None, name


def test_counters_and_histograms_are_at_zero_right_after_policy_seen():
    registry, metrics = exporter()
    metrics.policy_seen("myapp", "local", ["db", "media"])
    for name in COUNTERS:
        assert value(registry, name, **P) == 0, name
    for name in HISTOGRAMS:
        assert value(registry, name + "_count", **P) == 0, name
        assert value(registry, name + "_bucket", **P, le="+Inf") == 0, name


def test_policy_seen_again_keeps_the_counts():
    registry, metrics = exporter()
    metrics.policy_seen("myapp", "local", ["db"])
    metrics.backup_finished("myapp", "local", succeeded=True, duration_seconds=10)
    metrics.policy_seen("myapp", "local", ["db"])
    assert value(registry, "dockvault_backup_attempts_total", **P) == 1


def test_backups_are_counted_and_failures_apart():
    registry, metrics = exporter()
    metrics.backup_finished("myapp", "local", succeeded=True, duration_seconds=42)
    metrics.backup_finished("myapp", "local", succeeded=False, duration_seconds=3)
    metrics.backup_finished("myapp", "local", succeeded=True, duration_seconds=700)
    assert value(registry, "dockvault_backup_attempts_total", **P) == 3
    assert value(registry, "dockvault_backup_failures_total", **P) == 1
    # An event for a policy never "seen" still creates all its series at 0 next to the one it counts.
    assert value(registry, "dockvault_restores_total", **P) == 0


def test_backup_durations_of_successful_runs_are_observed():
    registry, metrics = exporter()
    metrics.backup_finished("myapp", "local", succeeded=True, duration_seconds=42)
    metrics.backup_finished("myapp", "local", succeeded=True, duration_seconds=700)
    metrics.backup_finished("myapp", "local", succeeded=False, duration_seconds=3)
    assert value(registry, "dockvault_backup_duration_seconds_count", **P) == 2
    assert value(registry, "dockvault_backup_duration_seconds_sum", **P) == 742
    assert value(registry, "dockvault_backup_duration_seconds_bucket", **P, le="30.0") == 0
    assert value(registry, "dockvault_backup_duration_seconds_bucket", **P, le="60.0") == 1
    assert value(registry, "dockvault_backup_duration_seconds_bucket", **P, le="1800.0") == 2
    assert value(registry, "dockvault_backup_duration_seconds_bucket", **P, le="+Inf") == 2


def test_buckets_reach_from_seconds_to_hours():
    registry, metrics = exporter()
    metrics.policy_seen("myapp", "local", [])
    edges = [
        sample.labels["le"]
        for metric in registry.collect()
        if metric.name == "dockvault_backup_duration_seconds"
        for sample in metric.samples
        if sample.name.endswith("_bucket")
    ]
    assert edges == [str(float(bucket)) for bucket in DURATION_BUCKETS] + ["+Inf"]
    assert DURATION_BUCKETS[0] == 1 and DURATION_BUCKETS[-1] == 6 * 3600


def test_a_negative_duration_from_a_stepped_clock_counts_as_zero():
    registry, metrics = exporter()
    metrics.restore_finished("myapp", "local", succeeded=True, duration_seconds=-2)
    assert value(registry, "dockvault_restore_duration_seconds_sum", **P) == 0
    assert value(registry, "dockvault_restore_duration_seconds_bucket", **P, le="1.0") == 1


def test_restores_are_counted_and_timed():
    registry, metrics = exporter()
    metrics.restore_finished("myapp", "local", succeeded=True, duration_seconds=95)
    metrics.restore_finished("myapp", "local", succeeded=False, duration_seconds=4)
    assert value(registry, "dockvault_restores_total", **P) == 2
    assert value(registry, "dockvault_restore_failures_total", **P) == 1
    assert value(registry, "dockvault_restore_duration_seconds_count", **P) == 1
    assert value(registry, "dockvault_restore_duration_seconds_sum", **P) == 95
    assert value(registry, "dockvault_restore_duration_seconds_bucket", **P, le="120.0") == 1
    assert value(registry, "dockvault_backup_attempts_total", **P) == 0


def test_retention_deletions_add_up():
    registry, metrics = exporter()
    metrics.retention_deleted("myapp", "local", 3)
    metrics.retention_deleted("myapp", "local", 0)
    metrics.retention_deleted("myapp", "local", 2)
    assert value(registry, "dockvault_retention_deleted_total", **P) == 5


def test_a_negative_deletion_count_is_a_bug_and_raises():
    _, metrics = exporter()
    with pytest.raises(ValueError):
        metrics.retention_deleted("myapp", "local", -1)


# --- isolation and failure ---------------------------------------------------------------------------------------------


def test_facts_raising_does_not_break_the_other_metrics(caplog):
    def broken():
        raise RuntimeError("state store is locked")

    registry = CollectorRegistry()
    metrics = DockvaultMetrics(registry, broken, clock=Clock())
    metrics.backup_finished("myapp", "local", succeeded=False, duration_seconds=1)
    with caplog.at_level(logging.ERROR, logger="dockvault.metrics"):
        text = generate_latest(registry).decode()
    assert "dockvault_backup_failures_total" in text
    assert value(registry, "dockvault_backup_attempts_total", **P) == 1
    assert value(registry, "dockvault_backup_failures_total", **P) == 1
    assert value(registry, "dockvault_build_info", version=__version__) == 1
    assert value(registry, "dockvault_rpo_age_seconds", **P) is None
    assert value(registry, "dockvault_policies") is None
    errors = value(registry, "dockvault_facts_errors_total")
    assert errors >= 1
    assert value(registry, "dockvault_facts_errors_total") == errors + 1  # counted in the scrape that failed
    assert "state store is locked" in caplog.text
    assert caplog.text.count("Traceback") == 1  # repeated identical errors do not flood the log


def test_a_bad_fact_drops_all_policy_gauges_of_that_scrape_rather_than_half_of_them():
    bad = dataclasses.replace(MYAPP, policy="bad", target_sizes={"db": "lots"})  # type: ignore[dict-item]
    registry, _ = exporter(MYAPP, bad)
    assert value(registry, "dockvault_repository_backups", **P) is None
    assert value(registry, "dockvault_facts_errors_total") == 2  # both scrapes failed


def test_registering_does_not_read_the_facts():
    calls = []
    DockvaultMetrics(CollectorRegistry(), lambda: calls.append(1) or [], clock=Clock())
    assert calls == []


def test_two_registries_do_not_share_state():
    first, one = exporter(MYAPP)
    second, two = exporter()
    one.backup_finished("myapp", "local", succeeded=False, duration_seconds=1)
    two.policy_seen("myapp", "local", [])
    assert value(first, "dockvault_backup_attempts_total", **P) == 1
    assert value(second, "dockvault_backup_attempts_total", **P) == 0
    assert value(second, "dockvault_rpo_age_seconds", **P) is None
    assert value(second, "dockvault_policies") == 0


def test_nothing_is_registered_on_the_global_registry():
    from prometheus_client import REGISTRY

    exporter(MYAPP)
    assert REGISTRY.get_sample_value("dockvault_policies") is None
    assert not [name for name in REGISTRY._names_to_collectors if name.startswith("dockvault_")]


def test_one_registry_takes_one_exporter():
    registry, _ = exporter()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        DockvaultMetrics(registry, list, clock=Clock())


def test_an_error_that_returns_after_a_good_scrape_is_logged_in_full_again(caplog):
    state = {"broken": True}

    def facts():
        if state["broken"]:
            raise RuntimeError("state store is locked")
        return [MYAPP]

    registry = CollectorRegistry()
    DockvaultMetrics(registry, facts, clock=Clock())
    with caplog.at_level(logging.ERROR, logger="dockvault.metrics"):
        generate_latest(registry)
        state["broken"] = False
        assert value(registry, "dockvault_rpo_age_seconds", **P) == 3600
        state["broken"] = True
        generate_latest(registry)
    assert caplog.text.count("Traceback") == 2


def test_deprecated_gauges_copy_their_new_series():
    registry, _ = exporter(MYAPP, NEVER_RAN)
    for old, new in DEPRECATED_GAUGES.items():
        assert value(registry, f"dockvault_{old}", **P) == value(registry, f"dockvault_{new}", **P) is not None
        assert value(registry, f"dockvault_{old}", policy="fresh", host="local") is None


def test_copies_export_their_last_success_and_a_never_synced_copy_is_left_out():
    registry, metrics = exporter(dataclasses.replace(MYAPP, copy_last_success={"offsite": NOW - 60, "usb": None}))
    assert value(registry, "dockvault_copy_last_success_timestamp_seconds", **P, copy="offsite") == NOW - 60
    assert value(registry, "dockvault_copy_last_success_timestamp_seconds", **P, copy="usb") is None
    metrics.copy_finished("myapp", "local", "usb", succeeded=False)
    metrics.copy_finished("myapp", "local", "offsite", succeeded=True)
    assert value(registry, "dockvault_copy_failures_total", **P, copy="usb") == 1
    assert value(registry, "dockvault_copy_failures_total", **P, copy="offsite") == 0
    assert value(registry, "dockvault_copy_syncs_total", **P, copy="offsite") == 1
