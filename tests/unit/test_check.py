"""Repository checks: the pure plan (sizes, manifests, the sample), the schedule (spec.check, like drills), the
outcome kept by both front ends' state, and the metrics it feeds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from dockvault.actions.check import MANIFEST_DAMAGE, CheckReport, Damage, plan_check, summarize
from dockvault.api.policy import BackupPolicy, RepositoryCheck
from dockvault.controller import jobs
from dockvault.controller.schedule import check_due
from dockvault.controller.status import policy_status
from dockvault.frontends.kubestate import KubeState
from dockvault.frontends.state import StateStore
from dockvault.metrics import DockvaultMetrics, facts_for
from tests.unit.builders import artifact, backup, policy, policy_doc, utc

T0 = utc(2026, 11, 20, 3)


def backups(count: int = 3) -> list:
    return [backup(T0 + timedelta(days=i), artifacts=[artifact(size=100 + i)]) for i in range(count)]


def stored(records, **changes) -> dict[str, dict[str, int]]:
    files = {b.id: {a.file: a.bytes for a in b.status.artifacts} | {"manifest.json": 10} for b in records}
    for backup_id, value in changes.items():
        files[backup_id] = value
    return files


def test_an_intact_repository_has_no_damage_and_reads_everything():
    records = backups()
    plan = plan_check(records, stored(records), {}, read_data=True)
    assert plan.damage == [] and plan.backups == 3 and plan.artifacts == 3
    assert [b.id for b, _ in plan.to_read] == [b.id for b in records]
    assert plan_check(records, stored(records), {}, read_data=False).to_read == []


def test_sizes_and_manifests():
    records = backups()
    a, b, c = (r.id for r in records)
    files = stored(records)
    files[a] = {"media.tar.zst": 7, "manifest.json": 10}  # truncated
    files[b] = {"manifest.json": 10}  # artifact gone
    files["20261125T030000Z"] = {"media.tar.zst": 5}  # a folder without a (valid) manifest
    plan = plan_check(records, files, {"20261125T030000Z": "no manifest"}, read_data=True)
    assert plan.damage == [Damage(a, "media.tar.zst", "7 bytes stored, 100 recorded (truncated, replaced or swapped)"),
                           Damage(b, "media.tar.zst", "missing"),
                           Damage("20261125T030000Z", MANIFEST_DAMAGE, "no manifest")]
    assert [bk.id for bk, _ in plan.to_read] == [c]  # what is already damaged is not read again
    assert plan.backups == 4


@pytest.mark.parametrize("percent, count", [(1, 1), (10, 1), (34, 4), (50, 5), (100, 10)])
def test_subset_is_a_seeded_random_sample(percent, count):
    records = backups(10)
    first = plan_check(records, stored(records), {}, read_data=True, subset=percent, seed=7)
    assert len(first.to_read) == count
    assert first.to_read == plan_check(records, stored(records), {}, read_data=True, subset=percent, seed=7).to_read
    assert first.to_read == sorted(first.to_read, key=lambda pair: pair[0].id)


def test_check_spec_validation():
    assert policy(check={"schedule": "0 4 * * *"}).spec.check.read_data is False
    assert policy(check={"schedule": "0 4 * * *", "readData": True, "subset": 2.5}).spec.check.subset == 2.5
    for bad in ({"schedule": "0 4 * * *", "subset": 10}, {"schedule": "0 4 * * *", "readData": True, "subset": 0},
                {"schedule": "0 4 * * *", "readData": True, "subset": 101}, {"schedule": "nope"}, {}):
        with pytest.raises(ValidationError):
            BackupPolicy.model_validate(policy_doc(check=bad))


def test_checks_are_scheduled_like_drills():
    spec = policy(check={"schedule": "0 4 * * *"}, timezone="UTC").spec
    assert not check_due(spec, last_check=None, has_backup=False, now=T0).due
    assert check_due(spec, last_check=None, has_backup=True, now=T0).due
    last = utc(2026, 11, 20, 4, 0, 5)
    assert not check_due(spec, last_check=last, has_backup=True, now=utc(2026, 11, 21, 3, 59)).due
    due = check_due(spec, last_check=last, has_backup=True, now=utc(2026, 11, 21, 4))
    assert due.due and due.next_at == utc(2026, 11, 21, 4)
    assert not check_due(policy(check={"schedule": "0 4 * * *"}, suspend=True).spec, last_check=None,
                         has_backup=True, now=T0).due
    assert not check_due(policy().spec, last_check=None, has_backup=True, now=T0).due


def test_checks_come_after_drills():
    everything = policy(drill={"schedule": "0 5 * * 0"}, check={"schedule": "0 4 * * *"})
    plan = jobs.plan([("a", everything, jobs.History(has_backup=True))], [], utc(2026, 11, 21, 12))
    assert [j.kind for j in plan] == ["backup", "drill", "check"]
    checked = jobs.History(has_backup=True, last_check=utc(2026, 11, 21, 4))
    assert [j.kind for j in jobs.plan([("a", everything, checked)], [], utc(2026, 11, 21, 12))] == ["backup", "drill"]


def _report(repository: str, damage: list[Damage], error: str | None = None) -> CheckReport:
    return CheckReport("myapp", repository, "/r", 3, 3, 3, 300, 0.5, True, None, 1, damage, error)


def test_summary_over_the_primary_and_copies():
    ok = summarize([_report("primary", []), _report("usb", [])], started_at="2026-11-21T04:00:00Z")
    assert ok.succeeded and ok.damaged_artifacts == 0 and ok.backups == 6 and ok.duration_seconds == 1.0
    bad = summarize([_report("primary", [Damage("b1", "x", "missing"), Damage("b1", "y", "missing")]),
                     _report("usb", [], error="access denied")], started_at="2026-11-21T04:00:00Z")
    assert not bad.succeeded and bad.damaged_backups == 1 and bad.damaged_artifacts == 2
    assert bad.message == "damaged backups in primary: b1; usb: access denied"


def test_both_states_keep_the_last_check(tmp_path):
    check = RepositoryCheck(phase="Failed", started_at="2026-11-21T04:00:00+00:00", duration_seconds=2.0, backups=3,
                            damaged_backups=1, damaged_artifacts=2, message="damaged")
    store = StateStore(tmp_path)
    assert store.last_check("myapp") is None
    store.record_check("myapp", check)
    assert StateStore(tmp_path).last_check("myapp") == check
    kube = KubeState(lambda *args: None)
    kube.record_check("ns/myapp", check)
    assert kube.last_check("ns/myapp") == check
    # both front ends write status through controller.status.policy_status, given the state's last check
    status = policy_status(policy(check={"schedule": "0 4 * * *"}), [], None, now=utc(2026, 11, 22),
                           check=kube.last_check("ns/myapp")).to_dict()
    assert status["lastCheck"]["damagedArtifacts"] == 2
    seeded = KubeState(lambda *args: None)
    seeded.observe_policy("ns/other", {"status": {"lastCheck": check.to_dict()}})
    assert seeded.last_check("ns/other") == check


def test_metrics_of_the_last_check():
    pol = policy(check={"schedule": "0 4 * * *"})
    check = RepositoryCheck(phase="Failed", started_at="2026-11-21T04:00:00+00:00", duration_seconds=2.0, backups=3,
                            damaged_artifacts=2)
    facts = facts_for(pol, backups(), last=None, measured=None, drilled_at=None, check=check)
    registry = CollectorRegistry()
    DockvaultMetrics(registry, lambda: [facts], clock=lambda: utc(2026, 11, 22).timestamp())
    labels = {"policy": "myapp", "host": "local"}
    assert registry.get_sample_value("dockvault_check_damaged_artifacts", labels) == 2
    assert registry.get_sample_value("dockvault_check_last_run_timestamp_seconds", labels) == \
        utc(2026, 11, 21, 4, 0, 2).timestamp()
    never = facts_for(pol, backups(), last=None, measured=None, drilled_at=None)
    registry = CollectorRegistry()
    DockvaultMetrics(registry, lambda: [never])
    assert registry.get_sample_value("dockvault_check_damaged_artifacts", labels) is None
