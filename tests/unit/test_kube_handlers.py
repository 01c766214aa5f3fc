"""The Kubernetes front end's decisions, as pure functions of plain dicts: no kopf running, no API server.

(There is no Kubernetes API server on the test machine; tests/integration/test_kube_kmock.py runs the real
kopf operator against KMock, kopf's mock API server.)
"""

from __future__ import annotations

import copy
import re
from datetime import timedelta
from typing import Any

import pytest
from dockvault.api.restore import RestoreRequestStatus
from dockvault.controller.status import Attempt, Measurement
from dockvault.frontends import kube

from .builders import POLICY_DOC, RESTORE_DOC, artifact, backup, utc

NOW = utc(2026, 11, 21, 12)


def policy_body(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(POLICY_DOC)
    body["metadata"].update({"namespace": "ns1", "generation": 4, "uid": "uid-1", "resourceVersion": "17",
                             "annotations": {"local.kopf.dockvault.io/last-handled-configuration": "{}"},
                             "managedFields": [{"manager": "kubectl"}]})
    body["spec"].update(spec)
    return body


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


# --- policy status ---------------------------------------------------------------------------------

def test_status_after_a_good_backup_is_ready_with_observed_generation():
    good = backup(NOW - timedelta(hours=2), size=123, artifacts=[artifact()])
    status = kube.policy_patch(policy_body(), [good], None, NOW)
    assert status["observedGeneration"] == 4
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("True", "BackupSucceeded", 4)
    assert conditions(status)["RPOMet"]["status"] == "True"
    assert conditions(status)["RTOMet"]["reason"] == "NotMeasured"
    assert status["lastBackup"]["id"] == good.id == status["lastSuccessfulBackup"]["id"]
    assert status["backups"] == 1
    assert status["nextBackupAt"].endswith("Z")


def test_ready_is_false_when_the_rpo_is_breached_although_the_last_backup_succeeded():
    old = backup(NOW - timedelta(days=3))
    status = kube.policy_patch(policy_body(), [old], None, NOW)
    ready, rpo = conditions(status)["Ready"], conditions(status)["RPOMet"]
    assert (rpo["status"], rpo["reason"]) == ("False", "RPOBreached")
    assert (ready["status"], ready["reason"]) == ("False", "RPOBreached")
    assert ready["message"] == rpo["message"]


def test_ready_follows_the_last_backup_when_no_rpo_is_set():
    body = policy_body(objectives={})
    status = kube.policy_patch(body, [backup(NOW - timedelta(days=30))], None, NOW)
    assert conditions(status)["Ready"]["status"] == "True"
    assert conditions(status)["RPOMet"]["reason"] == "NoObjective"


def test_a_failed_last_attempt_makes_ready_false_and_is_the_last_backup():
    good = backup(NOW - timedelta(hours=5))
    failed = Attempt("20261121T115000Z", "Failed", NOW - timedelta(minutes=10), NOW - timedelta(minutes=9),
                     message="target media: volume 'mydata' does not exist")
    status = kube.policy_patch(policy_body(), [good], failed, NOW)
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "BackupFailed")
    assert "does not exist" in ready["message"]
    assert status["lastBackup"]["phase"] == "Failed"
    assert status["lastSuccessfulBackup"]["id"] == good.id


def test_no_backup_yet_is_unknown_not_ready():
    status = kube.policy_patch(policy_body(), [], None, NOW)
    assert conditions(status)["Ready"]["status"] == "Unknown"
    assert conditions(status)["RPOMet"]["reason"] == "NoSuccessfulBackup"
    assert status["nextBackupAt"] == "2026-11-21T12:00:00Z"  # due at once


def test_transition_time_is_kept_while_the_condition_status_stays():
    body = policy_body()
    first = kube.policy_patch(body, [backup(NOW - timedelta(hours=1))], None, NOW)
    body["status"] = {**first, "kopf": {"progress": {}}}  # kopf's own field must not break validation
    later = kube.policy_patch(body, [backup(NOW - timedelta(hours=1))], None, NOW + timedelta(hours=1))
    assert conditions(later)["Ready"]["lastTransitionTime"] == conditions(first)["Ready"]["lastTransitionTime"]


def test_measured_rto_and_last_verification_come_through():
    measured = Measurement(seconds=42.0, at=NOW - timedelta(hours=1), backup_id="20261121T030000Z", source="drill")
    status = kube.policy_patch(policy_body(), [backup(NOW - timedelta(hours=1))], None, NOW, measured=measured)
    assert conditions(status)["RTOMet"]["status"] == "True"
    assert status["measuredRto"]["seconds"] == 42.0
    body = policy_body()
    body["status"] = status
    assert kube.measurement_of(kube.previous_status(body)) == Measurement(42.0, measured.at, "20261121T030000Z", "drill")


def test_a_status_an_older_version_wrote_seeds_the_last_drill_and_both_names_are_written():
    from dockvault.frontends.kubestate import KubeState

    body = policy_body()
    body["status"] = {"lastVerification": {"backup": "20261121T030000Z", "result": "Succeeded", "durationSeconds": 3.0}}
    state = KubeState(lambda *_: None)
    state.observe_policy("ns/p", body)
    drill = state.last_drill("ns/p")
    assert (drill.phase, drill.backup) == ("Succeeded", "20261121T030000Z") and state.last_successful_drill("ns/p")
    status = kube.policy_patch(body, [], None, NOW, drill=drill, good_drill=state.last_successful_drill("ns/p"))
    assert status["lastDrill"]["phase"] == "Succeeded"
    assert status["lastVerification"] == {"backup": "20261121T030000Z", "result": "Succeeded", "durationSeconds": 3.0}
    assert status["lastSuccessfulDrill"]["phase"] == "Succeeded"
    assert status["lastSuccessfulVerification"]["result"] == "Succeeded"


def test_invalid_spec_is_ready_false_invalid_spec_with_the_field_path():
    body = policy_body()
    body["spec"]["targets"][0]["volume"]["name"] = "bad name!"
    body["spec"]["schedule"] = "every day"
    status = kube.policy_patch(body, [], None, NOW)
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.targets[0].volume.name:" in ready["message"]
    assert "spec.schedule:" in ready["message"]
    assert status["observedGeneration"] == 4


def test_unknown_spec_field_is_reported_by_path():
    body = policy_body(retenion={"keepLast": 3})
    policy, errors = kube.parse_policy(body)
    assert policy is None
    assert any(e.startswith("spec.retenion:") for e in errors)


def test_last_attempt_is_read_back_from_the_status():
    body = policy_body()
    failed = Attempt("20261121T115000Z", "Failed", utc(2026, 11, 21, 11, 50), utc(2026, 11, 21, 11, 51), message="x")
    body["status"] = kube.policy_patch(body, [], failed, NOW)
    attempt = kube.last_attempt_of(kube.previous_status(body))
    assert (attempt.backup_id, attempt.phase, attempt.started_at) == (failed.backup_id, "Failed", failed.started_at)


def test_a_damaged_status_reads_as_empty():
    body = policy_body()
    body["status"] = {"conditions": "not a list", "lastBackup": 5}
    assert kube.previous_status(body).conditions == []
    assert kube.last_attempt_of(kube.previous_status(body)) is None


# --- Backup resources ------------------------------------------------------------------------------

def test_backup_resource_is_owned_by_its_policy_and_carries_the_record():
    record = backup(NOW, size=7, artifacts=[artifact()])
    body = kube.backup_resource(record, policy_body())
    assert body["metadata"]["name"] == f"myapp-{record.id.lower()}"
    assert body["metadata"]["namespace"] == "ns1"
    assert body["metadata"]["labels"] == {"dockvault.io/policy": "myapp"}
    (owner,) = body["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("BackupPolicy", "myapp", "uid-1", True)
    assert body["spec"] == {"policy": "myapp", "id": record.id, "host": "local", "trigger": "schedule"}
    assert body["status"]["phase"] == "Succeeded" and body["status"]["bytes"] == 7
    assert body["status"]["artifacts"][0]["sha256"] == "0" * 64


def test_sync_plan_creates_missing_and_deletes_vanished_successes_only():
    kept, new = backup(NOW - timedelta(days=1)), backup(NOW)
    existing = [
        {"metadata": {"name": f"myapp-{kept.id.lower()}"}, "spec": {"policy": "myapp"}, "status": {"phase": "Succeeded"}},
        {"metadata": {"name": "myapp-20200101t000000z"}, "spec": {"policy": "myapp"}, "status": {"phase": "Succeeded"}},
        {"metadata": {"name": "myapp-20200102t000000z"}, "spec": {"policy": "myapp"}, "status": {"phase": "Failed"}},
    ]
    create, delete = kube.backup_sync_plan(existing, [kept, new, backup(NOW, id="20261121T120000Z-1", phase="Failed")],
                                           policy="myapp")
    assert [b.id for b in create] == [new.id]
    assert delete == ["myapp-20200101t000000z"]


# --- restores --------------------------------------------------------------------------------------

def restore_body(**status: Any) -> dict[str, Any]:
    body = copy.deepcopy(RESTORE_DOC)
    body["metadata"].update({"namespace": "ns1", "generation": 1})
    if status:
        body["status"] = status
    return body


def test_a_new_restore_runs():
    assert kube.restore_should_run(restore_body())
    assert not kube.restore_interrupted(restore_body())


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_a_finished_restore_never_runs_again_for_the_same_spec(phase):
    digest = kube.spec_hash(restore_body())
    assert not kube.restore_should_run(restore_body(phase=phase, specHash=digest))


def test_a_changed_spec_runs_again():
    body = restore_body(phase="Succeeded", specHash=kube.spec_hash(restore_body()))
    body["spec"]["backup"] = "20261121T030000Z"
    assert kube.restore_should_run(body)


def test_a_running_restore_of_the_same_spec_was_interrupted():
    body = restore_body(phase="Running", specHash=kube.spec_hash(restore_body()))
    assert kube.restore_should_run(body)
    assert kube.restore_interrupted(body)


def test_spec_hash_matches_standalone_mode():
    request, errors = kube.parse_restore(restore_body())
    assert not errors
    assert kube.spec_hash(restore_body()) == request.spec_hash


def test_spec_hash_of_an_invalid_spec_is_stable():
    body = restore_body()
    body["spec"]["targets"] = []
    assert kube.parse_restore(body)[0] is None
    assert kube.spec_hash(body) == kube.spec_hash(copy.deepcopy(body))


def test_restore_patch_has_phase_hash_and_condition():
    status = RestoreRequestStatus(phase="Succeeded", backup="20261121T030000Z", started_at=NOW,
                                  completed_at=NOW + timedelta(seconds=3), duration_seconds=3.0, message="ok")
    out = kube.restore_patch(status, spec_hash="abc", generation=2)
    assert out["phase"] == "Succeeded" and out["specHash"] == "abc" and out["observedGeneration"] == 2
    assert out["startedAt"].startswith("2026-11-21T12:00:00")
    assert out["durationSeconds"] == 3.0
    (condition,) = out["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == ("Succeeded", "True", "RestoreSucceeded")


# --- hosts and names -------------------------------------------------------------------------------

def test_host_filter_defaults_to_local():
    assert kube.host_matches({}, "local")
    assert kube.host_matches({"host": "db1"}, "db1")
    assert not kube.host_matches({"host": "db1"}, "local")


def test_per_host_names_are_valid_and_distinct():
    label = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    for host in ("local", "Docker_Host.2", "a" * 100):
        assert label.fullmatch(kube.peering_name(host)) and len(kube.peering_name(host)) <= 63
        assert kube.annotation_prefix(host).endswith(".kopf.dockvault.io")
    assert kube.peering_name("local") == "dockvault-local"
    assert kube.peering_name("a_b") != kube.peering_name("a-b")


def test_settings_are_per_host():
    import kopf

    settings = kopf.OperatorSettings()
    kube.configure(settings, host="db1", peering=True, clusterwide=False)
    assert settings.peering.name == "dockvault-db1"
    assert settings.peering.standalone is False
    assert settings.persistence.progress_storage.prefix == "db1.kopf.dockvault.io"
    assert settings.posting.enabled


def test_registry_has_the_three_kinds_of_handlers():
    registry = kube.build_registry(kube.Runtime(host="local"))
    plurals = {h.selector.plural for h in registry._changing.get_all_handlers()}
    assert plurals == {"backuppolicies", "restorerequests"}
    assert [h.selector.plural for h in registry._spawning.get_all_handlers()] == ["backuppolicies"]
    assert not any(h.requires_finalizer for h in registry._changing.get_all_handlers())



# --- passwordFrom.secretKeyRef: a reader bound to the resource's namespace, in the job's thread ----------------

class RecordingApi(kube.KubeApi):
    """A KubeApi whose Secret reads and status writes are recorded instead of sent."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, str, str]] = []
        self.patched: list[tuple[str, str, str]] = []

    def read_secret(self, namespace: str, name: str, key: str) -> str:
        self.reads.append((namespace, name, key))
        return f"pw-of-{name}-{key}"

    def patch_status(self, plural, namespace, name, status) -> None:
        self.patched.append((plural, namespace, name))


class JobRan(Exception):
    pass


def reader_probe(seen: list):
    """A stand-in for run_backup/run_restore/run_drill: resolves a secretKeyRef the way a database source does."""
    import threading

    from dockvault.api.common import PasswordFrom
    from dockvault.credentials import resolve_password

    def job(*_args, **_kwargs):
        source = PasswordFrom.model_validate({"secretKeyRef": {"name": "pg-credentials", "key": "password"}})
        seen.append((threading.get_ident(), resolve_password(source, {}, ())))
        raise JobRan

    return job


class IdleEngine:
    """The engine as start-up recovery sees it on a clean host: nothing left over."""

    def remove_leftovers(self, **_kwargs):
        return []


def test_a_scheduled_backup_runs_with_a_reader_bound_to_the_policy_namespace(monkeypatch, tmp_path):
    import threading

    from dockvault.actions import runner
    from dockvault.credentials import current_secret_reader

    seen: list = []
    monkeypatch.setattr(runner, "run_backup", reader_probe(seen))
    rt = kube.Runtime(host="local", api=RecordingApi(), engine_factory=IdleEngine)
    body = policy_body(storage={"local": {"path": str(tmp_path)}})
    kube.reconcile_policy(rt, body, {}, run_jobs=True)
    rt.runner.shutdown()  # waits for the job
    assert [s[1] for s in seen] == ["pw-of-pg-credentials-password"]
    assert seen[0][0] != threading.get_ident()  # on a job thread, not kopf's
    assert rt.api.reads == [("ns1", "pg-credentials", "password")]
    assert current_secret_reader() is None  # only for the duration of the job
    failed = rt.state.last_attempt("ns1/myapp")  # the probe's exception: recorded, not lost
    assert (failed.phase, failed.error) == ("Failed", "unexpected") and "JobRan" in failed.message


def test_a_restore_runs_with_a_reader_bound_to_the_request_namespace(monkeypatch, tmp_path):
    from dockvault.actions import restore  # the runner imports run_restore from here when a restore runs

    seen: list = []
    monkeypatch.setattr(restore, "run_restore", reader_probe(seen))
    rt = kube.Runtime(host="local", api=RecordingApi(), engine_factory=IdleEngine)
    policy = policy_body(storage={"local": {"path": str(tmp_path)}})
    request = restore_body()
    kube.handle_restore(rt, request, {("ns1", "myapp"): [policy]}, {("ns1", "restore-myapp-1"): [request]}, {})
    rt.runner.shutdown()
    assert rt.api.reads == [("ns1", "pg-credentials", "password")]
    assert [s[1] for s in seen] == ["pw-of-pg-credentials-password"]
    assert rt.api.patched[0] == (kube.RESTORES, "ns1", "restore-myapp-1")  # Running was written first
    assert (kube.RESTORES, "ns1", "restore-myapp-1") in rt.api.patched[1:]  # then Failed, with the error


class FakeApiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"({status}) Reason: whatever")
        self.status = status


class FakeCore:
    def __init__(self, result: Any) -> None:
        self.result, self.calls = result, []

    def read_namespaced_secret(self, name, namespace):
        self.calls.append((name, namespace))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class FakeSecret:
    def __init__(self, data):
        self.data = data


def api_with(result: Any) -> kube.KubeApi:
    api = kube.KubeApi()
    api._core = FakeCore(result)
    return api


def test_read_secret_decodes_the_key_of_the_namespaced_secret():
    import base64

    api = api_with(FakeSecret({"password": base64.b64encode(b"p\xc3\xa4ss w0rd\n").decode()}))
    assert api.secret_reader("ns1")("pg-credentials", "password") == "päss w0rd"
    assert api._core.calls == [("pg-credentials", "ns1")]


@pytest.mark.parametrize(("result", "message"), [
    (FakeApiError(404), "passwordFrom.secretKeyRef: Secret ns1/pg-credentials does not exist"),
    (FakeApiError(403), "passwordFrom.secretKeyRef: Secret ns1/pg-credentials: forbidden"),
    (FakeApiError(500), "passwordFrom.secretKeyRef: Secret ns1/pg-credentials: cannot read it: HTTP 500"),
    (FakeSecret({"user": "YWRtaW4="}), "passwordFrom.secretKeyRef: Secret ns1/pg-credentials has no key 'password'"),
    (FakeSecret(None), "has no key 'password'"),
    (FakeSecret({"password": "!!not base64!!"}), "key 'password' is not base64-encoded UTF-8 text"),
])
def test_read_secret_failures_name_the_secret_and_key(result, message):
    from dockvault.credentials import SecretError

    with pytest.raises(SecretError) as caught:
        api_with(result).read_secret("ns1", "pg-credentials", "password")
    assert message in str(caught.value)
    assert "YWRtaW4" not in str(caught.value) and "admin" not in str(caught.value)
