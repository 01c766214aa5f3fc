"""dockvault.exposition writes the same bytes as prometheus_client's own writers, in both formats /metrics serves."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from dockvault.exposition import render
from dockvault.metrics import DockvaultMetrics, PolicyFacts


def facts(policy: str, **changes) -> PolicyFacts:
    values = dict(policy=policy, host="h\\1", targets=("data",), rpo_target_seconds=86400.0, rto_target_seconds=None,
                  last_success_timestamp=1_700_000_000.5, last_status=1, repository_backups=3,
                  target_sizes={"data": 1 << 40, 'we"ird\n': 7}, rto_seconds=12.25,
                  drill_last_success_timestamp=None, copy_last_success={"offsite": 1_700_000_100.0})
    return PolicyFacts(**{**values, **changes})


@pytest.mark.parametrize(("openmetrics", "library"), [(False, generate_latest), (True, openmetrics_latest)])
def test_the_same_bytes_as_prometheus_client(openmetrics, library):
    registry = CollectorRegistry()
    metrics = DockvaultMetrics(registry, lambda: [facts("a"), facts('b "quoted"\n', last_status=None)],
                               clock=lambda: 1_700_003_600.0)
    Gauge("other_gauge", "Another library's gauge, with a unit.", unit="bytes", registry=registry).set(3)
    metrics.policy_seen("a", "h\\1", ("data",))
    metrics.backup_finished("a", "h\\1", succeeded=True, duration_seconds=42.5, retry=True)
    metrics.backup_finished("a", "h\\1", succeeded=False, duration_seconds=1)
    metrics.restore_finished('b "quoted"\n', "h\\1", succeeded=True, duration_seconds=1e6)
    metrics.retention_deleted("a", "h\\1", 4, refused=1)
    metrics.copy_finished("a", "h\\1", "offsite", succeeded=False)
    metrics.notification_failed("a", "h\\1", "email")
    body = render(registry, openmetrics=openmetrics)
    assert body == library(registry)
    assert b'dockvault_backup_duration_seconds_bucket{host="h\\\\1",le="60.0",policy="a"} 1.0' in body
    assert b'dockvault_rpo_age_seconds{host="h\\\\1",policy="a"} 3599.5' in body


def test_a_series_is_written_again_after_an_event():
    registry = CollectorRegistry()
    metrics = DockvaultMetrics(registry, lambda: [])
    metrics.policy_seen("a", "h", ())
    assert b'dockvault_backup_attempts_total{host="h",policy="a"} 0.0' in render(registry, openmetrics=False)
    metrics.backup_finished("a", "h", succeeded=True, duration_seconds=3)
    body = render(registry, openmetrics=False)
    assert b'dockvault_backup_attempts_total{host="h",policy="a"} 1.0' in body
    assert b'dockvault_backup_duration_seconds_bucket{host="h",le="5.0",policy="a"} 1.0' in body
    assert registry.get_sample_value("dockvault_backup_duration_seconds_sum", {"policy": "a", "host": "h"}) == 3.0
