"""The job core's scenarios, run once per front end: both must behave the same (see actions/runner.py)."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.scenarios.frontends import FRONTENDS, condition, kill, stop
from tests.treecheck import APP_LOOP, populate_volume, snapshot_volume
from tests.waiting import eventually

pytestmark = pytest.mark.docker


@pytest.fixture(params=sorted(FRONTENDS))
def frontend(request, tmp_path, test_image, monkeypatch):
    if request.param == "kube":
        pytest.importorskip("kopf")
        pytest.importorskip("kmock")
    driver = FRONTENDS[request.param](tmp_path, test_image, monkeypatch)
    yield driver
    driver.close()


@pytest.fixture
def webhook():
    """A receiver on an ephemeral loopback port; `received` holds the JSON bodies."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()


def policy_doc(name: str, targets: list[dict], repo, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": name},
            "spec": {"schedule": "0 3 * * *", "objectives": {"rpo": "24h", "rto": "30m"}, "targets": targets,
                     "storage": {"local": {"path": str(repo)}}, **spec}}


def restore_doc(name: str, policy: str, volume: str) -> dict[str, Any]:
    return {"apiVersion": "dockvault.io/v1alpha1", "kind": "RestoreRequest", "metadata": {"name": name},
            "spec": {"policy": policy, "backup": "latest", "targets": [{"from": "media", "volume": {"name": volume}}]}}


def sample(frontend, metric: str, policy: str) -> float | None:
    return frontend.registry.get_sample_value(metric, {"policy": policy, "host": "local"})


def test_backup_then_restore_status_metrics_and_notifications(frontend, docker_client, volumes, repo_dir, webhook):
    url, received = webhook
    source, restored = volumes("core-src"), volumes("core-dst")
    populate_volume(docker_client, source, megabytes=1)
    expected = snapshot_volume(docker_client, source)
    frontend.apply(policy_doc("media", [{"name": "media", "volume": {"name": source}}], repo_dir,
                              notify={"onSuccess": True, "webhooks": [{"url": url}]}))
    frontend.start()

    # A backup: status, metrics and a notification.
    status = eventually("the first backup", lambda: (
        (s := frontend.policy_status("media")) and condition(s, "Ready").get("status") == "True" and s))
    assert status["lastBackup"]["phase"] == "Succeeded" and status["backups"] == 1
    assert condition(status, "RPOMet")["status"] == "True"
    eventually("the backup metrics", lambda: sample(frontend, "dockvault_repository_backups", "media") == 1)
    assert sample(frontend, "dockvault_backup_attempts_total", "media") == 1
    assert sample(frontend, "dockvault_backup_failures_total", "media") == 0
    note = eventually("the backup notification", lambda: [r for r in received if r["kind"] == "backup"])[0]
    assert (note["phase"], note["policy"], note["backupId"]) == ("Succeeded", "media", status["lastBackup"]["id"])

    # A restore: the data comes back, the restore metrics and the measured RTO follow.
    frontend.apply(restore_doc("bring-back", "media", restored))
    done = eventually("the restore", lambda: (
        (s := frontend.restore_status("bring-back")) and s.get("phase") in ("Succeeded", "Failed") and s))
    assert done["phase"] == "Succeeded", done
    assert snapshot_volume(docker_client, restored) == expected
    eventually("the restore metrics", lambda: sample(frontend, "dockvault_restores_total", "media") == 1)
    rto = eventually("the measured RTO", lambda: frontend.policy_status("media").get("measuredRto"))
    assert rto["source"] == "restore" and rto["backup"] == status["lastBackup"]["id"]
    assert 0 < rto["seconds"] < 600
    assert condition(frontend.policy_status("media"), "RTOMet")["status"] == "True"
    assert sample(frontend, "dockvault_rto_seconds", "media") == pytest.approx(rto["seconds"])
    eventually("the restore notification", lambda: [r for r in received if r["kind"] == "restore"])


def test_an_unexpected_exception_is_recorded_once_and_not_rerun(frontend, volumes, repo_dir, monkeypatch, caplog):
    from dockvault.actions import runner

    calls = []

    def broken(*_args, **_kwargs):
        calls.append(time.monotonic())
        raise RuntimeError("injected fault")

    monkeypatch.setattr(runner, "run_backup", broken)
    frontend.apply(policy_doc("broken", [{"name": "media", "volume": {"name": volumes("core-broken")}}], repo_dir))
    with caplog.at_level(logging.ERROR, logger="dockvault.actions.runner"):
        frontend.start()
        status = eventually("the Failed outcome", lambda: (
            (s := frontend.policy_status("broken")) and condition(s, "Ready").get("reason") == "BackupFailed" and s))
        time.sleep(3)  # ten ticks or more
    assert len(calls) == 1, "the failed job ran again on a later tick"
    assert status["lastBackup"]["phase"] == "Failed" and status["lastBackup"]["error"] == "unexpected"
    assert "RuntimeError: injected fault" in condition(status, "Ready")["message"]
    tracebacks = [r for r in caplog.records if r.exc_info and "unexpected error" in r.getMessage()]
    assert len(tracebacks) == 1
    eventually("the failure metric", lambda: sample(frontend, "dockvault_backup_failures_total", "broken") == 1)


def test_a_restore_starts_before_a_drill_due_in_the_same_pass(frontend, docker_client, engine, volumes, repo_dir,
                                                             monkeypatch):
    from dockvault.actions import backup as backup_action
    from dockvault.actions import drill, restore  # the runner imports run_restore and run_drill from these as a job runs
    from dockvault.api.policy import BackupPolicy
    from dockvault.storage import repository_for

    source = volumes("core-prio")
    populate_volume(docker_client, source, megabytes=1)
    doc = policy_doc("prio", [{"name": "media", "volume": {"name": source}}], repo_dir,
                     drill={"schedule": "0 5 * * 0"})
    model = BackupPolicy.model_validate({**doc, "metadata": {"name": "prio"}})
    assert backup_action.run_backup(model, engine=engine, repository=repository_for(model)).succeeded
    started: list[str] = []
    for module, name in ((restore, "run_restore"), (drill, "run_drill")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k: (started.append(_name), _real(*a, **k))[1])
    frontend.apply(doc)  # a drill is due at once: there is a backup, and no drill yet
    frontend.apply(restore_doc("urgent", "prio", volumes("core-prio-dst")))
    frontend.start()
    eventually("both jobs", lambda: len(started) == 2, timeout=90)
    assert started == ["run_restore", "run_drill"]
    assert frontend.restore_status("urgent")["phase"] == "Succeeded"


def test_a_temporary_failure_is_retried_long_before_the_next_slot(frontend, docker_client, test_image, repo_dir):
    """The database container is down at the scheduled time and back 20 s later: a retry makes the backup."""
    from tests.dbfixtures import start_pg_server

    server = start_pg_server(docker_client, test_image)
    try:
        server.psql("CREATE DATABASE shop")
        server.container.stop()
        frontend.apply(policy_doc("shop", [{"name": "db", "postgres": {"container": server.container.name,
                                                                          "databases": ["shop"]}}], repo_dir))
        began = time.monotonic()
        frontend.start()
        retrying = eventually("BackupRetrying", lambda: (
            (s := frontend.policy_status("shop")) and condition(s, "Ready").get("reason") == "BackupRetrying" and s))
        assert retrying["lastBackup"]["error"] == "temporary" and retrying["lastBackup"]["nextRetryAt"]
        assert "not running" in condition(retrying, "Ready")["message"]
        time.sleep(max(0.0, 20 - (time.monotonic() - began)))
        server.container.start()
        server.wait_ready()
        done = eventually("the retried backup", lambda: (
            (s := frontend.policy_status("shop")) and condition(s, "Ready").get("status") == "True" and s),
            timeout=120 - (time.monotonic() - began))
        took = time.monotonic() - began
        assert done["lastBackup"]["phase"] == "Succeeded" and done["lastBackup"]["attempt"] >= 2  # made by a retry
        assert took < 120, f"the backup took {took:.0f}s"
        print(f"\n{frontend.name}: temporary failure recovered by a retry after {took:.1f}s")
        assert sample(frontend, "dockvault_backup_retries_total", "shop") >= 1
    finally:
        server.remove(volume=True)


def test_sigkill_during_a_quiesced_backup_is_repaired_by_the_next_start(frontend, docker_client, volumes, repo_dir,
                                                                      test_image, unique):
    """The front end runs as a process (as a service or a pod) and is killed mid-archive while the application is
    stopped; the next start resumes the application, removes the helper and the temporaries, and backs up."""
    source = volumes("core-kill")
    populate_volume(docker_client, source, megabytes=200)
    app = docker_client.containers.run(test_image, ["sh", "-c", APP_LOOP], name=unique("core-kill-app"), detach=True,
                                       network_mode="none", volumes={source: {"bind": "/data", "mode": "rw"}})
    try:
        frontend.apply(policy_doc("killed", [{"name": "media", "volume": {"name": source, "quiesce": "stop"}}],
                                  repo_dir))
        first = frontend.spawn()
        try:
            eventually("a helper archiving while the application is stopped", lambda: (
                docker_client.containers.list(filters={"label": "dockvault.io/job"})
                and docker_client.containers.get(app.id).status == "exited"), timeout=90, interval=0.02)
        finally:
            kill(first)
        assert docker_client.containers.get(app.id).status == "exited"  # left stopped by the killed process

        second = frontend.spawn()
        try:
            eventually("the application running again", lambda: docker_client.containers.get(app.id).status == "running")
            done = eventually("a backup by the new process", lambda: (
                (s := frontend.policy_status("killed")) and condition(s, "Ready").get("status") == "True" and s),
                timeout=120)
            eventually("no helper left", lambda: not docker_client.containers.list(
                all=True, filters={"label": "dockvault.io/job"}))
        finally:
            stop(second)
        assert done["lastBackup"]["phase"] == "Succeeded"
        assert docker_client.containers.get(app.id).status == "running"
        folders = sorted((repo_dir / "killed").iterdir())
        assert [f.name for f in folders] == [done["lastBackup"]["id"]]  # the interrupted one left no folder
        assert (folders[0] / "manifest.json").exists() and not list(repo_dir.rglob("*.dvtmp"))
    finally:
        app.remove(force=True)


def test_a_differential_schedule_runs_differentials_on_the_full(frontend, docker_client, volumes, repo_dir):
    """spec.differential beside spec.schedule: the first run is a full (no backup yet), the next slot of the
    every-minute differential schedule a differential on it, in both front ends; status shows the level."""
    from dockvault.api.policy import BackupPolicy
    from dockvault.storage import repository_for

    source = volumes("core-diff")
    populate_volume(docker_client, source, megabytes=1)
    doc = policy_doc("diff", [{"name": "media", "volume": {"name": source}}], repo_dir,
                     differential={"schedule": "* * * * *"})
    frontend.apply(doc)
    frontend.start()
    last = eventually("a differential", lambda: (
        (s := frontend.policy_status("diff").get("lastBackup", {})) and s.get("level") == "differential"
        and s.get("phase") in ("Succeeded", "Failed") and s), timeout=150)
    assert last["phase"] == "Succeeded", last
    backups = repository_for(BackupPolicy.model_validate(doc)).backups("diff")
    full, diff = sorted(backups, key=lambda b: b.id)[:2]
    assert (full.level, full.base, diff.level, diff.base) == ("full", None, "differential", full.id)


def test_a_scheduled_check_finds_damage_in_both_front_ends(frontend, docker_client, engine, volumes, repo_dir):
    """spec.check through the one job runner: the first check runs at once once there is a backup; a truncated
    artifact shows in status.lastCheck and in dockvault_check_damaged_artifacts."""
    from dockvault.actions import backup as backup_action
    from dockvault.api.policy import BackupPolicy
    from dockvault.storage import repository_for

    source = volumes("core-check")
    populate_volume(docker_client, source, megabytes=1)
    doc = policy_doc("checked", [{"name": "media", "volume": {"name": source}}], repo_dir,
                     check={"schedule": "0 4 * * *"})
    model = BackupPolicy.model_validate(doc)
    outcome = backup_action.run_backup(model, engine=engine, repository=repository_for(model))
    assert outcome.succeeded, outcome.record.status.message
    artifact = repo_dir / "checked" / outcome.record.id / outcome.record.status.artifacts[0].file
    artifact.write_bytes(artifact.read_bytes()[:-100])  # truncated: its size no longer matches the manifest
    frontend.apply(doc)
    frontend.start()
    check = eventually("the check", lambda: frontend.policy_status("checked").get("lastCheck"), timeout=90)
    assert check["phase"] == "Failed" and check["damagedArtifacts"] == 1 and check["backups"] == 1, check
    eventually("the damage metric", lambda: sample(frontend, "dockvault_check_damaged_artifacts", "checked") == 1)


def test_a_repository_that_cannot_be_listed_stops_only_its_own_policy(frontend, docker_client, volumes, repo_dir,
                                                                      s3_server, monkeypatch):
    """S3 refuses one policy's keys: that policy's status says why (its backup fails, nothing hangs, no
    traceback loop), and the other policy backs up as scheduled, in both front ends."""
    source = volumes("core-unlisted")
    populate_volume(docker_client, source, megabytes=1)
    monkeypatch.setenv("DV_TEST_S3_KEY", s3_server.access_key)
    monkeypatch.setenv("DV_TEST_S3_SECRET", "not-the-secret-key-" + "x" * 20)
    frontend.apply(policy_doc("refused", [{"name": "media", "volume": {"name": source}}], repo_dir,
                              storage=s3_server.storage(s3_server.bucket("refused"))))
    frontend.apply(policy_doc("fine", [{"name": "media", "volume": {"name": source}}], repo_dir))
    frontend.start()
    fine = eventually("the other policy's backup", lambda: (
        (s := frontend.policy_status("fine")) and condition(s, "Ready").get("status") == "True" and s), timeout=90)
    assert fine["lastBackup"]["phase"] == "Succeeded"
    refused = eventually("the refused policy's failure in its status", lambda: (
        (s := frontend.policy_status("refused")) and (s.get("lastBackup") or {}).get("phase") == "Failed" and s),
        timeout=90)
    ready = condition(refused, "Ready")
    assert ready["status"] == "False"
    assert "secret key does not match" in ready["message"] + refused["lastBackup"]["message"]
    assert "not-the-secret-key" not in json.dumps(refused)
